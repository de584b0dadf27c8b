"""``GET /v1/jobs/{job_id}/events``: the job's event stream as Server-Sent Events.

Each event of the job's stream (:mod:`core.events`) goes out as one SSE message: ``id:`` its
stream offset, ``event:`` its type, ``data:`` the event as JSON with ``offset`` filled in. A
client that reconnects with ``Last-Event-ID: n`` (or ``?after=n``) reads from offset ``n + 1``:
it misses nothing and sees nothing twice. The stream ends after the job's terminal event
(``final_response`` or ``response_error``), or when the job's workflow closed and its stream is
drained.

Built on FastAPI's own SSE support (``fastapi.sse``): the route is an async generator of
``ServerSentEvent`` items with ``response_class=EventSourceResponse``; FastAPI encodes them,
sets ``Cache-Control: no-cache`` and ``X-Accel-Buffering: no``, and cancels the generator when
the client disconnects. Its own keep-alive (``: ping`` after 15 s without an item) is a private
module constant with no per-route setting, so the route sends its own comment every
``AGENTFLOW_SSE_KEEPALIVE_S`` while no event arrives (with a value above 15 s, FastAPI's ping
comes first).

Reading: one ``WorkflowStreamClient.subscribe`` per connection, on the job's one topic
(:data:`core.events.EVENTS_TOPIC`). It long-polls the workflow with an update while the job runs
(an update waits for a worker; while workers restart the connection stays open, with
keep-alives) and drains with a query once the workflow closed. At most one poll answer (the
library caps it near 1 MB) is held per connection, and the next is fetched only after the
previous events were handed to the client. A disconnecting client cancels the subscription
(:func:`open_streams` counts the live ones).

Hazards, and what the route does:

* Checked before the stream starts (so they can still be an HTTP status): an unknown job or
  another key's job is a 404; Temporal unreachable is a 503; a job whose workflow history is
  gone and that recorded no outcome is a 409. A closed workflow's stream is read with queries,
  which only a worker answers (without one the server holds a query for about 30 s and then
  fails it), so for a closed workflow a worker must answer the stream's offset query within
  :data:`CHECK_TIMEOUT` first: otherwise 503 with ``Retry-After``.
* Jobs without a stream (workflows started before streams existed have no poll handler, so the
  poll update or query fails) and jobs whose history is gone (Temporal's retention) get ONE
  synthesized terminal event built from the job record, preceded by the comment
  ``: synthesized from the job record ...``; it has no ``id:`` and its ``offset`` is ``null``,
  since it is not part of any stream. A job without a stream that still runs is waited for
  (keep-alives meanwhile) and then answered the same way.
* Temporal lost mid-stream: the stream ends; the client reconnects with ``Last-Event-ID``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import suppress
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any, Final, TypeVar, cast

from fastapi import APIRouter, Depends, Header, Query
from fastapi.sse import EventSourceResponse, ServerSentEvent
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.contrib.workflow_streams import WorkflowStreamClient
from temporalio.service import RPCError, RPCStatusCode

from api.deps import ReadKey, StateDep
from api.errors import ApiError, JobStateConflictError, TemporalUnavailableError
from api.job_views import read_job
from api.openapi import error_responses
from api.routes.jobs import JobIdPath, _read_own_job
from api.schemas import JobPublic
from api.state import AppState
from core.errors import StoreUnavailableError
from core.events import (
    EVENTS_TOPIC,
    TERMINAL_EVENTS,
    FinalResponse,
    JobEvent,
    ResponseError,
)
from core.ids import workflow_id_for
from core.models import JobStatus

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

CHECK_TIMEOUT: Final = timedelta(seconds=5)
"""How long each check before a stream waits: Temporal describing the job's workflow, and a
worker answering the stream's offset query when the workflow is closed."""

MAX_OFFSET: Final = 2**53 - 1
"""Largest offset a client may name (``Last-Event-ID``, ``after``): the largest JSON-safe int."""

