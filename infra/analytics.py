"""Analytics over the job records: latency, tokens, cost, cache hit rates, tier mix, and advice.

The figures come from what jobs recorded (the ``jobs`` table and each job's
:class:`core.models.AgentResult`), never from estimates. The seed's ``PerformanceMonitor``
becomes :func:`summarize` (with its suggestion rules) and its ``CostOptimizer`` becomes
:func:`analyze_costs`; :func:`time_series` feeds the dashboard and :func:`cache_period_stats`
the cache statistics endpoint.

Two layers. :func:`load_window` selects the jobs of a period from the database (bounded:
the :data:`MAX_JOBS` that ended last; run it off the event loop, it blocks). Everything else is a
pure function of the loaded :class:`JobSample` rows, so tests check it against hand-computed
values.

Serving them (the end of this module) works around one hazard: reading and reducing a week of
jobs is seconds of pure-Python CPU. Run on the API's event loop, or in one of its threads (the
GIL is held throughout), it starved job submissions: 20 concurrent callers of the cost report
over 5,000 jobs moved ``POST /v1/jobs`` p50 from 18 to 3,273 ms. So :class:`AnalyticsRunner`
computes in a separate process at a lower CPU priority, at most ``analytics_workers`` at a time,
shares one computation among concurrent identical requests, and serves its answer again for
``analytics_cache_ttl_s`` seconds; :class:`AnalyticsRateLimiter` limits each key's calls per
minute. Figures served from that cache are up to the TTL old.

Definitions used throughout:

- A job counts when it is terminal and ended (``completed_at``) inside the window
  ``[now - period, now]``; running jobs and jobs waiting for approval do not count yet.
- Response time (ms): the job's ``duration_ms`` (start to end) minus the time it waited at the
  approval gate (its ``awaiting_approval`` stage timing): the system's latency, not a reviewer's.
- Percentiles: linear interpolation between the closest ranks (numpy's default, Hyndman and
  Fan's type 7; :func:`percentile`).
- Tokens: prompt plus completion tokens over the job's model calls; cost (USD): the sum of its
  calls' costs, for every terminal status (failed and cancelled jobs paid too).
- Cache: hits and misses per level from each job's :class:`core.models.CacheReport`. Jobs
  recorded before cache reports count one response-level lookup (``response_cache_hit``) and one
  tool-level lookup per successful tool result (its ``cache_hit``).
- Monthly figures extrapolate the period linearly to 30 days: ``x 30 / period days`` (x 720 for
  an hour, x 30 for a day, x 30 / 7 for a week; a sampled window uses the span its jobs cover).
"""

from __future__ import annotations

import asyncio
import logging
import math
import multiprocessing
import os
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Final, Literal, NamedTuple, TypeVar

import sqlalchemy as sa
from limits import RateLimitItemPerMinute
from pydantic import BaseModel, TypeAdapter, ValidationError
from redis.exceptions import RedisError
from sqlalchemy import Engine, make_url
from typing_extensions import TypedDict

from core.catalog import ModelCatalog
from core.models import CacheLevel, CacheReport, JobStatus, Stage, Tier
from core.settings import Settings
from core.stats import percentile
from infra.db import make_engine, translate_errors, utc_now
from infra.jobs import JobRecord
from infra.quotas import RedisWindow

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- constants

MAX_JOBS: Final = 50_000
"""Most jobs one query reads: the ones that ended last. A busier period is ``sampled``."""

MONTH_DAYS: Final = 30.0
"""Days in the month that monthly figures extrapolate to."""

PERCENTILE_METHOD: Final = "linear interpolation between closest ranks (numpy default, type 7)"
"""How :func:`percentile` computes, as the responses state it."""

MIN_JOBS_FOR_RULES: Final = 10
"""Fewest terminal jobs before a rate or percentile rule may fire (one slow job is no trend)."""

MIN_LOOKUPS_FOR_RULES: Final = 10
"""Fewest lookups at a cache level before its hit-rate rule may fire."""

P95_LIMIT_MS: Final = 2000.0
"""Seed rule: p95 response time above this (ms) calls for latency work."""

LARGE_SHARE_LIMIT: Final = 0.40
"""Seed rule: the large tier answering more than this share of jobs calls for better routing."""

CACHE_HIT_RATE_FLOOR: Final = 0.30
"""Seed rule: a cache level whose hit rate is under this calls for better caching."""

ESCALATION_RATE_LIMIT: Final = 0.10
"""More than this share of routed jobs escalating means the router picks too small a tier."""

LARGE_COST_SHARE_LIMIT: Final = 0.30
"""Seed cost rule: the large tier costing more than this share of model spend."""

RESPONSE_HIT_RATE_TARGET: Final = 0.50
"""Seed cost rule: a response-cache hit rate under this is worth improving."""

DOWNSIZE_P_LARGE: Final = 0.5
"""Large-tier jobs whose router gave P(needs large) below this could have run on medium."""

TIER_KEYS: Final = tuple(t.value for t in Tier)
"""``small``, ``medium``, ``large``."""

NO_TIER: Final = "none"
"""Tier-mix key of jobs no model answered (response-cache hits, jobs ended before selection)."""

UNKNOWN_TIER: Final = "unknown"
"""Cost key of model spend whose tier was not recorded (only present when non-zero)."""

LEVEL_KEYS: Final = tuple(level.value for level in CacheLevel)
"""``response``, ``semantic``, ``tool``, ``component``."""

TERMINAL_STATUSES: Final = tuple(s.value for s in JobStatus if s.is_terminal)


class Period(StrEnum):
    """An analytics window ending now: ``hour``, ``day`` or ``week``."""

    HOUR = "hour"
    DAY = "day"
    WEEK = "week"

    @property
    def length(self) -> timedelta:
        """How far back the window reaches."""
        return _LENGTHS[self]

    @property
    def bucket(self) -> timedelta:
        """Width of one time-series bucket: 5 min, 1 h, 1 day (12, 24 and 7 buckets)."""
        return _BUCKETS[self]

    @property
    def days(self) -> float:
        """The window's length in days (1/24, 1, 7)."""
        return self.length / timedelta(days=1)


_LENGTHS = {
    Period.HOUR: timedelta(hours=1),
    Period.DAY: timedelta(days=1),
    Period.WEEK: timedelta(days=7),
}
_BUCKETS = {
    Period.HOUR: timedelta(minutes=5),
    Period.DAY: timedelta(hours=1),
    Period.WEEK: timedelta(days=1),
}


# --------------------------------------------------------------------------- samples


# The parts of a recorded AgentResult analytics reads, as typed dicts: decoding into dicts is
# about twice as fast as into models, which matters at MAX_JOBS results per request.


class _Usage(TypedDict, total=False):
    purpose: str
    tier: str | None
    cost_usd: float
    prompt_tokens: int
    completion_tokens: int


class _Tool(TypedDict, total=False):
    status: str
    call_id: str
    name: str
    cache_hit: bool
    latency_ms: float


class _Selection(TypedDict, total=False):
    tier: str | None
    reason: str
    p_large: float | None
    prompt_tokens: int | None


class _Timing(TypedDict, total=False):
    stage: str
    duration_ms: float


class _Digest(TypedDict, total=False):
    usage: list[_Usage]
    tool_results: list[_Tool]
    selection: _Selection | None
    escalated_to: str | None
    timings: list[_Timing]
    cache: CacheReport | None


_DIGEST: Final = TypeAdapter(_Digest)
_STATUSES: Final = {s.value: s for s in JobStatus}
_WAIT_STAGE: Final = Stage.AWAITING_APPROVAL.value


