"""``AgentWorkflow``: one durable agent request, from cache check to recorded answer.

The workflow owns the job's state, one :class:`workflows.state.JobState`: the ``get_progress``
query answers from it at any time, the ``decide`` update changes it, and each status change is
projected into the job database through ``record_job`` (ordered by a revision counter, so a late
write never moves a job backwards). ``run`` reads top to bottom: each stage is a collaborator
that takes what it needs and returns what it produces (no mixins): the event stream and stage
clock (:mod:`workflows.job_events`), the projection (:mod:`workflows.projection`), the approval
gate (:mod:`workflows.approval_gate`), the tool fan-out (:mod:`workflows.tool_fanout`) and the
model calls (:mod:`workflows.model_calls`).

Stages (timeouts and retry policies in :mod:`workflows.policies`):

1-3. ``prepare_job`` (one local activity): the response cache (a hit completes the job at once),
   the tool plan (explicit calls plus the planner's, validated against the registry) and model
   selection (which sees the planned tools; a tier and an escalation tier);
4. draft — a quick small-tier answer, only when the final tier is above small; it runs beside
   the next stages and is cancelled when the job ends early or the final answer is ready first;
5. approval gate — when the approval policy says so (the request asks, a planned tool requires
   it, or the estimated cost is over the threshold): waits for the ``decide`` update (validated;
   refused unless the job is waiting), which decides the job and may decide single calls, up to
   the approval timeout; then the policy's timeout action (:mod:`workflows.approval_gate`);
6. tools — ``run_tools`` activities, at most ``TOOL_FANOUT_WIDTH`` at once (local ones for
   batches of quick in-memory tools, or none when ``prepare_job`` ran them), each call behind
   the Redis tool-result cache; failures are data;
7. compression — context and tool results fitted to the token budget: from shape 2 on inside
   the generation activity (no stage events of its own), before that a local activity;
8. generation — the selected tier with a timeout fitted to it; on failure the escalation tier
   answers (cascade);
9. record (local, falling back to a regular activity during a database outage).

Stages 1-3 run in the first workflow task; ``prepare_job`` also writes the job's first
projection (RUNNING) from shape 1 on, and from shape 2 on runs stage 6 too when every planned
call is a quick in-memory tool and the job will not wait for approval. The
workflow is deterministic: no clock but ``workflow.now()``, no I/O, settings arrive in the input
or from activity results.

Versioning (README, "Changing workflow code"): a change to what every job commands is keyed by
the input's ``shape`` (set by the starter: no marker, no search-attribute upsert per job); a
change on a rare path is made behind ``workflow.patched``. Once no execution from before a
change can be open, its old branch goes. The v1 shape is retired (0.2.0) and its deprecated
``agentflow-core-v2`` patch call removed (0.3.0).
"""

from __future__ import annotations

import asyncio

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, is_cancelled_exception

# Contracts, activity references and the workflow's collaborators come from the host: none of
# them keeps module-level state, and a per-run re-import of each would cost every job.
with workflow.unsafe.imports_passed_through():
    from activities.stages import StageActivities
    from core.errors import ErrorType
    from core.events import InitialResponse, ResponseStarted
    from core.ids import AGENT_WORKFLOW_TYPE, DECIDE_UPDATE, PROGRESS_QUERY
    from core.models import (
        AgentProgress,
        AgentResult,
        AgentWorkflowInput,
        ApprovalDecision,
        CacheReport,
        CompressContextInput,
        CompressContextResult,
        CompressionSummary,
        DecisionResult,
        JobStatus,
        PlannedToolCall,
        PrepareJobInput,
        PrepareJobResult,
        RecordJobInput,
        SelectModelResult,
        Stage,
        ToolFailure,
        ToolResult,
    )
    from workflows import policies
    from workflows.approval_gate import ApprovalGate, approval_reasons
    from workflows.failures import root_cause
    from workflows.job_events import JobEvents, StageClock, outcome_event
    from workflows.model_calls import draft_helps, generate_draft, generate_final
    from workflows.projection import JobProjection
    from workflows.state import JobState
    from workflows.tool_fanout import ToolFanout

