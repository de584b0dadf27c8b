"""A job's event stream as Server-Sent Events messages: where they come from, and how they end.

Each event goes out as one SSE message: ``id:`` the reader's resume cursor, ``event:`` its
type, ``data:`` the event as JSON (durable events with ``offset`` filled in). The cursor is the
last durable offset (``"12"``), followed by the last token event's id once the reader has seen
token events (``"12:1700000000000-0"``, see :mod:`api.event_hub`). A client that reconnects
with ``Last-Event-ID`` (or ``?after=<offset>``) misses nothing and sees nothing twice. The stream
ends after the job's terminal event (``final_response`` or ``response_error``) or, when it
cannot go on, after a ``stream_error`` event that says why: never silently.

Where the events come from (decided by :mod:`api.stream_checks` before the response starts):

* A finished job whose record holds its stream (every job recorded since streams are stored):
  the job database. No Temporal call, no worker.
* A running job: the process's :class:`api.event_hub.EventHub`: one read of the job (a query
  every ``AGENTFLOW_STREAM_POLL_MS``, plus its Redis token stream) shared by all its readers in
  this process. Readers hold no update slot, add nothing to the job's history and cannot delay
  its decision or each other.
* A finished job recorded before streams were stored: the hub too (its query wakes a worker
  once per process, not once per reader).
* Jobs without a stream (started before streams existed) and jobs whose history is gone get ONE
  synthesized terminal event built from the job record, preceded by the comment
  ``: synthesized from the job record ...``; it has no ``id:`` and its ``offset`` is ``null``.

The messages are FastAPI's own :class:`fastapi.sse.ServerSentEvent`. Kept by hand: the
keep-alive comment every ``AGENTFLOW_SSE_KEEPALIVE_S`` while no event arrives
(:func:`with_keepalive`). FastAPI pings an idle stream too, but every 15 s fixed by a private
constant, while this interval is a setting (tests and proxies with shorter idle timeouts set it
lower) and its comment text is part of the documented stream.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import suppress
from dataclasses import dataclass
from typing import Final, TypeVar

from fastapi.sse import ServerSentEvent
from pydantic import BaseModel, TypeAdapter

from api.errors import ApiError
from api.event_hub import Cursor, FeedFailed, StreamFailure, past_the_end
from api.job_views import read_job
from api.schemas import JobPublic
from api.state import AppState
from core.errors import StoreUnavailableError
from core.events import TERMINAL_EVENTS, FinalResponse, JobEvent, ResponseError
from core.models import JobStatus

log = logging.getLogger(__name__)

SYNTHESIZED_COMMENT: Final = "synthesized from the job record: this job has no event stream"
"""The comment before a synthesized terminal event (see the module docstring)."""

KEEPALIVE_COMMENT: Final = "keep-alive"
"""The comment sent every ``AGENTFLOW_SSE_KEEPALIVE_S`` while no event arrives."""

T = TypeVar("T")

_STORED = TypeAdapter[list[JobEvent]](list[JobEvent])
"""A stored stream (``JobRecord.events_json``)."""

STREAM_ERROR_EVENT: Final = "stream_error"
"""The SSE event name of :class:`StreamError`."""

FROM_RECORD: Final = frozenset({StreamFailure.NO_STREAM, StreamFailure.GONE, StreamFailure.CLOSED})
"""Feed failures answered with the job's outcome from its record (``stream_error`` if none)."""

RECORD_WAIT_S: Final = 10.0
"""How long a reader whose stream stopped waits for the job's record to become terminal."""

_open_streams = 0


def open_streams() -> int:
    """How many event-stream subscriptions this process holds right now (one per connection)."""
    return _open_streams


class StreamError(BaseModel):
    """The ``data`` of a ``stream_error`` event: why a stream ended without the job's outcome.

    Attributes:
        job_id: the job.
        reason: a :class:`api.event_hub.StreamFailure` value.
        retry: whether reconnecting with the last id may get further.
        detail: one sentence for a person.
    """

    job_id: str
    reason: str
    retry: bool
    detail: str


_FAILURE_DETAIL: Final = {
    StreamFailure.TEMPORAL_UNAVAILABLE: (True, "the job's events could not be read for a while"),
    StreamFailure.INTERNAL: (True, "reading the job's events failed"),
    StreamFailure.TOO_MANY_READERS: (True, "the job has too many readers; try again later"),
    StreamFailure.SHUTTING_DOWN: (True, "this API process is stopping"),
    StreamFailure.CLOSED: (False, "the job's workflow closed without an outcome event"),
    StreamFailure.ALREADY_ENDED: (False, "the job ended; its last event was already sent"),
    StreamFailure.CURSOR_PAST_END: (False, "Last-Event-ID is past the job's last event"),
}


