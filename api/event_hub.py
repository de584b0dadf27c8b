"""The event hub: one read of each watched job per API process, fanned out to every reader.

Why: each SSE reader used to long-poll the job's workflow with its own Temporal update. A
workflow takes at most 10 updates in flight, so ten readers made the job impossible to approve
(the decision is an update too), more got streams that ended silently, and every poll answer
added about five events to the job's history, so viewers multiplied history. Now:

* **Durable events** (:mod:`core.events`, the job's workflow stream) are read by ONE task per job
  per API process, :class:`JobFeed`, with the stream's poll **query** every
  ``AGENTFLOW_STREAM_POLL_MS``: a query holds no update slot and writes nothing to history, so
  decisions, cancels and progress queries always have capacity, and the job's history is the
  same with 0 or 1,000 readers.
* **Token events** come from the job's Redis token stream (:mod:`infra.token_channel`), read by
  ONE task per API process for all watched jobs (``XREAD`` over their streams, blocking up to
  :data:`TOKEN_BLOCK_MS`).
* Each feed keeps what it read in one list that every reader of the job walks with its own
  cursor: a reader holds an index, not a copy, so a slow reader costs no memory, and nothing a
  reader sends can reach another reader or the workflow.
* Readers of a **finished** job never come here: its stream is read from the job database
  (stored with the terminal record), and no worker is woken.

Resume: the SSE ``id`` of each message is the reader's cursor, ``"<offset>"`` while it has seen
no token event and ``"<offset>:<token id>"`` after (the last durable offset, ``-1`` before
any, and the Redis stream id of the last token event). A reader that reconnects with it gets
the durable events after the offset and the token events after the token id: nothing lost and
nothing twice, through any API process.

Every reader ends with a terminal event: the job's ``final_response`` or ``response_error``,
or, when the stream cannot go on, a ``stream_error`` event saying why (:class:`StreamFailure`).

One module on purpose (about 570 lines): the hub, its per-job feed and the token reader share one
lifecycle (start on the first reader, linger, stop) that is easier to check in one place; the
routes and stream formatting are in :mod:`api.streams`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from typing import Any, Final, cast

from google.protobuf.message import DecodeError
from pydantic import TypeAdapter, ValidationError
from temporalio.api.common.v1 import Payload
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowQueryFailedError
from temporalio.contrib.workflow_streams import PollInput, PollResult
from temporalio.service import RPCError, RPCStatusCode

from core.events import EVENTS_TOPIC, TERMINAL_EVENTS, JobEvent, StageStarted
from core.ids import workflow_id_for
from core.models import Stage
from infra.redis_client import REDIS_ERRORS, RedisClients
from infra.token_channel import TOKEN_FIELD, TOKEN_STREAM_PREFIX, token_stream_key

log = logging.getLogger(__name__)

POLL_QUERY: Final = "__temporal_workflow_stream_poll"
"""The workflow stream's poll query (``temporalio.contrib.workflow_streams.WorkflowStream``
registers it: an immediate read of the retained events from an offset)."""

QUERY_TIMEOUT: Final = timedelta(seconds=5)
"""RPC timeout of one poll query; a failed query is retried after :data:`RETRY_S`."""

RETRY_S: Final = 1.0
"""Pause after a failed poll query or token read, in seconds."""

GIVE_UP_S: Final = 120.0
"""A job whose events could not be read for this long ends its readers' streams with
``stream_error`` (``temporal_unavailable``); they may reconnect."""

IDLE_POLL_S: Final = 1.0
"""Longest interval between two polls of a job with nothing new, in seconds (the poll backs
off from ``AGENTFLOW_STREAM_POLL_MS`` while nothing happens)."""

CLOSED_CHECK_S: Final = 5.0
"""How often a feed that saw no terminal event asks Temporal whether the workflow closed."""

TOKEN_BLOCK_MS: Final = 250
"""Longest one ``XREAD`` blocks; a job watched meanwhile joins the next read."""

MAX_FEED_BYTES: Final = 8 * 2**20
"""Token text one feed keeps in memory, in bytes; past it token events are dropped (the whole
answer comes in ``final_response``)."""

_EVENT: Final = TypeAdapter[JobEvent](cast("type[JobEvent]", JobEvent))
_CURSOR: Final = re.compile(r"^(-1|0|[1-9][0-9]{0,15})(?::([0-9]{1,20}-[0-9]{1,20}))?$")


class StreamFailure(StrEnum):
    """Why a stream ended without the job's terminal event (``stream_error``'s ``reason``)."""

    NO_STREAM = "no_stream"
    """The job's workflow has no event stream (started before streams): see its record."""
    GONE = "gone"
    """Temporal no longer has the job's workflow."""
    CLOSED = "closed_without_outcome"
    """The workflow closed without a terminal event (terminated, timed out)."""
    TEMPORAL_UNAVAILABLE = "temporal_unavailable"
    """The events could not be read for :data:`GIVE_UP_S`; reconnect with the last id."""
    INTERNAL = "internal"
    """Reading the events failed unexpectedly (logged); reconnect with the last id."""
    TOO_MANY_READERS = "too_many_readers"
    """The job has ``AGENTFLOW_SSE_MAX_READERS_PER_JOB`` readers in this process; retry later."""
    SHUTTING_DOWN = "shutting_down"
    """The API process is stopping; reconnect with the last id."""
    ALREADY_ENDED = "already_ended"
    """The reader's ``Last-Event-ID`` is the job's terminal event: nothing more will come (a
    browser's ``EventSource`` reconnecting after the end gets this)."""
    CURSOR_PAST_END = "cursor_past_end"
    """The reader's ``Last-Event-ID`` names an offset past the job's terminal event."""