SHAPE_RECORD_IN_PREPARE = 1
"""From this ``AgentWorkflowInput.shape`` on, ``prepare_job`` writes the job's first record
instead of a local activity of its own beside it (one local activity fewer per job); inputs of
shape 0 replay the separate write."""

SHAPE_COMPRESS_IN_GENERATION = 2
"""From this shape on, the final answer's ``generate_answer`` activity compresses the context
and tool results itself (one local activity, one workflow activation and about 3 ms of worker
CPU fewer per job); the stream then has no ``compression`` stage events, and the compression's
timing comes from the activity. Inputs of shapes 0 and 1 replay the ``compress_context`` local
activity."""

SHAPE_TOOLS_IN_PREPARE = 2
"""From this shape on, ``prepare_job`` also runs the plan's tools when they are all quick
in-memory tools and the job will not wait for approval (``PrepareJobInput.run_local_tools``):
one local activity and one activation fewer for such jobs. The workflow still publishes the
tools stage and its events (after the fact) and retries transient failures alone."""

PATCH_KEEP_RECORDED_OUTCOME = "agentflow-keep-recorded-outcome"
"""``workflow.patched`` id of ignoring a cancel that arrives after the outcome was recorded
(checked only when such a cancel arrives, so other histories carry no marker)."""


@workflow.defn(name=AGENT_WORKFLOW_TYPE)
class AgentWorkflow:
    """Runs one agent request; the workflow id is ``agent-<job_id>``."""

    def __init__(self) -> None:
        # All the job's state, in one place; the collaborators below read and change it.
        self._state = JobState()
        # The job's event stream (core.events): workflow state, so replay rebuilds it.
        self._events = JobEvents(self._state)
        self._clock = StageClock(self._state, self._events)
        self._projection = JobProjection(self._state)
        self._gate = ApprovalGate(self._state, self._events, self._projection)
        self._tools = ToolFanout(self._state, self._events)

    # ------------------------------------------------------------------ handlers

    @workflow.query(name=PROGRESS_QUERY)
    def get_progress(self) -> AgentProgress:
        """Current status and stage, draft, tool plan and results so far, tier, usage, timings."""
        return self._state.progress

    @workflow.update(name=DECIDE_UPDATE)
    async def decide(self, decision: ApprovalDecision) -> DecisionResult:
        """Decide the job, and optionally single planned calls, while it waits at the gate.

        See :class:`core.models.ApprovalDecision` for what ``approved`` and ``calls`` mean and
        :mod:`workflows.approval_gate` for what the job does with them.

        Returns:
            The decision and the job's new status: RUNNING after an approval, REJECTED after a
            rejection.

        Raises:
            ApplicationError: ``JobNotAwaitingApproval`` (non-retryable) when the job is not
                waiting for a decision (not yet at the gate, already decided, or ended); its
                ``details`` hold the current status. ``DecisionInvalid`` (non-retryable) when
                the per-call decisions do not fit the job. The validator refuses such calls
                before they reach history; this check covers two decisions that pass
                validation together.
        """
        return self._gate.accept(decision)

    @decide.validator
    def _validate_decide(self, decision: ApprovalDecision) -> None:
        self._gate.check(decision)

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
        state = self._state
        state.progress = AgentProgress(job_id=inp.job_id)
        state.inp = inp
        state.progress.query = inp.request.query
        state.progress.started_at = workflow.info().start_time
        state.progress.owner = inp.owner
        self._events.emit(ResponseStarted(job_id=inp.job_id, query=inp.request.query[:200]))
        try:
            return await self._pipeline(inp)
        except (ActivityError, ApplicationError) as err:
            self._stop_draft()
            if is_cancelled_exception(err):
                await self._finish(state.result(JobStatus.CANCELED))
                raise
            root = root_cause(err)
            error_type = root.type if isinstance(root, ApplicationError) and root.type else None
            message = getattr(root, "message", None) or str(root)
            await self._finish(
                state.result(
                    JobStatus.FAILED, error=message, error_type=error_type or ErrorType.FAILED.value
                )
            )
            raise ApplicationError(
                message, type=error_type or ErrorType.AGENT_JOB_FAILED.value, non_retryable=True
            ) from err
        except asyncio.CancelledError:
            self._stop_draft()
            await self._finish(state.result(JobStatus.CANCELED))
            raise

    async def _pipeline(self, inp: AgentWorkflowInput) -> AgentResult:
        """The stages in order, each taking what the ones before it gave."""
        state, progress = self._state, self._state.progress
        # 1-3: response cache, tool plan, model selection (one local activity), which also
        # writes the job's first projection (RUNNING, with the request).
        first_record = None
        if inp.shape >= SHAPE_RECORD_IN_PREPARE:
            first_record = self._projection.next_record()
        else:
            self._projection.write()
        self._clock.enter(Stage.RESPONSE_CACHE)
        try:
            prepared = await prepare_job(inp, first_record)
        except BaseException:
            # Failed or cancelled: the first record (the only one with the request) is written
            # through the usual path before the terminal one.
            if first_record is not None:
                self._projection.schedule(first_record)
            raise
        if first_record is not None and not prepared.recorded:
            self._projection.schedule(first_record)  # the database did not take it: retried
        front = dict(prepared.duration_ms)
        tools_ms = front.pop(Stage.TOOLS.value, 0.0)  # published with the tools stage below
        self._clock.ran_elsewhere(front)
        cached = self._take_cache_check(prepared)
        if cached is not None:
            return await self._finish(cached)
        planned, selection, rejected = self._take_plan(prepared)

        # 4: the draft, beside the next stages.
        if draft_helps(inp, selection):
            state.draft_task = asyncio.create_task(self._draft(inp, selection))
        self._projection.upsert_search_attributes(JobStatus.RUNNING)

        # 5: the approval gate, when the policy says so; it may leave calls out.
        reasons, gated = approval_reasons(inp, planned, selection)
        held_back: list[ToolFailure] = []
        ran_in_prepare = prepared.tool_results
        if reasons and ran_in_prepare is not None:
            # prepare_job decides with the same rule, so this cannot happen; if it did, the
            # results are dropped and the calls wait for their decision like any other.
            workflow.logger.error("prepare_job ran the tools of a job that waits; ignored")
            ran_in_prepare = None
        if reasons:
            self._clock.enter(Stage.AWAITING_APPROVAL)
            gate = await self._gate.wait_for_decision(inp, planned, selection, reasons, gated)
            if gate.status is not JobStatus.RUNNING:
                self._stop_draft()
                return await self._finish(state.result(gate.status))
            planned, held_back = gate.calls, gate.failures

        # 6: tools (already run by prepare_job when it could); every call that did not run is
        # a failure among the results.
        if ran_in_prepare is not None:
            self._clock.enter(Stage.TOOLS, already_ms=tools_ms)
            ran = await self._tools.run(inp, planned, ran=ran_in_prepare, ran_ms=tools_ms)
        else:
            self._clock.enter(Stage.TOOLS)
            ran = await self._tools.run(inp, planned)
        tool_results: list[ToolResult] = [*rejected, *held_back, *ran]
        progress.tool_results = tool_results

        # 7-8: compression of the context and the tool results, and the final answer (with the
        # cascade): in one activity from shape 2 on.
        compression: CompressionSummary | None
        if inp.shape >= SHAPE_COMPRESS_IN_GENERATION:
            self._clock.enter(Stage.GENERATION)
            final, escalated_to = await generate_final(
                inp, selection, compress=compression_input(inp, tool_results)
            )
            compression = final.compression
            _count_component_lookup(progress.cache, final.compression_cache_hit)
            if final.compression_ms is not None:  # timed by the activity, part of generation's
                self._clock.carve_out(Stage.COMPRESSION, final.compression_ms)
        else:
            self._clock.enter(Stage.COMPRESSION)
            compressed = await compress_context(inp, tool_results)
            _count_component_lookup(progress.cache, compressed.cache_hit)
            compression = compressed.summary
            self._clock.enter(Stage.GENERATION)
            final, escalated_to = await generate_final(inp, selection, compressed.items)
        state.generation_revision = final.revision
        progress.usage.append(final.usage)
        self._stop_draft()

        # 9: the record.
        result = state.result(JobStatus.COMPLETED).model_copy(
            update={
                "answer": final.text,
                "simulated": final.usage.simulated,
                "escalated_to": escalated_to,
                "compression": compression,
            }
        )
        return await self._finish(result)

    # ------------------------------------------------------------------ stages

    def _take_cache_check(self, prepared: PrepareJobResult) -> AgentResult | None:
        """Keep the response cache's key and report; the completed result on a hit."""
        check = prepared.cache
        state = self._state
        state.cache_key = check.key
        state.semantic_namespace = check.semantic_namespace
        state.progress.cache = check.report
        if check.hit is None:
            return None
        return state.result(JobStatus.COMPLETED).model_copy(
            update={
                "answer": check.hit.answer,
                "simulated": check.hit.simulated,
                "response_cache_hit": True,
            }
        )

    def _take_plan(
        self, prepared: PrepareJobResult
    ) -> tuple[list[PlannedToolCall], SelectModelResult, list[ToolFailure]]:
        """Show the plan and the selection in the progress (the job is at model selection).

        Returns:
            The validated calls to run, the selection, and one failure per proposal that did not
            validate.

        Raises:
            ApplicationError: non-retryable, when ``prepare_job`` returned no plan on a miss.
        """
        plan, selection = prepared.plan, prepared.selection
        if plan is None or selection is None:
            raise ApplicationError(
                "prepare_job returned no plan on a cache miss", non_retryable=True
            )
        progress = self._state.progress
        progress.stage = Stage.MODEL_SELECTION
        progress.tool_plan = plan.planned
        if plan.usage is not None:
            progress.usage.append(plan.usage)
        if selection.usage is not None:  # the LLM router's own call
            progress.usage.append(selection.usage)
        rejected = [
            ToolFailure(
                call_id="plan",
                name="plan",
                error_type=ErrorType.TOOL_CALL_INVALID.value,
                error=reason,
            )
            for reason in plan.rejected
        ]
        progress.tool_results = list(rejected)
        progress.selection = selection
        return plan.planned, selection, rejected

    async def _draft(self, inp: AgentWorkflowInput, selection: SelectModelResult) -> None:
        """The draft, beside the stages: shown in the progress and to a reviewer who looks now.

        Publishes ``initial_response``; a failed draft is left out.
        """
        draft = await generate_draft(inp, selection)
        if draft is None:
            return
        progress = self._state.progress
        progress.draft = draft.text
        progress.usage.append(draft.usage)
        request = progress.approval_request
        if request is not None and request.draft is None:
            request.draft = draft.text  # a reviewer who looks now sees it
        self._events.emit(
            InitialResponse(
                job_id=inp.job_id,
                text=draft.text,
                tier=draft.usage.tier,
                simulated=draft.usage.simulated,
            )
        )

    def _stop_draft(self) -> None:
        """Cancel the draft if it is still running: nobody will read it now."""
        task = self._state.draft_task
        if task is not None and not task.done():
            task.cancel()

    async def _finish(self, result: AgentResult) -> AgentResult:
        """Record the terminal ``result`` (the last projection) and return it.

        The terminal event (``final_response`` or ``response_error``) is built first and
        stored with the record together with every event before it (``events_json``), so a
        reader of a finished job reads its stream from the database and never wakes a worker;
        it is published after the write, and the record stage's ``stage_completed`` is not
        published (it would come after the terminal event, where no reader looks).

        Once the outcome is decided a cancel request no longer changes it: while the final
        record waits (for example on a regular activity during a database outage) a cancel
        would otherwise end the job CANCELED after its COMPLETED (or REJECTED) record was
        decided, and write a second, contradicting record.
        """
        progress = self._state.progress
        self._clock.enter(Stage.RECORD)
        result = result.model_copy(update={"timings": list(progress.timings)})
        self._projection.upsert_search_attributes(result.status)
        outcome = self._events.stamp(outcome_event(result))
        # From here on nothing else joins the stream (a late token signal from a worker of an
        # older release, say), so the outcome's offset is the one stored with the record.
        self._events.close()
        write = self._projection.write(result=result, events_json=self._events.stored(outcome))
        try:
            await asyncio.shield(write)
        except asyncio.CancelledError:
            workflow.logger.info("cancel requested after the job ended %s; kept", result.status)
            await write
        progress.status = result.status
        self._clock.enter(Stage.DONE, publish=False)
        self._events.publish(outcome)
        # Hand the last events to subscribers waiting in a poll update, and let no update be
        # cut off by the workflow's end.
        self._events.detach_pollers()
        try:
            await workflow.wait_condition(workflow.all_handlers_finished)
        except asyncio.CancelledError:
            # The outcome is recorded and published: a cancel now must not record a second,
            # contradicting one (histories from before this rule re-raise as they did).
            if not workflow.patched(PATCH_KEEP_RECORDED_OUTCOME):
                raise
            workflow.logger.info("cancel requested after the job ended %s; kept", result.status)
        return result.model_copy(update={"timings": list(progress.timings)})


