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
5. approval gate — when the approval policy says so (the request asks, a planned tool requires
   it, or the estimated cost is over the threshold): waits for the ``decide`` update (validated;
   refused unless the job is waiting), which decides the job and may decide single calls, up to
   the approval timeout; then the policy's timeout action (:mod:`workflows.approval_gate`);
6. tools — ``run_tools`` regular activities, at most ``TOOL_FANOUT_WIDTH`` at once, each call
   behind the Redis tool-result cache; failures are data;
7. compression (local) — context and tool results fitted to the token budget;
8. generation — the selected tier with a timeout fitted to it; on failure the escalation tier
   answers (cascade);
9. record (local, falling back to a regular activity during a database outage).

Stages 1-3 run in the first workflow task, beside the job's first projection (RUNNING). The
workflow is deterministic: no clock but ``workflow.now()``, no I/O, settings arrive in the input
or from activity results.

Versioning (README, "Changing workflow code"): a change to what the workflow commands is made
behind ``workflow.patched``; once no execution from before it can be open, the old branch goes
and the patch is deprecated (``workflow.deprecate_patch``), then removed a release later. The v1
shape (before ``agentflow-core-v2``) is retired this way: its code and histories are gone, and
``PATCH_CORE_V2`` is deprecated (CHANGELOG.md says which release to pass through).
"""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import datetime

from temporalio import workflow
from temporalio.api.common.v1 import Payload
from temporalio.contrib.workflow_streams import WorkflowStream
from temporalio.exceptions import ActivityError, ApplicationError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from activities.stages import StageActivities
    from core import search_attributes
    from core.events import (
        EVENTS_TOPIC,
        EventBase,
        FinalResponse,
        ResponseError,
        ResponseStarted,
        StageCompleted,
        StageStarted,
    )
    from core.ids import AGENT_WORKFLOW_TYPE, DECIDE_UPDATE, PROGRESS_QUERY
    from core.models import (
        AgentProgress,
        AgentResult,
        AgentWorkflowInput,
        ApprovalDecision,
        CompressContextInput,
        CompressionSummary,
        ContextItem,
        DecisionResult,
        JobStatus,
        PlannedToolCall,
        PrepareJobInput,
        SelectModelResult,
        Stage,
        StageTiming,
        Tier,
        ToolFailure,
    )
    from workflows import policies
    from workflows.approval_gate import ApprovalGate, approval_reasons
    from workflows.failures import root_cause
    from workflows.model_calls import ModelCalls
    from workflows.projection import JobProjection
    from workflows.tool_fanout import ToolFanout

PATCH_CORE_V2 = "agentflow-core-v2"
"""The v2 shape's patch id, deprecated (``workflow.deprecate_patch``): histories recorded since
v2 carry its marker and still replay; v1 histories (without it) no longer do. Remove the call in
the release after 0.2.0, when no execution started before 0.2.0 can be open."""

PATCH_KEEP_RECORDED_OUTCOME = "agentflow-keep-recorded-outcome"
"""``workflow.patched`` id of ignoring a cancel that arrives after the outcome was recorded
(checked only when such a cancel arrives, so other histories carry no marker)."""

STREAM_PUBLISH_SIGNAL = "__temporal_workflow_stream_publish"
"""The workflow stream's publish signal (registered by ``WorkflowStream``)."""

MAX_STORED_EVENTS_CHARS = 512 * 1024
"""Largest event stream stored with the terminal record, in characters (about bytes)."""


def _drop_late_publish(*_args: object) -> None:
    """Signal handler that ignores publishes after the job's outcome was decided."""


