"""``/v1/jobs``: submit agent requests, read them, approve them, cancel them."""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Header, Query, Response, status
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.common import WorkflowIDReusePolicy
from temporalio.service import RPCError, RPCStatusCode

from activities.store import IdempotencyConflictError, JobRecord, request_hash
from api.deps import StateDep, TemporalDep
from api.errors import JobNotFoundError, JobStateConflictError, TemporalUnavailableError
from api.schemas import (
    ApprovalAccepted,
    ApprovalCreate,
    CancelAccepted,
    JobCreate,
    JobLinks,
    JobPublic,
    JobsPublic,
    JobUsage,
)
from api.state import AppState
from core.models import (
    AgentProgress,
    AgentRequest,
    AgentWorkflowInput,
    ContextItem,
    JobStatus,
)
from core.temporal import workflow_id_for
from core.tools import ToolCallInvalidError
from workflows.agent import AgentWorkflow

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

_QUERY_TIMEOUT_S = 5.0

# A workflow that closed without recording its outcome (terminated from the Web UI, timed out)
# still has a true status in Temporal; these map it onto the job's.
_CLOSED_STATUS = {
    WorkflowExecutionStatus.COMPLETED: JobStatus.COMPLETED,
    WorkflowExecutionStatus.FAILED: JobStatus.FAILED,
    WorkflowExecutionStatus.CANCELED: JobStatus.CANCELED,
    WorkflowExecutionStatus.TERMINATED: JobStatus.FAILED,
    WorkflowExecutionStatus.TIMED_OUT: JobStatus.FAILED,
}


def _links(state: AppState, job_id: str) -> JobLinks:
    s = state.settings
    wf = workflow_id_for(job_id)
    return JobLinks(
        self=f"/v1/jobs/{job_id}",
        temporal_ui=f"{s.temporal_ui_url.rstrip('/')}/namespaces/{s.temporal_namespace}/workflows/{wf}",
    )


def to_public(state: AppState, record: JobRecord) -> JobPublic:
    """The API view of a job record (without live progress)."""
    result = record.to_result()
    usage = JobUsage(
        prompt_tokens=record.prompt_tokens,
        completion_tokens=record.completion_tokens,
        cost_usd=record.cost_usd,
        calls=len(result.usage) if result else 0,
    )
    return JobPublic(
        job_id=record.job_id,
        workflow_id=record.workflow_id,
        status=JobStatus(record.status),
        query=record.query,
        created_at=record.created_at,
        updated_at=record.updated_at,
        completed_at=record.completed_at,
        duration_ms=record.duration_ms,
        tier=record.tier,
        response_cache_hit=record.response_cache_hit,
        result=result if result and JobStatus(record.status).is_terminal else None,
        usage=usage,
        error=record.error,
        links=_links(state, record.job_id),
    )


async def _offload_large_context(state: AppState, request: AgentRequest) -> AgentRequest:
    """Move context items over the payload threshold to the blob store (pass by reference)."""
    limit = state.settings.large_payload_threshold_bytes
    if all(len(item.content.encode()) <= limit for item in request.context):
        return request
    items: list[ContextItem] = []
    for item in request.context:
        if len(item.content.encode()) > limit:
            ref = await asyncio.to_thread(state.store.put_blob, item.content)
            item = item.model_copy(update={"content": "", "blob": ref})
        items.append(item)
    return request.model_copy(update={"context": items})


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
        err = ToolCallInvalidError(dup, "id", f"duplicate tool call id {dup!r}")
        raise err