SYNTHESIZED_COMMENT: Final = "synthesized from the job record: this job has no event stream"
"""The comment before a synthesized terminal event (see the module docstring)."""

KEEPALIVE_COMMENT: Final = "keep-alive"
"""The comment sent every ``AGENTFLOW_SSE_KEEPALIVE_S`` while no event arrives."""

T = TypeVar("T")

_JOB_EVENT = cast("type[JobEvent]", JobEvent)
"""``JobEvent`` (an annotated union) where a ``type`` is expected (the pydantic converter
takes it)."""

_open_streams = 0


def open_streams() -> int:
    """How many event-stream subscriptions this process holds right now (one per connection)."""
    return _open_streams


@dataclass(frozen=True)
class JobEventStream:
    """One connection's read of one job's events, decided before the response starts.

    Attributes:
        state: the app's shared resources.
        client: the connected Temporal client.
        job: the job as the calling key sees it (for a synthesized terminal event).
        from_offset: the first stream offset to send (one past the client's last seen).
        has_stream: False when the job has no stream to read (Temporal no longer has its
            workflow, or the closed workflow has no stream handler): the stream is then
            one synthesized terminal event.
    """

    state: AppState
    client: Client
    job: JobPublic
    from_offset: int
    has_stream: bool

    async def messages(self) -> AsyncIterator[ServerSentEvent]:
        """The SSE messages of this connection, with a keep-alive comment while idle."""
        keepalive = ServerSentEvent(comment=KEEPALIVE_COMMENT)
        async for message in _with_keepalive(
            self._events(), self.state.settings.sse_keepalive_s, keepalive
        ):
            yield message

    async def _events(self) -> AsyncGenerator[ServerSentEvent, None]:
        global _open_streams
        _open_streams += 1
        try:
            if not self.has_stream:
                async for message in self._synthesized(wait_for_close=False):
                    yield message
                return
            async for message in self._subscribed():
                yield message
        finally:
            _open_streams -= 1

    async def _subscribed(self) -> AsyncIterator[ServerSentEvent]:
        """The stream's events from ``from_offset`` until a terminal one (or the drained end)."""
        job_id = self.job.job_id
        workflow_id = workflow_id_for(job_id)
        # A reader polls no more often than the generation activity sends its token batches.
        cooldown = timedelta(milliseconds=self.state.settings.stream_flush_ms)
        stream = WorkflowStreamClient.create(self.client, workflow_id)
        next_offset = self.from_offset
        while True:
            try:
                async for item in stream.subscribe(
                    [EVENTS_TOPIC],
                    from_offset=next_offset,
                    result_type=_JOB_EVENT,
                    poll_cooldown=cooldown,
                ):
                    if item.offset < next_offset:
                        continue  # never send an offset twice, whatever the reader returns
                    event: JobEvent = item.data
                    event.offset = item.offset
                    next_offset = item.offset + 1
                    yield ServerSentEvent(id=str(item.offset), event=event.type.value, data=event)
                    if event.type in TERMINAL_EVENTS:
                        return
                return  # the workflow closed and its stream is drained
            except WorkflowUpdateRPCTimeoutOrCancelledError as exc:
                if isinstance(exc.__cause__, asyncio.CancelledError):
                    raise exc.__cause__ from None  # the client left: never swallow that
                # The poll was not accepted in time (no worker for a while); ask again from
                # where this connection is: the keep-alives hold the connection meanwhile.
                await asyncio.sleep(cooldown.total_seconds())
            except (WorkflowUpdateFailedError, WorkflowQueryFailedError):
                # The workflow has no poll handler: it was started before event streams.
                log.info("job %s has no event stream; answering from its record", job_id)
                async for message in self._synthesized(wait_for_close=True):
                    yield message
                return
            except RPCError as exc:
                if exc.status == RPCStatusCode.NOT_FOUND:  # history gone since the check
                    async for message in self._synthesized(wait_for_close=False):
                        yield message
                    return
                log.warning("event stream of job %s ended: Temporal failed: %s", job_id, exc)
                return

    async def _synthesized(self, *, wait_for_close: bool) -> AsyncIterator[ServerSentEvent]:
        """One terminal event from the job record, once the job ended (nothing if it did not)."""
        job_id = self.job.job_id
        if wait_for_close:
            handle = self.client.get_workflow_handle(workflow_id_for(job_id))
            try:
                await handle.result()
            except WorkflowFailureError:
                pass  # it ended; how is in its record
            except RPCError as exc:
                if exc.status != RPCStatusCode.NOT_FOUND:
                    log.warning("event stream of job %s ended: Temporal failed: %s", job_id, exc)
                    return
        job = self.job
        if wait_for_close:
            try:
                job = await read_job(self.state, job_id)
            except (ApiError, StoreUnavailableError) as exc:
                log.warning(
                    "event stream of job %s ended: its record is unreadable: %s", job_id, exc
                )
                return
        event = synthesize_terminal_event(job)
        if event is None:
            log.warning("job %s ended without a recorded outcome; no terminal event", job_id)
            return
        yield ServerSentEvent(comment=SYNTHESIZED_COMMENT, event=event.type.value, data=event)