def past_the_end(cursor_offset: int, terminal_offset: int) -> StreamFailure:
    """Why a reader whose cursor is at or past the terminal event gets nothing more."""
    if cursor_offset == terminal_offset:
        return StreamFailure.ALREADY_ENDED
    return StreamFailure.CURSOR_PAST_END


TRANSIENT: Final = frozenset({StreamFailure.TEMPORAL_UNAVAILABLE, StreamFailure.INTERNAL})
"""Failures a new reader retries (its attach starts a new read)."""


@dataclass(frozen=True)
class Cursor:
    """A reader's position: the last durable offset and the last token id it has seen.

    Attributes:
        offset: last durable event offset seen (-1: none).
        token: Redis stream id of the last token event seen (``None``: none).
    """

    offset: int = -1
    token: str | None = None

    @classmethod
    def parse(cls, value: str) -> Cursor:
        """Parse an SSE id (``"12"`` or ``"12:1700000000000-0"``).

        Raises:
            ValueError: not a cursor (the message never repeats the value).
        """
        match = _CURSOR.match(value.strip())
        if match is None:
            raise ValueError("not an event id this API sent")
        return cls(int(match.group(1)), match.group(2))

    def __str__(self) -> str:
        """The SSE id form."""
        return str(self.offset) if self.token is None else f"{self.offset}:{self.token}"


def token_id_after(candidate: str, last: str | None) -> bool:
    """Whether Redis stream id ``candidate`` comes after ``last`` (``None``: before all)."""
    if last is None:
        return True
    a_ms, a_seq = candidate.split("-", 1)
    b_ms, b_seq = last.split("-", 1)
    return (int(a_ms), int(a_seq)) > (int(b_ms), int(b_seq))


@dataclass
class Entry:
    """One event in a feed: durable (``offset`` set) or a token event (``token`` set)."""

    event: JobEvent
    offset: int | None = None
    token: str | None = None


@dataclass
class JobFeed:
    """What this process has read of one running job; every reader of the job walks it.

    Attributes:
        job_id: the job.
        entries: the events in the order they arrived here (durable and token events).
        next_offset: the next durable offset to read.
        last_token: the last token id read (``None``: none yet).
        ended: the terminal event is in ``entries``.
        failure: why reading stopped without a terminal event, if it did.
        readers: readers attached now.
    """

    job_id: str
    entries: list[Entry] = field(default_factory=list)
    next_offset: int = 0
    last_token: str | None = None
    token_bytes: int = 0
    generating: bool = False
    tokens_since_poll: bool = False
    held: list[Entry] = field(default_factory=list)
    ended: bool = False
    failure: StreamFailure | None = None
    readers: int = 0
    idle_since: float = field(default_factory=time.monotonic)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    @property
    def done(self) -> bool:
        """Nothing more will be read (a terminal event, or a failure)."""
        return self.ended or self.failure is not None

    def notify(self) -> None:
        """Wake every reader waiting for a change."""
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()

    def add_durable(self, offset: int, event: JobEvent) -> None:
        """Append a durable event (ignored when not the next offset)."""
        if offset < self.next_offset or self.ended:
            return
        event.offset = offset
        self.entries.append(Entry(event=event, offset=offset))
        self.next_offset = offset + 1
        if event.type in TERMINAL_EVENTS:
            self.ended = True
            self.held = []
        elif isinstance(event, StageStarted) and event.stage is Stage.GENERATION:
            # Token events that came (through Redis) before the durable events leading to
            # them were read go out after those events, in cause order.
            self.generating = True
            self.entries.extend(self.held)
            self.held = []

    def add_token(self, token_id: str, event: JobEvent, size: int) -> None:
        """Append a token event, unless the feed's token text is over its byte limit."""
        self.last_token = token_id
        if self.ended:
            return
        if self.token_bytes + size > MAX_FEED_BYTES:
            return
        self.token_bytes += size
        entry = Entry(event=event, token=token_id)
        (self.entries if self.generating else self.held).append(entry)