class CallCost(NamedTuple):
    """One model call: tier, purpose (``plan``, ``route``, ``draft``, ``final``), USD, tokens."""

    tier: str | None
    purpose: str
    cost_usd: float
    tokens: int


class ToolUse(NamedTuple):
    """One tool result: tool name, success, whether the cache answered, latency in ms."""

    name: str
    ok: bool
    cache_hit: bool
    latency_ms: float


class JobSample(NamedTuple):
    """What analytics needs of one job record (build with :meth:`from_record` or the loader).

    A named tuple (cheap to build by the tens of thousands; ``_replace`` makes a changed copy).

    Attributes:
        job_id: the job's id.
        status: its :class:`JobStatus`.
        tier: the tier that answered (``escalated_to`` when it escalated), ``None`` when no
            model answered.
        owner: key id of the submitting key.
        request_hash: SHA-256 of the canonical request (identical requests share it).
        created_at / completed_at: aware UTC datetimes (``completed_at`` ``None`` while open).
        duration_ms: ``completed_at - created_at`` in ms, once terminal.
        cost_usd: model cost of the job in USD; tokens: prompt plus completion tokens.
        response_cache_hit: the answer came from the response cache.
        approval_wait_ms: time spent at the approval gate, in ms.
        calls: the job's model calls; tools: its tool results (planner rejections left out).
        cache: the job's cache report (``None`` for jobs recorded before reports).
        selected_tier: the tier selection chose (before any escalation).
        escalated: the job escalated to a larger tier after its tier failed.
        p_large: the learned router's P(needs large), when it routed.
        pinned: the request pinned its tier (the router did not choose).
        fit_tokens: prompt plus completion tokens the tier's context window had to hold.
        detailed: the result JSON was read (``False``: only the record's columns).
    """

    job_id: str
    status: JobStatus
    tier: str | None
    owner: str | None
    request_hash: str | None
    created_at: datetime
    completed_at: datetime | None
    duration_ms: float | None
    cost_usd: float
    tokens: int
    response_cache_hit: bool
    approval_wait_ms: float = 0.0
    calls: tuple[CallCost, ...] = ()
    tools: tuple[ToolUse, ...] = ()
    cache: CacheReport | None = None
    selected_tier: str | None = None
    escalated: bool = False
    p_large: float | None = None
    pinned: bool = False
    fit_tokens: int | None = None
    detailed: bool = False

    @property
    def response_ms(self) -> float | None:
        """Response time in ms (duration less the approval wait); ``None`` while open."""
        if self.duration_ms is None or not self.status.is_terminal:
            return None
        return max(0.0, self.duration_ms - self.approval_wait_ms)

    def lookups(self) -> dict[str, tuple[int, int]]:
        """``{level: (hits, misses)}`` for the levels this job looked up.

        From the cache report when recorded; otherwise the fallback of the module docstring.
        """
        if self.cache is not None:
            levels = set(self.cache.hits) | set(self.cache.misses)
            return {
                level: (self.cache.hits.get(level, 0), self.cache.misses.get(level, 0))
                for level in levels
            }
        found = {CacheLevel.RESPONSE.value: (1, 0) if self.response_cache_hit else (0, 1)}
        tool_hits = sum(1 for t in self.tools if t.ok and t.cache_hit)
        tool_misses = sum(1 for t in self.tools if t.ok and not t.cache_hit)
        if tool_hits or tool_misses:
            found[CacheLevel.TOOL.value] = (tool_hits, tool_misses)
        return found

    @classmethod
    def from_record(cls, record: JobRecord) -> JobSample:
        """The sample of a :class:`infra.jobs.JobRecord`."""
        return cls.from_columns(*(getattr(record, name) for name in COLUMNS))

    @classmethod
    def from_columns(
        cls,
        job_id: str,
        status: str,
        tier: str | None,
        owner: str | None,
        request_hash: str | None,
        created_at: datetime,
        completed_at: datetime | None,
        duration_ms: float | None,
        cost_usd: float | None,
        prompt_tokens: int | None,
        completion_tokens: int | None,
        response_cache_hit: bool | None,
        result_json: str | None,
    ) -> JobSample:
        """The sample of a ``jobs`` row from its :data:`COLUMNS` values, in that order.

        A result JSON that does not decode (a contract older than this code reads) is skipped:
        the sample then holds the record's columns only (``detailed`` false).
        """
        columns = (
            job_id,
            _STATUSES[status],
            tier,
            owner,
            request_hash,
            created_at,
            completed_at,
            duration_ms,
            cost_usd or 0.0,
            (prompt_tokens or 0) + (completion_tokens or 0),
            bool(response_cache_hit),
        )
        if not result_json:
            return cls(*columns)
        try:
            digest = _DIGEST.validate_json(result_json)
        except ValidationError:
            return cls(*columns)
        selection = digest.get("selection") or _Selection()
        return cls(
            *columns,
            approval_wait_ms=sum(
                t.get("duration_ms", 0.0)
                for t in digest.get("timings", ())
                if t.get("stage") == _WAIT_STAGE
            ),
            calls=tuple(
                CallCost(
                    u.get("tier"),
                    u.get("purpose", ""),
                    u.get("cost_usd", 0.0),
                    u.get("prompt_tokens", 0) + u.get("completion_tokens", 0),
                )
                for u in digest.get("usage", ())
            ),
            # The workflow reports planner rejections as failures of a pseudo call "plan".
            tools=tuple(
                ToolUse(
                    t.get("name", ""),
                    t.get("status", "success") == "success",
                    t.get("cache_hit", False),
                    t.get("latency_ms", 0.0),
                )
                for t in digest.get("tool_results", ())
                if t.get("call_id") != "plan"
            ),
            cache=digest.get("cache"),
            selected_tier=selection.get("tier"),
            escalated=digest.get("escalated_to") is not None,
            p_large=selection.get("p_large"),
            # Both routers write this phrase when the request pinned the tier.
            pinned="pinned to" in selection.get("reason", ""),
            fit_tokens=selection.get("prompt_tokens"),
            detailed=True,
        )


COLUMNS: Final = (
    "job_id",
    "status",
    "tier",
    "owner",
    "request_hash",
    "created_at",
    "completed_at",
    "duration_ms",
    "cost_usd",
    "prompt_tokens",
    "completion_tokens",
    "response_cache_hit",
    "result_json",
)
"""The ``jobs`` columns analytics reads (never the request JSON), in
:meth:`JobSample.from_columns` order."""


# --------------------------------------------------------------------------- loading


@dataclass(frozen=True, slots=True)
class AnalyticsWindow:
    """The jobs of one period, as :func:`load_window` read them.

    Attributes:
        period: the period asked for.
        start / end: the window ``[start, end]`` (aware UTC).
        samples: the terminal jobs that ended in it, newest first (at most ``max_jobs``).
        jobs_in_period: how many such jobs exist (more than ``len(samples)`` when sampled).
        max_jobs: the bound the loader applied.
    """

    period: Period
    start: datetime
    end: datetime
    samples: list[JobSample] = field(default_factory=list)
    jobs_in_period: int = 0
    max_jobs: int = MAX_JOBS

    @property
    def sampled(self) -> bool:
        """Whether more jobs ended in the period than were read."""
        return self.jobs_in_period > len(self.samples)

    @property
    def covered_start(self) -> datetime:
        """Where the figures begin: ``start``, or the oldest read job's end when sampled."""
        if self.sampled and self.samples:
            ends = [s.completed_at for s in self.samples if s.completed_at is not None]
            return min(ends) if ends else self.start
        return self.start

    @property
    def covered_days(self) -> float:
        """Days the figures cover (the period's length unless sampled)."""
        return max((self.end - self.covered_start) / timedelta(days=1), 1e-9)

    def info(self) -> WindowInfo:
        """The window as responses describe it."""
        return WindowInfo(
            period=self.period,
            start=self.start,
            end=self.end,
            covered_start=self.covered_start,
            jobs=len(self.samples),
            jobs_in_period=self.jobs_in_period,
            sampled=self.sampled,
            max_jobs=self.max_jobs,
        )


