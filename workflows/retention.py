"""``RetentionWorkflow``: delete expired job records, stored payloads and blobs, in batches.

A Temporal Schedule (:func:`infra.retention.ensure_retention_schedule`) starts it every
``AGENTFLOW_RETENTION_INTERVAL_S``; ``agentflow retention run`` starts it once. The cutoff is
``workflow.now() - max_age``, fixed when the first run of a chain starts. The workflow calls the
``delete_expired_batch`` activity (one transaction, at most ``batch_size`` rows per table) until
a batch deletes fewer than ``batch_size`` rows from every table, then returns the totals.

After ``max_batches`` batches, or sooner when the server suggests it, the run continues as new,
carrying the cutoff and the totals so far, so a large backlog never grows one history past its
limits and the last run's result holds the totals of the whole chain. What expires and the
hazards of deleting it are described in :mod:`infra.retention`.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.retention import RetentionActivities
    from core.errors import ErrorType
    from core.retention import (
        RETENTION_WORKFLOW_NAME,
        DeleteExpiredBatchInput,
        RetentionInput,
        RetentionResult,
    )

DELETE_BATCH_TIMEOUT = timedelta(seconds=60)
"""Start-to-close of one ``delete_expired_batch`` call (one transaction of at most 3 x 10,000
deletes by key)."""

DELETE_BATCH_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=6,
    non_retryable_error_types=[ErrorType.STORE_REJECTED.value],
)
"""A database outage is retried for about a minute; then the run fails and the next scheduled
run starts over (a run that retried for ever would make every later one skip)."""


@workflow.defn(name=RETENTION_WORKFLOW_NAME)
class RetentionWorkflow:
    """Deletes rows older than ``max_age`` in batches; see the module docstring."""

    @workflow.run
    async def run(self, inp: RetentionInput) -> RetentionResult:
        """Delete batches until every table is done; totals over the continue-as-new chain.

        Args:
            inp: the age, batch size and batches per run (``previous`` is set only by the
                workflow itself when it continues as new).

        Returns:
            The cutoff and the rows deleted per table, the batches made and whether the work
            continued as new.

        Raises:
            ActivityError: a batch failed after its retries (``StoreUnavailable`` for about a
                minute, or ``StoreRejected`` at once); the run fails and the next one retries.
        """
        totals = inp.previous or RetentionResult(cutoff=workflow.now() - inp.max_age)
        batch_input = DeleteExpiredBatchInput(cutoff=totals.cutoff, batch_size=inp.batch_size)
        batches_this_run = 0
        while True:
            batch = await workflow.execute_activity_method(
                RetentionActivities.delete_expired_batch,
                batch_input,
                start_to_close_timeout=DELETE_BATCH_TIMEOUT,
                retry_policy=DELETE_BATCH_RETRY,
            )
            totals = totals.plus(batch)
            batches_this_run += 1
            if batch.largest < inp.batch_size:
                return totals
            if (
                batches_this_run >= inp.max_batches
                or workflow.info().is_continue_as_new_suggested()
            ):
                carried = totals.model_copy(update={"continued": True})
                workflow.continue_as_new(inp.model_copy(update={"previous": carried}))