async def prepare_job(inp: AgentWorkflowInput, record: RecordJobInput | None) -> PrepareJobResult:
    """Cache lookup, tool plan and model selection: the ``prepare_job`` local activity.

    It also writes ``record`` (the job's first projection) when given, and from shape 2 on runs
    the plan's tools when they are all quick in-memory tools and the job will not wait.

    Returns:
        The cache check (with the hit, if any), and on a miss the plan and the selection, with
        each part's duration; whether ``record`` was written.
    """
    return await workflow.execute_local_activity_method(
        StageActivities.prepare_job,
        PrepareJobInput(
            request=inp.request,
            owner=inp.owner,
            approval_policy=inp.approval_policy,
            record=record,
            run_local_tools=inp.shape >= SHAPE_TOOLS_IN_PREPARE,
        ),
        start_to_close_timeout=policies.PLAN_TIMEOUT,
        retry_policy=policies.LOCAL_QUICK_RETRY,
    )


def compression_input(
    inp: AgentWorkflowInput, tool_results: list[ToolResult]
) -> CompressContextInput:
    """The compression stage's input: the request's context and ``tool_results``, its budget."""
    req = inp.request
    return CompressContextInput(
        query=req.query,
        items=req.context,
        tool_results=tool_results,
        max_tokens=req.max_context_tokens,
        allow_blob_refs=False,
    )


async def compress_context(
    inp: AgentWorkflowInput, tool_results: list[ToolResult]
) -> CompressContextResult:
    """The request's context and ``tool_results`` fitted to its token budget (shapes 0 and 1).

    A local activity of its own; from shape 2 on ``generate_answer`` compresses.

    Raises:
        ActivityError: ``ContextBudgetExceeded`` (non-retryable) when even the compressed
            context does not fit.
    """
    return await workflow.execute_local_activity_method(
        StageActivities.compress_context,
        compression_input(inp, tool_results),
        start_to_close_timeout=policies.LOCAL_COMPRESSION_TIMEOUT,
        retry_policy=policies.LOCAL_COMPRESSION_RETRY,
    )


def _count_component_lookup(report: CacheReport | None, hit: bool | None) -> None:
    """Count compression's component-cache lookup (``None``: it made none) in the report."""
    if report is not None and hit is not None:
        counts = report.hits if hit else report.misses
        counts["component"] = counts.get("component", 0) + 1
