"""Cost analysis and cost-saving strategies (the seed's ``CostOptimizer``).

:func:`analyze_costs` breaks a window's model spend down by tier, purpose and tool, finds paid
repeats, and proposes strategies (downsizing, caching, batching), each with its monthly saving
in USD extrapolated to :data:`MONTH_DAYS` days.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Final

from core.catalog import ModelCatalog
from core.models import CacheLevel, JobStatus, Tier
from infra.analytics.models import (
    CacheMissCost,
    CostAnalysis,
    CostDrivers,
    PurposeCost,
    Strategy,
    TierCost,
    ToolCost,
)
from infra.analytics.samples import JobSample, ToolUse
from infra.analytics.stats import (
    TIER_KEYS,
    UNKNOWN_TIER,
    cache_period_stats,
    mean_or_none,
    ratio_or_none,
    terminal_samples,
    tier_costs,
)
from infra.analytics.window import AnalyticsWindow

MONTH_DAYS: Final = 30.0
"""Days in the month that monthly figures extrapolate to."""


LARGE_COST_SHARE_LIMIT: Final = 0.30
"""Seed cost rule: the large tier costing more than this share of model spend."""


RESPONSE_HIT_RATE_TARGET: Final = 0.50
"""Seed cost rule: a response-cache hit rate under this is worth improving."""


DOWNSIZE_P_LARGE: Final = 0.5
"""Large-tier jobs whose router gave P(needs large) below this could have run on medium."""


def _g(value: float) -> str:
    """A number for a formula: 4 significant digits, no exponent for everyday magnitudes."""
    return f"{value:.4g}" if value == 0 or 1e-4 <= abs(value) < 1e7 else f"{value:.3e}"


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
        TierCost(
            tier=k, calls=calls[k], tokens=tokens[k], cost_usd=v, share=ratio_or_none(v, total)
        )
        for k, v in spend.items()
    ]
    return sorted(rows, key=lambda r: (-r.cost_usd, r.tier))


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
            purpose=k, calls=calls[k], tokens=tokens[k], cost_usd=v, share=ratio_or_none(v, total)
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
                cache_hit_rate=ratio_or_none(hits, len(ok)),
                mean_latency_ms=mean_or_none([t.latency_ms for t in results]),
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
    for s in terminal_samples(samples):
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
    jobs = terminal_samples(window.samples)
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
        for s in terminal_samples(jobs)
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
