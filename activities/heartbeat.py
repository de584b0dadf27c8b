"""Heartbeats for long activities (model calls, tool batches).

A heartbeat does two jobs: it tells Temporal the worker is alive, so a lost worker is noticed
within the activity's heartbeat timeout instead of its start-to-close timeout, and its response
carries cancellation, so a cancelled activity (the job ended, or the activity timed out) has its
asyncio task cancelled and the provider call or tool request under it is abandoned.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

from temporalio import activity

MIN_INTERVAL_S = 0.2
"""Shortest pause between two heartbeats, in seconds."""

MAX_INTERVAL_S = 5.0
"""Longest pause between two heartbeats, in seconds (the SDK throttles sends further)."""


def heartbeat_interval_s() -> float | None:
    """A third of the running activity's heartbeat timeout, clamped; ``None`` without one."""
    timeout = activity.info().heartbeat_timeout
    if not timeout:
        return None
    return min(max(timeout.total_seconds() / 3, MIN_INTERVAL_S), MAX_INTERVAL_S)


@asynccontextmanager
async def heartbeating(detail: str) -> AsyncIterator[None]:
    """Heartbeat with ``detail`` every :func:`heartbeat_interval_s` while the block runs.

    Does nothing for an activity scheduled without a heartbeat timeout, for local activities
    (Temporal does not heartbeat them) and outside an activity (a plain call, as the benchmark
    pipeline makes).
    """
    in_activity = activity.in_activity()
    interval = None if not in_activity or activity.info().is_local else heartbeat_interval_s()
    if interval is None:
        yield
        return

    async def beat() -> None:
        while True:
            activity.heartbeat(detail)
            await asyncio.sleep(interval)

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
