"""``AgentWorkflow``: one durable agent request, from cache check to recorded answer.

The workflow owns the job's state: the ``get_progress`` query answers from it at any time, the
``decide`` update changes it, and each status change is projected into the job database through
``record_job`` (ordered by a revision counter, so a late write never moves a job backwards).

Stages (timeouts and retry policies in :mod:`workflows.policies`):

1-3. ``prepare_job`` (one local activity): the response cache (a hit completes the job at once),
   the tool plan (explicit calls plus the planner's, validated against the registry) and model
   selection (which sees the planned tools; a tier and an escalation tier);
4. draft — a quick small-tier answer, only when the final tier is above small; it runs beside
   the next stages and is cancelled when the job ends early or the final answer is ready first;
5. approval gate — when asked to, or when a planned tool requires it: waits for the ``decide``
   update (validated; refused unless the job is waiting), up to the approval timeout;
6. tools — ``run_tools`` regular activities, at most ``TOOL_FANOUT_WIDTH`` at once, each call
   behind the Redis tool-result cache; failures are data;
7. compression (local) — context and tool results fitted to the token budget;
8. generation — the selected tier with a timeout fitted to it; on failure the escalation tier
   answers (cascade);
9. record (local, falling back to a regular activity during a database outage).

Stages 1-3 run in the first workflow task, beside the job's first projection (RUNNING). The
workflow is deterministic: no clock but ``workflow.now()``, no I/O, settings arrive in the input
or from activity results.

Versioning: histories recorded before this shape (no ``agentflow-core-v2`` marker) take the v1
path in :mod:`workflows.agent_v1`, unchanged.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from activities.generation import ModelActivities
    from activities.stages import StageActivities
    from activities.tool_calls import ToolActivities
    from core.errors import ErrorType
    from core.models import (
        AgentProgress,
        AgentResult,
        AgentWorkflowInput,
        ApprovalDecision,
        CompressContextInput,
        CompressionSummary,
        ContextItem,
        DecisionResult,
        GenerateInput,
        GenerateResult,
        JobStatus,
        PlannedToolCall,
        PrepareJobInput,
        RecordJobInput,
        RunToolsInput,
        SelectModelResult,
        Stage,
        StageTiming,
        Tier,
        ToolFailure,
        ToolResult,
    )
    from workflows import policies
    from workflows.agent_v1 import LegacyAgentRun
    from workflows.failures import failure_of, root_cause

PATCH_CORE_V2 = "agentflow-core-v2"
"""``workflow.patched`` id of this shape; histories without it replay on the v1 path."""


@workflow.defn(name="AgentWorkflow")
class AgentWorkflow(LegacyAgentRun):
    """Runs one agent request; the workflow id is ``agent-<job_id>``."""

    def __init__(self) -> None:
        self._progress = AgentProgress(job_id="")
        self._decision: ApprovalDecision | None = None
        self._stage_started: datetime | None = None
        self._cache_key: str | None = None
        self._gate_open = False
        self._legacy = False
        self._revision = 0
        self._projection: asyncio.Task[None] | None = None
        self._draft_task: asyncio.Task[None] | None = None
        self._input: AgentWorkflowInput | None = None

    # ------------------------------------------------------------------ handlers

    @workflow.query
    def get_progress(self) -> AgentProgress:
        """Current status and stage, draft, tool plan and results so far, tier, usage, timings."""
        return self._progress

    @workflow.update
    async def decide(self, decision: ApprovalDecision) -> DecisionResult:
        """Approve or reject the job while it waits at the approval gate.

        Returns:
            The decision and the job's new status: RUNNING after an approval, REJECTED after a
            rejection.

        Raises:
            ApplicationError: ``JobNotAwaitingApproval`` (non-retryable) when the job is not
                waiting for a decision (not yet at the gate, already decided, or ended); its
                ``details`` hold the current status. The validator refuses such calls before they
                reach history; this check covers two decisions that pass validation together.
        """
        self._refuse_unless_waiting()
        self._decision = decision
        self._gate_open = False
        self._progress.approval = decision
        return DecisionResult(
            job_id=self._progress.job_id,
            approved=decision.approved,
            reviewer=decision.reviewer,
            status=JobStatus.RUNNING if decision.approved else JobStatus.REJECTED,
        )

    @decide.validator
    def _validate_decide(self, decision: ApprovalDecision) -> None:
        self._refuse_unless_waiting()

    def _refuse_unless_waiting(self) -> None:
        if self._gate_open and self._decision is None:
            return
        status = self._progress.status
        if self._decision is not None:
            why = f"job {self._progress.job_id} was already decided by {self._decision.reviewer}"
        else:
            why = f"job {self._progress.job_id} is not awaiting approval (status {status.value})"
        raise ApplicationError(
            why,
            status.value,
            type=ErrorType.JOB_NOT_AWAITING_APPROVAL.value,
            non_retryable=True,
        )

    @workflow.signal
    def approve(self, decision: ApprovalDecision) -> None:
        """The v1 approval channel, kept for jobs started before the ``decide`` update.

        Only those jobs act on it (the first decision wins); a job started since logs and ignores
        it, so a signal can never approve a job ahead of its gate. Use ``decide``.
        """
        if not self._legacy:
            workflow.logger.warning(
                "ignoring an 'approve' signal from %s: use the 'decide' update", decision.reviewer
            )
        elif self._decision is None:
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
        if not workflow.patched(PATCH_CORE_V2):
            self._legacy = True
            return await self._v1_run(inp)
        self._input = inp
        self._progress.query = inp.request.query
        self._progress.started_at = workflow.info().start_time
        try:
            return await self._pipeline(inp)
        except (ActivityError, ApplicationError) as err:
            self._stop_draft()
            if is_cancelled_exception(err):
                await self._finish(self._result(JobStatus.CANCELED))
                raise
            root = root_cause(err)
            error_type = root.type if isinstance(root, ApplicationError) and root.type else None
            message = getattr(root, "message", None) or str(root)
            await self._finish(
                self._result(JobStatus.FAILED, error=message, error_type=error_type or "Failed")
            )
            raise ApplicationError(
                message, type=error_type or "AgentJobFailed", non_retryable=True
            ) from err
        except asyncio.CancelledError:
            self._stop_draft()
            await self._finish(self._result(JobStatus.CANCELED))
            raise

    async def _pipeline(self, inp: AgentWorkflowInput) -> AgentResult:
        req = inp.request
        self._project()  # RUNNING, with the request; written beside the first stages
        prepared = await self._prepare(inp)
        if isinstance(prepared, AgentResult):
            return await self._finish(prepared)
        planned, selection = prepared
        if self._draft_helps(inp, selection):
            self._draft_task = asyncio.create_task(self._draft(inp, selection))

        if req.require_approval or any(p.requires_approval for p in planned):
            outcome = await self._await_decision(inp.approval_timeout)
            if outcome is not JobStatus.RUNNING:
                self._stop_draft()
                return await self._finish(self._result(outcome))

        self._enter(Stage.TOOLS)
        await self._run_tools(inp, planned)
        items, summary = await self._compress(inp)
        final, escalated_to = await self._generate_final(inp, selection, items)
        self._progress.usage.append(final.usage)
        self._stop_draft()
        result = self._result(JobStatus.COMPLETED).model_copy(
            update={
                "answer": final.text,
                "simulated": final.usage.simulated,
                "escalated_to": escalated_to,
                "compression": summary,
            }
        )
        return await self._finish(result)

    # ------------------------------------------------------------------ stages

    async def _prepare(
        self, inp: AgentWorkflowInput
    ) -> AgentResult | tuple[list[PlannedToolCall], SelectModelResult]:
        """Cache lookup, tool plan and model selection in one local activity.

        Returns:
            The completed result on a response-cache hit; else the validated calls to run
            (proposals that did not validate become failures) and the selection.
        """
        self._enter(Stage.RESPONSE_CACHE)
        prepared = await workflow.execute_local_activity_method(
            StageActivities.prepare_job,
            PrepareJobInput(request=inp.request),
            start_to_close_timeout=policies.PLAN_TIMEOUT,
            retry_policy=policies.LOCAL_QUICK_RETRY,
        )
        # One local activity ran three stages: their timings come from the activity.
        self._progress.timings.extend(
            StageTiming(stage=Stage(name), duration_ms=ms)
            for name, ms in prepared.duration_ms.items()
        )
        self._stage_started = None
        check = prepared.cache
        self._cache_key = check.key
        if check.hit is not None:
            return self._result(JobStatus.COMPLETED).model_copy(
                update={
                    "answer": check.hit.answer,
                    "simulated": check.hit.simulated,
                    "response_cache_hit": True,
                }
            )
        plan, selection = prepared.plan, prepared.selection
        if plan is None or selection is None:
            raise ApplicationError(
                "prepare_job returned no plan on a cache miss", non_retryable=True
            )
        self._progress.stage = Stage.MODEL_SELECTION
        self._progress.tool_plan = plan.planned
        if plan.usage is not None:
            self._progress.usage.append(plan.usage)
        self._progress.tool_results = [
            ToolFailure(call_id="plan", name="plan", error_type="ToolCallInvalid", error=reason)
            for reason in plan.rejected
        ]
        self._progress.selection = selection
        return plan.planned, selection

    @staticmethod
    def _draft_helps(inp: AgentWorkflowInput, selection: SelectModelResult) -> bool:
        """A small-tier draft is worth its cost only when the final answer comes from above small.

        That also covers a pinned small tier (the final answer is itself a small-tier answer).
        """
        return inp.draft_enabled and selection.tier is not Tier.SMALL

    async def _draft(self, inp: AgentWorkflowInput, selection: SelectModelResult) -> None:
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
                inp,
                selection,
                retry=policies.DRAFT_RETRY,
            )
        except ActivityError as err:
            if is_cancelled_exception(err):
                return
            workflow.logger.warning("draft failed, continuing without it: %s", root_cause(err))
            return
        self._progress.draft = draft.text
        self._progress.usage.append(draft.usage)

    def _stop_draft(self) -> None:
        """Cancel the draft if it is still running: nobody will read it now."""
        if self._draft_task is not None and not self._draft_task.done():
            self._draft_task.cancel()

    async def _await_decision(self, wait_for: timedelta) -> JobStatus:
        """Wait at the gate for ``decide``; RUNNING (approved), REJECTED or EXPIRED."""
        self._enter(Stage.AWAITING_APPROVAL)
        self._progress.status = JobStatus.AWAITING_APPROVAL
        self._gate_open = True
        self._project()
        try:
            await workflow.wait_condition(lambda: self._decision is not None, timeout=wait_for)
        except TimeoutError:
            if self._decision is None:  # a decision accepted as the timer fired still counts
                self._gate_open = False
                return JobStatus.EXPIRED
        self._progress.status = JobStatus.RUNNING
        assert self._decision is not None
        if not self._decision.approved:
            return JobStatus.REJECTED
        self._project()
        return JobStatus.RUNNING

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

    async def _compress(
        self, inp: AgentWorkflowInput
    ) -> tuple[list[ContextItem], CompressionSummary]:
        self._enter(Stage.COMPRESSION)
        req = inp.request
        compressed = await workflow.execute_local_activity_method(
            StageActivities.compress_context,
            CompressContextInput(
                query=req.query,
                items=req.context,
                tool_results=self._progress.tool_results,
                max_tokens=req.max_context_tokens,
                allow_blob_refs=False,
            ),
            start_to_close_timeout=policies.LOCAL_COMPRESSION_TIMEOUT,
            retry_policy=policies.LOCAL_COMPRESSION_RETRY,
        )
        return compressed.items, compressed.summary

    async def _generate_final(
        self, inp: AgentWorkflowInput, selection: SelectModelResult, items: list[ContextItem]
    ) -> tuple[GenerateResult, Tier | None]:
        """The selected tier's answer, or the escalation tier's when it fails (the cascade)."""
        self._enter(Stage.GENERATION)
        gen = GenerateInput(
            job_id=inp.job_id,
            purpose="final",
            tier=selection.tier,
            query=inp.request.query,
            context=items,
        )
        try:
            return await self._generate(gen, inp, selection), None
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
            escalated = gen.model_copy(update={"tier": escalated_to})
            return await self._generate(escalated, inp, selection), escalated_to

    async def _generate(
        self,
        gen: GenerateInput,
        inp: AgentWorkflowInput,
        selection: SelectModelResult,
        retry: RetryPolicy = policies.MODEL_RETRY,
    ) -> GenerateResult:
        attempt_s = selection.attempt_timeouts_s.get(gen.tier)
        attempt = timedelta(seconds=attempt_s) if attempt_s else inp.model_timeout
        start_to_close = attempt + policies.MODEL_ATTEMPT_MARGIN
        return await workflow.execute_activity_method(
            ModelActivities.generate_answer,
            gen,
            start_to_close_timeout=start_to_close,
            schedule_to_close_timeout=policies.model_schedule_to_close(start_to_close, retry),
            heartbeat_timeout=inp.heartbeat_timeout,
            retry_policy=retry,
            summary=f"{gen.purpose} on {gen.tier} tier",
        )

    # ------------------------------------------------------------------ state and projection

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
            tool_results=list(p.tool_results),
            approval=p.approval,
            usage=list(p.usage),
            timings=list(p.timings),
            error=error,
            error_type=error_type,
        )

    def _project(self, *, result: AgentResult | None = None) -> asyncio.Task[None]:
        """Write the job's current state to the database after the previous write finishes.

        Writes run one at a time in order, beside the stages; only the final one is awaited.
        The first carries the request (a response-cache hit ends the job with one write).
        """
        self._revision += 1
        record = RecordJobInput(
            result=result or self._result(self._progress.status),
            response_cache_key=self._cache_key if result is not None else None,
            revision=self._revision,
        )
        first = self._input if self._revision == 1 else None
        if first is not None:
            record.request = first.request
            record.created_at = self._progress.started_at
            record.idempotency_key = first.idempotency_key
            record.request_hash = first.request_hash
        self._projection = asyncio.create_task(self._write_after(self._projection, record))
        return self._projection

    async def _write_after(
        self, previous: asyncio.Task[None] | None, record: RecordJobInput
    ) -> None:
        if previous is not None:
            await workflow.wait([previous])  # in order; its own failure is its own to report
        try:
            await workflow.execute_local_activity_method(
                StageActivities.record_job,
                record,
                start_to_close_timeout=policies.LOCAL_RECORD_TIMEOUT,
                schedule_to_close_timeout=policies.LOCAL_RECORD_BUDGET,
                retry_policy=policies.LOCAL_RECORD_RETRY,
            )
            return
        except ActivityError as err:
            if self._write_refused(err):
                return
            workflow.logger.warning(
                "recording revision %d locally failed (%s); retrying as an activity until the "
                "database is back",
                record.revision,
                root_cause(err),
            )
        try:
            await workflow.execute_activity_method(
                StageActivities.record_job,
                record,
                start_to_close_timeout=policies.RECORD_TIMEOUT,
                retry_policy=policies.RECORD_RETRY,
                summary=f"record {record.result.status.value} (database was unavailable)",
            )
        except ActivityError as err:
            if not self._write_refused(err):
                raise

    @staticmethod
    def _write_refused(err: ActivityError) -> bool:
        """Whether the database refused the write for good (logged; the job goes on)."""
        cause = root_cause(err)
        if isinstance(cause, ApplicationError) and cause.type == ErrorType.STORE_REJECTED.value:
            workflow.logger.error("the job database refused the job record: %s", cause.message)
            return True
        return False

    async def _finish(self, result: AgentResult) -> AgentResult:
        """Record the terminal ``result`` (the last projection) and return it."""
        self._enter(Stage.RECORD)
        result = result.model_copy(update={"timings": list(self._progress.timings)})
        await self._project(result=result)
        self._progress.status = result.status
        self._enter(Stage.DONE)
        return result.model_copy(update={"timings": list(self._progress.timings)})