def synthesize_terminal_event(job: JobPublic) -> FinalResponse | ResponseError | None:
    """The terminal event a job would have published, built from its record.

    Args:
        job: the job as the API shows it.

    Returns:
        ``final_response`` for a COMPLETED job, ``response_error`` for the other terminal
        statuses, ``None`` while the job has not ended. ``offset`` is ``None`` and ``revision``
        0: the event is not part of any stream.
    """
    if not job.status.is_terminal:
        return None
    result = job.result
    at = job.completed_at or job.updated_at
    if job.status is JobStatus.COMPLETED:
        tier = None
        if result is not None:
            tier = result.escalated_to or (result.selection.tier if result.selection else None)
        return FinalResponse(
            job_id=job.job_id,
            at=at,
            answer=(result.answer if result else None) or "",
            simulated=result.simulated if result else False,
            response_cache_hit=job.response_cache_hit,
            tier=tier,
            escalated_to=result.escalated_to if result else None,
            usage=list(result.usage) if result else [],
            total_cost_usd=result.total_cost_usd if result else job.usage.cost_usd,
        )
    return ResponseError(
        job_id=job.job_id,
        at=at,
        status=job.status,
        error=(result.error if result else None) or job.error,
        error_type=result.error_type if result else None,
    )


async def _with_keepalive(
    source: AsyncGenerator[T, None], interval_s: float, keepalive: T
) -> AsyncIterator[T]:
    """``source``'s items, and ``keepalive`` whenever none came for ``interval_s`` seconds.

    The next item is awaited in a task that a keep-alive does not disturb (cancelling the
    source's ``__anext__`` would end it); leaving early cancels that task, so the source's own
    clean-up runs (the subscription's poll is cancelled).
    """

    async def next_item() -> T:
        return await anext(source)

    pending: asyncio.Task[T] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.create_task(next_item())
            done, _ = await asyncio.wait({pending}, timeout=interval_s)
            if not done:
                yield keepalive
                continue
            finished, pending = pending, None
            try:
                item = finished.result()
            except StopAsyncIteration:
                return
            yield item
    finally:
        if pending is not None:
            pending.cancel()
            with suppress(asyncio.CancelledError):
                await pending
        await source.aclose()