@router.post("", status_code=status.HTTP_202_ACCEPTED)
async def create_job(
    body: JobCreate,
    state: StateDep,
    temporal: TemporalDep,
    response: Response,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> JobPublic:
    """Submit an agent request; it runs as workflow ``agent-<job_id>``.

    A repeated ``Idempotency-Key`` with the same body returns the first job and starts nothing
    (header ``Idempotent-Replayed: true``); with a different body it is a 409. Unknown tools or
    bad tool parameters are a 422 naming ``tool_calls[i]``. When Temporal cannot start the
    workflow the answer is 503 and no job is left behind.
    """
    _validate_tools(state, body)
    store = state.store
    if idempotency_key:
        existing = await asyncio.to_thread(store.find_by_idempotency_key, idempotency_key)
        if existing is not None:
            return _replayed(state, existing, body, response)
    job_id = uuid.uuid4().hex
    workflow_id = workflow_id_for(job_id)
    request = await _offload_large_context(state, body)
    try:
        record = await asyncio.to_thread(
            store.create_job, job_id, workflow_id, body, idempotency_key
        )
    except IdempotencyConflictError as exc:
        existing = await asyncio.to_thread(store.get_job, exc.existing_job_id)
        if existing is None:
            raise
        return _replayed(state, existing, body, response)
    settings = state.settings
    try:
        await temporal.start_workflow(
            AgentWorkflow.run,
            AgentWorkflowInput(
                job_id=job_id,
                request=request,
                approval_timeout=timedelta(seconds=settings.approval_timeout_s),
                model_timeout=timedelta(seconds=settings.model_timeout_s + 5),
            ),
            id=workflow_id,
            task_queue=settings.task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            static_summary=body.query[:200],
        )
    except RPCError as exc:
        await asyncio.to_thread(store.delete_job, job_id)
        raise TemporalUnavailableError(f"could not start the workflow: {exc.message}") from exc
    log.info("job %s started as %s", job_id, workflow_id)
    return to_public(state, record)


def _replayed(
    state: AppState, existing: JobRecord, body: AgentRequest, response: Response
) -> JobPublic:
    if existing.request_hash != request_hash(body):
        raise JobStateConflictError(
            f"Idempotency-Key was already used for job {existing.job_id} with a different request"
        )
    response.headers["Idempotent-Replayed"] = "true"
    return to_public(state, existing)


@router.get("")
async def list_jobs(
    state: StateDep,
    status_filter: Annotated[JobStatus | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> JobsPublic:
    """Recent jobs, newest first, optionally only those with ``status``."""
    records = await asyncio.to_thread(state.store.list_jobs, status_filter, limit, offset)
    data = [to_public(state, r) for r in records]
    return JobsPublic(data=data, count=len(data))


async def _get_record(state: AppState, job_id: str) -> JobRecord:
    record = await asyncio.to_thread(state.store.get_job, job_id)
    if record is None:
        raise JobNotFoundError(f"job {job_id} not found")
    return record


async def _progress(handle: WorkflowHandle[AgentWorkflow, object]) -> AgentProgress:
    return await asyncio.wait_for(
        handle.query(AgentWorkflow.get_progress), timeout=_QUERY_TIMEOUT_S
    )


@router.get("/{job_id}")
async def get_job(job_id: str, state: StateDep) -> JobPublic:
    """A job with its live progress while it runs, and its result once it ended.

    When Temporal is unreachable the stored record is returned with a ``warning``.
    """
    record = await _get_record(state, job_id)
    public = to_public(state, record)
    if public.status.is_terminal:
        return public
    try:
        client = await state.temporal.client()
        handle = client.get_workflow_handle_for(AgentWorkflow.run, record.workflow_id)
        public.progress = await _progress(handle)
        # A terminal status shows only once the record (and its result) is written.
        if not public.progress.status.is_terminal:
            public.status = public.progress.status
    except TemporalUnavailableError as exc:
        public.warning = exc.message
    except (RPCError, TimeoutError) as exc:
        public.warning = await _closed_status(client, record, public, exc)
    return public


async def _closed_status(
    client: Client, record: JobRecord, public: JobPublic, error: Exception
) -> str:
    """Explain a failed progress query; adopt Temporal's status when the workflow closed."""
    try:
        desc = await client.get_workflow_handle(record.workflow_id).describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return "workflow not found in Temporal (it may have been deleted)"
        return f"could not read progress: {exc.message}"
    if desc.status is not None and desc.status in _CLOSED_STATUS:
        public.status = _CLOSED_STATUS[desc.status]
        return f"workflow closed as {desc.status.name} without recording its outcome"
    return f"could not read progress: {error}"


@router.post("/{job_id}/approval", status_code=status.HTTP_202_ACCEPTED)
async def approve_job(
    job_id: str, body: ApprovalCreate, state: StateDep, temporal: TemporalDep
) -> ApprovalAccepted:
    """Approve or reject a job that is waiting for approval; 409 when it is not waiting."""
    record = await _get_record(state, job_id)
    handle = temporal.get_workflow_handle_for(AgentWorkflow.run, record.workflow_id)
    try:
        progress = await _progress(handle)
    except (RPCError, TimeoutError) as exc:
        raise JobStateConflictError(
            f"job {job_id} is not awaiting approval (status {record.status})"
        ) from exc
    if progress.status is not JobStatus.AWAITING_APPROVAL or progress.approval is not None:
        raise JobStateConflictError(
            f"job {job_id} is not awaiting approval (status {progress.status.value})"
        )
    await handle.signal(AgentWorkflow.approve, body)
    return ApprovalAccepted(job_id=job_id, approved=body.approved, reviewer=body.reviewer)


@router.post("/{job_id}/cancel", status_code=status.HTTP_202_ACCEPTED)
async def cancel_job(job_id: str, state: StateDep, temporal: TemporalDep) -> CancelAccepted:
    """Request cancellation; the job ends as CANCELED. 409 when it already ended."""
    record = await _get_record(state, job_id)
    if JobStatus(record.status).is_terminal:
        raise JobStateConflictError(f"job {job_id} already ended as {record.status}")
    try:
        await temporal.get_workflow_handle(record.workflow_id).cancel()
    except RPCError as exc:
        if exc.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.FAILED_PRECONDITION):
            raise JobStateConflictError(f"job {job_id} has no running workflow") from exc
        raise TemporalUnavailableError(f"could not cancel: {exc.message}") from exc
    return CancelAccepted(job_id=job_id)
