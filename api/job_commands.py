"""Commands to a job's workflow: the approval decision (the ``decide`` update) and cancel.

While no worker can take a decision (workers restarting) the decision is sent again until
``AGENTFLOW_DECISION_WAIT_S`` has passed, then it is a 503; it still applies when a worker picks
it up. That retry is a declared ``tenacity`` policy (:func:`_decision_retrying`), which replaced
a hand-written deadline loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging

from temporalio.client import (
    Client,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_before_delay,
    wait_fixed,
)

from api.errors import (
    JobStateConflictError,
    TemporalUnavailableError,
    UnprocessableRequestError,
    tool_call_issue,
)
from api.job_views import read_job
from api.schemas import ApprovalCreate, JobPublic
from api.state import AppState
from core.errors import ErrorType, ToolCallInvalidError
from core.ids import DECIDE_UPDATE, workflow_id_for
from core.models import AgentResult, ApprovalDecision, DecisionResult, JobStatus

log = logging.getLogger(__name__)

DECISION_RETRY_S = 0.2
"""Wait between two sends of a decision no worker took yet, in seconds."""


def check_call_decisions(state: AppState, job: JobPublic, body: ApprovalCreate) -> None:
    """Refuse per-call decisions that cannot apply, naming ``calls[i]`` (422).

    The workflow's validator checks the same against the job as it is when the decision lands;
    here an edit's parameters are also checked against the tool's schema (the registry lives
    outside the workflow), so a bad edit never reaches the job.

    Raises:
        UnprocessableRequestError: a decision that cannot apply (422).
        TemporalUnavailableError: the job's planned calls cannot be read now (503).
    """
    if not body.calls:
        return
    if not body.approved:
        raise UnprocessableRequestError("calls: a rejected job takes no per-call decisions")
    if job.status.is_terminal:
        return  # the workflow answers 409 with the job's status
    request = job.progress.approval_request if job.progress is not None else None
    if request is None:
        if job.progress is not None and job.status is JobStatus.RUNNING:
            return  # not at the gate yet: the workflow answers 409
        # No live progress (no worker answers, or one that predates per-call decisions):
        # per-call decisions are not sent blind.
        raise TemporalUnavailableError(
            "the job's planned calls cannot be read now, so per-call decisions cannot be "
            "checked; try again",
            headers={"Retry-After": "5"},
        )
    planned = {p.call.id: p.call for p in request.calls}
    seen: set[str] = set()
    for index, choice in enumerate(body.calls):
        where = f"calls[{index}]"
        call = planned.get(choice.call_id)
        if call is None:
            raise UnprocessableRequestError(
                f"{where}.call_id: not a planned call of job {job.job_id} (its "
                "progress.approval_request.calls lists them)"
            )
        if choice.call_id in seen:
            raise UnprocessableRequestError(f"{where}.call_id: the same call is decided twice")
        seen.add(choice.call_id)
        if (choice.action == "edit") != (choice.parameters is not None):
            raise UnprocessableRequestError(
                f"{where}.parameters: required with 'edit' and refused with other actions"
            )
        if choice.parameters is not None:
            try:
                state.tools.validate(call.model_copy(update={"parameters": choice.parameters}))
            except ToolCallInvalidError as exc:
                issue = tool_call_issue(exc)["msg"]
                raise UnprocessableRequestError(f"{where}.parameters: {issue}") from None


def _not_taken_yet(exc: BaseException) -> bool:
    """Whether sending the same decision again may get its answer.

    The server stops waiting for a worker to accept the update after a while; the same update
    id attaches to the update it already admitted, so asking again is safe. The SDK reports
    that (and our own deadline) as ``WorkflowUpdateRPCTimeoutOrCancelledError``. A
    ``FAILED_PRECONDITION`` means the workflow task that took the update failed (for example a
    cancel arrived in the same task); the workflow runs it again and the same update id then
    gets the real answer: applied, or refused because the job ended.
    """
    if isinstance(exc, WorkflowUpdateRPCTimeoutOrCancelledError):
        return True
    return isinstance(exc, RPCError) and exc.status == RPCStatusCode.FAILED_PRECONDITION


def _out_of_time(state: RetryCallState) -> DecisionResult:
    """Called when the wait ran out with the decision still not taken."""
    raise TimeoutError from (state.outcome.exception() if state.outcome is not None else None)


def _decision_retrying(wait_s: float) -> AsyncRetrying:
    """The decision's retry policy: ``wait_s`` seconds of sends, then :class:`TimeoutError`.

    Sends again while :func:`_not_taken_yet`, every :data:`DECISION_RETRY_S`, as long as the
    next send starts within ``wait_s`` seconds of the first; any other error is raised at once.
    """
    return AsyncRetrying(
        retry=retry_if_exception(_not_taken_yet),
        wait=wait_fixed(DECISION_RETRY_S),
        stop=stop_before_delay(wait_s),
        retry_error_callback=_out_of_time,
    )


async def decide(
    state: AppState, temporal: Client, job_id: str, decision: ApprovalDecision
) -> DecisionResult:
    """Send ``decision`` to the job's ``decide`` update and return the workflow's answer.

    The update id is derived from the decision, so sending the same body again returns the
    same outcome.

    Raises:
        JobStateConflictError: the job is not waiting for a decision, or ended (409).
        UnprocessableRequestError: the workflow found the decision invalid (422).
        TemporalUnavailableError: no worker took it within ``AGENTFLOW_DECISION_WAIT_S``, or
            Temporal refused the request (503).
        JobNotFoundError: the job does not exist (404).
    """
    handle = temporal.get_workflow_handle(workflow_id_for(job_id), result_type=AgentResult)
    update_id = "decide-" + hashlib.sha256(decision.model_dump_json().encode()).hexdigest()[:32]
    wait_s = state.settings.decision_wait_s
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s

    async def send() -> DecisionResult:
        return await asyncio.wait_for(
            handle.execute_update(
                DECIDE_UPDATE, decision, id=update_id, result_type=DecisionResult
            ),
            deadline - loop.time(),
        )

    try:
        outcome: DecisionResult = await _decision_retrying(wait_s)(send)
    except WorkflowUpdateFailedError as exc:
        cause = exc.cause
        if isinstance(cause, ApplicationError) and (
            cause.type == ErrorType.JOB_NOT_AWAITING_APPROVAL.value
        ):
            raise JobStateConflictError(cause.message) from exc
        if isinstance(cause, ApplicationError) and cause.type == ErrorType.DECISION_INVALID.value:
            raise UnprocessableRequestError(cause.message) from exc
        raise
    except (TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError) as exc:
        raise TemporalUnavailableError(
            f"no worker took the decision within {wait_s:g} s; it will "
            "apply when one does (sending the same body again returns its outcome)",
            headers={"Retry-After": "5"},
        ) from exc
    except RPCError as exc:
        raise await not_running(state, job_id, exc) from exc
    state.event_hub.wake(job_id)  # this process's readers see the decision without delay
    return outcome


async def cancel(state: AppState, temporal: Client, job: JobPublic) -> None:
    """Request the job's cancellation; it ends as CANCELED.

    Raises:
        JobStateConflictError: it already ended (409).
        TemporalUnavailableError: Temporal refused the request (503).
    """
    job_id = job.job_id
    if job.status.is_terminal:
        raise JobStateConflictError(f"job {job_id} already ended as {job.status.value}")
    try:
        await temporal.get_workflow_handle(workflow_id_for(job_id)).cancel()
        state.event_hub.wake(job_id)
    except RPCError as exc:
        raise await not_running(state, job_id, exc) from exc


async def not_running(state: AppState, job_id: str, exc: RPCError) -> Exception:
    """The API error for an update or cancel that Temporal refused.

    Returns:
        :class:`JobStateConflictError` (409) when the workflow is gone, naming the job's final
        status; :class:`TemporalUnavailableError` (503) otherwise.

    Raises:
        JobNotFoundError: the job does not exist (404).
    """
    if exc.status != RPCStatusCode.NOT_FOUND:
        return TemporalUnavailableError("Temporal did not accept the request; try again")
    job = await read_job(state, job_id)  # raises 404 for an unknown job
    return JobStateConflictError(f"job {job_id} already ended as {job.status.value}")
