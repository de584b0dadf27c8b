"""The dashboard's time series: a window's figures per time bucket (empty buckets included)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from core.stats import percentile
from infra.analytics.models import TimeBucket, TimeSeries
from infra.analytics.samples import JobSample
from infra.analytics.stats import cache_period_stats, terminal_samples, tier_costs, tier_mix
from infra.analytics.window import AnalyticsWindow


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
    for s in terminal_samples(window.samples):
        if s.completed_at is None:
            continue
        index = int((s.completed_at - window.start) / width)
        members[min(max(index, 0), count - 1)].append(s)
    buckets = [
        _bucket(window.start + i * width, window.start + (i + 1) * width, jobs)
        for i, jobs in enumerate(members)
    ]
    return TimeSeries(window=window.info(), bucket_s=width.total_seconds(), buckets=buckets)
