"""Computing analytics reports off the API's event loop: one process, shared and cached answers.

This module works around one hazard: reading and reducing a week of jobs is seconds of
pure-Python CPU. Run on the API's event loop, or in one of its threads (the GIL is held
throughout), it starved job submissions: 20 concurrent callers of the cost report over 5,000
jobs moved ``POST /v1/jobs`` p50 from 18 to 3,273 ms. So :class:`AnalyticsRunner` computes in a
separate process at a lower CPU priority, at most ``analytics_workers`` at a time, shares one
computation among concurrent identical requests, and serves its answer again for
``analytics_cache_ttl_s`` seconds (:class:`infra.analytics.limiter.AnalyticsRateLimiter` limits
each key's calls per minute). Figures served from that cache are up to the TTL old.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Final, Literal, TypeVar

from sqlalchemy import Engine, make_url

from core.catalog import ModelCatalog
from core.errors import AgentflowError, ErrorType
from infra.analytics.advice import summarize
from infra.analytics.models import (
    CachePeriodReport,
    CostAnalysis,
    PerformanceSummary,
    Period,
    Report,
    TimeSeries,
)
from infra.analytics.stats import cache_period_stats
from infra.analytics.strategies import analyze_costs
from infra.analytics.timeseries import time_series
from infra.analytics.window import load_window
from infra.db import make_engine

log = logging.getLogger(__name__)


log = logging.getLogger(__name__)


MAX_CACHED_ANSWERS: Final = 1024
"""Most answers :class:`AnalyticsRunner` keeps (expired ones go first, then the oldest)."""


ExecutorKind = Literal["process", "thread"]
"""Where :class:`AnalyticsRunner` computes: a separate process, or a thread of this one."""


Source = Literal["computed", "shared", "cached"]
"""How a request got its answer: it ran the computation, joined one in flight, or was served a
cached one."""


AnalyticsResult = PerformanceSummary | CostAnalysis | TimeSeries | CachePeriodReport
"""What :func:`build_report` returns, by :class:`Report`."""


_R = TypeVar("_R", PerformanceSummary, CostAnalysis, TimeSeries, CachePeriodReport)


def build_report(
    engine: Engine,
    report: Report,
    period: Period,
    *,
    owner: str | None,
    catalog: ModelCatalog,
    now: datetime | None = None,
) -> AnalyticsResult:
    """Load the period's window and compute ``report`` over it (blocking, CPU-heavy).

    Args:
        engine: the job database.
        report: which figures.
        period: which window.
        owner: only this key id's jobs; ``None`` for every job.
        catalog: model prices (for :attr:`Report.COST`).
        now: the window's end (aware); default the wall clock.

    Returns:
        A :class:`PerformanceSummary`, :class:`CostAnalysis`, :class:`TimeSeries` or
        :class:`CachePeriodReport`.

    Raises:
        StoreUnavailableError: the database is down or locked (retryable).
        StoreRejectedError: the database refused the query (non-retryable).
    """
    window = load_window(engine, period, owner=owner, now=now)
    if report is Report.SUMMARY:
        return summarize(window)
    if report is Report.COST:
        return analyze_costs(window, catalog)
    if report is Report.TIMESERIES:
        return time_series(window)
    return CachePeriodReport(window=window.info(), stats=cache_period_stats(window.samples))


# The analytics process's own engines, one per database URL (an engine cannot cross processes).
_PROCESS_ENGINES: dict[str, Engine] = {}


def _build_in_process(
    database_url: str, report: Report, period: Period, owner: str | None, catalog: ModelCatalog
) -> AnalyticsResult:
    """:func:`build_report` inside the analytics process, on that process's engine."""
    engine = _PROCESS_ENGINES.get(database_url)
    if engine is None:
        engine = _PROCESS_ENGINES[database_url] = make_engine(database_url)
    return build_report(engine, report, period, owner=owner, catalog=catalog)


PARENT_CHECK_S = 1.0
"""How often the analytics process checks that the process that started it is alive, in s."""


