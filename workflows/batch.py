"""``BatchWorkflow``: a batch's items through a sliding window, its state in the job database.

Each turn is one ``batch_step`` activity (:mod:`activities.batches`): it applies the
outcomes of items whose jobs ended, starts jobs for the room left under ``max_concurrency``, and
returns counts. Items, requests and answers never enter this workflow's history; each item's job
is an ordinary ``AgentWorkflow`` of its own. Between turns the workflow waits ``poll_min``,
doubling up to ``poll_max`` while nothing ends. After ``steps_per_run`` turns (or when the server
suggests it) it continues as new with the counts: nothing is in flight in the workflow itself
(the jobs are not its children), so nothing is lost or repeated across it.
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.batches import BatchActivities
    from core.ids import BATCH_WORKFLOW_TYPE
    from core.models import BatchCounts, BatchStepInput, BatchWorkflowInput
    from workflows import policies


@workflow.defn(name=BATCH_WORKFLOW_TYPE)
class BatchWorkflow:
    """Runs one batch to its end; the workflow id is ``batch-<batch_id>``."""

    def __init__(self) -> None:
        self._counts = BatchCounts()

    @workflow.query(name="batch_counts")
    def counts(self) -> BatchCounts:
        """Items per status after the last step."""
        return self._counts

    @workflow.run
    async def run(self, inp: BatchWorkflowInput) -> BatchCounts:
        """Step until no item is pending or running; the final counts."""
        self._counts = inp.counts
        step = BatchStepInput(
            batch_id=inp.batch_id,
            max_concurrency=inp.max_concurrency,
            max_attempts=inp.max_attempts,
            template=inp.template,
            task_queue=workflow.info().task_queue,
        )
        wait = inp.poll_min
        for _ in range(inp.steps_per_run):
            result = await workflow.execute_activity_method(
                BatchActivities.batch_step,
                step,
                start_to_close_timeout=policies.BATCH_STEP_TIMEOUT,
                retry_policy=policies.BATCH_STEP_RETRY,
            )
            self._counts = result.counts
            if result.counts.done:
                return result.counts
            moved = result.finished or result.started
            wait = inp.poll_min if moved else min(wait * 2, inp.poll_max)
            await workflow.sleep(wait)
            if workflow.info().is_continue_as_new_suggested():
                break
        workflow.continue_as_new(inp.model_copy(update={"counts": self._counts}))
