"""``/healthz`` (the process is up) and ``/readyz`` (its dependencies answer)."""

from __future__ import annotations

import asyncio
import weakref

from fastapi import APIRouter, Response
from sqlalchemy import Engine

from api.deps import StateDep
from api.errors import TemporalUnavailableError
from api.schemas import ReadyStatus
from core.errors import StoreUnavailableError
from infra.db import check_writable

router = APIRouter(tags=["health"])

SOFT_DEPENDENCIES = frozenset({"redis"})
"""Dependencies whose outage degrades the service instead of stopping it."""

_CHECK_TIMEOUT_S = 3.0
"""Most seconds one dependency's check may take before it counts as down."""

_WRITE_LOCK_WAIT_S = 1.0
"""How long the database check waits for another writer's lock: a database whose writes stay
locked longer than this is reported down."""


WRITE_CHECK_REUSE_S = 1.0
"""A database check answered this recently is reused: ``/readyz`` needs no key, and each check
takes the write lock, so a flood of readiness probes must not compete with the workers'
writes."""


class _SharedWriteCheck:
    """One :func:`infra.db.check_writable` at a time per engine, its outcome reused briefly."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._at = -WRITE_CHECK_REUSE_S
        self._error: BaseException | None = None

    async def run(self, engine: Engine) -> None:
        loop = asyncio.get_running_loop()
        async with self._lock:
            if loop.time() - self._at >= WRITE_CHECK_REUSE_S:
                try:
                    await asyncio.wait_for(
                        asyncio.to_thread(check_writable, engine, _WRITE_LOCK_WAIT_S),
                        _CHECK_TIMEOUT_S,
                    )
                    self._error = None
                except Exception as exc:  # reported as the database being down
                    self._error = exc
                self._at = loop.time()
            if self._error is not None:
                raise self._error


_write_checks: weakref.WeakKeyDictionary[Engine, _SharedWriteCheck] = weakref.WeakKeyDictionary()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: always ``ok`` while the process serves requests."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    responses={
        503: {"model": ReadyStatus, "description": "A dependency is down; ``down`` names it."}
    },
)
async def readyz(state: StateDep, response: Response) -> ReadyStatus:
    """Readiness of Temporal, Redis and the database; 503 naming what is down.

    Redis is a soft dependency: without it jobs complete uncached (the caches read as misses)
    and quotas are not enforced, so a down Redis answers 200 with ``status: degraded`` and
    ``degraded: ["redis"]`` instead of taking the API out of service.

    The database counts as up only when it would accept a write now (a write lock is taken and
    released within ``1 s``; nothing is written), so a database whose writes are locked, or a
    read-only one, shows as down. Concurrent probes share one check, reused for 1 s.
    """

    async def temporal() -> None:
        client = await state.temporal.client()
        await asyncio.wait_for(client.service_client.check_health(), _CHECK_TIMEOUT_S)

    async def redis() -> None:
        if not await state.cache.ping():
            raise ConnectionError(state.cache.last_error or "no answer")

    async def database() -> None:
        engine = state.store.engine
        await _write_checks.setdefault(engine, _SharedWriteCheck()).run(engine)

    names = ["temporal", "redis", "database"]
    outcomes = await asyncio.gather(temporal(), redis(), database(), return_exceptions=True)
    checks: dict[str, str] = {}
    for name, outcome in zip(names, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            # Only agentflow's own words: a dependency's error text can name hosts and ports.
            detail = (
                outcome.message
                if isinstance(outcome, TemporalUnavailableError | StoreUnavailableError)
                else type(outcome).__name__
            )
            checks[name] = f"down: {detail}"
        else:
            checks[name] = "ok"
    failing = [n for n in names if checks[n] != "ok"]
    degraded = [n for n in failing if n in SOFT_DEPENDENCIES]
    down = [n for n in failing if n not in SOFT_DEPENDENCIES]
    for name in degraded:
        checks[name] += " (jobs run uncached, quotas not enforced)"
    if down:
        response.status_code = 503
    status = "unavailable" if down else "degraded" if degraded else "ok"
    return ReadyStatus(status=status, checks=checks, down=down, degraded=degraded)
