"""The tools stage of ``AgentWorkflow``: calls fanned out in batches, results in plan order."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from activities.tool_calls import ToolActivities
    from core.models import (
        AgentProgress,
        AgentWorkflowInput,
        PlannedToolCall,
        RunToolsInput,
        ToolFailure,
        ToolResult,
    )
    from workflows import policies
    from workflows.failures import failure_of


class ToolFanout:
    """Mixed into ``AgentWorkflow``, which owns ``_progress``."""

    _progress: AgentProgress

    async def _run_tools(self, inp: AgentWorkflowInput, planned: list[PlannedToolCall]) -> None:
        """Run the plan's calls; results kept in plan order after the planner's rejections.

        Parallel-safe calls go in up to ``TOOL_FANOUT_WIDTH`` concurrent batches, the others one
        by one after them.
        """
        results: dict[str, ToolResult] = {}
        parallel = [p for p in planned if p.parallel_safe]
        width = min(len(parallel), policies.TOOL_FANOUT_WIDTH)
        batches = [parallel[i::width] for i in range(width)]
        await asyncio.gather(*(self._tool_batch(inp, batch, results) for batch in batches))
        for p in planned:
            if not p.parallel_safe:
                await self._tool_batch(inp, [p], results)
        rejected = [r for r in self._progress.tool_results if r.call_id == "plan"]
        self._progress.tool_results = rejected + [
            results[p.call.id] for p in planned if p.call.id in results
        ]

    async def _tool_batch(
        self,
        inp: AgentWorkflowInput,
        batch: list[PlannedToolCall],
        results: dict[str, ToolResult],
    ) -> None:
        slowest = timedelta(seconds=max(p.timeout_s for p in batch))
        names = ", ".join(f"{p.call.name} ({p.call.id})" for p in batch)
        try:
            outcome = await workflow.execute_activity_method(
                ToolActivities.run_tools,
                RunToolsInput(job_id=inp.job_id, calls=[p.call for p in batch]),
                start_to_close_timeout=slowest + policies.TOOL_TIMEOUT_MARGIN,
                heartbeat_timeout=inp.heartbeat_timeout,
                retry_policy=policies.TOOL_BATCH_RETRY,
                summary=names[:200],
            )
            done: list[ToolResult] = outcome.results
        except ActivityError as err:
            if is_cancelled_exception(err):
                raise
            done = [failure_of(p.call, err) for p in batch]
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
        try:
            outcome = await workflow.execute_activity_method(
                ToolActivities.run_tools,
                RunToolsInput(job_id=inp.job_id, calls=[p.call], raise_transient=True),
                start_to_close_timeout=timedelta(seconds=p.timeout_s)
                + policies.TOOL_TIMEOUT_MARGIN,
                heartbeat_timeout=inp.heartbeat_timeout,
                retry_policy=policies.TOOL_RETRY_ALONE,
                summary=f"retry {p.call.name} ({p.call.id})",
            )
            result: ToolResult = outcome.results[0]
        except ActivityError as err:
            if is_cancelled_exception(err):
                raise
            result = failure_of(p.call, err)
        self._add_tool_result(result, results)

    def _add_tool_result(self, result: ToolResult, results: dict[str, ToolResult]) -> None:
        results[result.call_id] = result
        self._progress.tool_results.append(result)