def _end_and_id(row: sa.Row[Any]) -> tuple[datetime, str]:
    return (row.completed_at, row.job_id)


def load_window(
    engine: Engine,
    period: Period,
    *,
    owner: str | None = None,
    now: datetime | None = None,
    max_jobs: int = MAX_JOBS,
) -> AnalyticsWindow:
    """Read the terminal jobs that ended in ``[now - period, now]`` (blocking: use a thread).

    Reads only the columns analytics needs (never the request JSON), newest first, at most
    ``max_jobs`` rows; when more ended in the period they are counted and the window is
    marked ``sampled``.

    Args:
        engine: the job database.
        period: which window.
        owner: only jobs submitted by this key id; ``None`` for every job.
        now: the window's end (aware); default the wall clock.
        max_jobs: most rows read (>= 1).

    Returns:
        The window with its samples.

    Raises:
        StoreUnavailableError: the database is down or locked (retryable).
        StoreRejectedError: the database refused the query (non-retryable).
    """
    end = now or utc_now()
    start = end - period.length
    table = JobRecord.__table__  # type: ignore[attr-defined]
    conditions = [
        table.c.status.in_(TERMINAL_STATUSES),
        table.c.completed_at >= start,
        table.c.completed_at <= end,
    ]
    if owner is not None:
        conditions.append(table.c.owner == owner)
    # Choose the newest rows on the narrow columns first: sorting whole rows would sort every
    # result JSON of the period too (SQLite spills that to disk).
    newest = (
        sa.select(table.c.job_id)
        .where(*conditions)
        .order_by(table.c.completed_at.desc(), table.c.job_id.desc())
        .limit(max_jobs + 1)
    )
    statement = sa.select(*(table.c[name] for name in COLUMNS)).where(
        table.c.job_id.in_(newest.scalar_subquery())
    )
    with translate_errors(), engine.connect() as conn:
        rows = sorted(conn.execute(statement).all(), key=_end_and_id, reverse=True)
        total = len(rows)
        if total > max_jobs:
            count = sa.select(sa.func.count()).select_from(table).where(*conditions)
            total = int(conn.execute(count).scalar_one())
            del rows[max_jobs:]
    samples = [JobSample.from_columns(*row) for row in rows]
    return AnalyticsWindow(period, start, end, samples, total, max_jobs)


# --------------------------------------------------------------------------- statistics


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


class WindowInfo(BaseModel):
    """Which jobs the figures cover.

    ``jobs`` terminal jobs that ended between ``covered_start`` and ``end`` were read; when more
    than ``max_jobs`` ended in the period (``sampled``), only the latest ``max_jobs`` count and
    ``covered_start`` is the oldest one's end. Times are UTC.
    """

    period: Period
    start: datetime
    end: datetime
    covered_start: datetime
    jobs: int
    jobs_in_period: int
    sampled: bool
    max_jobs: int


class Distribution(BaseModel):
    """Response times in ms over ``count`` terminal jobs (``None`` when there are none)."""

    count: int
    mean_ms: float | None
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    method: str = PERCENTILE_METHOD


class TokenStats(BaseModel):
    """Prompt plus completion tokens per job: the mean (``None`` without jobs) and the total."""

    mean: float | None
    total: int


class CostStats(BaseModel):
    """Model cost per job in USD: the mean (``None`` without jobs) and the total."""

    mean_usd: float | None
    total_usd: float


class LevelStats(BaseModel):
    """One cache level over a set of jobs.

    Attributes:
        hits / misses: lookups that found an entry / found none.
        hit_rate: ``hits / (hits + misses)``, 0..1 (``None``: no lookups).
        saved_tokens / saved_cost_usd / saved_ms: what this level's hits avoided (model
            tokens, USD, ms), as the jobs' reports recorded them. Jobs record savings for the
            answer a hit served only, so the ``tool`` and ``component`` levels save 0 here.
    """

    hits: int = 0
    misses: int = 0
    hit_rate: float | None = None
    saved_tokens: int = 0
    saved_cost_usd: float = 0.0
    saved_ms: float = 0.0


class CacheWindowStats(BaseModel):
    """What the caches did over a set of jobs.

    Attributes:
        jobs: terminal jobs counted; reported_jobs: those with a cache report (the others
            use the module docstring's fallback).
        levels: per :class:`CacheLevel` value, always all four (then any other level seen).
        hits / lookups / hit_rate: over every level together.
        saved_tokens / saved_cost_usd / saved_ms: what the hits avoided in all.
        degraded_jobs: jobs that ran (partly) uncached because Redis was unreachable.
        coalesced: calls or generations not run because an identical one in flight shared its
            result.
    """

    jobs: int
    reported_jobs: int
    levels: dict[str, LevelStats]
    hits: int
    lookups: int
    hit_rate: float | None
    saved_tokens: int
    saved_cost_usd: float
    saved_ms: float
    degraded_jobs: int
    coalesced: int


def _as_samples(rows: Iterable[JobSample | JobRecord]) -> list[JobSample]:
    return [r if isinstance(r, JobSample) else JobSample.from_record(r) for r in rows]


def _saving_level(report: CacheReport) -> str:
    """The level a job's recorded savings belong to: the one that served its answer."""
    if report.hits.get(CacheLevel.SEMANTIC.value) or report.semantic_similarity is not None:
        return CacheLevel.SEMANTIC.value
    if report.hits.get(CacheLevel.RESPONSE.value):
        return CacheLevel.RESPONSE.value
    return next((level for level, n in report.hits.items() if n), CacheLevel.RESPONSE.value)


def cache_period_stats(rows: Iterable[JobSample | JobRecord]) -> CacheWindowStats:
    """Per-level cache hits, misses, hit rates and savings over ``rows``.

    Only terminal jobs count. Typical use: ``cache_period_stats(load_window(engine,
    Period.DAY, owner=owner).samples)``.

    Args:
        rows: job samples, or :class:`infra.jobs.JobRecord` rows (converted).

    Returns:
        The statistics; every level is present (``hit_rate`` ``None`` where nothing was looked
        up).
    """
    samples = [s for s in _as_samples(rows) if s.status.is_terminal]
    levels: defaultdict[str, LevelStats] = defaultdict(LevelStats)
    for key in LEVEL_KEYS:
        levels[key] = LevelStats()
    coalesced = degraded = reported = 0
    for s in samples:
        for level, (hits, misses) in s.lookups().items():
            levels[level].hits += hits
            levels[level].misses += misses
        report = s.cache
        if report is not None:
            reported += 1
            coalesced += report.coalesced
            degraded += int(report.degraded)
            if report.saved_tokens or report.saved_cost_usd or report.saved_ms:
                saving = levels[_saving_level(report)]
                saving.saved_tokens += report.saved_tokens
                saving.saved_cost_usd += report.saved_cost_usd
                saving.saved_ms += report.saved_ms
    for stats in levels.values():
        stats.hit_rate = _rate(stats.hits, stats.hits + stats.misses)
    ordered = {k: levels[k] for k in (*LEVEL_KEYS, *sorted(set(levels) - set(LEVEL_KEYS)))}
    hits = sum(v.hits for v in ordered.values())
    lookups = hits + sum(v.misses for v in ordered.values())
    return CacheWindowStats(
        jobs=len(samples),
        reported_jobs=reported,
        levels=ordered,
        hits=hits,
        lookups=lookups,
        hit_rate=_rate(hits, lookups),
        saved_tokens=sum(v.saved_tokens for v in ordered.values()),
        saved_cost_usd=sum(v.saved_cost_usd for v in ordered.values()),
        saved_ms=sum(v.saved_ms for v in ordered.values()),
        degraded_jobs=degraded,
        coalesced=coalesced,
    )


