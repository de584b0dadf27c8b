"""Read one job's event stream (``GET /v1/jobs/{id}/events``) to its terminal event.

The Server-Sent Events format is parsed by ``httpx-sse`` (:func:`httpx_sse.aconnect_sse`,
:class:`httpx_sse.EventSource`), which replaced a hand-written parser. A dropped connection is
resumed with ``Last-Event-ID``, so nothing is missed or printed twice; the reconnections are a
declared ``tenacity`` policy (:func:`reconnecting`), which replaced a hand-written sleep loop.

Kept by hand, and why:

* A run of failures starts again after real progress: a connection that delivered an event and
  then dropped begins a new run (its drop is the run's first failure, followed by
  :data:`RECONNECT_FIRST_S`), because a long wait (a job at its approval gate) may see its
  connection dropped any number of times. tenacity counts attempts from the start of a call and
  cannot reset that count, so each run is one call of the policy.
* httpx-sse does not expose comment lines. A job without a stream gets one synthesized terminal
  event, announced by a comment; the CLI recognises it by what the API documents for it instead:
  a terminal event without ``offset``.
* httpx-sse keeps the last event id across messages and cannot tell a missing ``id:`` from an
  empty one; the API never sends an empty id, so any non-empty id is the resume cursor. Once an
  id was seen it also dispatches the blank line after a keep-alive comment as a message without
  data, which the format says is no message: those are skipped.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Final

import httpx
from httpx_sse import SSEError, aconnect_sse
from pydantic import TypeAdapter, ValidationError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from cli.follow.view import FollowView
from cli.runner import error_detail
from core.events import FinalResponse, JobEvent, ResponseError
from core.models import AgentResult, JobStatus

MAX_RECONNECTS: Final = 5
"""Failed connection attempts in a row before ``--follow`` gives up (an event resets it)."""

RECONNECT_FIRST_S: Final = 0.5
"""Wait before the first reconnection, in seconds; doubled after each failure (at most
:data:`RECONNECT_MAX_S`)."""

RECONNECT_MAX_S: Final = 8.0
"""Longest wait between two reconnections, in seconds."""

READ_TIMEOUT_S: Final = 60.0
"""Longest silence on the stream before the connection counts as lost, in seconds (the API
sends a keep-alive comment every ``AGENTFLOW_SSE_KEEPALIVE_S``, 15 s by default)."""

STREAM_ERROR_EVENT: Final = "stream_error"
"""The SSE event name the API sends when a stream cannot go on (``api.streams.StreamError``)."""

_EVENT = TypeAdapter[JobEvent](JobEvent)

MAX_LINE_BYTES: Final = 1024 * 1024
"""Longest line of the event stream the CLI reads, in bytes; a longer one ends the follow (the
API's events are a few KiB; without a bound a broken server could fill the CLI's memory)."""

MAX_UNKNOWN_EVENTS: Final = 1000
"""Events in a row this CLI cannot read before it stops following (a stream that never sends
one it knows would otherwise be read forever)."""


class _BoundedLines(httpx.AsyncByteStream):
    """The response body, refused once one line runs past :data:`MAX_LINE_BYTES`.

    httpx-sse keeps an unfinished line in memory until its end arrives; this wrapper stops the
    read first.
    """

    def __init__(self, inner: httpx.AsyncByteStream, limit: int) -> None:
        self._inner = inner
        self._limit = limit

    async def __aiter__(self) -> AsyncIterator[bytes]:
        run = 0
        async for chunk in self._inner:
            end = max(chunk.rfind(b"\n"), chunk.rfind(b"\r"))
            run = run + len(chunk) if end < 0 else len(chunk) - end - 1
            if run > self._limit:
                raise FollowError(
                    f"the event stream sent a line over {self._limit // 1024} KiB; stopped reading"
                )
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


def cursor_key(event_id: str) -> tuple[int, int, int] | None:
    """The order of an event id (``N`` or ``N:<ms>-<seq>``); ``None`` for another shape.

    Ids of one job's stream increase: a durable offset, then the token events after it.
    """
    offset, _, token = event_id.partition(":")
    ms, _, seq = token.partition("-")
    try:
        return int(offset), int(ms or 0), int(seq or 0)
    except ValueError:
        return None


class FollowError(Exception):
    """``--follow`` could not read the job's events (the API refused, or too many failures)."""


