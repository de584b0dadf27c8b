"""Batches: the ``BatchWorkflow``'s input and the contracts of its activities.

A batch's items and outputs live in the job database (:mod:`infra.batches`); these models carry
only ids, limits and counts, so a batch's history stays small whatever its size.
"""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel, Field

from core.models.jobs import AgentWorkflowInput


class BatchCounts(BaseModel):
    """Items per status after a step (:class:`infra.batches.ItemStatus` values)."""

    pending: int = 0
    running: int = 0
    completed: int = 0
    dead_letter: int = 0
    rejected: int = 0
    canceled: int = 0

    @property
    def done(self) -> bool:
        """Whether no item is left to run or running."""
        return self.pending == 0 and self.running == 0


class BatchWorkflowInput(BaseModel):
    """Everything ``BatchWorkflow`` needs; the workflow id is ``batch-<batch_id>``.

    ``template`` is the job input every item's job starts from (timeouts, approval policy,
    owner, shape): each item gets its own ``job_id`` and ``request`` from the database.
    """

    batch_id: str
    max_concurrency: int = Field(ge=1, le=1000)
    max_attempts: int = Field(ge=1, le=20)
    template: AgentWorkflowInput
    poll_min: timedelta = timedelta(milliseconds=200)
    """Shortest wait between two steps while items finish (a step also starts new items)."""
    poll_max: timedelta = timedelta(seconds=5)
    """Longest wait between two steps, reached by doubling while nothing finishes."""
    steps_per_run: int = Field(default=1000, ge=10)
    """Steps before the workflow continues as new (each step adds about 8 history events)."""
    counts: BatchCounts = Field(default_factory=BatchCounts)
    """The counts when this run began (carried across continue-as-new)."""


class BatchStepInput(BaseModel):
    """Input of the ``batch_step`` activity: one turn of the batch's sliding window."""

    batch_id: str
    max_concurrency: int
    max_attempts: int
    template: AgentWorkflowInput
    task_queue: str
    """Where the items' jobs run (the batch workflow's own task queue)."""


class BatchStepResult(BaseModel):
    """What one step did: items finished and started, and the counts after it."""

    finished: int = 0
    started: int = 0
    counts: BatchCounts = Field(default_factory=BatchCounts)
