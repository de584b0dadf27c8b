"""Contracts of the retention workflow: its input and result, and those of its one activity.

The retention workflow (:mod:`workflows.retention`) deletes job records, stored payloads and
legacy blobs older than a configured age, in batches; a Temporal Schedule
(:func:`infra.retention.ensure_retention_schedule`) starts it every
``AGENTFLOW_RETENTION_INTERVAL_S``. These models travel through Temporal (schedule action,
workflow input and result, activity input and result), so they are durable contracts: a new field
is optional with a default.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from pydantic import BaseModel, Field

RETENTION_WORKFLOW_NAME = "RetentionWorkflow"
"""The deployed workflow type name of :class:`workflows.retention.RetentionWorkflow`."""

RETENTION_SCHEDULE_ID = "agentflow-retention"
"""The id of the Temporal Schedule that starts the retention workflow."""

RETENTION_WORKFLOW_ID = "agentflow-retention-run"
"""Workflow id of scheduled runs (the server appends each run's scheduled time to it)."""

RETENTION_MANUAL_WORKFLOW_ID = "agentflow-retention-manual"
"""Workflow id of a run started by ``agentflow retention run`` (one at a time)."""

MAX_BATCH_SIZE = 10_000
"""Most rows per table one batch deletes (the bound of ``AGENTFLOW_RETENTION_BATCH_SIZE``)."""


class DeleteExpiredBatchInput(BaseModel):
    """Input of the ``delete_expired_batch`` activity.

    Attributes:
        cutoff: rows older than this instant (aware UTC) expire.
        batch_size: most rows deleted per table by this call, 1 to :data:`MAX_BATCH_SIZE`.
    """

    cutoff: datetime
    batch_size: int = Field(ge=1, le=MAX_BATCH_SIZE)


class DeleteExpiredBatchResult(BaseModel):
    """Rows one ``delete_expired_batch`` call deleted, per table (each at most its batch size).

    Attributes:
        jobs_deleted: terminal job records (with the approval audit inside each).
        payloads_deleted: externally stored Temporal payloads.
        blobs_deleted: legacy blobs.
    """

    jobs_deleted: int = Field(default=0, ge=0)
    payloads_deleted: int = Field(default=0, ge=0)
    blobs_deleted: int = Field(default=0, ge=0)

    @property
    def largest(self) -> int:
        """The largest per-table count: below the batch size, no table has more to delete."""
        return max(self.jobs_deleted, self.payloads_deleted, self.blobs_deleted)


class RetentionResult(BaseModel):
    """What a retention run deleted, totalled over its continue-as-new chain.

    Attributes:
        cutoff: rows older than this instant (aware UTC) were deleted; fixed for the whole chain.
        jobs_deleted: terminal job records deleted.
        payloads_deleted: stored payloads deleted.
        blobs_deleted: legacy blobs deleted.
        batches: ``delete_expired_batch`` calls made.
        continued: whether the work spanned more than one run (it continued as new).
    """

    cutoff: datetime
    jobs_deleted: int = 0
    payloads_deleted: int = 0
    blobs_deleted: int = 0
    batches: int = 0
    continued: bool = False

    def plus(self, batch: DeleteExpiredBatchResult) -> RetentionResult:
        """These totals with one more batch added."""
        return self.model_copy(
            update={
                "jobs_deleted": self.jobs_deleted + batch.jobs_deleted,
                "payloads_deleted": self.payloads_deleted + batch.payloads_deleted,
                "blobs_deleted": self.blobs_deleted + batch.blobs_deleted,
                "batches": self.batches + 1,
            }
        )


class RetentionInput(BaseModel):
    """Input of :class:`workflows.retention.RetentionWorkflow`.

    Attributes:
        max_age: rows older than this (measured back from the run's start) are deleted; > 0.
        batch_size: most rows per table per activity call (one transaction), 1 to
            :data:`MAX_BATCH_SIZE`.
        max_batches: batches per run before it continues as new (keeps the history short), >= 1.
        previous: totals of the runs before this one in a continue-as-new chain, cutoff
            included; ``None`` for a fresh run (set by the workflow itself).
    """

    max_age: timedelta = Field(gt=timedelta(0))
    batch_size: int = Field(ge=1, le=MAX_BATCH_SIZE)
    max_batches: int = Field(default=1000, ge=1)
    previous: RetentionResult | None = None
