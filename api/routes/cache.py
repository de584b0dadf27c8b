"""``/v1/cache``: what the four cache levels hold and what they saved, and invalidation.

``GET /v1/cache/stats`` reports, per level, the entries and bytes Redis holds now against the
level's byte limit, the hit rate over the level's last 1,000 lookups (kept in Redis by every
worker), and from the job records of a period the hits, misses and what the hits saved (tokens,
USD, ms). A key with ``read`` sees the savings of its own jobs; ``admin`` all. The level figures
are aggregates over every key (no entry, query or owner is shown).

``DELETE /v1/cache/{level}`` (``admin``) removes a level's entries by key prefix (relative to
the level's namespace) or, on the tool level, by tool name; with neither, the whole level.
"""

from __future__ import annotations

import logging
import re
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Response
from redis.exceptions import RedisError

from api.deps import AdminKey, ReadKey, StateDep
from api.errors import ApiError
from api.openapi import error_responses
from api.routes.metrics import AnalyticsDep, serve_analytics
from api.schemas import CacheDeleted, CacheLevelStats, CachePeriodStats, CacheStats
from core.models import CacheLevel
from infra.analytics.models import CachePeriodReport, Period, Report

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/cache", tags=["cache"])

PREFIX_PATTERN = re.compile(r"^[A-Za-z0-9_.:\-]{1,200}$")
"""What a key prefix may contain: the characters agentflow's keys use (tool names, hex digests,
``:``), 1 to 200 of them (an empty prefix would be the whole level: leave it out for that);
anything else is refused with 422."""


class CacheUnavailableError(ApiError):
    """Redis did not answer: nothing was deleted or counted (503)."""

    status_code = 503


class CacheRequestInvalidError(ApiError):
    """A prefix or tool name the cache cannot use (422, naming the field)."""

    status_code = 422


@router.get("/stats", responses=error_responses(401, 403, 422, 429, 503))
async def cache_stats(
    state: StateDep,
    principal: ReadKey,
    analytics: AnalyticsDep,
    response: Response,
    period: Annotated[Literal["hour", "day", "week"], Query()] = "day",
) -> CacheStats:
    """Entries, bytes and recent hit rate per level, plus the period's hits and savings.

    The period's figures are analytics (:mod:`api.routes.metrics`): computed off the event
    loop, counted against the key's analytics limit (429 over it) and possibly up to the
    analytics cache TTL old (``Age`` header, in seconds).

    Raises:
        CacheUnavailableError: Redis is down (503); the job-record figures need no Redis, but a
            partial answer would read as an empty cache.
    """
    try:
        levels = [await state.cache.level_stats(level) for level in CacheLevel]
    except (RedisError, OSError) as exc:
        raise CacheUnavailableError(
            f"the cache is unreachable ({type(exc).__name__}); jobs run uncached meanwhile"
        ) from exc
    answer, _ = await serve_analytics(analytics, principal, Report.CACHE, Period(period), response)
    report = answer.expect(CachePeriodReport)
    window, per_period = report.window, report.stats
    return CacheStats(
        period=period,
        jobs_considered=window.jobs,
        sampled=window.sampled,
        degraded_jobs=per_period.degraded_jobs,
        coalesced=per_period.coalesced,
        levels=[
            CacheLevelStats(
                level=s.level,
                entries=s.entries,
                bytes=s.bytes,
                max_bytes=s.max_bytes,
                recent_lookups=s.recent_lookups,
                recent_hits=s.recent_hits,
                recent_hit_rate=s.recent_hit_rate,
                period=CachePeriodStats.model_validate(
                    per_period.levels[s.level.value].model_dump()
                ),
            )
            for s in levels
        ],
    )


@router.delete("/{level}", responses=error_responses(401, 403, 422, 503))
async def delete_cache(
    state: StateDep,
    principal: AdminKey,
    level: Annotated[CacheLevel, Path(description="response, semantic, tool or component")],
    prefix: Annotated[str | None, Query(max_length=200)] = None,
    tool: Annotated[str | None, Query(max_length=64)] = None,
) -> CacheDeleted:
    """Delete a level's entries whose key (after the level's namespace) starts with ``prefix``.

    ``tool`` (tool level only) deletes one tool's results, every version. Neither: the whole
    level. Returns how many entries were deleted.

    Raises:
        CacheRequestInvalidError: a prefix with other characters than agentflow's keys use, an
            unknown tool, ``tool`` on another level, or both ``prefix`` and ``tool`` (422).
        CacheUnavailableError: Redis is down (503): nothing was deleted.
    """
    if prefix is not None and not PREFIX_PATTERN.fullmatch(prefix):
        raise CacheRequestInvalidError(
            "prefix: use 1 to 200 letters, digits and _ . : - (leave it out for the whole level)"
        )
    if tool is not None:
        if level is not CacheLevel.TOOL:
            raise CacheRequestInvalidError("tool: only the tool level is keyed by tool name")
        if prefix is not None:
            raise CacheRequestInvalidError("tool: give either prefix or tool, not both")
        if state.tools.get(tool) is None:
            # The value is never echoed (README): only the field, and where the names are.
            raise CacheRequestInvalidError("tool: no such tool (GET /v1/tools lists them)")
        prefix = f"{tool}:"
    try:
        if level is CacheLevel.SEMANTIC:
            deleted = await state.semantic_clear(prefix or None)
        else:
            deleted = await state.cache.delete_level(level, prefix or "")
    except (RedisError, OSError) as exc:
        raise CacheUnavailableError(
            f"the cache is unreachable ({type(exc).__name__}); nothing was deleted"
        ) from exc
    log.info(
        "key %s deleted %d %s cache entries (prefix %r)", principal.key_id, deleted, level, prefix
    )
    return CacheDeleted(level=level, prefix=prefix or "", deleted=deleted)