def _start_analytics_process(nice: int) -> None:
    """Initializer of the analytics process: lower its priority, exit when its parent is gone.

    ``nice`` lowers its CPU priority. A killed API process (SIGKILL, out of memory) never shuts
    its pool down, and the pool's process would otherwise wait for work forever: orphans piled
    up, one per killed API process.
    """
    if nice > 0 and hasattr(os, "nice"):
        os.nice(nice)
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_S)
        os._exit(0)

    threading.Thread(target=watch, name="agentflow-analytics-parent", daemon=True).start()


def _in_memory(database_url: str) -> bool:
    """Whether the URL is an in-memory SQLite database (another process cannot open it)."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        return False
    database = url.database or ""
    return database in ("", ":memory:") or "mode=memory" in database


class AnalyticsUnavailableError(AgentflowError, RuntimeError):
    """The analytics process died during a computation (retryable: the next call starts one)."""

    type = ErrorType.ANALYTICS_UNAVAILABLE
    retryable = True


@dataclass(frozen=True, slots=True)
class Answer:
    """One request's analytics answer.

    Attributes:
        value: the figures (see :data:`AnalyticsResult`).
        computed_at: when their computation started (UNIX seconds): the data is as of then.
        source: whether this request computed them, joined a computation in flight, or was
            served them from the cache.
    """

    value: AnalyticsResult
    computed_at: float
    source: Source

    def age_s(self, now: float | None = None) -> float:
        """Seconds since the computation started (``now``: UNIX seconds, default the clock)."""
        return max(0.0, (time.time() if now is None else now) - self.computed_at)

    def expect(self, kind: type[_R]) -> _R:
        """The value as ``kind`` (the report asked for decides it).

        Raises:
            TypeError: the value is of another report.
        """
        if not isinstance(self.value, kind):
            raise TypeError(f"expected {kind.__name__}, got {type(self.value).__name__}")
        return self.value


_Key = tuple[Report, Period, str | None]


@dataclass(slots=True)
class _Cached:
    answer: Answer
    expires_at: float
    """Monotonic seconds."""


class AnalyticsRunner:
    """Computes analytics off the event loop: bounded, shared between callers, cached briefly.

    - **Off the loop.** With ``executor="process"`` each computation runs in a separate process
      (spawned, not forked: the API has threads) at CPU niceness ``nice``, on its own engine for
      ``database_url``; its CPU never holds the API's GIL. ``"thread"`` runs it in a thread of
      this process (its own pool, never asyncio's default one that authentication uses); an
      in-memory SQLite database, which another process cannot open, always does.
    - **Bounded.** At most ``max_concurrent`` computations run at once per runner (a semaphore;
      the pool has as many workers); the others wait their turn.
    - **Single flight.** Concurrent requests for the same ``(report, period, owner)`` share one
      computation.
    - **Cached.** Its answer is served again for ``cache_ttl_s`` seconds from when the
      computation started, so an answer is never older than the TTL (0: no cache). The key
      holds the owner, so one key never sees another's figures.

    The process is started with ``spawn``, which imports the program's main module again: a
    program that serves the API from a script of its own must guard its entry point with
    ``if __name__ == "__main__"`` (uvicorn, gunicorn and pytest do).

    Args:
        engine: the API's engine (used by the thread executor).
        database_url: the same database's URL (the analytics process opens its own engine).
        catalog: model prices for cost reports.
        cache_ttl_s: how long an answer is served again, in seconds.
        max_concurrent: computations at once (>= 1).
        executor: ``process`` or ``thread``.
        nice: CPU niceness added to the analytics process (0-19).
        clock: monotonic seconds (tests may pass a fake one).
    """

    def __init__(
        self,
        engine: Engine,
        database_url: str,
        catalog: ModelCatalog,
        *,
        cache_ttl_s: float = 15.0,
        max_concurrent: int = 1,
        executor: ExecutorKind = "process",
        nice: int = 10,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        self._engine = engine
        self._database_url = database_url
        self._catalog = catalog
        self._ttl_s = cache_ttl_s
        self._max_concurrent = max_concurrent
        if executor == "process" and _in_memory(database_url):
            log.info("analytics computed in a thread: an in-memory database cannot be shared")
            executor = "thread"
        self.executor: ExecutorKind = executor
        self._nice = nice
        self._clock = clock
        self._pool: Executor | None = None
        self._semaphore = asyncio.Semaphore(max_concurrent)
        self._inflight: dict[_Key, asyncio.Task[Answer]] = {}
        self._cache: dict[_Key, _Cached] = {}
        self.computations = 0
        """Computations finished since the runner was made (an observable for operators)."""

    @property
    def cache_ttl_s(self) -> float:
        """How long an answer is served again, in seconds."""
        return self._ttl_s

    async def get(self, report: Report, period: Period, owner: str | None) -> Answer:
        """``report`` over ``period`` for ``owner``: cached, shared, or computed now.

        Args:
            report: which figures.
            period: which window.
            owner: the key id whose jobs count; ``None`` for every job (admin).

        Returns:
            The answer and how it was obtained.

        Raises:
            StoreUnavailableError: the database is down or locked (retryable, 503).
            StoreRejectedError: the database refused the query (non-retryable).
            AnalyticsUnavailableError: the analytics process died (retryable, 503).
        """
        key: _Key = (report, period, owner)
        cached = self._cache.get(key)
        if cached is not None:
            if cached.expires_at > self._clock():
                return replace(cached.answer, source="cached")
            del self._cache[key]
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.create_task(self._compute(key), name=f"analytics-{report}-{period}")
            self._inflight[key] = task
            task.add_done_callback(lambda done: self._settled(key, done))
            # A caller that goes away (client disconnect) must not cancel the others' answer.
            return await asyncio.shield(task)
        answer = await asyncio.shield(task)
        return replace(answer, source="shared")

    def _settled(self, key: _Key, task: asyncio.Task[Answer]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved: a failure nobody waits for any more is not logged

    async def _compute(self, key: _Key) -> Answer:
        report, period, owner = key
        async with self._semaphore:
            started = self._clock()
            computed_at = time.time()
            value = await self._run(report, period, owner)
        self.computations += 1
        answer = Answer(value, computed_at, "computed")
        expires_at = started + self._ttl_s
        if self._ttl_s > 0 and expires_at > self._clock():
            self._store(key, _Cached(answer, expires_at))
        return answer

    async def _run(self, report: Report, period: Period, owner: str | None) -> AnalyticsResult:
        loop = asyncio.get_running_loop()
        pool = self._executor()
        if isinstance(pool, ThreadPoolExecutor):
            engine, catalog = self._engine, self._catalog
            return await loop.run_in_executor(
                pool, lambda: build_report(engine, report, period, owner=owner, catalog=catalog)
            )
        try:
            return await loop.run_in_executor(
                pool, _build_in_process, self._database_url, report, period, owner, self._catalog
            )
        except BrokenProcessPool as exc:
            # The process died (killed, out of memory): the next computation starts a new one.
            if self._pool is pool:
                self._pool = None
            pool.shutdown(wait=False, cancel_futures=True)
            log.error("the analytics process died during a %s report", report)
            raise AnalyticsUnavailableError("the analytics process stopped; try again") from exc

    def _executor(self) -> Executor:
        if self._pool is None:
            if self.executor == "thread":
                self._pool = ThreadPoolExecutor(
                    max_workers=self._max_concurrent, thread_name_prefix="agentflow-analytics"
                )
            else:
                self._pool = ProcessPoolExecutor(
                    max_workers=self._max_concurrent,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_start_analytics_process,
                    initargs=(self._nice,),
                )
        return self._pool

    def _store(self, key: _Key, entry: _Cached) -> None:
        self._cache[key] = entry
        if len(self._cache) <= MAX_CACHED_ANSWERS:
            return
        now = self._clock()
        for stale in [k for k, v in self._cache.items() if v.expires_at <= now]:
            del self._cache[stale]
        while len(self._cache) > MAX_CACHED_ANSWERS:
            del self._cache[next(iter(self._cache))]  # the oldest stored

    async def aclose(self) -> None:
        """Cancel computations in flight and stop the analytics process or threads.

        A computation already running in the analytics process finishes there, unawaited; the
        process then exits.
        """
        for task in list(self._inflight.values()):
            task.cancel()
        self._inflight.clear()
        self._cache.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
