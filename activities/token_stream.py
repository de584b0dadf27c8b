"""Token events from the generation activity to the job's token side channel.

The provider hands over text as it produces it (one delta is about one token). Deltas are
batched into one ``token`` event per :attr:`TokenStreamSettings.batch_ms` or
:attr:`TokenStreamSettings.batch_tokens` deltas, whichever comes first (what a client sees),
and each event is appended to the job's Redis token stream (:mod:`infra.token_channel`), not to
its workflow stream: token events cost the job's history nothing. The first event is sent at
once, so the first words reach readers as soon as the model has them.

A new attempt of the same call publishes under a new ``revision``, so a client that saw part of
a failed attempt replaces that text instead of appending to it. A publish that fails never fails
the answer: the text is in ``final_response`` either way.

Hazard (fixed here): the publisher used to own a background flusher task that ``__aexit__``
cancelled; when the whole answer fit in one batch the cancel could land before the flusher ran,
and on Python 3.11 ``asyncio.wait_for`` swallowed it, so the attempt hung until its
start-to-close timeout and the model was called twice. Sends now run in tasks that are awaited,
never cancelled, on exit (bounded by :data:`DRAIN_TIMEOUT_S`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Final

from temporalio import activity

from core.events import TokenDelta
from core.models import Tier
from infra.cache import RedisCache
from infra.token_channel import publish_tokens

log = logging.getLogger(__name__)

DRAIN_TIMEOUT_S: Final = 2.0
"""Longest the publisher waits on exit for its last events to reach Redis, in seconds (the
cache's own socket timeout is shorter; this bounds a pathological pool wait)."""


@dataclass(frozen=True)
class TokenStreamSettings:
    """How the generation activity batches token events (from ``AGENTFLOW_STREAM_*``).

    Attributes:
        batch_ms: longest time one ``token`` event collects deltas, in ms.
        batch_tokens: most deltas in one ``token`` event.
    """

    batch_ms: float = 50.0
    batch_tokens: int = 32


class TokenPublisher:
    """Collects deltas into ``token`` events and appends them to the job's token stream.

    Use inside the generation activity, as an async context manager; pass :meth:`on_delta` to
    the provider. On exit the last partial batch is published and every send in flight is
    awaited, so a reader sees the tokens before ``final_response``.

    Args:
        job_id: the job (carried by every event).
        revision: the revision of this attempt's events (see :mod:`core.events`).
        tier: the tier producing the text.
        settings: batching knobs.
        cache: the Redis the token stream lives in; ``None`` publishes nothing (no Redis
            configured: readers get ``final_response`` only).
    """

    def __init__(
        self,
        job_id: str,
        revision: int,
        tier: Tier,
        settings: TokenStreamSettings,
        cache: RedisCache | None,
    ) -> None:
        self._job_id = job_id
        self._revision = revision
        self._tier = tier
        self._settings = settings
        self._cache = cache
        self._parts: list[str] = []
        self._batch_started = 0.0
        self._seq = 0
        self._pending: list[str] = []
        self._sender: asyncio.Task[None] | None = None
        self._failed = False
        self.events = 0
        """``token`` events published so far."""

    async def __aenter__(self) -> TokenPublisher:
        """Nothing to start: sends begin with the first event."""
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Publish the last batch and wait (bounded) for every send; a failure is logged only."""
        if exc_type is None:
            self._emit()
        sender = self._sender
        if sender is None:
            return
        try:
            # shield: a cancel of this activity must not cancel the send half-way (it is
            # awaited below only for as long as DRAIN_TIMEOUT_S allows).
            await asyncio.wait_for(asyncio.shield(sender), DRAIN_TIMEOUT_S)
        except TimeoutError:
            log.warning(
                "token events of job %s (revision %d) still sending after %.1f s; not waiting",
                self._job_id,
                self._revision,
                DRAIN_TIMEOUT_S,
            )

    def on_delta(self, text: str) -> None:
        """Take one piece of the answer; publishes a ``token`` event when a batch is full."""
        if not text:
            return
        now = time.monotonic()
        if not self._parts:
            self._batch_started = now
        self._parts.append(text)
        if (
            self._seq == 0
            or len(self._parts) >= self._settings.batch_tokens
            or (now - self._batch_started) * 1000 >= self._settings.batch_ms
        ):
            self._emit()

    def _emit(self) -> None:
        if not self._parts:
            return
        event = TokenDelta(
            job_id=self._job_id,
            revision=self._revision,
            at=datetime.now(UTC),
            text="".join(self._parts),
            seq=self._seq,
            tier=self._tier,
        )
        self._parts = []
        self._seq += 1
        self.events += 1
        if activity.in_activity():
            activity.heartbeat(f"streamed {self._seq} token events")
        if self._cache is None or self._failed:
            return
        self._pending.append(event.model_dump_json())
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send())

    async def _send(self) -> None:
        """Send what is pending, then what arrived meanwhile, until nothing is left."""
        assert self._cache is not None
        while self._pending and not self._failed:
            batch, self._pending = self._pending, []
            if not await publish_tokens(self._cache, self._job_id, batch):
                self._failed = True  # the rest would fail too; final_response carries the text
                log.warning(
                    "token events of job %s (revision %d) not delivered: Redis unavailable",
                    self._job_id,
                    self._revision,
                )
