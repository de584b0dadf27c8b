"""Job listings from Temporal's visibility, for the jobs whose database record lags.

A job's record is a projection the workflow writes as it moves; while the job runs the record
can trail it (it says RUNNING while the job already waits for approval; much longer while the
job database is down). The workflow also upserts the ``Agent*`` search attributes
(:mod:`core.search_attributes`) at each status change, and Temporal's visibility store answers
queries on them. When the jobs set them
(:meth:`api.state.TemporalGateway.search_attributes_enabled`), ``GET /v1/jobs`` reads:

- ``?status=RUNNING`` or ``?status=AWAITING_APPROVAL``: from visibility. An open job is a running
  workflow, and visibility lists every running workflow, so this is complete and live:
  :func:`open_jobs_query` (on this deployment's task queue, as the database holds only its
  jobs). A job started before the attributes were set (no ``AgentStatus``) is
  taken with its record's status.
- a terminal status: from the database. A job's terminal record is written before its workflow
  closes and is final, and visibility forgets a closed workflow after the namespace's
  retention period while the record stays.
- no status: a database page, with the status of each open job on it corrected from visibility.

Each job is built from its record when there is one (its status replaced by the live one unless
the record is terminal), else from visibility alone: the job id from the workflow id, status,
tier, cost and owner from the attributes, the query from the memo, ``created_at`` from the
start time. Visibility itself is eventually consistent (well under a second on a dev server).

Temporal down, slow (over :data:`VISIBILITY_TIMEOUT_S`, :data:`CORRECTION_TIMEOUT_S` for the
status correction) or the attributes not registered: the functions here answer ``None`` (or the
page unchanged), log a warning, and the route reads the database as it did before search
attributes existed. Nothing here raises to the client.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import timedelta

from temporalio.client import Client, WorkflowExecution, WorkflowExecutionStatus
from temporalio.service import RPCError

from api.errors import ApiError
from api.job_views import from_memo, from_record
from api.schemas import JobPublic
from api.state import AppState
from core import search_attributes
from core.errors import StoreUnavailableError
from core.ids import WORKFLOW_ID_PREFIX
from core.models import JobStatus
from infra.jobs import JobRecord

log = logging.getLogger(__name__)

WORKFLOW_TYPE = "AgentWorkflow"
"""The workflow type of every job (:class:`workflows.agent.AgentWorkflow`)."""

VISIBILITY_TIMEOUT_S = 5.0
"""How long one listing may spend on Temporal before the database answers instead, in seconds."""

CORRECTION_TIMEOUT_S = 2.0
"""How long the status correction of an unfiltered page may wait for Temporal, in seconds (the
page is already read; it goes out as recorded after that)."""

BATCH_SIZE = 100
"""Workflows resolved against the job database at once (one thread hop per batch)."""

IDS_PER_QUERY = 100
"""Workflow ids per ``WorkflowId IN (...)`` query when correcting a database page."""

_FALLBACK_ERRORS = (ApiError, RPCError, TimeoutError)
"""What makes a listing fall back to the database: Temporal unreachable or refusing, the
attributes required but not registered (both :class:`api.errors.ApiError`), a slow answer."""


def quote(value: str) -> str:
    """``value`` as a double-quoted string literal of a visibility query.

    Backslashes and double quotes are escaped, so no value can end the literal and add clauses.
    (The SQLite visibility of the dev server matches no stored value holding either character;
    key ids and job statuses never do.)
    """
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _agent_workflows(task_queue: str) -> str:
    """Running agent workflows of this deployment.

    Visibility spans the namespace while the job database is one deployment's: the task queue
    (a system search attribute) keeps another deployment's jobs in the same namespace out.
    """
    return (
        f"WorkflowType={quote(WORKFLOW_TYPE)} AND TaskQueue={quote(task_queue)} "
        f"AND ExecutionStatus={quote('Running')}"
    )


def open_jobs_query(status: JobStatus, owner: str | None, task_queue: str) -> str:
    """The visibility query for the open jobs that may have ``status``.

    Running agent workflows on ``task_queue`` whose ``AgentStatus`` is ``status`` (and whose
    ``AgentOwner`` is ``owner``), plus running ones without ``AgentStatus`` (started while the
    attributes were not set), which the caller checks against their records.

    Args:
        status: ``RUNNING`` or ``AWAITING_APPROVAL``.
        owner: key id whose jobs to list; ``None`` for every job (admin keys).
        task_queue: the task queue this API starts jobs on (``AGENTFLOW_TASK_QUEUE``).

    Raises:
        ValueError: ``status`` is terminal (closed workflows are listed from the database).
    """
    if status.is_terminal:
        raise ValueError(f"{status.value} is terminal: list it from the job database")
    match = f"{search_attributes.AGENT_STATUS.name}={quote(status.value)}"
    if owner is not None:
        match += f" AND {search_attributes.AGENT_OWNER.name}={quote(owner)}"
    unset = f"{search_attributes.AGENT_STATUS.name} IS NULL"
    return f"{_agent_workflows(task_queue)} AND (({match}) OR {unset})"


def job_id_of(workflow_id: str) -> str | None:
    """The job id of workflow ``agent-<job_id>``; ``None`` for any other workflow id."""
    if not workflow_id.startswith(WORKFLOW_ID_PREFIX) or workflow_id == WORKFLOW_ID_PREFIX:
        return None
    return workflow_id[len(WORKFLOW_ID_PREFIX) :]


def true_status(live: JobStatus | None, record: JobRecord | None) -> JobStatus:
    """A job's status from its ``AgentStatus`` (``live``) and its record.

    A terminal record is final; otherwise the workflow's own ``AgentStatus`` is ahead of the
    record; a workflow without one (started while the attributes were not set) has its
    record's status, and one without either has just started (RUNNING).
    """
    recorded = JobStatus(record.status) if record is not None else None
    if recorded is not None and recorded.is_terminal:
        return recorded
    return live or recorded or JobStatus.RUNNING


async def _client_if_enabled(state: AppState) -> Client | None:
    """The Temporal client when jobs set the search attributes, else ``None``.

    Raises:
        TemporalUnavailableError: Temporal cannot be reached.
        SearchAttributesMissingError: they are required (``on``) but not registered.
    """
    if state.settings.search_attributes == "off":
        return None
    if not await state.temporal.search_attributes_enabled():
        return None
    return await state.temporal.client()


async def list_open_jobs(
    state: AppState, status: JobStatus, owner: str | None, limit: int, offset: int
) -> list[JobPublic] | None:
    """A page of the open jobs with ``status``, from visibility, newest first.

    Args:
        state: the app's resources.
        status: ``RUNNING`` or ``AWAITING_APPROVAL``.
        owner: key id whose jobs to list; ``None`` for every job.
        limit: most jobs returned (>= 1).
        offset: jobs skipped first (>= 0).

    Returns:
        The page (running workflows in visibility's order: start time, newest first), or
        ``None`` when visibility cannot answer (search attributes off or not registered,
        Temporal down or slower than :data:`VISIBILITY_TIMEOUT_S`; logged): read the database.
    """
    try:
        return await asyncio.wait_for(
            _list_open_jobs(state, status, owner, limit, offset), VISIBILITY_TIMEOUT_S
        )
    except _FALLBACK_ERRORS as exc:
        log.warning(
            "listing %s jobs from Temporal's visibility failed (%s); read from the job database",
            status.value,
            _reason(exc, VISIBILITY_TIMEOUT_S),
        )
        return None


async def _list_open_jobs(
    state: AppState, status: JobStatus, owner: str | None, limit: int, offset: int
) -> list[JobPublic] | None:
    client = await _client_if_enabled(state)
    if client is None:
        return None
    wanted = offset + limit
    kept: list[JobPublic] = []
    batch: list[WorkflowExecution] = []
    async for execution in client.list_workflows(
        open_jobs_query(status, owner, state.settings.task_queue),
        page_size=min(max(wanted, BATCH_SIZE), 1000),
        rpc_timeout=timedelta(seconds=VISIBILITY_TIMEOUT_S),
    ):
        batch.append(execution)
        if len(batch) >= BATCH_SIZE:
            kept += await _resolve(state, batch, status, owner)
            batch = []
            if len(kept) >= wanted:
                break
    if batch:
        kept += await _resolve(state, batch, status, owner)
    return kept[offset:wanted]


async def _records(state: AppState, job_ids: Sequence[str]) -> dict[str, JobRecord]:
    """The records of ``job_ids`` that exist; none when the database is down (logged)."""

    def read() -> dict[str, JobRecord]:
        found = (state.store.get_job(job_id) for job_id in job_ids)
        return {r.job_id: r for r in found if r is not None}

    try:
        return await asyncio.to_thread(read)
    except StoreUnavailableError:
        log.warning("job database down: open jobs listed from Temporal's visibility alone")
        return {}


async def _resolve(
    state: AppState, executions: Sequence[WorkflowExecution], status: JobStatus, owner: str | None
) -> list[JobPublic]:
    """The jobs among ``executions`` whose true status is ``status`` (and owner ``owner``)."""
    jobs = [(e, job_id_of(e.id)) for e in executions]
    records = await _records(state, [j for _, j in jobs if j is not None])
    out: list[JobPublic] = []
    for execution, job_id in jobs:
        if job_id is None:
            continue
        record = records.get(job_id)
        attributes = execution.typed_search_attributes
        if true_status(search_attributes.job_status(attributes), record) is not status:
            continue
        job = await _public(state, execution, job_id, status, record)
        if owner is not None and job.owner != owner:
            continue  # a job started without attributes: its owner is known only now
        out.append(job)
    return out


async def _public(
    state: AppState,
    execution: WorkflowExecution,
    job_id: str,
    status: JobStatus,
    record: JobRecord | None,
) -> JobPublic:
    """The API view of a listed job: its record with the live status, else visibility alone."""
    attributes = execution.typed_search_attributes
    tier = attributes.get(search_attributes.AGENT_TIER)
    cost_usd = attributes.get(search_attributes.AGENT_COST_USD)
    if record is not None:
        job = from_record(state, record)
        job.status = status
        job.tier = job.tier or tier
    else:
        job = from_memo(
            state,
            job_id,
            await execution.memo(),
            execution.start_time,
            attributes.get(search_attributes.AGENT_OWNER),
        )
        job.status = status
        job.tier = tier
        job.warning = "no job record yet: shown from Temporal's visibility"
    if cost_usd is not None and cost_usd > job.usage.cost_usd:
        job.usage.cost_usd = cost_usd
    return job


async def correct_open_statuses(state: AppState, jobs: list[JobPublic]) -> list[JobPublic]:
    """``jobs`` (a database page) with each open job's status as its workflow says.

    Running workflows with an ``AgentStatus`` replace the status of a non-terminal record; every
    other job is left as recorded. Returns ``jobs`` unchanged when visibility cannot answer
    (logged). The jobs are changed in place.
    """
    open_ids = [j.workflow_id for j in jobs if not j.status.is_terminal]
    if not open_ids:
        return jobs
    try:
        live = await asyncio.wait_for(_live_statuses(state, open_ids), CORRECTION_TIMEOUT_S)
    except _FALLBACK_ERRORS as exc:
        log.warning(
            "reading the live status of open jobs from Temporal's visibility failed (%s); "
            "listed as recorded",
            _reason(exc, CORRECTION_TIMEOUT_S),
        )
        return jobs
    for job in jobs:
        status = live.get(job.workflow_id)
        if status is not None and not job.status.is_terminal:
            job.status = status
    return jobs


async def _live_statuses(state: AppState, workflow_ids: Sequence[str]) -> dict[str, JobStatus]:
    """``AgentStatus`` of those of ``workflow_ids`` that run and have one."""
    client = await _client_if_enabled(state)
    if client is None:
        return {}
    live: dict[str, JobStatus] = {}
    for start in range(0, len(workflow_ids), IDS_PER_QUERY):
        ids = ", ".join(quote(i) for i in workflow_ids[start : start + IDS_PER_QUERY])
        query = f"{_agent_workflows(state.settings.task_queue)} AND WorkflowId IN ({ids})"
        async for execution in client.list_workflows(
            query, rpc_timeout=timedelta(seconds=VISIBILITY_TIMEOUT_S)
        ):
            status = search_attributes.job_status(execution.typed_search_attributes)
            if status is not None and execution.status is WorkflowExecutionStatus.RUNNING:
                live[execution.id] = status
    return live


def _reason(exc: BaseException, timeout_s: float) -> str:
    """A short description of why visibility did not answer, for the log."""
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout_s:g} s"
    if isinstance(exc, ApiError):
        return exc.message
    return f"{type(exc).__name__}: {exc}"