# --------------------------------------------------------------------------- summary


class TierShare(BaseModel):
    """Terminal jobs a tier answered and their share of all terminal jobs (``None``: no jobs)."""

    jobs: int
    share: float | None


class EscalationStats(BaseModel):
    """Routed jobs (a tier was selected) and how many escalated after their tier failed."""

    routed_jobs: int
    escalated_jobs: int
    rate: float | None


class Suggestion(BaseModel):
    """An optimization suggestion: the rule that fired and the figures behind it.

    Attributes:
        rule: stable name of the rule (``p95_latency_high``, ``large_tier_share_high``,
            ``cache_hit_rate_low``, ``escalation_rate_high``, ``cache_degraded``).
        area: what to work on.
        impact: the seed's expected impact.
        subject: what the rule looked at when it applies per item (the cache level).
        message: one sentence with the numbers.
        observed / threshold: the value the rule compared and its limit, in ``unit``.
        unit: ``ms``, ``ratio`` (0..1) or ``jobs``.
        figures: the numbers behind it (counts, rates, ms).
    """

    rule: str
    area: Literal["latency", "caching", "model_selection", "reliability"]
    impact: Literal["low", "medium", "high"]
    subject: str | None = None
    message: str
    observed: float
    threshold: float
    unit: Literal["ms", "ratio", "jobs"]
    figures: dict[str, float | int | None]


class PerformanceSummary(BaseModel):
    """The seed's ``PerformanceMonitor.get_summary`` over one window, with suggestions.

    Attributes:
        window: which jobs count.
        response_time: response times in ms (terminal jobs, approval wait excluded).
        tokens: prompt plus completion tokens per job.
        cost: model cost per job in USD.
        cache: hit rates per cache level and what the hits saved.
        tiers: ``small``, ``medium``, ``large`` and ``none`` (no model answered): jobs and share.
        escalations: how often the chosen tier failed and a larger one answered.
        statuses: terminal jobs per status.
        suggestions: the rules that fired (empty for an empty period).
    """

    window: WindowInfo
    response_time: Distribution
    tokens: TokenStats
    cost: CostStats
    cache: CacheWindowStats
    tiers: dict[str, TierShare]
    escalations: EscalationStats
    statuses: dict[str, int]
    suggestions: list[Suggestion]


def _terminal(samples: Iterable[JobSample]) -> list[JobSample]:
    return [s for s in samples if s.status.is_terminal]


def _tier_key(tier: str | None) -> str:
    return tier if tier in TIER_KEYS else NO_TIER


def response_distribution(samples: Iterable[JobSample]) -> Distribution:
    """Mean, p50, p95, p99 and max of the terminal jobs' response times (ms)."""
    times = [t for s in samples if (t := s.response_ms) is not None]
    return Distribution(
        count=len(times),
        mean_ms=_mean(times),
        p50_ms=percentile(times, 50),
        p95_ms=percentile(times, 95),
        p99_ms=percentile(times, 99),
        max_ms=max(times) if times else None,
    )


def tier_mix(samples: Iterable[JobSample]) -> dict[str, TierShare]:
    """Terminal jobs per answering tier (plus ``none``) and their share of all of them."""
    terminal = _terminal(samples)
    counts = Counter(_tier_key(s.tier) for s in terminal)
    return {
        k: TierShare(jobs=counts[k], share=_rate(counts[k], len(terminal)))
        for k in (*TIER_KEYS, NO_TIER)
    }


def summarize(window: AnalyticsWindow) -> PerformanceSummary:
    """The performance summary of ``window`` (pure: reads its samples only).

    Returns:
        See :class:`PerformanceSummary`; an empty window gives zeros, ``None`` for means,
        rates and percentiles, and no suggestions.
    """
    jobs = _terminal(window.samples)
    tokens = [s.tokens for s in jobs]
    costs = [s.cost_usd for s in jobs]
    routed = [s for s in jobs if s.selected_tier is not None]
    escalated = sum(1 for s in routed if s.escalated)
    response_time = response_distribution(jobs)
    tiers = tier_mix(jobs)
    cache = cache_period_stats(jobs)
    escalations = EscalationStats(
        routed_jobs=len(routed), escalated_jobs=escalated, rate=_rate(escalated, len(routed))
    )
    return PerformanceSummary(
        window=window.info(),
        response_time=response_time,
        tokens=TokenStats(mean=_mean(tokens), total=sum(tokens)),
        cost=CostStats(mean_usd=_mean(costs), total_usd=sum(costs)),
        cache=cache,
        tiers=tiers,
        escalations=escalations,
        statuses=dict(sorted(Counter(s.status.value for s in jobs).items())),
        suggestions=suggest(len(jobs), response_time, tiers, cache, escalations),
    )


