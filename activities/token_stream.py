"""Token events from the generation activity to the job's event stream.

The provider hands over text as it produces it (one delta is about one token); publishing each
delta would cost one signal, so one workflow task and a few history events, per token. Deltas are
batched twice instead:

- into one ``token`` event per :attr:`TokenStreamSettings.batch_ms` or
  :attr:`TokenStreamSettings.batch_tokens` deltas, whichever comes first (what a client sees);
- into one signal per :attr:`TokenStreamSettings.flush_ms` by the SDK's
  ``WorkflowStreamClient`` (what Temporal pays), except the first event, sent at once so the
  first words arrive as soon as the model has them.

Delivery is exactly once per attempt (the stream client de-duplicates retried flushes by
publisher id and sequence). A new attempt of the same call publishes under a new ``revision``,
so a client that saw part of a failed attempt replaces that text instead of appending to it.
A publish that fails never fails the answer: the text is in ``final_response`` either way.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import TracebackType

from temporalio import activity
from temporalio.contrib.workflow_streams import WorkflowStreamClient

from core.events import EVENTS_TOPIC, TokenDelta
from core.models import Tier

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TokenStreamSettings:
    """How the generation activity batches token events (from ``AGENTFLOW_STREAM_*``).

    Attributes:
        batch_ms: longest time one ``token`` event collects deltas, in ms.
        batch_tokens: most deltas in one ``token`` event.
        flush_ms: how often buffered events are sent to the workflow (one signal each), in ms.
    """

    batch_ms: float = 50.0
    batch_tokens: int = 32
    flush_ms: float = 100.0


class TokenPublisher:
    """Collects deltas into ``token`` events and publishes them on the running job's stream.

    Use inside a workflow-scheduled activity, as an async context manager; pass
    :meth:`on_delta` to the provider. On exit the last partial batch is published and every
    buffered event is sent before the activity returns, so the events precede the activity's
    completion in the workflow's history.

    Args:
        job_id: the job (carried by every event).
        revision: the revision of this attempt's events (see :mod:`core.events`).
        tier: the tier producing the text.
        settings: batching knobs.
    """

    def __init__(
        self, job_id: str, revision: int, tier: Tier, settings: TokenStreamSettings
    ) -> None:
        self._job_id = job_id
        self._revision = revision
        self._tier = tier
        self._settings = settings
        self._client = WorkflowStreamClient.from_within_activity(
            batch_interval=timedelta(milliseconds=settings.flush_ms)
        )
        self._topic = self._client.topic(EVENTS_TOPIC, type=TokenDelta)
        self._parts: list[str] = []
        self._batch_started = 0.0
        self._seq = 0
        self.events = 0
        """``token`` events published so far."""

    async def __aenter__(self) -> TokenPublisher:
        """Start the stream client's background flusher."""
        await self._client.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Publish the last batch and send everything buffered; a failure is logged only."""
        if exc_type is None:
            self._emit()
        try:
            await self._client.__aexit__(exc_type, exc, tb)
        except Exception as err:  # the answer stands without its token events
            log.warning(
                "token events of job %s (revision %d) not delivered: %s",
                self._job_id,
                self._revision,
                type(err).__name__,
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
            len(self._parts) >= self._settings.batch_tokens
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
        self._topic.publish(event, force_flush=self._seq == 0)
        self._seq += 1
        self.events += 1
        activity.heartbeat(f"streamed {self._seq} token events")
