"""Figures over job samples that several reports share.

Response-time distribution, tier mix, model spend per tier and cache statistics per level, plus
the mean and ratio helpers they use (``None`` for an empty sample or a zero denominator).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Final

from core.models import CacheLevel, CacheReport, Tier
from core.stats import percentile
from infra.analytics.models import CacheWindowStats, Distribution, LevelWindowStats, TierShare
from infra.analytics.samples import JobSample
from infra.jobs import JobRecord

TIER_KEYS: Final = tuple(t.value for t in Tier)
"""``small``, ``medium``, ``large``."""


NO_TIER: Final = "none"
"""Tier-mix key of jobs no model answered (response-cache hits, jobs ended before selection)."""


UNKNOWN_TIER: Final = "unknown"
"""Cost key of model spend whose tier was not recorded (only present when non-zero)."""


LEVEL_KEYS: Final = tuple(level.value for level in CacheLevel)
"""``response``, ``semantic``, ``tool``, ``component``."""


def mean_or_none(values: Sequence[float]) -> float | None:
    """The arithmetic mean of ``values`` in their unit, or ``None`` for an empty sample."""
    return sum(values) / len(values) if values else None


def ratio_or_none(part: float, whole: float) -> float | None:
    """``part / whole`` (a rate or share, 0..1), or ``None`` when ``whole`` is 0."""
    return part / whole if whole else None


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
    levels: defaultdict[str, LevelWindowStats] = defaultdict(LevelWindowStats)
    for key in LEVEL_KEYS:
        levels[key] = LevelWindowStats()
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
        stats.hit_rate = ratio_or_none(stats.hits, stats.hits + stats.misses)
    ordered = {k: levels[k] for k in (*LEVEL_KEYS, *sorted(set(levels) - set(LEVEL_KEYS)))}
    hits = sum(v.hits for v in ordered.values())
    lookups = hits + sum(v.misses for v in ordered.values())
    return CacheWindowStats(
        jobs=len(samples),
        reported_jobs=reported,
        levels=ordered,
        hits=hits,
        lookups=lookups,
        hit_rate=ratio_or_none(hits, lookups),
        saved_tokens=sum(v.saved_tokens for v in ordered.values()),
        saved_cost_usd=sum(v.saved_cost_usd for v in ordered.values()),
        saved_ms=sum(v.saved_ms for v in ordered.values()),
        degraded_jobs=degraded,
        coalesced=coalesced,
    )


def terminal_samples(samples: Iterable[JobSample]) -> list[JobSample]:
    """The samples whose job is terminal (completed, failed, cancelled, ...), in order."""
    return [s for s in samples if s.status.is_terminal]


def _tier_key(tier: str | None) -> str:
    return tier if tier in TIER_KEYS else NO_TIER


def response_distribution(samples: Iterable[JobSample]) -> Distribution:
    """Mean, p50, p95, p99 and max of the terminal jobs' response times (ms)."""
    times = [t for s in samples if (t := s.response_ms) is not None]
    return Distribution(
        count=len(times),
        mean_ms=mean_or_none(times),
        p50_ms=percentile(times, 50),
        p95_ms=percentile(times, 95),
        p99_ms=percentile(times, 99),
        max_ms=max(times) if times else None,
    )


def tier_mix(samples: Iterable[JobSample]) -> dict[str, TierShare]:
    """Terminal jobs per answering tier (plus ``none``) and their share of all of them."""
    terminal = terminal_samples(samples)
    counts = Counter(_tier_key(s.tier) for s in terminal)
    return {
        k: TierShare(jobs=counts[k], share=ratio_or_none(counts[k], len(terminal)))
        for k in (*TIER_KEYS, NO_TIER)
    }


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
