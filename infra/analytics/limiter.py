"""Each API key's analytics calls per minute, counted in Redis (fails open)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Final

from limits import RateLimitItemPerMinute
from redis.exceptions import RedisError

from core.errors import AgentflowError, ErrorType
from infra.quotas import RedisWindow
from infra.redis_client import RedisClients

log = logging.getLogger(__name__)


RATE_LIMIT_KEY_PREFIX: Final = "agentflow:analytics-ratelimit"
"""Redis key prefix of the per-key analytics limit (apart from the submission limit's)."""


MAX_REFUSED_KEYS: Final = 10_000
"""Most keys :class:`AnalyticsRateLimiter` remembers as refused (the rest ask Redis each time)."""


class AnalyticsRateLimitedError(AgentflowError):
    """The key made more analytics requests this minute than it may (429).

    Attributes:
        limit: the analytics requests one key may make per minute.
        retry_after_s: whole seconds until the next request fits.
    """

    type = ErrorType.ANALYTICS_RATE_LIMITED
    retryable = False

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
        redis: the process's Redis (:class:`infra.redis_client.RedisClients`, shared), or a URL
            for a limiter with clients of its own (closed by :meth:`aclose`).
        limit_per_minute: requests one key may make per minute (>= 1).
        timeout_s: with a URL, the socket timeout of each Redis call, in seconds.
        clock: seconds since the epoch (``time.time``), for ``Retry-After``.
    """

    def __init__(
        self,
        redis: RedisClients | str,
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
        self._window = RedisWindow(redis, RATE_LIMIT_KEY_PREFIX, timeout_s=timeout_s)
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
        """Close the Redis connections if this limiter built them; shared ones stay open."""
        await self._window.aclose()
