"""The tools stage of ``AgentWorkflow``: calls fanned out in batches, results in plan order.

Parallel-safe calls go in up to ``TOOL_FANOUT_WIDTH`` concurrent ``run_tools`` activities, the
others one by one after them; a call that failed transiently inside a batch runs again alone (as
a regular activity). A batch of only quick in-memory tools (the calculator, the docs search) is a
local activity: it runs inside the workflow task, without a round trip through the task queue.
From shape 2 ``prepare_job`` may already have run them (``run(..., ran=...)``): the stage then
publishes their events and runs only the transient failures again, alone. Failures are data
(:class:`core.models.ToolFailure`), never exceptions.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from activities.tool_calls import ToolActivities
    from core.events import (
        ToolExecutionComplete,
        ToolExecutionStarted,
        ToolResultEvent,
    )
    from core.models import (
        AgentWorkflowInput,
        PlannedToolCall,
        RunToolsInput,
        ToolFailure,
        ToolResult,
    )
    from workflows import policies
    from workflows.failures import failure_of
    from workflows.job_events import JobEvents
    from workflows.state import JobState


SHAPE_LOCAL_TOOLS = 1
"""From this ``AgentWorkflowInput.shape`` on, a batch whose calls all run locally
(``PlannedToolCall.runs_locally``) is a local activity; shape 0 schedules every batch."""


class ToolFanout:
    """Runs the job's planned tool calls.

    Args:
        state: the job's state; each result joins ``progress.tool_results`` as it finishes, so
            the ``get_progress`` query shows it at once.
        events: where ``tool_execution_started``, ``tool_result`` and
            ``tool_execution_complete`` go.
    """

    def __init__(self, state: JobState, events: JobEvents) -> None:
        self._state = state
        self._events = events

    async def run(
        self,
        inp: AgentWorkflowInput,
        planned: list[PlannedToolCall],
        *,
        ran: list[ToolResult] | None = None,
        ran_ms: float = 0.0,
    ) -> list[ToolResult]:
        """Run ``planned`` and return their results in plan order.

        Publishes ``tool_execution_started``, one ``tool_result`` per call as it finishes, and
        ``tool_execution_complete``.

        Args:
            inp: the workflow's input (job id, heartbeat timeout).
            planned: the calls to run, in plan order.
            ran: their results when ``prepare_job`` already ran them (one per call, in plan
                order); only the transient failures among them run again, alone.
            ran_ms: how long that took, in ms (added to ``tool_execution_complete``).

        Returns:
            One result per call, in plan order; a call that failed for good is a
            :class:`core.models.ToolFailure`.

        Raises:
            ActivityError: only when the job is cancelled while its tools run.
        """
        started = workflow.now()
        if planned:
            self._events.emit(ToolExecutionStarted(job_id=inp.job_id, calls=planned))
        results: dict[str, ToolResult] = {}
        if ran is not None:
            await self._take_results(inp, planned, ran, results)
        else:
            parallel = [p for p in planned if p.parallel_safe]
            width = min(len(parallel), policies.TOOL_FANOUT_WIDTH)
            batches = [parallel[i::width] for i in range(width)]
            await asyncio.gather(*(self._tool_batch(inp, batch, results) for batch in batches))
            for p in planned:
                if not p.parallel_safe:
                    await self._tool_batch(inp, [p], results)
        done = [results[p.call.id] for p in planned if p.call.id in results]
        if planned:
            failed = sum(1 for r in done if isinstance(r, ToolFailure))
            elapsed = (workflow.now() - started).total_seconds() * 1000 + ran_ms
            self._events.emit(
                ToolExecutionComplete(
                    job_id=inp.job_id,
                    succeeded=len(done) - failed,
                    failed=failed,
                    duration_ms=round(elapsed, 3),
                )
            )
        return done

    async def _tool_batch(
        self,
        inp: AgentWorkflowInput,
        batch: list[PlannedToolCall],
        results: dict[str, ToolResult],
    ) -> None:
        """One ``run_tools`` activity for ``batch``; transient failures run again alone."""
        names = ", ".join(f"{p.call.name} ({p.call.id})" for p in batch)
        done = await self._run_tools_activity(
            inp, batch, raise_transient=False, retry=policies.TOOL_BATCH_RETRY, summary=names
        )
        await self._take_results(inp, batch, done, results)

    async def _take_results(
        self,
        inp: AgentWorkflowInput,
        batch: list[PlannedToolCall],
        done: list[ToolResult],
        results: dict[str, ToolResult],
    ) -> None:
        """Keep ``done`` (the results of ``batch``); its transient failures run again alone."""
        by_id = {p.call.id: p for p in batch}
        retries = [r for r in done if isinstance(r, ToolFailure) and r.retryable]
        for r in done:
            if not (isinstance(r, ToolFailure) and r.retryable):
                self._add_tool_result(r, results)
        await asyncio.gather(*(self._tool_alone(inp, by_id[r.call_id], results) for r in retries))

    async def _tool_alone(
        self, inp: AgentWorkflowInput, p: PlannedToolCall, results: dict[str, ToolResult]
    ) -> None:
        """Retry one call that failed transiently inside a batch, as its own activity."""
        [result] = await self._run_tools_activity(
            inp,
            [p],
            raise_transient=True,
            retry=policies.TOOL_RETRY_ALONE,
            summary=f"retry {p.call.name} ({p.call.id})",
        )
        self._add_tool_result(result, results)

    async def _run_tools_activity(
        self,
        inp: AgentWorkflowInput,
        calls: list[PlannedToolCall],
        *,
        raise_transient: bool,
        retry: RetryPolicy,
        summary: str,
    ) -> list[ToolResult]:
        """Results of one ``run_tools`` activity, in the order of ``calls``.

        An activity that failed for good reports each of its calls as a failure; cancellation
        propagates.
        """
        slowest = timedelta(seconds=max(p.timeout_s for p in calls))
        attempt = slowest + policies.TOOL_TIMEOUT_MARGIN
        batch = RunToolsInput(
            job_id=inp.job_id, calls=[p.call for p in calls], raise_transient=raise_transient
        )
        try:
            if inp.shape >= SHAPE_LOCAL_TOOLS and all(p.runs_locally for p in calls):
                # Quick in-memory tools: inside the workflow task, no task-queue round trip; its
                # retries are bounded by two attempts' time, then the calls are failures.
                outcome = await workflow.execute_local_activity_method(
                    ToolActivities.run_tools,
                    batch,
                    start_to_close_timeout=attempt,
                    schedule_to_close_timeout=2 * attempt,
                    retry_policy=retry,
                    summary=summary[:200],
                )
            else:
                outcome = await workflow.execute_activity_method(
                    ToolActivities.run_tools,
                    batch,
                    start_to_close_timeout=attempt,
                    heartbeat_timeout=inp.heartbeat_timeout,
                    retry_policy=retry,
                    summary=summary[:200],
                )
        except (ActivityError, ApplicationError) as err:
            # A local activity's own failure arrives as the bare ApplicationError (a timeout as
            # ActivityError); a cancelled one as a bare CancelledError, which propagates.
            if is_cancelled_exception(err):
                raise
            return [failure_of(p.call, err) for p in calls]
        results: list[ToolResult] = outcome.results
        return results

    def _add_tool_result(self, result: ToolResult, results: dict[str, ToolResult]) -> None:
        results[result.call_id] = result
        progress = self._state.progress
        progress.tool_results.append(result)
        self._events.emit(ToolResultEvent(job_id=progress.job_id, result=result))