class StreamDropped(Exception):
    """One connection ended before the job's terminal event (retryable).

    Attributes:
        problem: what happened, for a person.
        progressed: whether the connection delivered at least one event before it ended.
    """

    def __init__(self, problem: str, *, progressed: bool) -> None:
        super().__init__(problem)
        self.problem = problem
        self.progressed = progressed


@dataclass
class StreamReader:
    """Reads one job's stream, one connection per :meth:`read_once`, remembering the cursor.

    Attributes:
        client: an httpx client on the API's base URL, with the API key's header.
        job_id: the job.
        view: where the events (and the CLI's own notes) are printed.
        last_id: the last event id received (sent as ``Last-Event-ID`` when reconnecting).
    """

    client: httpx.AsyncClient
    job_id: str
    view: FollowView
    last_id: str | None = field(default=None)

    async def read_once(self) -> FinalResponse | ResponseError:
        """Open one connection and show its events until the job's terminal event.

        Returns:
            The terminal event (from the stream, or built from the job's record when the
            stream ended without one).

        Raises:
            FollowError: the API refused the stream (not 200, and not 503).
            StreamDropped: the connection failed or ended first (a 503, a transport error, a
                ``stream_error`` event, the end of the body).
        """
        headers = {} if self.last_id is None else {"Last-Event-ID": self.last_id}
        timeout = httpx.Timeout(10.0, read=READ_TIMEOUT_S)
        progressed = False
        try:
            async with aconnect_sse(
                self.client,
                "GET",
                f"/v1/jobs/{self.job_id}/events",
                headers=headers,
                timeout=timeout,
            ) as source:
                response = source.response
                if response.status_code != httpx.codes.OK:
                    await response.aread()
                    problem = error_detail(response)
                    if response.status_code != httpx.codes.SERVICE_UNAVAILABLE:
                        raise FollowError(f"the API refused the event stream: {problem}")
                    raise StreamDropped(problem, progressed=False)
                if isinstance(response.stream, httpx.AsyncByteStream):
                    response.stream = _BoundedLines(response.stream, MAX_LINE_BYTES)
                unknown = 0
                async for message in source.aiter_sse():
                    if not message.data:  # no data, no message (httpx-sse dispatches a keep-alive
                        continue  # comment as an empty message once an id was seen)
                    if message.id:
                        key = cursor_key(message.id)
                        last = cursor_key(self.last_id) if self.last_id is not None else None
                        if key is not None and last is not None and key <= last:
                            continue  # already shown (a server that ignored Last-Event-ID)
                        self.last_id = message.id
                    if message.event == STREAM_ERROR_EVENT:
                        # The API could not go on: the record may still say how the job
                        # ended; else reconnect.
                        self.view.note(f"the stream stopped: {_stream_error_detail(message.data)}")
                        break
                    try:
                        event = _EVENT.validate_json(message.data)
                    except ValidationError:
                        unknown += 1
                        if unknown >= MAX_UNKNOWN_EVENTS:
                            raise FollowError(
                                f"the stream sent {unknown} events in a row this CLI cannot "
                                "read; stopped following"
                            ) from None
                        if unknown <= 3:
                            self.view.note(
                                f"skipped an event this CLI does not know: {message.event}"
                            )
                        continue
                    unknown = 0
                    progressed = True
                    terminal = isinstance(event, FinalResponse | ResponseError)
                    if terminal and event.offset is None:
                        self.view.note(
                            "this job has no event stream; its outcome is from its record"
                        )
                    self.view.show(event)
                    if isinstance(event, FinalResponse | ResponseError):
                        return event
        except SSEError as exc:  # before TransportError: httpx-sse's error is one
            raise StreamDropped(f"not an event stream ({exc})", progressed=False) from exc
        except httpx.TransportError as exc:
            problem = f"connection lost ({type(exc).__name__})"
            raise StreamDropped(problem, progressed=progressed) from exc
        ended = await ended_from_record(self.client, self.job_id)
        if ended is not None:
            self.view.show(ended)
            return ended
        raise StreamDropped("the stream ended before the job did", progressed=progressed)

    def announce(self, problem: str, delay_s: float) -> None:
        """Print that the stream is resumed after ``delay_s`` seconds."""
        after = f" after event {self.last_id}" if self.last_id is not None else ""
        self.view.note(f"{problem}; reconnecting{after} in {delay_s:g} s")


def _failed_without_progress(exc: BaseException) -> bool:
    return isinstance(exc, StreamDropped) and not exc.progressed


