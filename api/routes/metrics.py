"""``/v1/metrics``: analytics over the job records (latency, cost, cache, tiers, advice).

Every route needs a key with the ``read`` scope. A key sees the analytics of the jobs it
submitted (``scope: own``); an ``admin`` key, or any caller while authentication is off, sees
every job (``scope: all``). Figures come from :mod:`infra.analytics` (its module docstring
defines each one); the database is read in a worker thread, at most
:data:`infra.analytics.MAX_JOBS` jobs per request (``window.sampled`` says when a period held
more).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Annotated, Literal, TypeVar

from fastapi import APIRouter, Query

from api.deps import ReadKey, StateDep
from api.openapi import error_responses
from api.schemas import MetricsCostPublic, MetricsSummaryPublic, MetricsTimeseriesPublic
from core.auth import Principal
from infra.analytics import (
    AnalyticsWindow,
    Period,
    analyze_costs,
    load_window,
    summarize,
    time_series,
)

router = APIRouter(prefix="/v1/metrics", tags=["metrics"])

PeriodQuery = Annotated[
    Period,
    Query(description="The window ending now: `hour`, `day` or `week` (anything else is a 422)."),
]

_T = TypeVar("_T")


async def _compute(
    state: StateDep,
    principal: Principal,
    period: Period,
    compute: Callable[[AnalyticsWindow], _T],
) -> tuple[_T, Literal["own", "all"]]:
    """``compute`` over the jobs ``principal`` may see, run in a worker thread.

    Raises:
        StoreUnavailableError: the job database is down (503).
    """
    owner = None if principal.is_admin else principal.key_id
    engine = state.store.engine

    def run() -> _T:
        return compute(load_window(engine, period, owner=owner))

    result = await asyncio.to_thread(run)
    return result, ("all" if owner is None else "own")


@router.get("/summary", responses=error_responses(401, 403, 422, 503))
async def metrics_summary(
    principal: ReadKey, state: StateDep, period: PeriodQuery = Period.DAY
) -> MetricsSummaryPublic:
    """Latency, tokens, cost, cache hit rates, tier mix and suggestions over the period.

    Response time (mean, p50, p95, p99 in ms), tokens, cost (USD), cache hit rate per level,
    tier distribution and optimization suggestions, over the terminal jobs that ended in the
    period. Each suggestion names its rule (p95 over 2 s, large tier over 40 % of jobs, a
    cache level under 30 % hits, escalations over 10 %, Redis unreachable) with the figures
    behind it. An empty period answers zeros and nulls and no suggestions.
    """
    summary, scope = await _compute(state, principal, period, summarize)
    return MetricsSummaryPublic(**dict(summary), scope=scope)


@router.get("/cost", responses=error_responses(401, 403, 422, 503))
async def metrics_cost(
    principal: ReadKey, state: StateDep, period: PeriodQuery = Period.WEEK
) -> MetricsCostPublic:
    """Cost drivers (by tier, purpose, tool and cache miss) and saving strategies.

    Strategies (route away from the large tier, improve caching, batch identical requests)
    carry an estimated monthly saving in USD, the period extrapolated to 30 days, with their
    inputs and formula. Prices come from the server's model catalog.
    """
    catalog = state.catalog
    analysis, scope = await _compute(
        state, principal, period, lambda window: analyze_costs(window, catalog)
    )
    return MetricsCostPublic(**dict(analysis), scope=scope)


@router.get("/timeseries", responses=error_responses(401, 403, 422, 503))
async def metrics_timeseries(
    principal: ReadKey, state: StateDep, period: PeriodQuery = Period.DAY
) -> MetricsTimeseriesPublic:
    """The period in equal buckets by job end, for charts.

    12 x 5 min (hour), 24 x 1 h (day) or 7 x 1 day (week), each with p50/p95/p99 response time
    (ms), cost by tier (USD), cache hit rate per level and jobs per tier.
    """
    series, scope = await _compute(state, principal, period, time_series)
    return MetricsTimeseriesPublic(**dict(series), scope=scope)
