"""How the API shows a job: live from its workflow while it runs, from its record once it ended.

The workflow owns a job's state; the database record is its projection. :func:`read_job` is the
one place that decides which to read: a terminal record is final; otherwise the workflow's
``get_progress`` query answers; when no worker answers, Temporal's description says whether the
workflow is still running and the record (if any) fills in, with a ``warning``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from temporalio.client import WorkflowExecutionStatus, WorkflowHandle, WorkflowQueryFailedError
from temporalio.service import RPCError, RPCStatusCode

from api.errors import JobNotFoundError, TemporalUnavailableError
from api.schemas import JobLinks, JobPublic, JobUsage
from api.state import AppState
from core.errors import StoreUnavailableError
from core.ids import PROGRESS_QUERY, workflow_id_for
from core.models import AgentProgress, AgentResult, JobStatus
from infra.jobs import JobRecord

log = logging.getLogger(__name__)

CLOSED_STATUS = {
    WorkflowExecutionStatus.COMPLETED: JobStatus.COMPLETED,
    WorkflowExecutionStatus.FAILED: JobStatus.FAILED,
    WorkflowExecutionStatus.CANCELED: JobStatus.CANCELED,
    WorkflowExecutionStatus.TERMINATED: JobStatus.FAILED,
    WorkflowExecutionStatus.TIMED_OUT: JobStatus.FAILED,
}
"""A workflow that closed without recording its outcome (terminated from the Web UI, timed out)
still has a true status in Temporal; this maps it onto the job's."""


def links(state: AppState, job_id: str) -> JobLinks:
    """The job's API URL and its workflow's page in the Temporal Web UI."""
    s = state.settings
    wf = workflow_id_for(job_id)
    return JobLinks(
        self=f"/v1/jobs/{job_id}",
        temporal_ui=f"{s.temporal_ui_url.rstrip('/')}/namespaces/{s.temporal_namespace}/workflows/{wf}",
    )


MEMO_REQUEST_HASH = "request_hash"
"""Workflow memo field: the submitted request's hash, compared when an Idempotency-Key comes
again."""

MEMO_SUBMISSION = "submission"
"""Workflow memo field: a random id of the submission that started the workflow."""

MEMO_QUERY = "query"
"""Workflow memo field: the query's first 200 characters, for jobs no worker can describe."""

MEMO_OWNER = "owner"
"""Workflow memo field: key id of the API key that submitted the job."""


def running(
    state: AppState, job_id: str, query: str, created_at: datetime, owner: str | None
) -> JobPublic:
    """The view of a job known only to have started (no progress or record to read)."""
    return JobPublic(
        job_id=job_id,
        owner=owner,
        workflow_id=workflow_id_for(job_id),
        status=JobStatus.RUNNING,
        query=query,
        created_at=created_at,
        updated_at=datetime.now(UTC),
        links=links(state, job_id),
    )


def from_memo(
    state: AppState,
    job_id: str,
    memo: Mapping[str, Any],
    started: datetime | None,
    owner: str | None = None,
) -> JobPublic:
    """A running job known only from its workflow (no record yet): query and owner from the memo.

    ``owner`` (e.g. from a search attribute) wins over the memo's.
    """
    memo_owner = memo.get(MEMO_OWNER)
    return running(
        state,
        job_id,
        str(memo.get(MEMO_QUERY, "")),
        started or datetime.now(UTC),
        owner or (memo_owner if isinstance(memo_owner, str) else None),
    )


def from_record(state: AppState, record: JobRecord) -> JobPublic:
    """The API view of a job record (its result once terminal, no live progress)."""
    result = record.to_result()
    usage = JobUsage(
        prompt_tokens=record.prompt_tokens,
        completion_tokens=record.completion_tokens,
        cost_usd=record.cost_usd,
        calls=len(result.usage) if result else 0,
    )
    terminal = JobStatus(record.status).is_terminal
    return JobPublic(
        job_id=record.job_id,
        owner=record.owner,
        workflow_id=record.workflow_id,
        status=JobStatus(record.status),
        query=record.query,
        created_at=record.created_at,
        updated_at=record.updated_at,
        completed_at=record.completed_at,
        duration_ms=record.duration_ms,
        tier=record.tier,
        response_cache_hit=record.response_cache_hit,
        result=result if result and terminal else None,
        usage=usage,
        error=record.error,
        links=links(state, record.job_id),
    )