def reconnecting(reader: StreamReader, attempts: int) -> AsyncRetrying:
    """The policy of one run of reconnections, after the drop that started it.

    Retries a connection that failed before any event (:class:`StreamDropped` without
    progress), at most ``attempts`` times, waiting twice :data:`RECONNECT_FIRST_S`, then
    doubling up to :data:`RECONNECT_MAX_S` (the wait before the first reconnection is the
    caller's). A connection that made progress ends the run with its :class:`StreamDropped`;
    :class:`FollowError` is never retried.
    """

    def announce(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        delay = state.next_action.sleep if state.next_action is not None else 0.0
        reader.announce(exc.problem if isinstance(exc, StreamDropped) else repr(exc), delay)

    return AsyncRetrying(
        retry=retry_if_exception(_failed_without_progress),
        stop=stop_after_attempt(attempts),
        wait=wait_exponential(multiplier=2 * RECONNECT_FIRST_S, max=RECONNECT_MAX_S),
        before_sleep=announce,
        reraise=True,
    )


async def follow_events(
    client: httpx.AsyncClient,
    job_id: str,
    view: FollowView,
    max_reconnects: int = MAX_RECONNECTS,
) -> FinalResponse | ResponseError:
    """Read the job's event stream until its terminal event, reconnecting when it drops.

    Args:
        client: an httpx client on the API's base URL, with the API key's header.
        job_id: the job.
        view: where the events are printed.
        max_reconnects: failed attempts in a row before giving up.

    Returns:
        The job's terminal event (a synthesized one for a job without a stream).

    Raises:
        FollowError: the API refused the stream (404, 401, ...), or ``max_reconnects``
            attempts in a row failed.
    """
    reader = StreamReader(client, job_id, view)
    try:
        return await reader.read_once()
    except StreamDropped as first:
        dropped = first
    while True:  # one run of reconnections per drop that followed progress
        if max_reconnects < 1:
            raise FollowError(f"gave up after 0 reconnections: {dropped.problem}")
        reader.announce(dropped.problem, RECONNECT_FIRST_S)
        await asyncio.sleep(RECONNECT_FIRST_S)
        try:
            return await reconnecting(reader, max_reconnects)(reader.read_once)
        except StreamDropped as exc:
            if not exc.progressed:
                raise FollowError(
                    f"gave up after {max_reconnects} reconnections: {exc.problem}"
                ) from None
            dropped = exc


def _stream_error_detail(data: str) -> str:
    """The reason and sentence of a ``stream_error`` event's data (raw text when not JSON)."""
    try:
        body = json.loads(data)
    except ValueError:
        return data[:200]
    if not isinstance(body, dict):
        return data[:200]
    return f"{body.get('detail', '')} ({body.get('reason', 'unknown')})"


async def ended_from_record(
    client: httpx.AsyncClient, job_id: str
) -> FinalResponse | ResponseError | None:
    """The job's outcome from ``GET /v1/jobs/{id}`` when it ended; ``None`` while it runs.

    A stream can end without a terminal event when the workflow closed without publishing one
    (terminated from the Web UI); the job's record still says how it ended.
    """
    try:
        response = await client.get(f"/v1/jobs/{job_id}")
    except httpx.HTTPError:
        return None
    if not response.is_success:
        return None
    try:
        job = response.json()
        status = JobStatus(job["status"])
        result = AgentResult.model_validate(job["result"]) if job.get("result") else None
    except (ValueError, KeyError, TypeError) as exc:  # JSON, enum and model errors included
        raise FollowError(
            f"the API's job record is not one this CLI can read ({type(exc).__name__})"
        ) from None
    if not status.is_terminal:
        return None
    if status is JobStatus.COMPLETED and result is not None:
        return FinalResponse(
            job_id=job_id,
            answer=result.answer or "",
            simulated=result.simulated,
            response_cache_hit=result.response_cache_hit,
            tier=result.escalated_to or (result.selection.tier if result.selection else None),
            escalated_to=result.escalated_to,
            usage=result.usage,
            total_cost_usd=result.total_cost_usd,
        )
    return ResponseError(job_id=job_id, status=status, error=job.get("error"))


__all__ = [
    "MAX_RECONNECTS",
    "FollowError",
    "StreamDropped",
    "StreamReader",
    "ended_from_record",
    "follow_events",
    "reconnecting",
]
