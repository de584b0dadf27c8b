"""``/v1/jobs``: submit agent requests, read them, decide on them, cancel them.

A job is its workflow, ``agent-<job_id>``: submitting starts it (nothing is written first),
reading asks it (:func:`api.job_views.read_job`), deciding sends it the ``decide`` update.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Response, status
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

from api.deps import StateDep, TemporalDep
from api.errors import (
    JobNotFoundError,
    JobStateConflictError,
    PayloadTooLargeError,
    TemporalUnavailableError,
    UnprocessableRequestError,
)
from api.job_views import (
    MEMO_QUERY,
    MEMO_REQUEST_HASH,
    MEMO_SUBMISSION,
    from_record,
    read_job,
    running,
)
from api.schemas import (
    ApprovalCreate,
    ApprovalPublic,
    CancelAccepted,
    JobCreate,
    JobPublic,
    JobsPublic,
)
from api.state import AppState
from core.errors import ErrorType, StoreUnavailableError
from core.ids import job_id_for, request_hash, workflow_id_for
from core.models import AgentRequest, AgentWorkflowInput, DecisionResult, JobStatus
from core.tools import ToolCallInvalidError
from workflows.agent import AgentWorkflow

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


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
    responses={409: {"description": "Idempotency-Key reused with another body"}, 413: {}, 503: {}},
)
async def create_job(
    body: JobCreate,
    state: StateDep,
    temporal: TemporalDep,
    response: Response,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=200)] = None,
) -> JobPublic:
    """Submit an agent request; it runs as workflow ``agent-<job_id>``.

    With an ``Idempotency-Key`` the job id derives from the key, and Temporal's id-conflict
    policy (``USE_EXISTING``) returns the job already started under it: a repeat with the same
    body answers that job (header ``Idempotent-Replayed: true``) and starts nothing; with another
    body it is a 409. Unknown tools or bad tool parameters are a 422 naming ``tool_calls[i]``; a
    job input over ``AGENTFLOW_MAX_JOB_INPUT_BYTES`` is a 413. When Temporal cannot start the
    workflow the answer is 503, and nothing was written.
    """
    request = body.to_request()
    _validate_tools(state, request)
    _check_encoded(state, request)
    digest = request_hash(request)
    if idempotency_key:
        try:
            legacy = await asyncio.to_thread(state.store.find_by_idempotency_key, idempotency_key)
        except StoreUnavailableError:
            # Temporal's id-conflict policy still returns a job started under the key.
            log.warning("job database down: Idempotency-Key checked by Temporal alone")
            legacy = None
        # The key's record answers even after Temporal's retention removed the workflow, and
        # for jobs submitted before job ids were derived from keys.
        if legacy is not None:
            _same_request(legacy.job_id, legacy.request_hash, digest)
            response.headers["Idempotent-Replayed"] = "true"
            return await read_job(state, legacy.job_id)
    job_id = job_id_for(idempotency_key)
    submission = uuid.uuid4().hex
    settings = state.settings
    try:
        handle = await temporal.start_workflow(
            AgentWorkflow.run,
            AgentWorkflowInput(
                job_id=job_id,
                request=request,
                approval_timeout=timedelta(seconds=settings.approval_timeout_s),
                heartbeat_timeout=timedelta(seconds=settings.activity_heartbeat_timeout_s),
                idempotency_key=idempotency_key,
                request_hash=digest,
            ),
            id=workflow_id_for(job_id),
            task_queue=settings.task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            memo={
                MEMO_REQUEST_HASH: digest,
                MEMO_SUBMISSION: submission,
                MEMO_QUERY: body.query[:200],
            },
            static_summary=body.query[:200],
        )
    except WorkflowAlreadyStartedError:
        # The key's workflow already closed; REJECT_DUPLICATE keeps it from running twice.
        handle = temporal.get_workflow_handle_for(AgentWorkflow.run, workflow_id_for(job_id))
    except RPCError as exc:
        raise TemporalUnavailableError("could not start the job's workflow; try again") from exc
    if idempotency_key and await _started_earlier(handle, job_id, digest, submission):
        response.headers["Idempotent-Replayed"] = "true"
        return await read_job(state, job_id)
    log.info("job %s started as %s", job_id, handle.id)
    return running(state, job_id, request.query, datetime.now(UTC))


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


@router.get("")
async def list_jobs(
    state: StateDep,
    status_filter: Annotated[JobStatus | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> JobsPublic:
    """Recent jobs, newest first, from their records (each job records itself as it starts)."""
    records = await asyncio.to_thread(state.store.list_jobs, status_filter, limit, offset)
    data = [from_record(state, r) for r in records]
    return JobsPublic(data=data, count=len(data))


@router.get("/{job_id}", responses={404: {}, 503: {}})
async def get_job(job_id: str, state: StateDep) -> JobPublic:
    """A job: live progress from its workflow while it runs, its record once it ended.

    When Temporal or the workers cannot answer, the record is returned with a ``warning``.
    """
    return await read_job(state, job_id)


@router.post("/{job_id}/approval", responses={404: {}, 409: {}, 503: {}})
async def decide_job(
    job_id: str, body: ApprovalCreate, state: StateDep, temporal: TemporalDep
) -> ApprovalPublic:
    """Approve or reject a job waiting at its approval gate (the workflow's ``decide`` update).

    The workflow's validator refuses a decision unless the job is waiting for one: 409 names the
    job's status (not yet at the gate, already decided, ended). Sending the same body again
    returns the same outcome. While no worker can take the decision (workers restarting) the
    call waits up to ``AGENTFLOW_DECISION_WAIT_S``, then answers 503; the decision still applies
    when a worker picks it up.
    """
    handle = temporal.get_workflow_handle_for(AgentWorkflow.run, workflow_id_for(job_id))
    update_id = "decide-" + hashlib.sha256(body.model_dump_json().encode()).hexdigest()[:32]

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
                    handle.execute_update(AgentWorkflow.decide, body, id=update_id), remaining
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
        raise
    except (TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError) as exc:
        raise TemporalUnavailableError(
            f"no worker took the decision within {state.settings.decision_wait_s:g} s; it will "
            "apply when one does (sending the same body again returns its outcome)",
            headers={"Retry-After": "5"},
        ) from exc
    except RPCError as exc:
        raise await _not_running(state, job_id, exc) from exc
    return ApprovalPublic(
        job_id=outcome.job_id,
        approved=outcome.approved,
        reviewer=outcome.reviewer,
        status=outcome.status,
    )


async def _not_running(state: AppState, job_id: str, exc: RPCError) -> Exception:
    """The API error for an update or cancel that Temporal refused."""
    if exc.status != RPCStatusCode.NOT_FOUND:
        return TemporalUnavailableError("Temporal did not accept the request; try again")
    job = await read_job(state, job_id)  # raises 404 for an unknown job
    return JobStateConflictError(f"job {job_id} already ended as {job.status.value}")


@router.post("/{job_id}/cancel", status_code=status.HTTP_202_ACCEPTED, responses={404: {}, 409: {}})
async def cancel_job(job_id: str, state: StateDep, temporal: TemporalDep) -> CancelAccepted:
    """Request cancellation; the job ends as CANCELED. 409 when it already ended."""
    job = await read_job(state, job_id)
    if job.status.is_terminal:
        raise JobStateConflictError(f"job {job_id} already ended as {job.status.value}")
    try:
        await temporal.get_workflow_handle(workflow_id_for(job_id)).cancel()
    except RPCError as exc:
        raise await _not_running(state, job_id, exc) from exc
    return CancelAccepted(job_id=job_id)


__all__ = ["JobNotFoundError", "router"]