async def open_event_stream(
    job_id: JobIdPath,
    principal: ReadKey,
    state: StateDep,
    last_event_id: Annotated[
        int | None,
        Header(
            alias="Last-Event-ID",
            ge=0,
            le=MAX_OFFSET,
            description="The last event id (offset) the client saw; the stream resumes after it. "
            "Browsers' EventSource sends it when reconnecting. Wins over `after`.",
        ),
    ] = None,
    after: Annotated[
        int | None,
        Query(
            ge=0,
            le=MAX_OFFSET,
            description="The same as `Last-Event-ID`, for clients that cannot set headers.",
        ),
    ] = None,
) -> JobEventStream:
    """Check everything that can still be an HTTP status, before the stream starts.

    Raises:
        JobNotFoundError: unknown job, or another key's (404).
        TemporalUnavailableError: Temporal cannot be reached, or the workflow is closed and no
            worker answers its stream's offset query (503).
        JobStateConflictError: the workflow's history is gone and the job recorded no outcome
            (409).
    """
    job = await _read_own_job(state, principal, job_id)
    client = await state.temporal.client()
    last_seen = last_event_id if last_event_id is not None else after
    from_offset = 0 if last_seen is None else last_seen + 1
    handle = client.get_workflow_handle(workflow_id_for(job_id))
    try:
        description = await handle.describe(rpc_timeout=CHECK_TIMEOUT)
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise TemporalUnavailableError("could not read the job's workflow; try again") from exc
        if not job.status.is_terminal:
            raise JobStateConflictError(
                f"job {job_id} has no workflow history left and no recorded outcome; "
                "its events cannot be read"
            ) from exc
        return JobEventStream(state, client, job, from_offset, has_stream=False)
    if description.status == WorkflowExecutionStatus.RUNNING:
        return JobEventStream(state, client, job, from_offset, has_stream=True)
    # Closed: the whole stream is read with queries, which only a worker answers.
    stream = WorkflowStreamClient.create(client, handle.id)
    try:
        await asyncio.wait_for(stream.get_offset(), CHECK_TIMEOUT.total_seconds())
    except WorkflowQueryFailedError:  # no stream handler: started before event streams
        return JobEventStream(state, client, job, from_offset, has_stream=False)
    except (TimeoutError, RPCError) as exc:
        raise TemporalUnavailableError(
            f"no worker answered within {CHECK_TIMEOUT.total_seconds():g} s to read the events of "
            f"job {job_id}; try again",
            headers={"Retry-After": "5"},
        ) from exc
    return JobEventStream(state, client, job, from_offset, has_stream=True)


def _json_error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """:func:`api.openapi.error_responses` with their bodies documented as JSON.

    FastAPI documents a response ``model`` under the route's own media type, which here is
    ``text/event-stream``; the error answers are JSON, so each names its schema explicitly (the
    error models are in the schema's components: every other route uses them).
    """
    responses: dict[int | str, dict[str, Any]] = {}
    for code, entry in error_responses(*codes).items():
        documented = {k: v for k, v in entry.items() if k != "model"}
        schema = {"$ref": f"#/components/schemas/{entry['model'].__name__}"}
        documented["content"] = {"application/json": {"schema": schema}}
        responses[code] = documented
    return responses


_STREAM_DESCRIPTION = (
    "The job's events as Server-Sent Events: `id` is the stream offset, `event` the type, "
    "`data` the event JSON (`core.events.JobEvent`, with `offset`). Keep-alive comments while "
    "idle; the stream closes after `final_response` or `response_error`."
)


@router.get(
    "/{job_id}/events",
    response_class=EventSourceResponse,
    response_description=_STREAM_DESCRIPTION,
    responses=_json_error_responses(401, 403, 404, 409, 422, 503),
)
async def stream_job_events(
    stream: Annotated[JobEventStream, Depends(open_event_stream)],
) -> AsyncIterator[JobEvent]:
    """Follow a job live: every event it published, then each new one as it happens.

    Resume after a dropped connection with `Last-Event-ID: <last id seen>` (or `?after=`):
    nothing is missed and nothing repeats. A finished job replays all its events and closes. A
    job without an event stream (started before streams existed, or whose workflow history is
    gone) gets one terminal event built from its record, after the comment
    `: synthesized from the job record ...`, with no `id` and `offset: null`. When Temporal is
    lost mid-stream the stream ends; reconnect with `Last-Event-ID`. A finished job's events are
    read by a worker: with none running the answer is 503.
    """
    # The messages are ServerSentEvent items (FastAPI sends those as they are); the annotation
    # gives OpenAPI the schema of each message's `data`.
    async for message in stream.messages():
        yield message  # type: ignore[misc]