def suggest(
    jobs: int,
    response_time: Distribution,
    tiers: Mapping[str, TierShare],
    cache: CacheWindowStats,
    escalations: EscalationStats,
) -> list[Suggestion]:
    """The rules that fire on a summary's figures (the seed's ``generate_suggestions``, extended).

    Each rule compares strictly: a value equal to its limit does not fire. Rate and percentile
    rules need at least :data:`MIN_JOBS_FOR_RULES` jobs (a cache level
    :data:`MIN_LOOKUPS_FOR_RULES` lookups).

    - ``p95_latency_high``: p95 response time above :data:`P95_LIMIT_MS`.
    - ``large_tier_share_high``: the large tier answered more than :data:`LARGE_SHARE_LIMIT`
      of the jobs.
    - ``cache_hit_rate_low`` (per level): hit rate under :data:`CACHE_HIT_RATE_FLOOR`.
    - ``escalation_rate_high``: more than :data:`ESCALATION_RATE_LIMIT` of routed jobs escalated.
    - ``cache_degraded``: at least one job ran uncached because Redis was unreachable.

    Args:
        jobs: terminal jobs in the window.
        response_time: their response times.
        tiers: their tier mix.
        cache: their cache statistics.
        escalations: their escalations.

    Returns:
        The suggestions, in the order above.
    """
    found: list[Suggestion] = []
    enough = jobs >= MIN_JOBS_FOR_RULES
    p95 = response_time.p95_ms
    if enough and p95 is not None and p95 > P95_LIMIT_MS:
        found.append(
            Suggestion(
                rule="p95_latency_high",
                area="latency",
                impact="high",
                message=f"p95 response time {p95:,.0f} ms is above {P95_LIMIT_MS:,.0f} ms over "
                f"{response_time.count} jobs: look at the slowest stages and tools",
                observed=p95,
                threshold=P95_LIMIT_MS,
                unit="ms",
                figures={
                    "jobs": response_time.count,
                    "p50_ms": response_time.p50_ms,
                    "p95_ms": p95,
                    "p99_ms": response_time.p99_ms,
                },
            )
        )
    large = tiers[Tier.LARGE.value]
    if enough and large.share is not None and large.share > LARGE_SHARE_LIMIT:
        found.append(
            Suggestion(
                rule="large_tier_share_high",
                area="model_selection",
                impact="high",
                message=f"the large tier answered {large.share:.0%} of jobs ({large.jobs} of "
                f"{jobs}), above {LARGE_SHARE_LIMIT:.0%}: review model selection",
                observed=large.share,
                threshold=LARGE_SHARE_LIMIT,
                unit="ratio",
                figures={"large_jobs": large.jobs, "jobs": jobs, "large_share": large.share},
            )
        )
    for level, stats in cache.levels.items():
        lookups = stats.hits + stats.misses
        rate = stats.hit_rate
        if lookups >= MIN_LOOKUPS_FOR_RULES and rate is not None and rate < CACHE_HIT_RATE_FLOOR:
            found.append(
                Suggestion(
                    rule="cache_hit_rate_low",
                    area="caching",
                    impact="medium",
                    subject=level,
                    message=f"the {level} cache answered {rate:.0%} of lookups ({stats.hits} of "
                    f"{lookups}), under {CACHE_HIT_RATE_FLOOR:.0%}: analyse the common requests",
                    observed=rate,
                    threshold=CACHE_HIT_RATE_FLOOR,
                    unit="ratio",
                    figures={"hits": stats.hits, "misses": stats.misses, "hit_rate": rate},
                )
            )
    rate = escalations.rate
    if (
        escalations.routed_jobs >= MIN_JOBS_FOR_RULES
        and rate is not None
        and rate > ESCALATION_RATE_LIMIT
    ):
        found.append(
            Suggestion(
                rule="escalation_rate_high",
                area="model_selection",
                impact="medium",
                message=f"{escalations.escalated_jobs} of {escalations.routed_jobs} routed jobs "
                f"({rate:.0%}) escalated after their tier failed, above "
                f"{ESCALATION_RATE_LIMIT:.0%}: the router picks too small a tier",
                observed=rate,
                threshold=ESCALATION_RATE_LIMIT,
                unit="ratio",
                figures={
                    "escalated_jobs": escalations.escalated_jobs,
                    "routed_jobs": escalations.routed_jobs,
                    "escalation_rate": rate,
                },
            )
        )
    if cache.degraded_jobs > 0:
        found.append(
            Suggestion(
                rule="cache_degraded",
                area="reliability",
                impact="high",
                message=f"Redis was unreachable during {cache.degraded_jobs} of {jobs} jobs: "
                "they ran (partly) uncached",
                observed=cache.degraded_jobs,
                threshold=0,
                unit="jobs",
                figures={"degraded_jobs": cache.degraded_jobs, "jobs": jobs},
            )
        )
    return found


# --------------------------------------------------------------------------- costs


class TierCost(BaseModel):
    """Model spend on one tier: calls, tokens, USD and share of all model spend."""

    tier: str
    calls: int
    tokens: int
    cost_usd: float
    share: float | None


class PurposeCost(BaseModel):
    """Model spend per call purpose (``plan``, ``route``, ``draft``, ``final``)."""

    purpose: str
    calls: int
    tokens: int
    cost_usd: float
    share: float | None


class ToolCost(BaseModel):
    """One tool's use and the cost of the jobs that used it.

    Attributes:
        calls / failures / cache_hits: its results (cache hits among successful calls).
        cache_hit_rate: ``cache_hits / successful calls`` (``None``: none succeeded).
        mean_latency_ms: mean latency of its calls in ms.
        jobs: jobs that called it.
        job_cost_usd: model cost of those jobs in USD (a job calling several tools counts for
            each, so these overlap).
    """

    tool: str
    calls: int
    failures: int
    cache_hits: int
    cache_hit_rate: float | None
    mean_latency_ms: float | None
    jobs: int
    job_cost_usd: float


class CacheMissCost(BaseModel):
    """What response-cache misses cost.

    Attributes:
        response_hits / response_misses / response_hit_rate: response-level lookups.
        miss_job_cost_usd: model cost of the jobs the response cache did not answer.
        saved_cost_usd: what cache hits saved, as their reports recorded.
        repeat_jobs / repeat_cost_usd: jobs that repeated an identical request of the same key
            which had already completed in the window, yet paid for models: a cache could have
            answered them.
        concurrent_jobs / concurrent_cost_usd: jobs that repeated an identical request still
            running when they started: sharing one run (batching, coalescing) could have
            answered them.
    """

    response_hits: int
    response_misses: int
    response_hit_rate: float | None
    miss_job_cost_usd: float
    saved_cost_usd: float
    repeat_jobs: int
    repeat_cost_usd: float
    concurrent_jobs: int
    concurrent_cost_usd: float


class CostDrivers(BaseModel):
    """Where the money went: by tier, by purpose, by tool (most expensive first), by cache miss."""

    by_tier: list[TierCost]
    by_purpose: list[PurposeCost]
    by_tool: list[ToolCost]
    cache_misses: CacheMissCost


class Strategy(BaseModel):
    """A cost-saving strategy with its estimate and the arithmetic behind it.

    Attributes:
        strategy: ``route_away_from_large``, ``improve_caching`` or ``batch_similar_requests``.
        description: what to do.
        condition: the rule that made it apply, with the observed value.
        estimated_monthly_savings_usd: USD per 30 days (the period extrapolated).
        formula: the arithmetic, with its numbers, ending in the estimate.
        inputs: every number the formula uses.
        implementation_complexity: the seed's rating.
    """

    strategy: Literal["route_away_from_large", "improve_caching", "batch_similar_requests"]
    description: str
    condition: str
    estimated_monthly_savings_usd: float
    formula: str
    inputs: dict[str, float | int]
    implementation_complexity: Literal["low", "medium", "high"]


class CostAnalysis(BaseModel):
    """The seed's ``CostOptimizer.analyze_costs`` over one window.

    Attributes:
        window: which jobs count.
        month_factor: ``30 / covered days``, what period figures are multiplied by.
        extrapolation: that rule in words.
        total_cost_usd: model cost of the window's terminal jobs, in USD.
        monthly_cost_usd / monthly_cost_formula: the total extrapolated to 30 days.
        drivers: where the money went.
        strategies: the strategies that apply, largest saving first.
    """

    window: WindowInfo
    month_factor: float
    extrapolation: str
    total_cost_usd: float
    monthly_cost_usd: float
    monthly_cost_formula: str
    drivers: CostDrivers
    strategies: list[Strategy]


def _g(value: float) -> str:
    """A number for a formula: 4 significant digits, no exponent for everyday magnitudes."""
    return f"{value:.4g}" if value == 0 or 1e-4 <= abs(value) < 1e7 else f"{value:.3e}"


def tier_costs(samples: Iterable[JobSample]) -> dict[str, float]:
    """Model spend in USD per tier of the calls: always ``small``, ``medium``, ``large``.

    A job whose calls were not recorded (no result JSON) counts its total under its answering
    tier; spend with no tier at all appears under ``unknown``, only when non-zero.
    """
    spend: dict[str, float] = dict.fromkeys(TIER_KEYS, 0.0)
    for s in samples:
        if s.calls:
            for c in s.calls:
                key = c.tier if c.tier in TIER_KEYS else UNKNOWN_TIER
                spend[key] = spend.get(key, 0.0) + c.cost_usd
        elif s.cost_usd:
            key = s.tier if s.tier in TIER_KEYS else UNKNOWN_TIER
            spend[key] = spend.get(key, 0.0) + s.cost_usd
    return spend


