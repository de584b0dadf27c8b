"""The approval gate of ``AgentWorkflow``: who must decide, per-call decisions, timeout actions.

A job waits for a reviewer when its :class:`core.models.ApprovalPolicy` says so: the request
asked (``require_approval``), a planned call's tool requires approval (its metadata, or the
policy's ``tools``), or the estimated cost of the remaining model calls is above the policy's
threshold. The reviewer decides the job, and may decide single planned calls (approve, reject,
or edit their parameters) through the validated ``decide`` update. While the job waits, an
``approval_reminder`` event goes out every ``reminder_interval``; when the timeout passes the
policy's action applies: ``expire`` ends the job, ``proceed`` runs it without the calls that
needed approval (a job that waited for itself, because the request asked or its cost is over the
threshold, expires either way). Every outcome becomes an :class:`core.models.ApprovalRecord`.

The gate reads and changes the job's state (status, approval request, decision) and projects
each change; what it decides for the tools stage comes back as a :class:`GateOutcome`.

Determinism: without reminders the wait is the single timer jobs always had, so histories
recorded before the policy replay unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from core.errors import ErrorType
    from core.events import ApprovalDecided, ApprovalReminder, ApprovalRequested
    from core.models import (
        AgentWorkflowInput,
        ApprovalDecision,
        ApprovalRecord,
        ApprovalRequest,
        CallOutcome,
        DecisionResult,
        JobStatus,
        PlannedToolCall,
        SelectModelResult,
        ToolFailure,
    )
    from domain.approvals import approval_reasons as domain_approval_reasons
    from workflows.job_events import JobEvents
    from workflows.projection import JobProjection
    from workflows.state import JobState

REJECTED_CALL_ERROR = ErrorType.TOOL_CALL_REJECTED.value
"""``ToolFailure.error_type`` of a call a reviewer rejected (it did not run)."""

NOT_APPROVED_CALL_ERROR = ErrorType.TOOL_CALL_NOT_APPROVED.value
"""``ToolFailure.error_type`` of a call left undecided when the timeout action was ``proceed``."""


def approval_reasons(
    inp: AgentWorkflowInput, planned: list[PlannedToolCall], selection: SelectModelResult
) -> tuple[list[str], list[str]]:
    """Why the job must wait, and which calls need a decision.

    :func:`domain.approvals.approval_reasons` on the job's request and policy.

    Returns:
        ``(reasons, gated_call_ids)``: one line per reason (empty: the job does not wait) and
        the ids of the calls whose tool requires approval.
    """
    return domain_approval_reasons(
        inp.request.require_approval, inp.approval_policy, planned, selection
    )


@dataclass
class GateOutcome:
    """What the gate decided for the rest of the job.

    Attributes:
        status: RUNNING (the job goes on), REJECTED or EXPIRED (the job ends).
        calls: the calls to run (edited ones with their new parameters); empty unless RUNNING.
        failures: one :class:`core.models.ToolFailure` per call that will not run because a
            reviewer rejected it or it was not approved in time (the job went on without it).
    """

    status: JobStatus
    calls: list[PlannedToolCall] = field(default_factory=list)
    failures: list[ToolFailure] = field(default_factory=list)


class ApprovalGate:
    """The job's approval gate and the checks of its ``decide`` update.

    Args:
        state: the job's state (progress, ``decision``, ``gate_open``).
        events: where ``approval_requested``, ``approval_reminder`` and ``approval_decided``
            go.
        projection: writes the job's record and search attributes as its status changes.
    """

    def __init__(self, state: JobState, events: JobEvents, projection: JobProjection) -> None:
        self._state = state
        self._events = events
        self._projection = projection

    # ------------------------------------------------------------------ the update

    def check(self, decision: ApprovalDecision) -> None:
        """Refuse ``decision`` unless the job waits for it and its per-call decisions fit.

        Raises:
            ApplicationError: ``JobNotAwaitingApproval`` (non-retryable) when the job is not
                waiting for a decision (its ``details`` hold the current status);
                ``DecisionInvalid`` (non-retryable) when the per-call decisions do not fit.
        """
        self._refuse_unless_waiting()
        self._refuse_bad_calls(decision)

    def accept(self, decision: ApprovalDecision) -> DecisionResult:
        """Take ``decision`` (checked again: two decisions may pass validation together).

        Returns:
            The decision and the job's new status: RUNNING after an approval, REJECTED after a
            rejection.

        Raises:
            ApplicationError: as :meth:`check`.
        """
        self.check(decision)
        state = self._state
        state.decision = decision
        state.gate_open = False
        state.progress.approval = decision
        return DecisionResult(
            job_id=state.progress.job_id,
            approved=decision.approved,
            reviewer=decision.reviewer,
            status=JobStatus.RUNNING if decision.approved else JobStatus.REJECTED,
        )

    def _refuse_unless_waiting(self) -> None:
        state = self._state
        if state.gate_open and state.decision is None:
            return
        progress = state.progress
        status = progress.status
        if state.decision is not None:
            why = f"job {progress.job_id} was already decided by {state.decision.reviewer}"
        else:
            why = f"job {progress.job_id} is not awaiting approval (status {status.value})"
        raise ApplicationError(
            why,
            status.value,
            type=ErrorType.JOB_NOT_AWAITING_APPROVAL.value,
            non_retryable=True,
        )

    def _refuse_bad_calls(self, decision: ApprovalDecision) -> None:
        """Refuse per-call decisions that do not fit the waiting job.

        Raises:
            ApplicationError: ``DecisionInvalid`` (non-retryable): per-call decisions on a
                rejected job, a call id that is not planned or is listed twice, ``edit``
                without parameters or parameters with another action.
        """
        if not decision.calls:
            return
        request = self._state.progress.approval_request
        planned = {p.call.id for p in request.calls} if request is not None else set()
        problem: str | None = None
        seen: set[str] = set()
        if not decision.approved:
            problem = "a rejected job takes no per-call decisions (calls must be empty)"
        for index, call in enumerate(decision.calls):
            if problem is not None:
                break
            where = f"calls[{index}]"
            if call.call_id not in planned:
                problem = f"{where}: call {call.call_id!r} is not a planned call of this job"
            elif call.call_id in seen:
                problem = f"{where}: call {call.call_id!r} is decided twice"
            elif call.action == "edit" and call.parameters is None:
                problem = f"{where}: 'edit' needs the call's new parameters"
            elif call.action != "edit" and call.parameters is not None:
                problem = f"{where}: parameters are only taken with 'edit'"
            seen.add(call.call_id)
        if problem is not None:
            raise ApplicationError(
                problem, type=ErrorType.DECISION_INVALID.value, non_retryable=True
            )

    # ------------------------------------------------------------------ the gate

    async def wait_for_decision(
        self,
        inp: AgentWorkflowInput,
        planned: list[PlannedToolCall],
        selection: SelectModelResult,
        reasons: list[str],
        gated: list[str],
    ) -> GateOutcome:
        """Wait at the gate for a decision, up to the approval timeout.

        The caller has entered the ``AWAITING_APPROVAL`` stage. The job's status is
        AWAITING_APPROVAL (projected, ``approval_requested`` published) until the ``decide``
        update or the timeout; each outcome is recorded as an
        :class:`core.models.ApprovalRecord` (``approval_decided``).

        Args:
            inp: the workflow's input (approval policy and timeout).
            planned: the calls planned to run.
            selection: the selected tier and its estimated cost (shown to the reviewer).
            reasons: why the job waits, from :func:`approval_reasons`.
            gated: the ids of the calls that need a decision.

        Returns:
            RUNNING with the calls to run after an approval (rejected calls left out as
            failures, edited calls with their new parameters) or a ``proceed`` timeout (the
            gated calls left out as failures); REJECTED or EXPIRED with no calls otherwise.
        """
        state = self._state
        progress = state.progress
        policy = inp.approval_policy
        progress.status = JobStatus.AWAITING_APPROVAL
        now = workflow.now()
        request = ApprovalRequest(
            reasons=reasons,
            calls=planned,
            gated_call_ids=gated,
            tier=selection.tier,
            estimated_cost_usd=selection.estimated_cost_usd,
            draft=progress.draft,
            requested_at=now,
            expires_at=now + inp.approval_timeout,
            timeout_action=policy.timeout_action,
        )
        progress.approval_request = request
        state.gate_open = True
        self._projection.upsert_search_attributes(JobStatus.AWAITING_APPROVAL)
        self._projection.write()
        self._events.emit(ApprovalRequested(job_id=inp.job_id, request=request))
        try:
            decided = await self._wait(inp.approval_timeout, policy.reminder_interval, request)
        finally:
            state.gate_open = False  # also when the job is cancelled while it waits
        if not decided:
            return self._timed_out(inp, planned, request)
        progress.status = JobStatus.RUNNING
        decision = state.decision
        assert decision is not None
        if not decision.approved:
            self._decided(
                ApprovalRecord(
                    outcome="rejected",
                    reviewer=decision.reviewer,
                    decided_at=workflow.now(),
                    comment=decision.comment,
                    reasons=reasons,
                    calls=[_outcome(p, "rejected") for p in planned if p.call.id in gated],
                )
            )
            return GateOutcome(JobStatus.REJECTED)
        outcome, record = _apply(decision, planned, gated, reasons)
        progress.tool_results.extend(outcome.failures)
        self._decided(record)
        self._projection.upsert_search_attributes(JobStatus.RUNNING)
        self._projection.write()
        return outcome

    async def _wait(
        self, wait_for: timedelta, reminder: timedelta | None, request: ApprovalRequest
    ) -> bool:
        """Wait for ``decide`` up to ``wait_for``, reminding every ``reminder``; True if decided."""
        state = self._state
        if reminder is None:
            try:
                await workflow.wait_condition(lambda: state.decision is not None, timeout=wait_for)
            except TimeoutError:
                return state.decision is not None  # a decision accepted as the timer fired
            return True
        while True:
            remaining = request.expires_at - workflow.now()
            if remaining <= timedelta(0):
                return state.decision is not None
            try:
                await workflow.wait_condition(
                    lambda: state.decision is not None, timeout=min(reminder, remaining)
                )
            except TimeoutError:
                if state.decision is not None:
                    return True
                if workflow.now() < request.expires_at:
                    waited = (workflow.now() - request.requested_at).total_seconds()
                    self._events.emit(
                        ApprovalReminder(
                            job_id=state.progress.job_id,
                            waiting_s=waited,
                            expires_at=request.expires_at,
                        )
                    )
                continue
            return True

    def _timed_out(
        self, inp: AgentWorkflowInput, planned: list[PlannedToolCall], request: ApprovalRequest
    ) -> GateOutcome:
        gated = set(request.gated_call_ids)
        # ``proceed`` goes on without the calls that needed approval; a job that waited for
        # itself (the request asked, or its cost is over the threshold) has nothing to leave
        # out, so it expires whatever the action.
        job_gated = len(request.reasons) > len(gated)
        proceed = inp.approval_policy.timeout_action == "proceed" and not job_gated
        record = ApprovalRecord(
            outcome="proceeded" if proceed else "expired",
            decided_at=workflow.now(),
            reasons=request.reasons,
            calls=[_outcome(p, "not_approved") for p in planned if p.call.id in gated],
        )
        self._decided(record)
        if not proceed:
            return GateOutcome(JobStatus.EXPIRED)
        waited = inp.approval_timeout.total_seconds()
        failures = [
            ToolFailure(
                call_id=p.call.id,
                name=p.call.name,
                error_type=NOT_APPROVED_CALL_ERROR,
                error=f"not approved within the approval timeout ({waited:g} s); "
                "the job went on without it",
            )
            for p in planned
            if p.call.id in gated
        ]
        progress = self._state.progress
        progress.tool_results.extend(failures)
        progress.status = JobStatus.RUNNING
        self._projection.upsert_search_attributes(JobStatus.RUNNING)
        self._projection.write()
        calls = [p for p in planned if p.call.id not in gated]
        return GateOutcome(JobStatus.RUNNING, calls, failures)

    def _decided(self, record: ApprovalRecord) -> None:
        progress = self._state.progress
        progress.approval_record = record
        self._events.emit(ApprovalDecided(job_id=progress.job_id, record=record))


def _apply(
    decision: ApprovalDecision,
    planned: list[PlannedToolCall],
    gated: list[str],
    reasons: list[str],
) -> tuple[GateOutcome, ApprovalRecord]:
    """What an approval lets run (and what not, as failures), and its record."""
    by_id = {c.call_id: c for c in decision.calls}
    to_run: list[PlannedToolCall] = []
    failures: list[ToolFailure] = []
    outcomes: list[CallOutcome] = []
    for p in planned:
        choice = by_id.get(p.call.id)
        if choice is None:
            if p.call.id in gated:
                outcomes.append(_outcome(p, "approved"))
            to_run.append(p)
        elif choice.action == "reject":
            outcomes.append(_outcome(p, "rejected"))
            note = f": {decision.comment}" if decision.comment else ""
            failures.append(
                ToolFailure(
                    call_id=p.call.id,
                    name=p.call.name,
                    error_type=REJECTED_CALL_ERROR,
                    error=f"rejected by {decision.reviewer}{note}"[:500],
                )
            )
        elif choice.action == "edit" and choice.parameters is not None:
            edited = p.model_copy(
                update={"call": p.call.model_copy(update={"parameters": choice.parameters})}
            )
            outcomes.append(
                CallOutcome(
                    call_id=p.call.id,
                    name=p.call.name,
                    outcome="edited",
                    parameters=choice.parameters,
                    original_parameters=p.call.parameters,
                )
            )
            to_run.append(edited)
        else:
            outcomes.append(_outcome(p, "approved"))
            to_run.append(p)
    record = ApprovalRecord(
        outcome="approved",
        reviewer=decision.reviewer,
        decided_at=workflow.now(),
        comment=decision.comment,
        reasons=reasons,
        calls=outcomes,
    )
    return GateOutcome(JobStatus.RUNNING, to_run, failures), record


def _outcome(p: PlannedToolCall, outcome: str) -> CallOutcome:
    return CallOutcome.model_validate(
        {
            "call_id": p.call.id,
            "name": p.call.name,
            "outcome": outcome,
            "parameters": p.call.parameters,
        }
    )