ClientGetter = Callable[[], Awaitable[Client]]


class EventHub:
    """The per-process hub (see the module docstring); one per API app.

    Args:
        client: returns the connected Temporal client (raises while Temporal is down).
        redis: the process's Redis, holding the token streams (not closed by the hub);
            ``None``: no token events.
        poll_ms: interval of a running job's durable-event query, in ms.
        linger_s: a feed without readers is dropped this long after its last reader left.
        max_readers: most readers of one job in this process.
    """

    def __init__(
        self,
        client: ClientGetter,
        redis: RedisClients | None,
        *,
        poll_ms: float = 150.0,
        linger_s: float = 30.0,
        max_readers: int = 1000,
    ) -> None:
        self._client = client
        self._poll_s = poll_ms / 1000
        self._linger_s = linger_s
        self.max_readers = max_readers
        self._feeds: dict[str, JobFeed] = {}
        self._redis = redis
        self._token_task: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._closing = False
        self.queries = 0
        """Poll queries sent so far (the tests and the benchmark read it)."""

    # ------------------------------------------------------------------ readers

    def readers(self, job_id: str) -> int:
        """Readers of ``job_id`` attached in this process now."""
        feed = self._feeds.get(job_id)
        return feed.readers if feed else 0

    def wake(self, job_id: str) -> None:
        """Read ``job_id``'s events now (its state just changed through this process)."""
        feed = self._feeds.get(job_id)
        if feed is not None:
            feed.wake.set()

    def watching(self, job_id: str) -> bool:
        """Whether this process reads ``job_id`` now (or keeps what it read)."""
        return job_id in self._feeds

    def feeds(self) -> int:
        """Jobs this process reads now."""
        return len(self._feeds)

    def attach(self, job_id: str) -> JobFeed:
        """The job's feed, started when new; the caller must :meth:`detach` it.

        Raises:
            OverflowError: the job already has :attr:`max_readers` readers here.
        """
        feed = self._feeds.get(job_id)
        if feed is None:
            feed = JobFeed(job_id=job_id)
            self._feeds[job_id] = feed
        elif feed.readers >= self.max_readers:
            raise OverflowError(job_id)
        feed.readers += 1
        if self._closing:
            feed.failure = StreamFailure.SHUTTING_DOWN
            return feed
        transient = feed.failure in TRANSIENT
        if transient and feed.task is not None and feed.task.done():
            feed.failure = None  # a new reader tries again
        if not feed.done and (feed.task is None or feed.task.done()):
            # New, or its reading stopped after its readers left and before the sweep.
            feed.task = asyncio.create_task(self._read_durable(feed), name=f"feed-{job_id}")
        self._start_background()
        return feed

    def detach(self, feed: JobFeed) -> None:
        """One reader of ``feed`` left."""
        feed.readers -= 1
        if feed.readers == 0:
            feed.idle_since = time.monotonic()

    async def read(self, feed: JobFeed, cursor: Cursor) -> AsyncIterator[tuple[Entry, Cursor]]:
        """The feed's entries after ``cursor``, each with the reader's cursor after it.

        A cursor without a token part (``"12"``, or ``?after=12``) has seen no token event after
        durable offset 12's place in the feed, and every token event before it: token events
        are sent only once the feed has passed that offset, so they never run ahead of the
        durable position the reader claims.

        Ends after the terminal event; raises :class:`FeedFailed` when the feed stopped
        without one, or when the cursor was already at or past it.
        """
        index = 0
        tokens_live = cursor.token is not None or cursor.offset < 0
        while True:
            changed = feed.changed  # before scanning: an append after this sets it
            while index < len(feed.entries):
                entry = feed.entries[index]
                index += 1
                if entry.offset is not None:
                    tokens_live = tokens_live or entry.offset >= cursor.offset
                    if entry.offset <= cursor.offset:
                        continue
                    cursor = Cursor(entry.offset, cursor.token)
                else:
                    assert entry.token is not None
                    if not tokens_live or not token_id_after(entry.token, cursor.token):
                        continue
                    cursor = Cursor(cursor.offset, entry.token)
                yield entry, cursor
                if entry.offset is not None and entry.event.type in TERMINAL_EVENTS:
                    return
            if feed.failure is not None:
                raise FeedFailed(feed.failure)
            if feed.ended:  # its terminal event was at or before the reader's cursor
                raise FeedFailed(past_the_end(cursor.offset, feed.next_offset - 1))
            await changed.wait()

    # ------------------------------------------------------------------ reading

    async def _read_durable(self, feed: JobFeed) -> None:
        """Poll the job's stream with queries until its terminal event (or a failure).

        Any error this loop does not expect ends the feed with ``internal`` (its readers get
        ``stream_error`` and may reconnect, which starts a new read), never silently.
        """
        try:
            await self._poll_until_done(feed)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("reading the events of job %s failed", feed.job_id)
            feed.failure = StreamFailure.INTERNAL
        finally:
            feed.notify()

    async def _poll_until_done(self, feed: JobFeed) -> None:
        handle = None
        failing_since: float | None = None
        last_closed_check = time.monotonic()
        interval = self._poll_s
        while not feed.done and not self._closing:
            if feed.readers == 0 and time.monotonic() - feed.idle_since > self._linger_s:
                break
            try:
                if handle is None:
                    client = await self._client()
                    handle = client.get_workflow_handle(workflow_id_for(feed.job_id))
                result = await self._poll(handle, feed)
                failing_since = None
            except asyncio.CancelledError:
                raise
            except (WorkflowQueryFailedError, RPCError, RuntimeError, OSError) as exc:
                if isinstance(exc, WorkflowQueryFailedError) and _unknown_query(exc):
                    feed.failure = StreamFailure.NO_STREAM  # started before event streams
                    break
                if isinstance(exc, RPCError) and exc.status == RPCStatusCode.NOT_FOUND:
                    feed.failure = StreamFailure.GONE
                    break
                # No worker, Temporal unreachable, a query failing during a bad deploy: retry.
                failing_since = failing_since or time.monotonic()
                if time.monotonic() - failing_since > GIVE_UP_S:
                    feed.failure = StreamFailure.TEMPORAL_UNAVAILABLE
                    break
                log.info("events of job %s unreadable for now: %s", feed.job_id, exc)
                await asyncio.sleep(RETRY_S)
                continue
            added = self._take(feed, result)
            if added:
                feed.notify()
            busy = added or feed.tokens_since_poll
            feed.tokens_since_poll = False
            if feed.done or result.more_ready:
                continue
            if busy:
                # Something is happening (durable events, or the answer streaming through
                # Redis): the outcome may come any moment, so poll at the base rate.
                interval = self._poll_s
            else:
                # Nothing new (a job waiting at its gate): poll less often, up to
                # IDLE_POLL_S; a token event held for its durable events wakes the poll.
                interval = min(interval * 2, max(self._poll_s, IDLE_POLL_S))
                if time.monotonic() - last_closed_check > CLOSED_CHECK_S:
                    last_closed_check = time.monotonic()
                    if await self._closed_without_outcome(handle, feed):
                        feed.failure = StreamFailure.CLOSED
                        break
            feed.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(feed.wake.wait(), interval)

    async def _poll(self, handle: Any, feed: JobFeed) -> PollResult:
        """One poll query: the job's retained events from the feed's next offset."""
        self.queries += 1
        result: PollResult = await handle.query(
            POLL_QUERY,
            PollInput(topics=[EVENTS_TOPIC], from_offset=feed.next_offset),
            result_type=PollResult,
            rpc_timeout=QUERY_TIMEOUT,
        )
        return result

    def _take(self, feed: JobFeed, result: PollResult) -> bool:
        added = False
        for item in result.items:
            try:
                payload = Payload.FromString(base64.b64decode(item.data))
                event = _EVENT.validate_json(payload.data)
            except (ValueError, ValidationError, DecodeError) as exc:
                log.warning("job %s: undecodable event at %d: %s", feed.job_id, item.offset, exc)
                feed.next_offset = max(feed.next_offset, item.offset + 1)
                continue
            before = feed.next_offset
            feed.add_durable(item.offset, event)
            added = added or feed.next_offset != before
        return added

    async def _closed_without_outcome(self, handle: Any, feed: JobFeed) -> bool:
        """Whether the workflow closed (and a last read found nothing more)."""
        try:
            description = await handle.describe(rpc_timeout=QUERY_TIMEOUT)
        except RPCError:
            return False
        if description.status == WorkflowExecutionStatus.RUNNING:
            return False
        try:
            last = await self._poll(handle, feed)
        except (RPCError, WorkflowQueryFailedError, RuntimeError, OSError):
            return True
        if self._take(feed, last):
            feed.notify()
        return not feed.ended

    def _start_background(self) -> None:
        if self._redis is not None and (self._token_task is None or self._token_task.done()):
            self._token_task = asyncio.create_task(self._read_tokens(), name="token-reader")
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.create_task(self._sweep(), name="feed-sweeper")

    async def _read_tokens(self) -> None:
        """One ``XREAD`` over the token streams of every watched job still running."""
        assert self._redis is not None
        while not self._closing:
            live = {f.job_id: f for f in self._feeds.values() if not f.done}
            if not live:
                await asyncio.sleep(TOKEN_BLOCK_MS / 1000)
                if not self._feeds:
                    return
                continue
            streams = {
                token_stream_key(job_id): feed.last_token or "0-0" for job_id, feed in live.items()
            }
            try:
                answer = await self._redis.xread_blocking(
                    streams, count=1000, block_ms=TOKEN_BLOCK_MS
                )
            except asyncio.CancelledError:
                raise
            except REDIS_ERRORS as exc:
                self._redis.breaker.record_failure("token read", exc)
                log.info("token events unreadable for now (%s); durable events go on", exc)
                await asyncio.sleep(RETRY_S)
                continue
            for key, items in answer or []:
                name = key.decode() if isinstance(key, bytes) else key
                job_id = name.removeprefix(TOKEN_STREAM_PREFIX)
                feed = live.get(job_id)
                if feed is None:
                    continue
                for raw_id, fields in items:
                    token_id = raw_id.decode() if isinstance(raw_id, bytes) else raw_id
                    data = fields.get(TOKEN_FIELD.encode()) or fields.get(TOKEN_FIELD)
                    try:
                        event = _EVENT.validate_json(data or b"")
                    except ValidationError:
                        feed.last_token = token_id
                        continue
                    feed.add_token(token_id, event, len(data or b""))
                feed.tokens_since_poll = True
                if feed.held:
                    feed.wake.set()  # read the durable events leading to these tokens now
                feed.notify()

    async def _sweep(self) -> None:
        """Drop feeds nobody reads once their linger time passed."""
        while self._feeds and not self._closing:
            await asyncio.sleep(max(1.0, min(self._linger_s, 5.0)))
            now = time.monotonic()
            for job_id, feed in list(self._feeds.items()):
                if feed.readers == 0 and now - feed.idle_since > self._linger_s:
                    del self._feeds[job_id]
                    if feed.task is not None and not feed.task.done():
                        feed.task.cancel()

    async def aclose(self) -> None:
        """Stop every feed (their readers get ``stream_error``: ``shutting_down``)."""
        self._closing = True
        tasks = [f.task for f in self._feeds.values() if f.task is not None]
        for feed in self._feeds.values():
            if not feed.done:
                feed.failure = StreamFailure.SHUTTING_DOWN
            feed.notify()
        for task in [*tasks, self._token_task, self._sweeper]:
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task


def _unknown_query(exc: WorkflowQueryFailedError) -> bool:
    """Whether a query failed because the workflow has no such query handler."""
    text = str(exc).lower()
    return "known queries" in text or ("handler" in text and "not found" in text)


class FeedFailed(Exception):
    """A feed stopped without the job's terminal event; ``reason`` says why."""

    def __init__(self, reason: StreamFailure) -> None:
        super().__init__(reason.value)
        self.reason = reason