def _by_tier(samples: Sequence[JobSample]) -> list[TierCost]:
    spend = tier_costs(samples)
    calls: Counter[str] = Counter()
    tokens: Counter[str] = Counter()
    for s in samples:
        for c in s.calls:
            key = c.tier if c.tier in TIER_KEYS else UNKNOWN_TIER
            calls[key] += 1
            tokens[key] += c.tokens
    total = sum(spend.values())
    rows = [
        TierCost(tier=k, calls=calls[k], tokens=tokens[k], cost_usd=v, share=_rate_f(v, total))
        for k, v in spend.items()
    ]
    return sorted(rows, key=lambda r: (-r.cost_usd, r.tier))


def _rate_f(part: float, whole: float) -> float | None:
    return part / whole if whole else None


def _by_purpose(samples: Sequence[JobSample]) -> list[PurposeCost]:
    spend: defaultdict[str, float] = defaultdict(float)
    calls: Counter[str] = Counter()
    tokens: Counter[str] = Counter()
    for s in samples:
        for c in s.calls:
            spend[c.purpose] += c.cost_usd
            calls[c.purpose] += 1
            tokens[c.purpose] += c.tokens
    total = sum(spend.values())
    rows = [
        PurposeCost(
            purpose=k, calls=calls[k], tokens=tokens[k], cost_usd=v, share=_rate_f(v, total)
        )
        for k, v in spend.items()
    ]
    return sorted(rows, key=lambda r: (-r.cost_usd, r.purpose))


def _by_tool(samples: Sequence[JobSample]) -> list[ToolCost]:
    uses: defaultdict[str, list[ToolUse]] = defaultdict(list)
    jobs: defaultdict[str, list[JobSample]] = defaultdict(list)
    for s in samples:
        for t in s.tools:
            uses[t.name].append(t)
        for name in {t.name for t in s.tools}:
            jobs[name].append(s)
    rows = []
    for name, results in uses.items():
        ok = [t for t in results if t.ok]
        hits = sum(1 for t in ok if t.cache_hit)
        rows.append(
            ToolCost(
                tool=name,
                calls=len(results),
                failures=len(results) - len(ok),
                cache_hits=hits,
                cache_hit_rate=_rate(hits, len(ok)),
                mean_latency_ms=_mean([t.latency_ms for t in results]),
                jobs=len(jobs[name]),
                job_cost_usd=sum(s.cost_usd for s in jobs[name]),
            )
        )
    return sorted(rows, key=lambda r: (-r.job_cost_usd, r.tool))


def duplicates(samples: Iterable[JobSample]) -> tuple[list[JobSample], list[JobSample]]:
    """Jobs that paid for an answer an identical earlier request of the same key could share.

    Requests are identical when their ``request_hash`` is; jobs of different keys never match
    (the response cache is per key). Taken in order of ``created_at`` (then ``job_id``), a job
    that missed the response cache and paid for models is:

    - a *repeat* when an earlier identical job had completed before it started (a cache could
      have answered it);
    - else *concurrent* when an earlier identical job was still running when it started
      (sharing that run could have answered it).

    Returns:
        ``(repeats, concurrent)``.
    """
    groups: defaultdict[tuple[str | None, str], list[JobSample]] = defaultdict(list)
    for s in _terminal(samples):
        if s.request_hash is not None:
            groups[(s.owner, s.request_hash)].append(s)
    repeats: list[JobSample] = []
    concurrent: list[JobSample] = []
    for group in groups.values():
        group.sort(key=lambda s: (s.created_at, s.job_id))
        first_answer: datetime | None = None  # earliest end of an earlier COMPLETED job
        last_end: datetime | None = None  # latest end of any earlier job
        for s in group:
            pays = not s.response_cache_hit and s.cost_usd > 0
            if pays and first_answer is not None and first_answer <= s.created_at:
                repeats.append(s)
            elif pays and last_end is not None and last_end > s.created_at:
                concurrent.append(s)
            end = s.completed_at
            if end is not None:
                last_end = end if last_end is None else max(last_end, end)
                if s.status is JobStatus.COMPLETED:
                    first_answer = end if first_answer is None else min(first_answer, end)
    return repeats, concurrent


def analyze_costs(window: AnalyticsWindow, catalog: ModelCatalog) -> CostAnalysis:
    """Cost drivers and saving strategies for ``window`` (pure: reads its samples only).

    Strategies (each only when its condition holds):

    - ``route_away_from_large``: the large tier's share of model spend is above
      :data:`LARGE_COST_SHARE_LIMIT` and some large-tier jobs were routed there with
      P(needs large) below :data:`DOWNSIZE_P_LARGE` (not pinned, not escalated, fitting the
      medium tier's context window). Saving: those jobs' large-tier spend repriced at the
      medium tier's catalog price, ``(mean large cost - mean medium cost) x jobs/day x 30``.
    - ``improve_caching``: the response-cache hit rate is under
      :data:`RESPONSE_HIT_RATE_TARGET` and repeats paid for models (:func:`duplicates`).
      Saving: what the repeats paid, extrapolated.
    - ``batch_similar_requests``: identical requests ran concurrently and paid twice.
      Saving: what the later ones paid, extrapolated.

    Args:
        window: the jobs.
        catalog: the model catalog (prices in USD per 1k tokens).

    Returns:
        See :class:`CostAnalysis`.
    """
    jobs = _terminal(window.samples)
    days = window.covered_days
    factor = MONTH_DAYS / days
    total = sum(s.cost_usd for s in jobs)
    cache = cache_period_stats(jobs)
    response = cache.levels[CacheLevel.RESPONSE.value]
    repeats, concurrent = duplicates(jobs)
    by_tier = _by_tier(jobs)
    drivers = CostDrivers(
        by_tier=by_tier,
        by_purpose=_by_purpose(jobs),
        by_tool=_by_tool(jobs),
        cache_misses=CacheMissCost(
            response_hits=response.hits,
            response_misses=response.misses,
            response_hit_rate=response.hit_rate,
            miss_job_cost_usd=sum(s.cost_usd for s in jobs if not s.response_cache_hit),
            saved_cost_usd=cache.saved_cost_usd,
            repeat_jobs=len(repeats),
            repeat_cost_usd=sum(s.cost_usd for s in repeats),
            concurrent_jobs=len(concurrent),
            concurrent_cost_usd=sum(s.cost_usd for s in concurrent),
        ),
    )
    strategies = [
        s
        for s in (
            _downsize(jobs, by_tier, catalog, days),
            _caching(drivers.cache_misses, days),
            _batching(drivers.cache_misses, days),
        )
        if s is not None
    ]
    strategies.sort(key=lambda s: -s.estimated_monthly_savings_usd)
    return CostAnalysis(
        window=window.info(),
        month_factor=factor,
        extrapolation=f"period figures x {MONTH_DAYS:g} / {_g(days)} days (linear)",
        total_cost_usd=total,
        monthly_cost_usd=total * factor,
        monthly_cost_formula=f"{_g(total)} USD in {_g(days)} d x {MONTH_DAYS:g} / {_g(days)} = "
        f"{_g(total * factor)} USD/month",
        drivers=drivers,
        strategies=strategies,
    )