@workflow.defn(name=AGENT_WORKFLOW_TYPE)
class AgentWorkflow(JobProjection, ToolFanout, ModelCalls, ApprovalGate):
    """Runs one agent request; the workflow id is ``agent-<job_id>``."""

    def __init__(self) -> None:
        # The job's event stream (core.events): workflow state, so replay rebuilds it.
        self._stream = WorkflowStream()
        self._events = self._stream.topic(EVENTS_TOPIC)
        self._generation_revision = 0
        self._search_attributes_set: tuple[JobStatus, Tier | None, float] | None = None
        self._progress = AgentProgress(job_id="")
        self._decision: ApprovalDecision | None = None
        self._stage_started: datetime | None = None
        self._cache_key: str | None = None
        self._semantic_namespace: str | None = None
        self._gate_open = False
        self._revision = 0
        self._projection: asyncio.Task[None] | None = None
        self._draft_task: asyncio.Task[None] | None = None
        self._input: AgentWorkflowInput | None = None

    # ------------------------------------------------------------------ handlers

    @workflow.query(name=PROGRESS_QUERY)
    def get_progress(self) -> AgentProgress:
        """Current status and stage, draft, tool plan and results so far, tier, usage, timings."""
        return self._progress

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
        self._refuse_unless_waiting()
        self._refuse_bad_calls(decision)
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
        self._refuse_bad_calls(decision)

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
        workflow.deprecate_patch(PATCH_CORE_V2)
        self._input = inp
        self._progress.query = inp.request.query
        self._progress.started_at = workflow.info().start_time
        self._progress.owner = inp.owner
        self._emit(ResponseStarted(job_id=inp.job_id, query=inp.request.query[:200]))
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
        self._project()  # RUNNING, with the request; written beside the first stages
        prepared = await self._prepare(inp)
        if isinstance(prepared, AgentResult):
            return await self._finish(prepared)
        planned, selection = prepared
        if self._draft_helps(inp, selection):
            self._draft_task = asyncio.create_task(self._draft(inp, selection))

        self._upsert_search_attributes(JobStatus.RUNNING)
        reasons, gated = approval_reasons(inp, planned, selection)
        if reasons:
            outcome, planned = await self._await_decision(inp, planned, selection, reasons, gated)
            if outcome is not JobStatus.RUNNING:
                self._stop_draft()
                return await self._finish(self._result(outcome))

        self._enter(Stage.TOOLS)
        await self._run_tools(inp, planned)
        items, summary = await self._compress(inp)
        final, escalated_to = await self._generate_final(inp, selection, items)
        self._generation_revision = final.revision
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
            PrepareJobInput(
                request=inp.request, owner=inp.owner, approval_policy=inp.approval_policy
            ),
            start_to_close_timeout=policies.PLAN_TIMEOUT,
            retry_policy=policies.LOCAL_QUICK_RETRY,
        )
        # One local activity ran three stages: their timings come from the activity.
        for name, ms in prepared.duration_ms.items():
            stage = Stage(name)
            if stage is not Stage.RESPONSE_CACHE:
                self._emit(StageStarted(job_id=inp.job_id, stage=stage))
            self._progress.timings.append(StageTiming(stage=stage, duration_ms=ms))
            self._emit(StageCompleted(job_id=inp.job_id, stage=stage, duration_ms=ms))
        self._stage_started = None
        check = prepared.cache
        self._cache_key = check.key
        self._semantic_namespace = check.semantic_namespace
        self._progress.cache = check.report
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
        if selection.usage is not None:  # the LLM router's own call
            self._progress.usage.append(selection.usage)
        self._progress.tool_results = [
            ToolFailure(call_id="plan", name="plan", error_type="ToolCallInvalid", error=reason)
            for reason in plan.rejected
        ]
        self._progress.selection = selection
        return plan.planned, selection

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
        report = self._progress.cache
        if report is not None and compressed.cache_hit is not None:
            counts = report.hits if compressed.cache_hit else report.misses
            counts["component"] = counts.get("component", 0) + 1
        return compressed.items, compressed.summary

    # ------------------------------------------------------------------ state and projection

    def _enter(self, stage: Stage, *, publish: bool = True) -> None:
        """Close the current stage (timing and ``stage_completed``) and start ``stage``.

        ``publish=False`` records the timing without publishing ``stage_completed``.
        """
        now = workflow.now()
        job_id = self._progress.job_id
        if self._stage_started is not None:
            elapsed = round((now - self._stage_started).total_seconds() * 1000, 3)
            previous = self._progress.stage
            self._progress.timings.append(StageTiming(stage=previous, duration_ms=elapsed))
            if publish:
                self._emit(StageCompleted(job_id=job_id, stage=previous, duration_ms=elapsed))
        self._progress.stage = stage
        self._stage_started = now
        if stage is not Stage.DONE:
            self._emit(StageStarted(job_id=job_id, stage=stage))

    def _emit(self, event: EventBase) -> None:
        """Publish ``event`` on the job's stream, stamped with workflow time and the revision."""
        event.at = workflow.now()
        event.revision = self._generation_revision
        self._events.publish(event)

    def _upsert_search_attributes(self, status: JobStatus) -> None:
        """Upsert the ``Agent*`` search attributes when the job sets them and they changed."""
        if self._input is None or not self._input.search_attributes:
            return
        p = self._progress
        tier = next((u.tier for u in reversed(p.usage) if u.purpose == "final"), None) or (
            p.selection.tier if p.selection is not None else None
        )
        cost = float(round(sum(u.cost_usd for u in p.usage), 6))
        if self._search_attributes_set == (status, tier, cost):
            return
        self._search_attributes_set = (status, tier, cost)
        workflow.upsert_search_attributes(
            search_attributes.updates(status, tier=tier, cost_usd=cost)
        )

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
            approval_record=p.approval_record,
            cache=p.cache.model_copy(deep=True) if p.cache is not None else None,
        )

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
        self._enter(Stage.RECORD)
        result = result.model_copy(update={"timings": list(self._progress.timings)})
        self._upsert_search_attributes(result.status)
        outcome = self._outcome_event(result)
        # From here on nothing else joins the stream (a late token signal from a worker of an
        # older release, say), so the outcome's offset is the one stored with the record.
        workflow.set_signal_handler(STREAM_PUBLISH_SIGNAL, _drop_late_publish)
        write = self._project(result=result, events_json=self._stored_events(outcome))
        try:
            await asyncio.shield(write)
        except asyncio.CancelledError:
            workflow.logger.info("cancel requested after the job ended %s; kept", result.status)
            await write
        self._progress.status = result.status
        self._enter(Stage.DONE, publish=False)
        self._events.publish(outcome)
        # Hand the last events to subscribers waiting in a poll update (API processes from
        # before the event hub), and let no update be cut off by the workflow's end.
        self._stream.detach_pollers()
        try:
            await workflow.wait_condition(workflow.all_handlers_finished)
        except asyncio.CancelledError:
            # The outcome is recorded and published: a cancel now must not record a second,
            # contradicting one (histories from before this rule re-raise as they did).
            if not workflow.patched(PATCH_KEEP_RECORDED_OUTCOME):
                raise
            workflow.logger.info("cancel requested after the job ended %s; kept", result.status)
        return result.model_copy(update={"timings": list(self._progress.timings)})

    def _stored_events(self, outcome: EventBase) -> str | None:
        """The job's whole event stream as a JSON array, ``outcome`` last, offsets filled in.

        ``None`` past :data:`MAX_STORED_EVENTS_CHARS`.

        Read from the stream's own state, so events published by others (token signals of
        workers from before the token side channel) keep their offsets too.
        """
        state = self._stream.get_state()
        events: list[str] = []
        offset = state.base_offset
        for item in state.log:
            if item.topic == EVENTS_TOPIC:
                data = json.loads(Payload.FromString(base64.b64decode(item.data)).data)
                data["offset"] = offset
                events.append(json.dumps(data, separators=(",", ":")))
            offset += 1
        last = outcome.model_copy(update={"offset": offset})
        events.append(last.model_dump_json())
        stored = "[" + ",".join(events) + "]"
        if len(stored) > MAX_STORED_EVENTS_CHARS:
            # Kept out of the record's input (and its history, if the write falls back to a
            # regular activity); readers of the finished job then read the closed workflow.
            return None
        return stored

    def _outcome_event(self, result: AgentResult) -> FinalResponse | ResponseError:
        """The job's last event, stamped: ``final_response`` or ``response_error``."""
        event: FinalResponse | ResponseError
        if result.status is JobStatus.COMPLETED and result.answer is not None:
            final = next((u for u in reversed(result.usage) if u.purpose == "final"), None)
            event = FinalResponse(
                job_id=result.job_id,
                answer=result.answer,
                simulated=result.simulated,
                response_cache_hit=result.response_cache_hit,
                tier=final.tier if final is not None else None,
                escalated_to=result.escalated_to,
                usage=result.usage,
                total_cost_usd=round(result.total_cost_usd, 8),
            )
        else:
            event = ResponseError(
                job_id=result.job_id,
                status=result.status,
                error=result.error,
                error_type=result.error_type,
            )
        event.at = workflow.now()
        event.revision = self._generation_revision
        return event
