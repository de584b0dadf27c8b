"""``/v1/metrics``: analytics over the job records (latency, cost, cache, tiers, advice).

Every route needs a key with the ``read`` scope. A key sees the analytics of the jobs it
submitted (``scope: own``); an ``admin`` key, or any caller while authentication is off, sees
every job (``scope: all``). Figures come from :mod:`infra.analytics` (its module docstring
defines each one), at most :data:`infra.analytics.window.MAX_JOBS` jobs per request
(``window.sampled`` says when a period held more).

Analytics must never starve job submissions, so (:class:`infra.analytics.service.AnalyticsService`):

- each key may make ``AGENTFLOW_ANALYTICS_RATE_LIMIT_PER_MINUTE`` analytics requests a minute
  (these routes and ``GET /v1/cache/stats`` together, apart from its submissions); the next is a
  429 with ``Retry-After`` naming the limit;
- the figures are computed in a separate process, at most ``AGENTFLOW_ANALYTICS_WORKERS`` at a
  time, never on the event loop;
- concurrent identical requests (same visible jobs, report and period) share one computation,
  and its answer is served again for ``AGENTFLOW_ANALYTICS_CACHE_TTL_S`` seconds: figures may be
  that stale. Responses say so: ``Age`` (seconds since the figures were computed),
  ``Cache-Control: private, max-age=<TTL>`` and ``X-Analytics-Source`` (``computed``,
  ``shared`` or ``cached``).

The service lives for the app's lifespan (this router's, nested in the app's).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Literal, cast

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response

from api.deps import ReadKey
from api.errors import ApiError, TooManyRequestsError
from api.openapi import error_responses
from api.schemas import MetricsCostPublic, MetricsSummaryPublic, MetricsTimeseriesPublic
from api.state import AppState
from core.auth import Principal
from infra.analytics.limiter import AnalyticsRateLimitedError
from infra.analytics.models import CostAnalysis, PerformanceSummary, Period, Report, TimeSeries
from infra.analytics.runner import AnalyticsUnavailableError, Answer
from infra.analytics.service import AnalyticsService

SOURCE_HEADER = "X-Analytics-Source"
"""Response header: ``computed``, ``shared`` (joined a computation in flight) or ``cached``."""


class AnalyticsUnavailableApiError(ApiError):
    """The analytics process stopped during the computation (503, ``Retry-After``)."""

    status_code = 503


@asynccontextmanager
async def analytics_lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Open the analytics service for the app's life (after the app's own resources)."""
    state = cast(AppState, app.state.agentflow)
    service = AnalyticsService.from_settings(
        state.settings, state.store.engine, state.catalog, state.cache.redis
    )
    app.state.analytics = service
    try:
        yield
    finally:
        await service.aclose()


def get_analytics(request: Request) -> AnalyticsService:
    """The app's analytics service (opened in :func:`analytics_lifespan`)."""
    return cast(AnalyticsService, request.app.state.analytics)


AnalyticsDep = Annotated[AnalyticsService, Depends(get_analytics)]

router = APIRouter(prefix="/v1/metrics", tags=["metrics"], lifespan=analytics_lifespan)

PeriodQuery = Annotated[
    Period,
    Query(description="The window ending now: `hour`, `day` or `week` (anything else is a 422)."),
]


async def serve_analytics(
    analytics: AnalyticsService,
    principal: Principal,
    report: Report,
    period: Period,
    response: Response,
) -> tuple[Answer, Literal["own", "all"]]:
    """``report`` over the jobs ``principal`` may see, off the event loop, limited and cached.

    Sets the ``Age``, ``Cache-Control`` and :data:`SOURCE_HEADER` headers on ``response``.

    Returns:
        The answer and the scope (``own``: the key's jobs; ``all``: every job).

    Raises:
        TooManyRequestsError: over the key's analytics limit (429, ``Retry-After``).
        AnalyticsUnavailableApiError: the analytics process stopped (503, ``Retry-After``).
        StoreUnavailableError: the job database is down (503).
    """
    owner = None if principal.is_admin else principal.key_id
    try:
        answer = await analytics.answer(principal.key_id, report, period, owner)
    except AnalyticsRateLimitedError as exc:
        raise TooManyRequestsError(
            str(exc), headers={"Retry-After": str(exc.retry_after_s)}
        ) from None
    except AnalyticsUnavailableError as exc:
        raise AnalyticsUnavailableApiError(str(exc), headers={"Retry-After": "1"}) from None
    ttl_s = analytics.runner.cache_ttl_s
    response.headers["Age"] = str(math.floor(answer.age_s()))
    response.headers["Cache-Control"] = (
        f"private, max-age={math.floor(ttl_s)}" if ttl_s > 0 else "no-store"
    )
    response.headers[SOURCE_HEADER] = answer.source
    return answer, ("all" if owner is None else "own")


_RESPONSES = error_responses(401, 403, 422, 429, 503)


@router.get("/summary", responses=_RESPONSES)
async def metrics_summary(
    principal: ReadKey,
    analytics: AnalyticsDep,
    response: Response,
    period: PeriodQuery = Period.DAY,
) -> MetricsSummaryPublic:
    """Latency, tokens, cost, cache hit rates, tier mix and suggestions over the period.

    Response time (mean, p50, p95, p99 in ms), tokens, cost (USD), cache hit rate per level,
    tier distribution and optimization suggestions, over the terminal jobs that ended in the
    period. Each suggestion names its rule (p95 over 2 s, large tier over 40 % of jobs, a
    cache level under 30 % hits, escalations over 10 %, Redis unreachable) with the figures
    behind it. An empty period answers zeros and nulls and no suggestions. The figures may be
    up to the analytics cache TTL old (``Age`` header, in seconds); over the key's analytics
    limit the answer is 429.
    """
    answer, scope = await serve_analytics(analytics, principal, Report.SUMMARY, period, response)
    return MetricsSummaryPublic(**dict(answer.expect(PerformanceSummary)), scope=scope)


@router.get("/cost", responses=_RESPONSES)
async def metrics_cost(
    principal: ReadKey,
    analytics: AnalyticsDep,
    response: Response,
    period: PeriodQuery = Period.WEEK,
) -> MetricsCostPublic:
    """Cost drivers (by tier, purpose, tool and cache miss) and saving strategies.

    Strategies (route away from the large tier, improve caching, batch identical requests)
    carry an estimated monthly saving in USD, the period extrapolated to 30 days, with their
    inputs and formula. Prices come from the server's model catalog. The figures may be up to
    the analytics cache TTL old (``Age`` header, in seconds); over the key's analytics limit
    the answer is 429.
    """
    answer, scope = await serve_analytics(analytics, principal, Report.COST, period, response)
    return MetricsCostPublic(**dict(answer.expect(CostAnalysis)), scope=scope)


@router.get("/timeseries", responses=_RESPONSES)
async def metrics_timeseries(
    principal: ReadKey,
    analytics: AnalyticsDep,
    response: Response,
    period: PeriodQuery = Period.DAY,
) -> MetricsTimeseriesPublic:
    """The period in equal buckets by job end, for charts.

    12 x 5 min (hour), 24 x 1 h (day) or 7 x 1 day (week), each with p50/p95/p99 response time
    (ms), cost by tier (USD), cache hit rate per level and jobs per tier. The figures may be up
    to the analytics cache TTL old (``Age`` header, in seconds); over the key's analytics limit
    the answer is 429.
    """
    answer, scope = await serve_analytics(analytics, principal, Report.TIMESERIES, period, response)
    return MetricsTimeseriesPublic(**dict(answer.expect(TimeSeries)), scope=scope)
