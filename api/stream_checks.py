"""Checks before a job's event stream starts: everything that can still be an HTTP status.

An unknown job or another key's job is 404; a ``Last-Event-ID`` this API did not send is 422;
more than ``AGENTFLOW_SSE_MAX_READERS_PER_JOB`` readers of one job in this process is 429;
Temporal unreachable for a job that needs it is 503 (also a finished job recorded before
streams were stored whose offset query no worker answers within :data:`CHECK_TIMEOUT`, with
``Retry-After``); a job whose history is gone and that recorded no outcome is 409. The result is
the connection's :class:`api.streams.JobEventStream`, with where its events come from.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Final

from temporalio.client import WorkflowQueryFailedError
from temporalio.contrib.workflow_streams import WorkflowStreamClient
from temporalio.service import RPCError, RPCStatusCode

from api.errors import (
    JobNotFoundError,
    JobStateConflictError,
    TemporalUnavailableError,
    TooManyRequestsError,
    UnprocessableRequestError,
)
from api.event_hub import Cursor
from api.job_views import from_record, get_record
from api.ownership import read_own_job
from api.schemas import JobPublic
from api.state import AppState
from api.streams import JobEventStream
from core.auth import Principal
from core.errors import StoreUnavailableError
from core.ids import workflow_id_for

CHECK_TIMEOUT: Final = timedelta(seconds=5)
"""How long each check before a stream waits: Temporal describing the job's workflow, and a
worker answering the stream's offset query when the workflow is closed."""

MAX_OFFSET: Final = 2**53 - 1
"""Largest offset a client may name (``Last-Event-ID``, ``after``): the largest JSON-safe int."""


async def open_stream(
    state: AppState,
    principal: Principal,
    job_id: str,
    last_event_id: str | None,
    after: int | None,
) -> JobEventStream:
    """The connection's stream of ``job_id`` for the calling key, after every check.

    Args:
        state: the app's shared resources.
        principal: the calling key.
        job_id: the job.
        last_event_id: the ``Last-Event-ID`` header (wins over ``after``).
        after: the last durable offset seen (``?after=``).

    Raises:
        JobNotFoundError: unknown job, or another key's (404).
        UnprocessableRequestError: a ``Last-Event-ID`` this API never sends (422).
        TooManyRequestsError: the job has ``AGENTFLOW_SSE_MAX_READERS_PER_JOB`` readers in this
            process (429).
        TemporalUnavailableError: Temporal cannot be reached, or a finished job's stream is not
            stored and no worker answers its offset query (503).
        JobStateConflictError: the workflow's history is gone and the job recorded no outcome
            (409).
    """
    if last_event_id is not None:
        try:
            cursor = Cursor.parse(last_event_id)
        except ValueError:
            raise UnprocessableRequestError(
                "Last-Event-ID is not an event id this API sent (expected `<offset>` or "
                "`<offset>:<token id>`)"
            ) from None
        if cursor.offset > MAX_OFFSET:
            raise UnprocessableRequestError("Last-Event-ID: the offset is out of range") from None
    else:
        cursor = Cursor(-1 if after is None else after)
    job, stored = await own_job_and_stream(state, principal, job_id)
    if stored is not None:
        return JobEventStream(state, job, cursor, "stored", stored)
    if state.event_hub.readers(job_id) >= state.event_hub.max_readers:
        raise TooManyRequestsError(
            f"job {job_id} has {state.event_hub.max_readers} readers in this process; "
            "try again later",
            headers={"Retry-After": "5"},
        )
    client = await state.temporal.client()
    handle = client.get_workflow_handle(workflow_id_for(job_id))
    if not job.status.is_terminal:
        try:
            await handle.describe(rpc_timeout=CHECK_TIMEOUT)
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise TemporalUnavailableError(
                    "could not read the job's workflow; try again"
                ) from exc
            raise JobStateConflictError(
                f"job {job_id} has no workflow history left and no recorded outcome; "
                "its events cannot be read"
            ) from exc
        return JobEventStream(state, job, cursor, "hub")
    # Finished, but recorded before streams were stored: the closed workflow's stream is read
    # with queries, which only a worker answers (checked once per process: a job the hub
    # already reads needs no check).
    if state.event_hub.watching(job_id):
        return JobEventStream(state, job, cursor, "hub")
    try:
        await handle.describe(rpc_timeout=CHECK_TIMEOUT)
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise TemporalUnavailableError("could not read the job's workflow; try again") from exc
        return JobEventStream(state, job, cursor, "synthesized")
    stream = WorkflowStreamClient.create(client, handle.id)
    try:
        await asyncio.wait_for(stream.get_offset(), CHECK_TIMEOUT.total_seconds())
    except WorkflowQueryFailedError:  # no stream handler: started before event streams
        return JobEventStream(state, job, cursor, "synthesized")
    except (TimeoutError, RPCError) as exc:
        raise TemporalUnavailableError(
            f"no worker answered within {CHECK_TIMEOUT.total_seconds():g} s to read the events of "
            f"job {job_id}; try again",
            headers={"Retry-After": "5"},
        ) from exc
    return JobEventStream(state, job, cursor, "hub")


async def own_job_and_stream(
    state: AppState, principal: Principal, job_id: str
) -> tuple[JobPublic, str | None]:
    """The job as the key sees it, and its stored stream when it has one.

    From the job's record alone when there is one (no progress query per reader); through
    :func:`api.job_views.read_job` otherwise (a job not yet recorded, or the database down).

    Raises:
        JobNotFoundError: unknown, or another key's job (404, revealing nothing).
        JobStateConflictError: no record, no workflow history (409).
    """
    try:
        record = await get_record(state, job_id)
    except StoreUnavailableError:
        record = None
    if record is None:
        return await read_own_job(state, principal, job_id), None
    if not principal.owns(record.owner):
        raise JobNotFoundError(f"job {job_id} not found")
    job = from_record(state, record)
    if job.status.is_terminal and record.events_json:
        return job, record.events_json
    return job, None
