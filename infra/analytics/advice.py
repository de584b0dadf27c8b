"""The performance summary and its suggestion rules (the seed's ``PerformanceMonitor``).

:func:`summarize` reduces a window to a :class:`~infra.analytics.models.PerformanceSummary`;
:func:`suggest` applies the rules below, each a limit compared strictly.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Final

from core.models import Tier
from infra.analytics.models import (
    CacheWindowStats,
    CostStats,
    Distribution,
    EscalationStats,
    PerformanceSummary,
    Suggestion,
    TierShare,
    TokenStats,
)
from infra.analytics.stats import (
    cache_period_stats,
    mean_or_none,
    ratio_or_none,
    response_distribution,
    terminal_samples,
    tier_mix,
)
from infra.analytics.window import AnalyticsWindow

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


def summarize(window: AnalyticsWindow) -> PerformanceSummary:
    """The performance summary of ``window`` (pure: reads its samples only).

    Returns:
        See :class:`PerformanceSummary`; an empty window gives zeros, ``None`` for means,
        rates and percentiles, and no suggestions.
    """
    jobs = terminal_samples(window.samples)
    tokens = [s.tokens for s in jobs]
    costs = [s.cost_usd for s in jobs]
    routed = [s for s in jobs if s.selected_tier is not None]
    escalated = sum(1 for s in routed if s.escalated)
    response_time = response_distribution(jobs)
    tiers = tier_mix(jobs)
    cache = cache_period_stats(jobs)
    escalations = EscalationStats(
        routed_jobs=len(routed),
        escalated_jobs=escalated,
        rate=ratio_or_none(escalated, len(routed)),
    )
    return PerformanceSummary(
        window=window.info(),
        response_time=response_time,
        tokens=TokenStats(mean=mean_or_none(tokens), total=sum(tokens)),
        cost=CostStats(mean_usd=mean_or_none(costs), total_usd=sum(costs)),
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
