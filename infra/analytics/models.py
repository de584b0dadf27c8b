"""The analytics period and the response models each report returns.

Units: times in ms, money in USD, token counts, rates and shares 0..1 (``None`` when there is
nothing to divide by). The definitions behind each figure are in :mod:`infra.analytics`.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from typing import Final, Literal

from pydantic import BaseModel

PERCENTILE_METHOD: Final = "linear interpolation between closest ranks (numpy default, type 7)"
"""How :func:`percentile` computes, as the responses state it."""


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


class LevelWindowStats(BaseModel):
    """One cache level over a set of jobs (its live size in Redis: :class:`infra.cache.LevelStats`).

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
    levels: dict[str, LevelWindowStats]
    hits: int
    lookups: int
    hit_rate: float | None
    saved_tokens: int
    saved_cost_usd: float
    saved_ms: float
    degraded_jobs: int
    coalesced: int


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
