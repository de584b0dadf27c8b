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

from pydantic import ValidationError
from temporalio import activity
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy

from activities.errors import to_application_error
from core.errors import AgentflowError
from core.ids import AGENT_WORKFLOW_TYPE, workflow_id_for
from core.models import AgentRequest, BatchCounts, BatchStepInput, BatchStepResult
from infra.batches import BatchStore, ClaimedItem, ItemStatus

MAX_STARTS_PER_STEP = 100
"""Most jobs one step starts: the rest wait for the next step (a few hundred ms), so a step's
start calls stay far inside its 60 s start-to-close even when the server is slow."""


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
            room = min(inp.max_concurrency - counts[ItemStatus.RUNNING], MAX_STARTS_PER_STEP)
            claimed = await asyncio.to_thread(self.store.claim, inp.batch_id, room)
            started = await asyncio.gather(*(self._start(inp, i) for i in [*lost, *claimed]))
        except AgentflowError as exc:
            raise to_application_error(exc) from exc
        # The batch's workflow is the only writer of its items: the claims moved that many
        # from pending to running, and the items that could not start went to the dead
        # letter, so the counts need no second query.
        refused = started.count(False)
        counts[ItemStatus.PENDING] -= len(claimed)
        counts[ItemStatus.RUNNING] += len(claimed) - refused
        counts[ItemStatus.DEAD_LETTER] += refused
        return BatchStepResult(
            finished=finished + refused,
            started=len(started) - refused,
            counts=BatchCounts(**{status.value: n for status, n in counts.items()}),
        )

    async def _start(self, inp: BatchStepInput, item: ClaimedItem) -> bool:
        """Start the item's job (a no-op when it is already out); ``False`` when it cannot.

        An item whose stored request is not a valid agent request goes to the dead letter at
        once: no attempt could start it, and a step failing on it would be retried forever.
        """
        try:
            request = AgentRequest.model_validate_json(item.request_json)
        except ValidationError as exc:
            await asyncio.to_thread(
                self.store.finish,
                inp.batch_id,
                item.seq,
                item.job_id,
                completed=False,
                error=f"the stored item is not a valid agent request ({exc.error_count()} errors)",
                max_attempts=inp.max_attempts,
                final=ItemStatus.DEAD_LETTER,
            )
            return False
        job = inp.template.model_copy(update={"job_id": item.job_id, "request": request})
        await activity.client().start_workflow(
            AGENT_WORKFLOW_TYPE,
            job,
            id=workflow_id_for(item.job_id),
            task_queue=inp.task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            static_summary=f"batch {inp.batch_id} item {item.seq} attempt {item.attempt}",
        )
        return True