def stream_error_event(job_id: str, reason: StreamFailure) -> ServerSentEvent:
    """The ``stream_error`` message for ``reason``."""
    retry, detail = _FAILURE_DETAIL.get(reason, (False, "the job's stream cannot be read"))
    data = StreamError(job_id=job_id, reason=reason.value, retry=retry, detail=detail)
    return ServerSentEvent(event=STREAM_ERROR_EVENT, data=data)


@dataclass(frozen=True)
class JobEventStream:
    """One connection's read of one job's events, decided before the response starts.

    Attributes:
        state: the app's shared resources.
        job: the job as the calling key sees it (for a synthesized terminal event).
        cursor: where the reader resumes (:class:`api.event_hub.Cursor`).
        source: ``stored`` (the record's stream), ``hub`` (the process's event hub) or
            ``synthesized`` (one terminal event from the record).
        stored: the stored stream's JSON (``source == "stored"``).
    """

    state: AppState
    job: JobPublic
    cursor: Cursor
    source: str
    stored: str | None = None

    async def messages(self) -> AsyncIterator[ServerSentEvent]:
        """The SSE messages of this connection, with a keep-alive comment while idle."""
        keepalive = ServerSentEvent(comment=KEEPALIVE_COMMENT)
        async for message in with_keepalive(
            self._events(), self.state.settings.sse_keepalive_s, keepalive
        ):
            yield message

    async def _events(self) -> AsyncGenerator[ServerSentEvent, None]:
        global _open_streams
        _open_streams += 1
        try:
            if self.source == "stored":
                async for message in self._stored():
                    yield message
            elif self.source == "hub":
                async for message in self._from_hub():
                    yield message
            else:
                async for message in self._synthesized(wait_for_close=False):
                    yield message
        finally:
            _open_streams -= 1

    async def _stored(self) -> AsyncIterator[ServerSentEvent]:
        """The finished job's stream from its record (no Temporal call, no worker)."""
        assert self.stored is not None
        text = self.stored
        if len(text) > 256 * 1024:
            events = await asyncio.to_thread(_STORED.validate_json, text)
        else:
            events = _STORED.validate_json(text)
        cursor = self.cursor
        sent_outcome = False
        for event in events:
            if event.offset is None or event.offset <= cursor.offset:
                continue
            cursor = Cursor(event.offset, cursor.token)
            sent_outcome = event.type in TERMINAL_EVENTS
            yield ServerSentEvent(id=str(cursor), event=event.type.value, data=event)
        if not sent_outcome:
            last = events[-1].offset if events and events[-1].offset is not None else -1
            yield stream_error_event(self.job.job_id, past_the_end(cursor.offset, last))

    async def _from_hub(self) -> AsyncIterator[ServerSentEvent]:
        """The running job's events through the process's hub (shared with its readers)."""
        hub = self.state.event_hub
        job_id = self.job.job_id
        try:
            feed = hub.attach(job_id)
        except OverflowError:  # more came in since the check before the stream
            yield stream_error_event(job_id, StreamFailure.TOO_MANY_READERS)
            return
        try:
            async for entry, cursor in hub.read(feed, self.cursor):
                event = entry.event
                yield ServerSentEvent(id=str(cursor), event=event.type.value, data=event)
        except FeedFailed as failed:
            if failed.reason in FROM_RECORD:
                log.info("job %s: no readable stream (%s); answering from its record", job_id,
                         failed.reason.value)  # fmt: skip
                async for message in self._synthesized(wait_for_close=True):
                    yield message
                return
            yield stream_error_event(job_id, failed.reason)
        finally:
            hub.detach(feed)

    async def _synthesized(self, *, wait_for_close: bool) -> AsyncIterator[ServerSentEvent]:
        """One terminal event from the job record, once the job ended (else ``stream_error``).

        With ``wait_for_close`` the record is read again until it is terminal, for up to
        :data:`RECORD_WAIT_S` (the workflow writes it just before it closes).
        """
        job_id = self.job.job_id
        job = self.job
        deadline = time.monotonic() + (RECORD_WAIT_S if wait_for_close else 0.0)
        while True:
            if job.status.is_terminal:
                break
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.5)
            try:
                job = await read_job(self.state, job_id)
            except (ApiError, StoreUnavailableError) as exc:
                log.warning("event stream of job %s: its record is unreadable: %s", job_id, exc)
                continue
        event = synthesize_terminal_event(job)
        if event is None:
            log.warning("job %s ended without a recorded outcome; stream_error sent", job_id)
            yield stream_error_event(job_id, StreamFailure.CLOSED)
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


async def with_keepalive(
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