def from_progress(
    state: AppState, job_id: str, progress: AgentProgress, record: JobRecord | None
) -> JobPublic:
    """The API view of a running job, from its workflow's ``get_progress`` answer."""
    now = datetime.now(UTC)
    selection = progress.selection
    return JobPublic(
        job_id=job_id,
        owner=progress.owner or (record.owner if record else None),
        workflow_id=workflow_id_for(job_id),
        status=progress.status,
        query=progress.query or (record.query if record else ""),
        created_at=progress.started_at or (record.created_at if record else now),
        updated_at=now,
        tier=selection.tier.value if selection else None,
        progress=progress,
        usage=JobUsage(
            prompt_tokens=sum(u.prompt_tokens for u in progress.usage),
            completion_tokens=sum(u.completion_tokens for u in progress.usage),
            cost_usd=sum(u.cost_usd for u in progress.usage),
            calls=len(progress.usage),
        ),
        links=links(state, job_id),
    )


async def get_record(state: AppState, job_id: str) -> JobRecord | None:
    """The job's record, or ``None`` when there is none (yet)."""
    return await asyncio.to_thread(state.store.get_job, job_id)


async def read_job(state: AppState, job_id: str) -> JobPublic:
    """The job ``job_id`` as the API shows it (see the module docstring).

    Raises:
        JobNotFoundError: neither a record nor a workflow exists for ``job_id`` (404).
        TemporalUnavailableError: the job has no record and Temporal cannot be reached (503).
        StoreUnavailableError: the database is down and Temporal cannot say either (503).
    """
    record_error: StoreUnavailableError | None = None
    try:
        record = await get_record(state, job_id)
    except StoreUnavailableError as exc:
        record, record_error = None, exc
    if record is not None and JobStatus(record.status).is_terminal:
        return from_record(state, record)
    try:
        client = await state.temporal.client()
    except TemporalUnavailableError as exc:
        if record is None:
            raise (record_error or exc) from None
        public = from_record(state, record)
        public.warning = f"live progress unavailable: {exc.message}"
        return public
    handle = client.get_workflow_handle(workflow_id_for(job_id), result_type=AgentResult)
    try:
        progress = await asyncio.wait_for(
            handle.query(PROGRESS_QUERY, result_type=AgentProgress),
            timeout=state.settings.progress_query_timeout_s,
        )
    except (RPCError, TimeoutError, WorkflowQueryFailedError, StoreUnavailableError) as exc:
        # A query fails when no worker answers, and also when its (large) answer cannot be
        # stored or read because the job database is down: describe and the record answer then.
        if isinstance(exc, RPCError) and exc.status == RPCStatusCode.NOT_FOUND and record is None:
            if record_error is not None:
                raise record_error from exc
            raise JobNotFoundError(f"job {job_id} not found") from exc
        return await _without_progress(state, job_id, record, handle)
    if progress.status.is_terminal:
        # The workflow reports its terminal status only after writing that record: read it,
        # with the result, instead of a live view without one.
        ended = await get_record(state, job_id)
        if ended is not None and JobStatus(ended.status).is_terminal:
            return from_record(state, ended)
    return from_progress(state, job_id, progress, record)


async def _without_progress(
    state: AppState,
    job_id: str,
    record: JobRecord | None,
    handle: WorkflowHandle[Any, Any],
) -> JobPublic:
    """The view when the progress query failed: Temporal's description plus the record."""
    try:
        desc = await handle.describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            if record is None:
                raise JobNotFoundError(f"job {job_id} not found") from exc
            public = from_record(state, record)
            public.warning = "workflow not found in Temporal (its history may have expired)"
            return public
        if record is None:
            raise TemporalUnavailableError("could not read the job's workflow") from exc
        public = from_record(state, record)
        public.warning = "live progress unavailable: Temporal did not answer"
        return public
    if desc.status is not None and desc.status in CLOSED_STATUS:
        # The record read before the query may predate the terminal write, which lands just
        # before the workflow closes: read it again before calling the outcome missing.
        with contextlib.suppress(StoreUnavailableError):
            record = await get_record(state, job_id) or record
        if record is not None and JobStatus(record.status).is_terminal:
            return from_record(state, record)
    if record is not None:
        public = from_record(state, record)
    else:
        public = from_memo(state, job_id, await desc.memo(), desc.start_time)
    if desc.status is not None and desc.status in CLOSED_STATUS:
        public.status = CLOSED_STATUS[desc.status]
        public.warning = f"workflow closed as {desc.status.name} without recording its outcome"
    else:
        public.warning = "live progress unavailable: no worker answered the progress query"
    return public
