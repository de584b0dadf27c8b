"""The batch step activity: one turn of a batch's sliding window, against the job database.

``batch_step`` applies the outcome of every item whose job ended (:meth:`BatchStore.collect`),
starts any claimed attempt whose job is not out yet (:meth:`BatchStore.unstarted`: a start lost
with a worker), claims what the window has room for and starts those jobs. Items, requests and
answers stay in the database; the workflow sees counts. Each item's job is an ordinary
``AgentWorkflow`` (``agent-<job_id>``, job id ``<batch>-<seq>-<attempt>``) started with the
id-conflict policy ``USE_EXISTING``, so a step that is retried starts nothing twice.
"""

from __future__ import annotations

import asyncio

from temporalio import activity
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy

from activities.errors import to_application_error
from core.errors import AgentflowError
from core.ids import AGENT_WORKFLOW_TYPE, workflow_id_for
from core.models import AgentRequest, BatchCounts, BatchStepInput, BatchStepResult
from infra.batches import BatchStore, ClaimedItem, ItemStatus


class BatchActivities:
    """Batch steps for one worker process.

    Args:
        store: the batches and their items.
    """

    def __init__(self, *, store: BatchStore) -> None:
        self.store = store

    @activity.defn(name="batch_step")
    async def batch_step(self, inp: BatchStepInput) -> BatchStepResult:
        """Collect ended items, (re)start unstarted attempts, claim and start new ones.

        Returns:
            How many attempts ended and how many jobs were started, and the counts after.

        Raises:
            ApplicationError: ``StoreUnavailable`` (retryable) or ``StoreRejected``.
        """
        try:
            finished = await asyncio.to_thread(self.store.collect, inp.batch_id, inp.max_attempts)
            lost = await asyncio.to_thread(self.store.unstarted, inp.batch_id)
            counts = await asyncio.to_thread(self.store.counts, inp.batch_id)
            room = inp.max_concurrency - counts[ItemStatus.RUNNING]
            claimed = await asyncio.to_thread(self.store.claim, inp.batch_id, room)
            await asyncio.gather(*(self._start(inp, item) for item in [*lost, *claimed]))
        except AgentflowError as exc:
            raise to_application_error(exc) from exc
        # The batch's workflow is the only writer of its items: the claims moved that many
        # from pending to running, so the counts need no second query.
        counts[ItemStatus.PENDING] -= len(claimed)
        counts[ItemStatus.RUNNING] += len(claimed)
        return BatchStepResult(
            finished=finished,
            started=len(lost) + len(claimed),
            counts=BatchCounts(**{status.value: n for status, n in counts.items()}),
        )

    async def _start(self, inp: BatchStepInput, item: ClaimedItem) -> None:
        """Start the item's job (a no-op when it is already out)."""
        job = inp.template.model_copy(
            update={
                "job_id": item.job_id,
                "request": AgentRequest.model_validate_json(item.request_json),
            }
        )
        await activity.client().start_workflow(
            AGENT_WORKFLOW_TYPE,
            job,
            id=workflow_id_for(item.job_id),
            task_queue=inp.task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            static_summary=f"batch {inp.batch_id} item {item.seq} attempt {item.attempt}",
        )
