"""``/v1/jobs``: submit agent requests, read them, decide on them, cancel them.

A job is its workflow, ``agent-<job_id>``: submitting starts it (nothing is written first;
:mod:`api.submission`, with :mod:`api.idempotency`), reading asks it
(:func:`api.job_views.read_job`), deciding sends it the ``decide`` update and cancelling cancels
it (:mod:`api.job_commands`). The handlers here declare the HTTP contract and call those
modules, which replaced the quota, idempotency and retry logic these handlers held.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Response, status

from api import job_commands
from api.deps import ApproveKey, ReadKey, StateDep, SubmitKey, TemporalDep
from api.errors import JobNotFoundError
from api.job_views import from_record
from api.openapi import error_responses
from api.ownership import read_own_job
from api.schemas import (
    ApprovalCreate,
    ApprovalPublic,
    CancelAccepted,
    JobCreate,
    JobPublic,
    JobsPublic,
)
from api.submission import submit_job
from api.visibility import correct_open_statuses, list_open_jobs
from core.models import JobStatus

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

JobIdPath = Annotated[
    str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$", description="A job id.")
]
"""Job ids are hex (``k`` plus hex for keyed jobs); anything else is a 422, never a lookup."""


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
    submitted = await submit_job(state, temporal, principal, body, idempotency_key)
    if submitted.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return submitted.job


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
    return await read_own_job(state, principal, job_id)


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
    job = await read_own_job(state, principal, job_id)
    job_commands.check_call_decisions(state, job, body)
    decision = body.decision(reviewer=principal.identity)
    outcome = await job_commands.decide(state, temporal, job_id, decision)
    return ApprovalPublic(
        job_id=outcome.job_id,
        approved=outcome.approved,
        reviewer=outcome.reviewer,
        status=outcome.status,
        calls=decision.calls,
    )


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
    job = await read_own_job(state, principal, job_id)
    await job_commands.cancel(state, temporal, job)
    return CancelAccepted(job_id=job_id)


__all__ = ["JobIdPath", "JobNotFoundError", "router"]
