"""``/v1/jobs``: submit agent requests, read them, decide on them, cancel them.

A job is its workflow, ``agent-<job_id>``: submitting starts it (nothing is written first),
reading asks it (:func:`api.job_views.read_job`), deciding sends it the ``decide`` update.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Response, status
from pydantic import ValidationError
from pydantic_core import PydanticSerializationError
from temporalio.client import (
    WorkflowHandle,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from api.deps import ApproveKey, ReadKey, StateDep, SubmitKey, TemporalDep
from api.errors import (
    JobNotFoundError,
    JobStateConflictError,
    PayloadTooLargeError,
    PaymentRequiredError,
    TemporalUnavailableError,
    TooManyRequestsError,
    UnprocessableRequestError,
    tool_call_issue,
)
from api.job_views import (
    MEMO_OWNER,
    MEMO_QUERY,
    MEMO_REQUEST_HASH,
    MEMO_SUBMISSION,
    from_record,
    read_job,
    running,
)
from api.openapi import error_responses
from api.schemas import (
    ApprovalCreate,
    ApprovalPublic,
    CancelAccepted,
    JobCreate,
    JobPublic,
    JobsPublic,
)
from api.state import AppState
from api.visibility import correct_open_statuses, list_open_jobs
from core import search_attributes
from core.auth import ANONYMOUS_KEY_ID, Principal
from core.errors import (
    BudgetExceededError,
    ErrorType,
    RateLimitedError,
    StoreUnavailableError,
    ToolCallInvalidError,
)
from core.ids import (
    AGENT_WORKFLOW_TYPE,
    DECIDE_UPDATE,
    job_id_for,
    request_hash,
    scoped_idempotency_key,
    workflow_id_for,
)
from core.models import (
    AgentRequest,
    AgentResult,
    AgentWorkflowInput,
    ApprovalPolicy,
    BudgetReservation,
    DecisionResult,
    JobStatus,
)
from core.settings import Settings
from infra.quotas import estimate_cost_usd

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

JobIdPath = Annotated[
    str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$", description="A job id.")
]
"""Job ids are hex (``k`` plus hex for keyed jobs); anything else is a 422, never a lookup."""


def approval_policy(settings: Settings) -> ApprovalPolicy:
    """The approval policy jobs start with, from ``AGENTFLOW_APPROVAL_*``."""
    reminder = settings.approval_reminder_s
    return ApprovalPolicy(
        tools=list(settings.approval_tools),
        cost_threshold_usd=settings.approval_cost_threshold_usd,
        timeout_action=settings.approval_timeout_action,
        reminder_interval=timedelta(seconds=reminder) if reminder else None,
    )


def _validate_tools(state: AppState, request: AgentRequest) -> None:
    for index, call in enumerate(request.tool_calls):
        try:
            state.tools.validate(call)
        except ToolCallInvalidError as exc:
            exc.index = index  # type: ignore[attr-defined]
            raise
    ids = [c.id for c in request.tool_calls]
    if len(ids) != len(set(ids)):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ToolCallInvalidError(dup, "id", f"duplicate tool call id {dup!r}")


def _check_encoded(state: AppState, request: AgentRequest) -> None:
    """Refuse a request the worker could not decode, or one over the job input limit.

    The worker reads the request from JSON with pydantic's parser; a request that passed here
    but not there would fail its first workflow task forever. Nesting depth is bounded by the
    contract itself (:data:`core.models.MAX_JSON_DEPTH`); encoding and decoding the request once
    here, as the worker will, catches anything else (text that is not valid Unicode) as a 422,
    and measures its size for the 413.

    Raises:
        UnprocessableRequestError: it cannot be encoded or decoded as JSON (422).
        PayloadTooLargeError: it is over ``AGENTFLOW_MAX_JOB_INPUT_BYTES`` (413).
    """
    try:
        encoded = request.model_dump_json().encode()
        AgentRequest.model_validate_json(encoded)
    except (PydanticSerializationError, ValidationError):
        raise UnprocessableRequestError(
            "the request cannot be carried as JSON (text that is not valid Unicode, or nesting "
            "the worker's JSON parser refuses)"
        ) from None
    limit = state.settings.max_job_input_bytes
    if len(encoded) > limit:
        raise PayloadTooLargeError(
            f"the job's input is {len(encoded)} bytes; the limit is {limit} bytes "
            "(AGENTFLOW_MAX_JOB_INPUT_BYTES)"
        )


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    responses=error_responses(400, 401, 402, 403, 409, 413, 422, 429, 503),
)
async def create_job(
    body: JobCreate,
    principal: SubmitKey,
    state: StateDep,
    temporal: TemporalDep,
    response: Response,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=200)] = None,
) -> JobPublic:
    """Submit an agent request; it runs as workflow ``agent-<job_id>``, owned by the calling key.

    Quotas come first: over the key's requests per minute the answer is 429 with
    ``Retry-After``; when the job's estimated cost does not fit the key's budget left today it is
    402 (:mod:`infra.quotas`). With an ``Idempotency-Key`` the job id derives from the key (and
    the calling key: two API keys never share a job), and Temporal's id-conflict policy
    (``USE_EXISTING``) returns the job already started under it: a repeat with the same body
    answers that job (header ``Idempotent-Replayed: true``) and starts nothing; with another body
    it is a 409. Unknown tools or bad tool parameters are a 422 naming ``tool_calls[i]``; a job
    input over ``AGENTFLOW_MAX_JOB_INPUT_BYTES`` is a 413. When Temporal cannot start the
    workflow the answer is 503, nothing was written and the budget reservation is given back.
    """
    try:
        await state.quotas.hit_rate_limit(principal)
    except RateLimitedError as exc:
        raise TooManyRequestsError(
            str(exc), headers={"Retry-After": str(exc.retry_after_s)}
        ) from None
    request = body.to_request()
    _validate_tools(state, request)
    _check_encoded(state, request)
    digest = request_hash(request)
    owner = principal.key_id
    # Keys are scoped per API key; with authentication off they stay as the client sent them,
    # as before keys existed, so a repeat of an earlier keyed submission finds its job.
    scope = None if owner == ANONYMOUS_KEY_ID else owner
    stored_key = scoped_idempotency_key(idempotency_key, scope) if idempotency_key else None
    if stored_key:
        try:
            legacy = await asyncio.to_thread(state.store.find_by_idempotency_key, stored_key)
        except StoreUnavailableError:
            # Temporal's id-conflict policy still returns a job started under the key.
            log.warning("job database down: Idempotency-Key checked by Temporal alone")
            legacy = None
        # The key's record answers even after Temporal's retention removed the workflow, and
        # for jobs submitted before job ids were derived from keys.
        if legacy is not None:
            _same_request(legacy.job_id, legacy.request_hash, digest)
            response.headers["Idempotent-Replayed"] = "true"
            return await _read_own_job(state, principal, legacy.job_id)
    job_id = job_id_for(idempotency_key, scope)
    indexed = await state.temporal.search_attributes_enabled()  # before the reservation
    budget = await _reserve_budget(state, principal, job_id, request)
    submission = uuid.uuid4().hex
    settings = state.settings
    try:
        handle = await temporal.start_workflow(
            AGENT_WORKFLOW_TYPE,
            AgentWorkflowInput(
                job_id=job_id,
                request=request,
                approval_timeout=timedelta(seconds=settings.approval_timeout_s),
                heartbeat_timeout=timedelta(seconds=settings.activity_heartbeat_timeout_s),
                idempotency_key=stored_key,
                request_hash=digest,
                owner=owner,
                budget=budget,
                approval_policy=approval_policy(settings),
                stream_tokens=settings.stream_tokens,
                search_attributes=indexed,
            ),
            id=workflow_id_for(job_id),
            task_queue=settings.task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            memo={
                MEMO_REQUEST_HASH: digest,
                MEMO_SUBMISSION: submission,
                MEMO_QUERY: body.query[:200],
                MEMO_OWNER: owner,
            },
            static_summary=body.query[:200],
            search_attributes=search_attributes.at_start(owner) if indexed else None,
            result_type=AgentResult,
        )
    except WorkflowAlreadyStartedError:
        # The key's workflow already closed; REJECT_DUPLICATE keeps it from running twice.
        handle = temporal.get_workflow_handle(workflow_id_for(job_id), result_type=AgentResult)
    except RPCError as exc:
        await _release(state, budget)
        raise TemporalUnavailableError("could not start the job's workflow; try again") from exc
    try:
        replayed = bool(idempotency_key) and await _started_earlier(
            handle, job_id, digest, submission
        )
    except JobStateConflictError:
        await _release(state, budget)  # the key belongs to another request: nothing started
        raise
    if replayed:
        await _release(state, budget)  # this submission started nothing
        response.headers["Idempotent-Replayed"] = "true"
        return await _read_own_job(state, principal, job_id)
    log.info("job %s started as %s for key %s", job_id, handle.id, owner)
    return running(state, job_id, request.query, datetime.now(UTC), owner)


async def _reserve_budget(
    state: AppState, principal: Principal, job_id: str, request: AgentRequest
) -> BudgetReservation | None:
    """Reserve the job's estimated cost from the key's daily budget (402 when it does not fit)."""
    estimate = estimate_cost_usd(request, state.catalog)
    try:
        return await state.quotas.reserve(principal, job_id, estimate)
    except BudgetExceededError as exc:
        raise PaymentRequiredError(str(exc)) from None


async def _release(state: AppState, budget: BudgetReservation | None) -> None:
    """Give back a reservation whose job was not started by this submission."""
    if budget is None:
        return
    try:
        await state.quotas.release(budget)
    except Exception:  # the estimate stays charged (an over-count); never hide the real error
        log.warning("could not release the budget reserved for job %s", budget.job_id)


async def _started_earlier(
    handle: WorkflowHandle[Any, Any], job_id: str, digest: str, submission: str
) -> bool:
    """Whether the keyed workflow was started by an earlier submission (then same body or 409)."""
    try:
        memo = await (await handle.describe()).memo()
    except RPCError as exc:
        raise TemporalUnavailableError("could not read the job's workflow; try again") from exc
    if memo.get(MEMO_SUBMISSION) == submission:
        return False
    stored = memo.get(MEMO_REQUEST_HASH)
    _same_request(job_id, stored if isinstance(stored, str) else None, digest)
    return True


def _same_request(job_id: str, stored_hash: str | None, digest: str) -> None:
    if stored_hash != digest:
        raise JobStateConflictError(
            f"Idempotency-Key was already used for job {job_id} with a different request"
        )


@router.get("", responses=error_responses(401, 403, 422, 503))
async def list_jobs(
    principal: ReadKey,
    state: StateDep,
    status_filter: Annotated[JobStatus | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> JobsPublic:
    """Recent jobs of the calling key (every job for an ``admin`` key), newest first.

    A job's database record can trail the job while it runs (it says RUNNING while the job
    already waits for approval). When the jobs set Temporal search attributes
    (``AGENTFLOW_SEARCH_ATTRIBUTES``, registered by ``agentflow dev``), the live status wins:

    - ``status=RUNNING`` or ``status=AWAITING_APPROVAL`` lists from Temporal's visibility
      (running workflows on this API's task queue whose ``AgentStatus`` is that status; newest
      first by start time), so a job shows with its true status even before its record
      catches up, or without one;
    - a terminal ``status`` lists the job records (a job's terminal record is written before
      its workflow closes, and stays after Temporal's retention removed the workflow);
    - without ``status``, the records are listed and each open job's status is the live one.

    Without search attributes, or while Temporal does not answer (within 5 s; 2 s for the
    status correction), every listing reads the job records alone (the reason is logged).
    """
    owner = None if principal.is_admin else principal.key_id
    if status_filter is not None and not status_filter.is_terminal:
        live = await list_open_jobs(state, status_filter, owner, limit, offset)
        if live is not None:
            return JobsPublic(data=live, count=len(live))
    records = await asyncio.to_thread(
        functools.partial(state.store.list_jobs, status_filter, limit, offset, owner=owner)
    )
    data = [from_record(state, r) for r in records]
    if status_filter is None:
        data = await correct_open_statuses(state, data)
    return JobsPublic(data=data, count=len(data))


@router.get("/{job_id}", responses=error_responses(401, 403, 404, 422, 503))
async def get_job(job_id: JobIdPath, principal: ReadKey, state: StateDep) -> JobPublic:
    """A job: live progress from its workflow while it runs, its record once it ended.

    When Temporal or the workers cannot answer, the record is returned with a ``warning``. A
    job of another key is a 404, as if it did not exist.
    """
    return await _read_own_job(state, principal, job_id)


async def _read_own_job(state: AppState, principal: Principal, job_id: str) -> JobPublic:
    """The job, when the calling key may see it (404 otherwise, revealing nothing)."""
    job = await read_job(state, job_id)
    if not principal.owns(job.owner):
        raise JobNotFoundError(f"job {job_id} not found")
    return job


@router.post(
    "/{job_id}/approval", responses=error_responses(400, 401, 403, 404, 409, 413, 422, 503)
)
async def decide_job(
    job_id: JobIdPath,
    body: ApprovalCreate,
    principal: ApproveKey,
    state: StateDep,
    temporal: TemporalDep,
) -> ApprovalPublic:
    """Approve or reject a job waiting at its approval gate (the workflow's ``decide`` update).

    The reviewer recorded is the calling key. The workflow's validator refuses a decision unless
    the job is waiting for one: 409 names the
    job's status (not yet at the gate, already decided, ended). Sending the same body again
    returns the same outcome. While no worker can take the decision (workers restarting) the
    call waits up to ``AGENTFLOW_DECISION_WAIT_S``, then answers 503; the decision still applies
    when a worker picks it up.
    """
    job = await _read_own_job(state, principal, job_id)
    _check_call_decisions(state, job, body)
    decision = body.decision(reviewer=principal.identity)
    handle = temporal.get_workflow_handle(workflow_id_for(job_id), result_type=AgentResult)
    update_id = "decide-" + hashlib.sha256(decision.model_dump_json().encode()).hexdigest()[:32]

    loop = asyncio.get_running_loop()
    deadline = loop.time() + state.settings.decision_wait_s

    async def decide() -> DecisionResult:
        # The server stops waiting for a worker to accept the update after a while; the same
        # update id attaches to the update it already admitted, so asking again is safe. The
        # SDK reports both that and our own deadline as WorkflowUpdateRPCTimeoutOrCancelledError.
        # Asking again is bounded by the deadline (then 503).
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError
            try:
                return await asyncio.wait_for(
                    handle.execute_update(
                        DECIDE_UPDATE, decision, id=update_id, result_type=DecisionResult
                    ),
                    remaining,
                )
            except WorkflowUpdateRPCTimeoutOrCancelledError:
                pass
            except RPCError as exc:
                # The workflow task that took the update failed (for example a cancel arrived
                # in the same task); the workflow runs it again and the same update id then
                # gets the real answer: applied, or refused because the job ended.
                if exc.status != RPCStatusCode.FAILED_PRECONDITION:
                    raise
            await asyncio.sleep(min(0.2, max(deadline - loop.time(), 0)))

    try:
        outcome = await decide()
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
            f"no worker took the decision within {state.settings.decision_wait_s:g} s; it will "
            "apply when one does (sending the same body again returns its outcome)",
            headers={"Retry-After": "5"},
        ) from exc
    except RPCError as exc:
        raise await _not_running(state, job_id, exc) from exc
    state.event_hub.wake(job_id)  # this process's readers see the decision without delay
    return ApprovalPublic(
        job_id=outcome.job_id,
        approved=outcome.approved,
        reviewer=outcome.reviewer,
        status=outcome.status,
        calls=decision.calls,
    )


def _check_call_decisions(state: AppState, job: JobPublic, body: ApprovalCreate) -> None:
    """Refuse per-call decisions that cannot apply, naming ``calls[i]`` (422).

    The workflow's validator checks the same against the job as it is when the decision lands;
    here an edit's parameters are also checked against the tool's schema (the registry lives
    outside the workflow), so a bad edit never reaches the job.
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


async def _not_running(state: AppState, job_id: str, exc: RPCError) -> Exception:
    """The API error for an update or cancel that Temporal refused."""
    if exc.status != RPCStatusCode.NOT_FOUND:
        return TemporalUnavailableError("Temporal did not accept the request; try again")
    job = await read_job(state, job_id)  # raises 404 for an unknown job
    return JobStateConflictError(f"job {job_id} already ended as {job.status.value}")


@router.post(
    "/{job_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    responses=error_responses(401, 403, 404, 409, 413, 422, 503),
)
async def cancel_job(
    job_id: JobIdPath, principal: ApproveKey, state: StateDep, temporal: TemporalDep
) -> CancelAccepted:
    """Request cancellation; the job ends as CANCELED.

    409 when it already ended; 404 for a job of another key.
    """
    job = await _read_own_job(state, principal, job_id)
    if job.status.is_terminal:
        raise JobStateConflictError(f"job {job_id} already ended as {job.status.value}")
    try:
        await temporal.get_workflow_handle(workflow_id_for(job_id)).cancel()
        state.event_hub.wake(job_id)
    except RPCError as exc:
        raise await _not_running(state, job_id, exc) from exc
    return CancelAccepted(job_id=job_id)


__all__ = ["JobNotFoundError", "router"]
