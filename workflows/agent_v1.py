"""The first shape of ``AgentWorkflow``, kept so jobs started before the v2 core still finish.

``AgentWorkflow.run`` takes this path when ``workflow.patched(PATCH_CORE_V2)`` is false, that is
when it replays or resumes a history recorded before the v2 core. Its commands must stay exactly
what they were: nine regular activities addressed by their deployed names, the ``approve`` signal
as the approval channel (the ``decide`` update also reaches it, see ``AgentWorkflow.decide``).
Do not change this module except to delete it once no job of the old shape can be running
(they end within ``AGENTFLOW_APPROVAL_TIMEOUT_S`` plus their run time) and the histories under
``tests/histories/v1_*.json`` are retired.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from functools import partial
from typing import cast

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from core.models import (
        AgentProgress,
        AgentResult,
        AgentWorkflowInput,
        ApprovalDecision,
        CheckResponseCacheResult,
        CompressContextInput,
        CompressContextResult,
        GenerateInput,
        GenerateResult,
        JobStatus,
        PlannedToolCall,
        PlanToolsInput,
        PlanToolsResult,
        RecordJobInput,
        ResponseCacheKeyInput,
        RunToolInput,
        SelectModelInput,
        SelectModelResult,
        Stage,
        StageTiming,
        Tier,
        ToolFailure,
        ToolResult,
    )
    from workflows import policies
    from workflows.failures import failure_of, root_cause

TOOL_RESULT_TYPE = cast(type, ToolResult)
"""``run_tool``'s result type (a tagged union) for the by-name activity call."""

PATCH_SELECT_WITH_PLAN = "select-model-with-plan-tools"
"""``workflow.patched`` id: model selection and tool planning are scheduled together."""


