"""``AgentWorkflow``: one durable agent request, from cache check to recorded answer.

Stages (each an activity with its own timeout and retry policy, see :mod:`workflows.policies`):

1. response cache — a hit completes the job at once;
2. model selection — task type, scores, tier and escalation tier;
3. draft — a quick answer from the small tier, run alongside stages 4-6 (an intermediate result);
4. tool plan — explicit calls plus the planner's, validated against the registry;
5. approval gate — waits for the ``approve`` signal when asked to, or when a tool requires it;
6. tools — parallel-safe calls fanned out concurrently, the rest in order; failures are data;
7. context compression — context and tool results fitted to the token budget;
8. generation — the selected tier, escalating to the fallback tier when it fails (cascade);
9. record — the job record in the database and the answer in the response cache.

The workflow is deterministic: no clock but ``workflow.now()``, no I/O, settings arrive in the
input. ``get_progress`` answers at any time with the intermediate state.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from functools import partial

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from activities.agent import AgentActivities
    from core.models import (
        AgentProgress,
        AgentResult,
        AgentWorkflowInput,
        ApprovalDecision,
        CompressContextInput,
        GenerateInput,
        GenerateResult,
        JobStatus,
        PlannedToolCall,
        PlanToolsInput,
        RecordJobInput,
        ResponseCacheKeyInput,
        RunToolInput,
        SelectModelInput,
        Stage,
        StageTiming,
        Tier,
        ToolCall,
        ToolFailure,
        ToolResult,
    )
    from workflows import policies


PATCH_SELECT_WITH_PLAN = "select-model-with-plan-tools"
"""``workflow.patched`` id: model selection and tool planning are scheduled together."""


def _root_cause(error: BaseException) -> BaseException:
    """The first typed ``ApplicationError`` in the cause chain, else the deepest cause.

    An activity failure arrives as ``ActivityError`` -> ``ApplicationError(type=...)`` ->
    (the activity's own exception chain); the typed error is the one to branch and report on.
    """
    cause: BaseException | None = error
    deepest = error
    while cause is not None:
        if isinstance(cause, ApplicationError) and cause.type:
            return cause
        deepest = cause
        cause = cause.__cause__
    return deepest


def failure_of(call: ToolCall, error: BaseException) -> ToolFailure:
    """A :class:`ToolFailure` for ``call`` from the error its activity ended with.

    The recorded type is the typed one from the chain, e.g. ``ToolTransient`` after the last
    retry, or ``TimeoutError`` when the tool outran its start-to-close timeout.
    """
    cause = _root_cause(error)
    if isinstance(cause, ApplicationError) and cause.type:
        error_type = cause.type
    else:
        error_type = type(cause).__name__
    message = getattr(cause, "message", None) or str(cause) or error_type
    return ToolFailure(call_id=call.id, name=call.name, error_type=error_type, error=message)


@workflow.defn(name="AgentWorkflow")
class AgentWorkflow:
    """Runs one agent request; the workflow id is ``agent-<job_id>``."""

    def __init__(self) -> None:
        self._progress = AgentProgress(job_id="")
        self._decision: ApprovalDecision | None = None
        self._stage_started: datetime | None = None
        self._cache_key: str | None = None

    # ------------------------------------------------------------------ handlers

    @workflow.query
    def get_progress(self) -> AgentProgress:
        """Current stage, draft, tool results so far, chosen tier and usage so far."""
        return self._progress

    @workflow.signal
    def approve(self, decision: ApprovalDecision) -> None:
        """Record a human decision. The first decision wins; later ones are ignored."""
        if self._decision is None:
            self._decision = decision
        else:
            workflow.logger.info("ignoring a second approval decision from %s", decision.reviewer)

    # ------------------------------------------------------------------ run

    @workflow.run
    async def run(self, inp: AgentWorkflowInput) -> AgentResult:
        """Run the job and return its outcome.

        Returns:
            :class:`AgentResult` with status COMPLETED, REJECTED or EXPIRED.

        Raises:
            ApplicationError: the job FAILED (its type names why, e.g. ``ContextBudgetExceeded``);
                the failure is recorded first.
            asyncio.CancelledError: the workflow was cancelled; recorded as CANCELED first.
        """
        self._progress = AgentProgress(job_id=inp.job_id)
        try:
            return await self._run(inp)
        except (ActivityError, ApplicationError) as err:
            if is_cancelled_exception(err):
                await self._finish_canceled()
                raise
            root = _root_cause(err)
            error_type = root.type if isinstance(root, ApplicationError) and root.type else None
            message = getattr(root, "message", None) or str(root)
            await self._record(
                self._result(JobStatus.FAILED, error=message, error_type=error_type or "Failed")
            )
            raise ApplicationError(
                message, type=error_type or "AgentJobFailed", non_retryable=True
            ) from err
        except asyncio.CancelledError:
            await self._finish_canceled()
            raise

    async def _run(self, inp: AgentWorkflowInput) -> AgentResult:
        req = inp.request
        self._enter(Stage.RESPONSE_CACHE)
        cache_check = await workflow.execute_activity_method(
            AgentActivities.check_response_cache,
            ResponseCacheKeyInput(
                query=req.query,
                context=req.context,
                tool_calls=req.tool_calls,
                model_tier=req.model_tier,
            ),
            start_to_close_timeout=policies.QUICK_TIMEOUT,
            retry_policy=policies.QUICK_RETRY,
        )
        self._cache_key = cache_check.key
        if cache_check.hit is not None:
            result = self._result(JobStatus.COMPLETED).model_copy(
                update={
                    "answer": cache_check.hit.answer,
                    "simulated": cache_check.hit.simulated,
                    "response_cache_hit": True,
                }
            )
            return await self._complete(result)

        self._enter(Stage.MODEL_SELECTION)
        draft_task = asyncio.create_task(self._draft(inp)) if inp.draft_enabled else None
        selecting = workflow.start_activity_method(
            AgentActivities.select_model,
            SelectModelInput(
                query=req.query,
                tool_call_names=[c.name for c in req.tool_calls],
                context_items=len(req.context),
                pinned_tier=None if req.model_tier == "auto" else Tier(req.model_tier),
            ),
            start_to_close_timeout=policies.QUICK_TIMEOUT,
            retry_policy=policies.QUICK_RETRY,
        )
        plan_tools = partial(
            workflow.start_activity_method,
            AgentActivities.plan_tools,
            PlanToolsInput(query=req.query, tool_calls=req.tool_calls),
            start_to_close_timeout=policies.QUICK_TIMEOUT,
            retry_policy=policies.QUICK_RETRY,
        )
        # Selection and planning depend on the request alone: scheduling them together takes one
        # activity round trip off the job's critical path (~18 ms per activity on the dev server,
        # `python -m benchmarks overhead`). Histories recorded before this patch scheduled them
        # one after the other.
        planning = plan_tools() if workflow.patched(PATCH_SELECT_WITH_PLAN) else None
        try:
            selection = await selecting
        except BaseException:
            if planning is not None:
                planning.cancel()
            raise
        self._progress.selection = selection

        self._enter(Stage.TOOL_PLAN)
        plan = await (planning if planning is not None else plan_tools())
        self._progress.tool_plan = plan.planned
        if plan.usage is not None:
            self._progress.usage.append(plan.usage)
        self._progress.tool_results = [
            ToolFailure(call_id="plan", name="plan", error_type="ToolCallInvalid", error=reason)
            for reason in plan.rejected
        ]

        if req.require_approval or any(p.requires_approval for p in plan.planned):
            decided = await self._await_approval(inp.approval_timeout)
            if not decided or (self._decision is not None and not self._decision.approved):
                if draft_task is not None:
                    await draft_task
                status = JobStatus.REJECTED if decided else JobStatus.EXPIRED
                return await self._complete(self._result(status))

        self._enter(Stage.TOOLS)
        await self._run_tools(inp.job_id, plan.planned)

        self._enter(Stage.COMPRESSION)
        compressed = await workflow.execute_activity_method(
            AgentActivities.compress_context,
            CompressContextInput(
                query=req.query,
                items=req.context,
                tool_results=self._progress.tool_results,
                max_tokens=req.max_context_tokens,
            ),
            start_to_close_timeout=policies.COMPRESSION_TIMEOUT,
            retry_policy=policies.COMPRESSION_RETRY,
        )

        if draft_task is not None:
            await draft_task
        self._enter(Stage.GENERATION)
        gen_input = GenerateInput(
            job_id=inp.job_id,
            purpose="final",
            tier=selection.tier,
            query=req.query,
            context=compressed.items,
        )
        escalated_to: Tier | None = None
        try:
            final = await self._generate(gen_input, inp.model_timeout)
        except ActivityError as err:
            if selection.escalation_tier is None or is_cancelled_exception(err):
                raise
            escalated_to = selection.escalation_tier
            workflow.logger.warning(
                "tier %s failed (%s); escalating to %s",
                selection.tier,
                _root_cause(err),
                escalated_to,
            )
            final = await self._generate(
                gen_input.model_copy(update={"tier": escalated_to}), inp.model_timeout
            )
        self._progress.usage.append(final.usage)
        result = self._result(JobStatus.COMPLETED).model_copy(
            update={
                "answer": final.text,
                "simulated": final.usage.simulated,
                "escalated_to": escalated_to,
                "compression": compressed.summary,
            }
        )
        return await self._complete(result)

    # ------------------------------------------------------------------ stages

    async def _draft(self, inp: AgentWorkflowInput) -> None:
        """Quick small-tier answer; a failure is logged and the job goes on without it."""
        try:
            draft = await self._generate(
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
            workflow.logger.warning("draft failed, continuing without it: %s", _root_cause(err))
            return
        self._progress.draft = draft.text
        self._progress.usage.append(draft.usage)

    async def _generate(
        self,
        gen: GenerateInput,
        start_to_close: timedelta,
        retry: RetryPolicy = policies.MODEL_RETRY,
    ) -> GenerateResult:
        return await workflow.execute_activity_method(
            AgentActivities.generate_answer,
            gen,
            start_to_close_timeout=start_to_close,
            retry_policy=retry,
            summary=f"{gen.purpose} on {gen.tier} tier",
        )

    async def _await_approval(self, wait_for: timedelta) -> bool:
        """Wait for the ``approve`` signal; False when the timeout passed first."""
        self._enter(Stage.AWAITING_APPROVAL)
        self._progress.status = JobStatus.AWAITING_APPROVAL
        await self._record(self._result(JobStatus.AWAITING_APPROVAL))
        try:
            await workflow.wait_condition(lambda: self._decision is not None, timeout=wait_for)
        except TimeoutError:
            return False
        finally:
            self._progress.status = JobStatus.RUNNING
        self._progress.approval = self._decision
        return True

    async def _run_tools(self, job_id: str, planned: list[PlannedToolCall]) -> None:
        """Parallel-safe calls concurrently, then the others in order; results in plan order."""
        results: dict[str, ToolResult] = {}

        async def one(p: PlannedToolCall) -> None:
            try:
                outcome: ToolResult = await workflow.execute_activity_method(
                    AgentActivities.run_tool,
                    RunToolInput(job_id=job_id, call=p.call),
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

    # ------------------------------------------------------------------ bookkeeping

    def _enter(self, stage: Stage) -> None:
        now = workflow.now()
        if self._stage_started is not None:
            elapsed = (now - self._stage_started).total_seconds() * 1000
            self._progress.timings.append(
                StageTiming(stage=self._progress.stage, duration_ms=round(elapsed, 3))
            )
        self._progress.stage = stage
        self._stage_started = now

    def _result(
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

    async def _complete(self, result: AgentResult) -> AgentResult:
        self._enter(Stage.RECORD)
        self._progress.status = result.status
        result = result.model_copy(update={"timings": list(self._progress.timings)})
        await self._record(result)
        self._enter(Stage.DONE)
        return result.model_copy(update={"timings": self._progress.timings})

    async def _record(self, result: AgentResult) -> None:
        await workflow.execute_activity_method(
            AgentActivities.record_job,
            RecordJobInput(result=result, response_cache_key=self._cache_key),
            start_to_close_timeout=policies.RECORD_TIMEOUT,
            retry_policy=policies.RECORD_RETRY,
        )

    async def _finish_canceled(self) -> None:
        self._progress.status = JobStatus.CANCELED
        await self._record(self._result(JobStatus.CANCELED))