def downsize_candidates(jobs: Iterable[JobSample], catalog: ModelCatalog) -> list[JobSample]:
    """Large-tier jobs the router sent there with P(needs large) under :data:`DOWNSIZE_P_LARGE`.

    Jobs pinned to a tier, escalated into the large tier, or whose prompt does not fit the
    medium tier's context window are not candidates.
    """
    medium_window = catalog.for_tier(Tier.MEDIUM).context_window
    return [
        s
        for s in _terminal(jobs)
        if s.tier == Tier.LARGE.value
        and s.selected_tier == Tier.LARGE.value
        and not s.escalated
        and not s.pinned
        and s.p_large is not None
        and s.p_large < DOWNSIZE_P_LARGE
        and (s.fit_tokens is None or s.fit_tokens <= medium_window)
    ]


def _downsize(
    jobs: Sequence[JobSample], by_tier: Sequence[TierCost], catalog: ModelCatalog, days: float
) -> Strategy | None:
    large = next(t for t in by_tier if t.tier == Tier.LARGE.value)
    share = large.share or 0.0
    price_large = catalog.for_tier(Tier.LARGE).cost_per_1k_tokens_usd
    price_medium = catalog.for_tier(Tier.MEDIUM).cost_per_1k_tokens_usd
    candidates = downsize_candidates(jobs, catalog)
    if share <= LARGE_COST_SHARE_LIMIT or not candidates or price_large <= 0:
        return None
    large_cost = sum(c.cost_usd for s in candidates for c in s.calls if c.tier == Tier.LARGE.value)
    medium_cost = large_cost * price_medium / price_large
    n = len(candidates)
    per_day = n / days
    mean_large, mean_medium = large_cost / n, medium_cost / n
    monthly = (mean_large - mean_medium) * per_day * MONTH_DAYS
    return Strategy(
        strategy="route_away_from_large",
        description=f"route the large-tier jobs with P(needs large) < {DOWNSIZE_P_LARGE:g} to "
        "the medium tier (raise AGENTFLOW_ROUTER_LARGE_THRESHOLD)",
        condition=f"large tier {share:.0%} of model spend > {LARGE_COST_SHARE_LIMIT:.0%}; {n} "
        f"large jobs had P(large) < {DOWNSIZE_P_LARGE:g}",
        estimated_monthly_savings_usd=monthly,
        formula=f"({_g(mean_large)} - {_g(mean_medium)}) USD/job x {_g(per_day)} jobs/day x "
        f"{MONTH_DAYS:g} days = {_g(monthly)} USD/month (medium = large x {_g(price_medium)} / "
        f"{_g(price_large)} USD per 1k tokens)",
        inputs={
            "large_cost_share": share,
            "candidate_jobs": n,
            "period_days": days,
            "jobs_per_day": per_day,
            "candidate_large_cost_usd": large_cost,
            "repriced_medium_cost_usd": medium_cost,
            "mean_cost_large_usd": mean_large,
            "mean_cost_medium_usd": mean_medium,
            "price_large_per_1k_usd": price_large,
            "price_medium_per_1k_usd": price_medium,
        },
        implementation_complexity="medium",
    )


def _caching(misses: CacheMissCost, days: float) -> Strategy | None:
    rate = misses.response_hit_rate
    if rate is None or rate >= RESPONSE_HIT_RATE_TARGET or misses.repeat_jobs == 0:
        return None
    paid = misses.repeat_cost_usd
    monthly = paid * MONTH_DAYS / days
    return Strategy(
        strategy="improve_caching",
        description="answer repeated requests from the response cache (check why their "
        "answers were not stored: TTL, size limit, failed tools, approval)",
        condition=f"response-cache hit rate {rate:.0%} < {RESPONSE_HIT_RATE_TARGET:.0%}; "
        f"{misses.repeat_jobs} jobs repeated an answered request",
        estimated_monthly_savings_usd=monthly,
        formula=f"{_g(paid)} USD paid by {misses.repeat_jobs} repeats in {_g(days)} d x "
        f"{MONTH_DAYS:g} / {_g(days)} = {_g(monthly)} USD/month",
        inputs={
            "response_hit_rate": rate,
            "repeat_jobs": misses.repeat_jobs,
            "repeat_cost_usd": paid,
            "period_days": days,
        },
        implementation_complexity="low",
    )


def _batching(misses: CacheMissCost, days: float) -> Strategy | None:
    if misses.concurrent_jobs == 0:
        return None
    paid = misses.concurrent_cost_usd
    monthly = paid * MONTH_DAYS / days
    return Strategy(
        strategy="batch_similar_requests",
        description="run identical concurrent requests once and share the answer (batch or "
        "coalesce them)",
        condition=f"{misses.concurrent_jobs} jobs started while an identical request was running",
        estimated_monthly_savings_usd=monthly,
        formula=f"{_g(paid)} USD paid by {misses.concurrent_jobs} concurrent duplicates in "
        f"{_g(days)} d x {MONTH_DAYS:g} / {_g(days)} = {_g(monthly)} USD/month",
        inputs={
            "concurrent_jobs": misses.concurrent_jobs,
            "concurrent_cost_usd": paid,
            "period_days": days,
        },
        implementation_complexity="medium",
    )


# --------------------------------------------------------------------------- time series


class TimeBucket(BaseModel):
    """The terminal jobs that ended in ``[start, end)`` (the last bucket includes ``end``).

    Attributes:
        jobs: how many.
        p50_ms / p95_ms / p99_ms: response-time percentiles in ms (``None``: no jobs).
        cost_usd: model spend in USD; cost_usd_by_tier: per tier of the calls (see
            :func:`tier_costs`).
        tier_jobs: jobs per answering tier (``small``, ``medium``, ``large``, ``none``).
        cache_hit_rate / cache_lookups: per cache level (rate ``None``: no lookups).
    """

    start: datetime
    end: datetime
    jobs: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    cost_usd: float
    cost_usd_by_tier: dict[str, float]
    tier_jobs: dict[str, int]
    cache_hit_rate: dict[str, float | None]
    cache_lookups: dict[str, int]


class TimeSeries(BaseModel):
    """Per-bucket figures over a window: 12 x 5 min (hour), 24 x 1 h (day), 7 x 1 day (week)."""

    window: WindowInfo
    bucket_s: float
    buckets: list[TimeBucket]


def _bucket(start: datetime, end: datetime, jobs: Sequence[JobSample]) -> TimeBucket:
    times = [t for s in jobs if (t := s.response_ms) is not None]
    stats = cache_period_stats(jobs)
    mix = tier_mix(jobs)
    return TimeBucket(
        start=start,
        end=end,
        jobs=len(jobs),
        p50_ms=percentile(times, 50),
        p95_ms=percentile(times, 95),
        p99_ms=percentile(times, 99),
        cost_usd=sum(s.cost_usd for s in jobs),
        cost_usd_by_tier=tier_costs(jobs),
        tier_jobs={k: v.jobs for k, v in mix.items()},
        cache_hit_rate={k: v.hit_rate for k, v in stats.levels.items()},
        cache_lookups={k: v.hits + v.misses for k, v in stats.levels.items()},
    )


def time_series(window: AnalyticsWindow) -> TimeSeries:
    """``window`` split into equal buckets from ``start``, by each job's end (pure).

    Returns:
        Every bucket, empty ones included (zeros, ``None`` percentiles and rates).
    """
    width = window.period.bucket
    count = round(window.period.length / width)
    members: list[list[JobSample]] = [[] for _ in range(count)]
    for s in _terminal(window.samples):
        if s.completed_at is None:
            continue
        index = int((s.completed_at - window.start) / width)
        members[min(max(index, 0), count - 1)].append(s)
    buckets = [
        _bucket(window.start + i * width, window.start + (i + 1) * width, jobs)
        for i, jobs in enumerate(members)
    ]
    return TimeSeries(window=window.info(), bucket_s=width.total_seconds(), buckets=buckets)