class LegacyAgentRun:
    """The v1 stages; mixed into ``AgentWorkflow``, which owns the state they use."""

    _progress: AgentProgress
    _decision: ApprovalDecision | None
    _stage_started: datetime | None
    _cache_key: str | None
    _gate_open: bool

    async def _v1_run(self, inp: AgentWorkflowInput) -> AgentResult:
        try:
            return await self._v1_pipeline(inp)
        except (ActivityError, ApplicationError) as err:
            if is_cancelled_exception(err):
                await self._v1_finish_canceled()
                raise
            root = root_cause(err)
            error_type = root.type if isinstance(root, ApplicationError) and root.type else None
            message = getattr(root, "message", None) or str(root)
            await self._v1_record(
                self._v1_result(JobStatus.FAILED, error=message, error_type=error_type or "Failed")
            )
            raise ApplicationError(
                message, type=error_type or "AgentJobFailed", non_retryable=True
            ) from err
        except asyncio.CancelledError:
            await self._v1_finish_canceled()
            raise

    async def _v1_pipeline(self, inp: AgentWorkflowInput) -> AgentResult:
        req = inp.request
        self._v1_enter(Stage.RESPONSE_CACHE)
        cache_check = await workflow.execute_activity(
            "check_response_cache",
            ResponseCacheKeyInput(
                query=req.query,
                context=req.context,
                tool_calls=req.tool_calls,
                model_tier=req.model_tier,
            ),
            result_type=CheckResponseCacheResult,
            start_to_close_timeout=policies.QUICK_TIMEOUT,
            retry_policy=policies.QUICK_RETRY,
        )
        self._cache_key = cache_check.key
        if cache_check.hit is not None:
            result = self._v1_result(JobStatus.COMPLETED).model_copy(
                update={
                    "answer": cache_check.hit.answer,
                    "simulated": cache_check.hit.simulated,
                    "response_cache_hit": True,
                }
            )
            return await self._v1_complete(result)

        self._v1_enter(Stage.MODEL_SELECTION)
        draft_task = asyncio.create_task(self._v1_draft(inp)) if inp.draft_enabled else None
        selecting = workflow.start_activity(
            "select_model",
            SelectModelInput(
                query=req.query,
                tool_call_names=[c.name for c in req.tool_calls],
                context_items=len(req.context),
                pinned_tier=None if req.model_tier == "auto" else Tier(req.model_tier),
            ),
            result_type=SelectModelResult,
            start_to_close_timeout=policies.QUICK_TIMEOUT,
            retry_policy=policies.QUICK_RETRY,
        )
        plan_tools = partial(
            workflow.start_activity,
            "plan_tools",
            PlanToolsInput(query=req.query, tool_calls=req.tool_calls),
            result_type=PlanToolsResult,
            start_to_close_timeout=policies.QUICK_TIMEOUT,
            retry_policy=policies.QUICK_RETRY,
        )
        planning = plan_tools() if workflow.patched(PATCH_SELECT_WITH_PLAN) else None
        try:
            selection = await selecting
        except BaseException:
            if planning is not None:
                planning.cancel()
            raise
        self._progress.selection = selection

        self._v1_enter(Stage.TOOL_PLAN)
        plan = await (planning if planning is not None else plan_tools())
        self._progress.tool_plan = plan.planned
        if plan.usage is not None:
            self._progress.usage.append(plan.usage)
        self._progress.tool_results = [
            ToolFailure(call_id="plan", name="plan", error_type="ToolCallInvalid", error=reason)
            for reason in plan.rejected
        ]

        if req.require_approval or any(p.requires_approval for p in plan.planned):
            decided = await self._v1_await_approval(inp.approval_timeout)
            if not decided or (self._decision is not None and not self._decision.approved):
                if draft_task is not None:
                    await draft_task
                status = JobStatus.REJECTED if decided else JobStatus.EXPIRED
                return await self._v1_complete(self._v1_result(status))

        self._v1_enter(Stage.TOOLS)
        await self._v1_run_tools(inp.job_id, plan.planned)

        self._v1_enter(Stage.COMPRESSION)
        compressed = await workflow.execute_activity(
            "compress_context",
            CompressContextInput(
                query=req.query,
                items=req.context,
                tool_results=self._progress.tool_results,
                max_tokens=req.max_context_tokens,
            ),
            result_type=CompressContextResult,
            start_to_close_timeout=policies.COMPRESSION_TIMEOUT,
            retry_policy=policies.COMPRESSION_RETRY,
        )

        if draft_task is not None:
            await draft_task
        self._v1_enter(Stage.GENERATION)
        gen_input = GenerateInput(
            job_id=inp.job_id,
            purpose="final",
            tier=selection.tier,
            query=req.query,
            context=compressed.items,
        )
        escalated_to: Tier | None = None
        try:
            final = await self._v1_generate(gen_input, inp.model_timeout)
        except ActivityError as err:
            if selection.escalation_tier is None or is_cancelled_exception(err):
                raise
            escalated_to = selection.escalation_tier
            workflow.logger.warning(
                "tier %s failed (%s); escalating to %s",
                selection.tier,
                root_cause(err),
                escalated_to,
            )
            final = await self._v1_generate(
                gen_input.model_copy(update={"tier": escalated_to}), inp.model_timeout
            )
        self._progress.usage.append(final.usage)
        result = self._v1_result(JobStatus.COMPLETED).model_copy(
            update={
                "answer": final.text,
                "simulated": final.usage.simulated,
                "escalated_to": escalated_to,
                "compression": compressed.summary,
            }
        )
        return await self._v1_complete(result)

    async def _v1_draft(self, inp: AgentWorkflowInput) -> None:
        try:
            draft = await self._v1_generate(
                GenerateInput(
                    job_id=inp.job_id,
                    purpose="draft",
                    tier=Tier.SMALL,
                    query=inp.request.query,
                    max_tokens=inp.draft_max_tokens,
                ),
                inp.model_timeout,
                retry=policies.DRAFT_RETRY,
            )
        except ActivityError as err:
            if is_cancelled_exception(err):
                raise
            workflow.logger.warning("draft failed, continuing without it: %s", root_cause(err))
            return
        self._progress.draft = draft.text
        self._progress.usage.append(draft.usage)

    async def _v1_generate(
        self,
        gen: GenerateInput,
        start_to_close: timedelta,
        retry: RetryPolicy = policies.MODEL_RETRY,
    ) -> GenerateResult:
        result: GenerateResult = await workflow.execute_activity(
            "generate_answer",
            gen,
            result_type=GenerateResult,
            start_to_close_timeout=start_to_close,
            retry_policy=retry,
            summary=f"{gen.purpose} on {gen.tier} tier",
        )
        return result

    async def _v1_await_approval(self, wait_for: timedelta) -> bool:
        self._v1_enter(Stage.AWAITING_APPROVAL)
        self._progress.status = JobStatus.AWAITING_APPROVAL
        await self._v1_record(self._v1_result(JobStatus.AWAITING_APPROVAL))
        self._gate_open = self._decision is None
        try:
            await workflow.wait_condition(lambda: self._decision is not None, timeout=wait_for)
        except TimeoutError:
            return False
        finally:
            self._gate_open = False
            self._progress.status = JobStatus.RUNNING
        self._progress.approval = self._decision
        return True

    async def _v1_run_tools(self, job_id: str, planned: list[PlannedToolCall]) -> None:
        results: dict[str, ToolResult] = {}

        async def one(p: PlannedToolCall) -> None:
            try:
                outcome: ToolResult = await workflow.execute_activity(
                    "run_tool",
                    RunToolInput(job_id=job_id, call=p.call),
                    result_type=TOOL_RESULT_TYPE,
                    start_to_close_timeout=timedelta(seconds=p.timeout_s),
                    retry_policy=policies.TOOL_RETRY,
                    summary=f"{p.call.name} ({p.call.id})",
                )
            except ActivityError as err:
                if is_cancelled_exception(err):
                    raise
                outcome = failure_of(p.call, err)
            results[p.call.id] = outcome
            self._progress.tool_results.append(outcome)

        await asyncio.gather(*(one(p) for p in planned if p.parallel_safe))
        for p in planned:
            if not p.parallel_safe:
                await one(p)
        rejected = [r for r in self._progress.tool_results if r.call_id == "plan"]
        self._progress.tool_results = rejected + [
            results[p.call.id] for p in planned if p.call.id in results
        ]

    def _v1_enter(self, stage: Stage) -> None:
        now = workflow.now()
        if self._stage_started is not None:
            elapsed = (now - self._stage_started).total_seconds() * 1000
            self._progress.timings.append(
                StageTiming(stage=self._progress.stage, duration_ms=round(elapsed, 3))
            )
        self._progress.stage = stage
        self._stage_started = now

    def _v1_result(
        self, status: JobStatus, *, error: str | None = None, error_type: str | None = None
    ) -> AgentResult:
        p = self._progress
        return AgentResult(
            job_id=p.job_id,
            status=status,
            selection=p.selection,
            draft=p.draft,
            tool_results=p.tool_results,
            approval=p.approval,
            usage=p.usage,
            timings=p.timings,
            error=error,
            error_type=error_type,
        )

    async def _v1_complete(self, result: AgentResult) -> AgentResult:
        self._v1_enter(Stage.RECORD)
        self._progress.status = result.status
        result = result.model_copy(update={"timings": list(self._progress.timings)})
        await self._v1_record(result)
        self._v1_enter(Stage.DONE)
        return result.model_copy(update={"timings": self._progress.timings})

    async def _v1_record(self, result: AgentResult) -> None:
        await workflow.execute_activity(
            "record_job",
            RecordJobInput(result=result, response_cache_key=self._cache_key),
            start_to_close_timeout=policies.RECORD_TIMEOUT,
            retry_policy=policies.RECORD_RETRY,
        )

    async def _v1_finish_canceled(self) -> None:
        self._progress.status = JobStatus.CANCELED
        await self._v1_record(self._v1_result(JobStatus.CANCELED))