# --------------------------------------------------------------------------- serving

MAX_CACHED_ANSWERS: Final = 1024
"""Most answers :class:`AnalyticsRunner` keeps (expired ones go first, then the oldest)."""

RATE_LIMIT_KEY_PREFIX: Final = "agentflow:analytics-ratelimit"
"""Redis key prefix of the per-key analytics limit (apart from the submission limit's)."""

MAX_REFUSED_KEYS: Final = 10_000
"""Most keys :class:`AnalyticsRateLimiter` remembers as refused (the rest ask Redis each time)."""

ExecutorKind = Literal["process", "thread"]
"""Where :class:`AnalyticsRunner` computes: a separate process, or a thread of this one."""

Source = Literal["computed", "shared", "cached"]
"""How a request got its answer: it ran the computation, joined one in flight, or was served a
cached one."""


class Report(StrEnum):
    """What an analytics request computes over its window."""

    SUMMARY = "summary"
    """:func:`summarize` (``GET /v1/metrics/summary``)."""
    COST = "cost"
    """:func:`analyze_costs` (``GET /v1/metrics/cost``)."""
    TIMESERIES = "timeseries"
    """:func:`time_series` (``GET /v1/metrics/timeseries``)."""
    CACHE = "cache"
    """:func:`cache_period_stats` (``GET /v1/cache/stats``)."""


class CachePeriodReport(BaseModel):
    """:func:`cache_period_stats` over one window, with the window that was read."""

    window: WindowInfo
    stats: CacheWindowStats


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


def _start_analytics_process(nice: int) -> None:
    """Initializer of the analytics process: lower its CPU priority by ``nice``."""
    if nice > 0 and hasattr(os, "nice"):
        os.nice(nice)


def _in_memory(database_url: str) -> bool:
    """Whether the URL is an in-memory SQLite database (another process cannot open it)."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        return False
    database = url.database or ""
    return database in ("", ":memory:") or "mode=memory" in database


class AnalyticsUnavailableError(RuntimeError):
    """The analytics process died during a computation (retryable: the next call starts one)."""


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


class AnalyticsRateLimitedError(Exception):
    """The key made more analytics requests this minute than it may (429).

    Attributes:
        limit: the analytics requests one key may make per minute.
        retry_after_s: whole seconds until the next request fits.
    """

    def __init__(self, limit: int, retry_after_s: int) -> None:
        super().__init__(
            f"analytics rate limit of {limit} requests per minute per API key reached "
            f"(AGENTFLOW_ANALYTICS_RATE_LIMIT_PER_MINUTE); retry in {retry_after_s} s"
        )
        self.limit = limit
        self.retry_after_s = retry_after_s


class AnalyticsRateLimiter:
    """Per-key limit on analytics requests: a one-minute moving window in Redis (``limits``).

    Separate from the submission limit (:mod:`infra.quotas`): its own counter per key under
    :data:`RATE_LIMIT_KEY_PREFIX`, and one limit for every key. Like the quotas it fails open
    when Redis cannot be reached (logged): the runner's bound and cache still hold the CPU down.
    A key refused once is refused from memory until its window frees a slot (the time Redis
    gave), so a client that ignores ``Retry-After`` costs no Redis round trips.

    Args:
        redis_url: the Redis the caches use.
        limit_per_minute: requests one key may make per minute (>= 1).
        timeout_s: socket timeout of each Redis call, in seconds.
        clock: seconds since the epoch (``time.time``), for ``Retry-After``.
    """

    def __init__(
        self,
        redis_url: str,
        limit_per_minute: int,
        *,
        timeout_s: float = 0.5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if limit_per_minute < 1:
            raise ValueError("limit_per_minute must be at least 1")
        self.limit_per_minute = limit_per_minute
        self._item = RateLimitItemPerMinute(limit_per_minute)
        self._clock = clock
        self._window = RedisWindow(redis_url, RATE_LIMIT_KEY_PREFIX, timeout_s=timeout_s)
        self._limiter = self._window.limiter
        self._call = self._window.call
        self._refused_until: dict[str, float] = {}
        """Key id -> when (``clock`` seconds) its window frees a slot, for keys refused."""

    async def hit(self, key_id: str) -> None:
        """Count one analytics request of ``key_id``.

        Raises:
            AnalyticsRateLimitedError: the key is over its limit (429 with ``Retry-After``).
        """
        now = self._clock()
        until = self._refused_until.get(key_id)
        if until is not None:
            if until > now:
                raise AnalyticsRateLimitedError(
                    self.limit_per_minute, max(1, math.ceil(until - now))
                )
            del self._refused_until[key_id]
        item = self._item
        try:
            if await self._call(lambda: self._limiter.hit(item, key_id)):
                return
            stats = await self._call(lambda: self._limiter.get_window_stats(item, key_id))
        except (RedisError, OSError) as exc:
            log.warning(
                "analytics rate limit not enforced: Redis unreachable (%s)", type(exc).__name__
            )
            return
        now = self._clock()
        if len(self._refused_until) >= MAX_REFUSED_KEYS:
            self._refused_until = {k: t for k, t in self._refused_until.items() if t > now}
        if len(self._refused_until) < MAX_REFUSED_KEYS:
            self._refused_until[key_id] = stats.reset_time
        raise AnalyticsRateLimitedError(
            self.limit_per_minute, max(1, math.ceil(stats.reset_time - now))
        )

    async def aclose(self) -> None:
        """Close the Redis connections."""
        await self._window.aclose()


@dataclass
class AnalyticsService:
    """What the API's analytics routes share: the per-key limit, then the runner."""

    runner: AnalyticsRunner
    limiter: AnalyticsRateLimiter

    @classmethod
    def from_settings(
        cls, settings: Settings, engine: Engine, catalog: ModelCatalog
    ) -> AnalyticsService:
        """The service with the ``analytics_*`` settings, on the settings' database and Redis."""
        runner = AnalyticsRunner(
            engine,
            settings.database_url,
            catalog,
            cache_ttl_s=settings.analytics_cache_ttl_s,
            max_concurrent=settings.analytics_workers,
            executor=settings.analytics_executor,
            nice=settings.analytics_nice,
        )
        limiter = AnalyticsRateLimiter(
            settings.redis_url,
            settings.analytics_rate_limit_per_minute,
            timeout_s=settings.redis_timeout_s,
        )
        return cls(runner, limiter)

    async def answer(
        self, key_id: str, report: Report, period: Period, owner: str | None
    ) -> Answer:
        """Count the request against ``key_id``'s analytics limit, then get the answer.

        Args:
            key_id: the calling key (its limit is counted).
            report: which figures.
            period: which window.
            owner: whose jobs count (``None``: every job).

        Raises:
            AnalyticsRateLimitedError: over the key's limit (429); nothing is computed.
            StoreUnavailableError: the database is down (503).
            AnalyticsUnavailableError: the analytics process died (503).
        """
        await self.limiter.hit(key_id)
        return await self.runner.get(report, period, owner)

    async def aclose(self) -> None:
        """Stop the runner and close the limiter's connections."""
        await self.runner.aclose()
        await self.limiter.aclose()
