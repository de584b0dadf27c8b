"""Per-key rate limits and daily budgets, in Redis, checked before a job's workflow starts.

Two quotas guard each API key:

- **Requests per minute** on the submitting route: a moving window from the ``limits`` library
  (``MovingWindowRateLimiter`` on Redis). Over the limit the API answers 429 with
  ``Retry-After`` (seconds until the oldest request in the window leaves it).
- **A daily budget in USD** (UTC days): each submission *reserves* its estimated cost
  (:func:`estimate_cost_usd`, an upper bound) and is refused with 402 when the reservation does
  not fit what is left; when the job ends the worker *settles* it, replacing the estimate with
  the real cost (:meth:`Quotas.settle`, exactly once per reservation, even when the record
  step is retried). A submission that starts nothing (a refused or repeated one) gives its
  reservation back. A workflow terminated from outside never settles: its estimate stays
  charged for the day.

Reserving and settling are single Lua scripts, so concurrent submissions cannot overspend
between a check and an increment. Keys: ``agentflow:budget:<key_id>:<YYYY-MM-DD>`` (spent USD,
kept two days) and ``agentflow:budget:settled:<reservation_id>`` (kept three days).

Degradation, documented: when Redis cannot be reached the quotas are *not* enforced (fail open)
and the API logs a warning per request and reports Redis down in ``/readyz``; jobs keep running.
An outage of the cache must not stop the service, and budgets are a spending guard, not
billing. A job reserved on one day is settled against that day.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from limits import RateLimitItemPerMinute
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from core.auth import Principal
from core.catalog import ModelCatalog
from core.errors import BudgetExceededError, RateLimitedError
from core.models import AgentRequest, BudgetReservation, Tier
from core.settings import Settings
from core.tokens import PROMPT_OVERHEAD_TOKENS
from infra.redis_client import REDIS_ERRORS, RedisClients

log = logging.getLogger(__name__)
T = TypeVar("T")

_RESERVE = """
local spent = tonumber(redis.call('GET', KEYS[1]) or '0')
local estimate = tonumber(ARGV[1])
local budget = tonumber(ARGV[2])
if spent + estimate > budget then
  return {0, tostring(spent)}
end
local now = redis.call('INCRBYFLOAT', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return {1, tostring(now)}
"""

_SETTLE = """
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[2]) then
  local now = redis.call('INCRBYFLOAT', KEYS[1], ARGV[1])
  if tonumber(now) < 0 then redis.call('SET', KEYS[1], '0') end
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  return 1
end
return 0
"""

BUDGET_KEY_TTL_S = 2 * 86_400
SETTLED_MARKER_TTL_S = 3 * 86_400


def estimate_cost_usd(
    request: AgentRequest, catalog: ModelCatalog, *, draft_max_tokens: int = 256
) -> float:
    """An upper bound of what a request's model calls may cost, in USD.

    What the calls can hold, whatever the router, planner and tools do:

    - the final answer, priced at the large tier (escalation never goes higher) with its full
      ``max_tokens``; its prompt is the query, the context after compression (at most
      ``max_context_tokens``, tool results included) and :data:`PROMPT_OVERHEAD_TOKENS`;
    - a draft of ``draft_max_tokens`` on the same prompt, priced at the medium tier;
    - a plan from the small tier (when it is a real model) on the query, with its full
      ``max_tokens``.

    The query is counted as one token per UTF-8 byte (a cl100k_base token is at least one byte),
    so no text, CJK or emoji included, is under-counted. The rule comes from the issue's
    "checked against the estimated cost and settled with the real one": the estimate only has to
    be safe, the settlement makes the charge exact.
    """
    query_tokens = len(request.query.encode("utf-8", "surrogatepass"))
    prompt = query_tokens + request.max_context_tokens + PROMPT_OVERHEAD_TOKENS
    large = catalog.for_tier(Tier.LARGE)
    medium = catalog.for_tier(Tier.MEDIUM)
    small = catalog.for_tier(Tier.SMALL)
    return (
        large.cost_usd(prompt, large.max_tokens)
        + medium.cost_usd(prompt, draft_max_tokens)
        + small.cost_usd(query_tokens + PROMPT_OVERHEAD_TOKENS, small.max_tokens)
    )


@dataclass(frozen=True)
class QuotaDefaults:
    """Server defaults for keys that carry no limits of their own."""

    rate_limit_per_minute: int
    daily_budget_usd: float


class RedisWindow:
    """A ``limits`` moving-window limiter on the process's Redis pool, with one reconnect.

    Shared by the submission quotas (:class:`Quotas`) and the analytics limit
    (``infra.analytics.AnalyticsRateLimiter``): one recovery after a Redis restart, and outcomes
    reported to the process's breaker. The limiter calls Redis even while the breaker is open:
    skipping it would leave every limit unenforced for a whole cooldown after a blip.

    Args:
        redis: the process's Redis (shared; closed by whoever built it), or a URL for a window
            with clients of its own (closed by :meth:`aclose`).
        key_prefix: the limiter's key prefix.
        timeout_s: with a URL, the socket timeout of each Redis call, in seconds.
    """

    def __init__(
        self, redis: RedisClients | str, key_prefix: str, *, timeout_s: float = 0.5
    ) -> None:
        self._owns_clients = isinstance(redis, str)
        self.clients = RedisClients(redis, timeout_s=timeout_s) if isinstance(redis, str) else redis
        # The limits' own pool (RedisClients.limits): a cache fan-out cannot make a limit
        # check wait for a connection and fail open. The limiter shares it, so one reconnect
        # (:meth:`call`) serves both.
        self.redis: Redis = self.clients.limits
        pool: dict[str, Any] = {"connection_pool": self.clients.limits_pool}
        storage = RedisStorage(
            "async+" + self.clients.url, implementation="redispy", key_prefix=key_prefix, **pool
        )
        self.limiter = MovingWindowRateLimiter(storage)

    async def call(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run one Redis ``operation``; after a connection failure, reconnect and run it again.

        A Redis restart leaves every pooled connection dead, and each fails on its next use
        (redis-py's own retry did not recover them). Unchecked, each would let one request
        through without its limit after Redis is back, so the idle pooled connections are
        dropped and the call repeated once. A Redis that is really down fails both tries fast
        (connection refused); that failure opens the process's breaker.

        Raises:
            RedisError | OSError: the second try failed too.
        """
        try:
            try:
                result = await operation()
            except (RedisConnectionError, OSError):
                await self.clients.drop_idle_connections()
                result = await operation()
        except REDIS_ERRORS as exc:
            self.clients.breaker.record_failure("rate limit", exc)
            raise
        self.clients.breaker.record_success()
        return result

    async def aclose(self) -> None:
        """Close the connections if this window built them from a URL; shared ones stay open."""
        if self._owns_clients:
            await self.clients.aclose()


class Quotas:
    """Rate limits and daily budgets for API keys, kept in Redis.

    Args:
        redis: the process's Redis (shared; closed by whoever built it), or a URL for quotas
            with clients of their own (closed by :meth:`aclose`).
        defaults: limits for keys without their own.
        timeout_s: with a URL, the socket timeout of each Redis call, in seconds.
        clock: seconds since the epoch (``time.time``); tests pass a fake clock (and give the
            ``limits`` library's moving window the same one).
    """

    def __init__(
        self,
        redis: RedisClients | str,
        defaults: QuotaDefaults,
        *,
        timeout_s: float = 0.5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._defaults = defaults
        self._clock = clock
        self._window = RedisWindow(redis, "agentflow:ratelimit", timeout_s=timeout_s)
        self._redis = self._window.redis
        self._limiter = self._window.limiter
        self._call = self._window.call

    @classmethod
    def from_settings(cls, settings: Settings, redis: RedisClients | None = None) -> Quotas:
        """Quotas with the settings' defaults, on ``redis`` (shared) or the settings' Redis."""
        return cls(
            redis if redis is not None else settings.redis_url,
            QuotaDefaults(
                rate_limit_per_minute=settings.rate_limit_per_minute,
                daily_budget_usd=settings.daily_budget_usd,
            ),
            timeout_s=settings.redis_timeout_s,
        )

    def budget_for(self, principal: Principal) -> float:
        """The key's daily budget in USD."""
        if principal.daily_budget_usd is not None:
            return principal.daily_budget_usd
        return self._defaults.daily_budget_usd

    def day(self) -> str:
        """Today's budget day, ``YYYY-MM-DD`` in UTC, by the quota clock."""
        return datetime.fromtimestamp(self._clock(), UTC).strftime("%Y-%m-%d")

    async def hit_rate_limit(self, principal: Principal) -> None:
        """Count one request against the key's per-minute limit.

        Raises:
            RateLimitedError: the key is over its limit (429 with ``Retry-After``).
        """
        limit = principal.rate_limit_per_minute or self._defaults.rate_limit_per_minute
        item = RateLimitItemPerMinute(limit)
        try:
            if await self._call(lambda: self._limiter.hit(item, principal.key_id)):
                return
            stats = await self._call(lambda: self._limiter.get_window_stats(item, principal.key_id))
        except (RedisError, OSError) as exc:
            log.warning("rate limit not enforced: Redis unreachable (%s)", type(exc).__name__)
            return
        raise RateLimitedError(limit, max(1, math.ceil(stats.reset_time - self._clock())))

    async def reserve(
        self, principal: Principal, job_id: str, estimate_usd: float
    ) -> BudgetReservation | None:
        """Reserve ``estimate_usd`` of the key's budget for today.

        Returns:
            The reservation to settle when the job ends, or ``None`` when Redis is down (the
            budget is then not enforced; logged).

        Raises:
            BudgetExceededError: what is spent or reserved today plus the estimate is over the
                key's daily budget (402).
        """
        budget = self.budget_for(principal)
        day = self.day()
        key = _budget_key(principal.key_id, day)
        try:
            ok, spent = await self._call(
                lambda: self._redis.eval(
                    _RESERVE, 1, key, repr(estimate_usd), repr(budget), BUDGET_KEY_TTL_S
                )
            )
        except (RedisError, OSError) as exc:
            log.warning("budget not enforced: Redis unreachable (%s)", type(exc).__name__)
            return None
        if not int(ok):
            raise BudgetExceededError(budget, float(spent), estimate_usd)
        return BudgetReservation(
            key_id=principal.key_id,
            day=day,
            estimate_usd=estimate_usd,
            job_id=job_id,
            reservation_id=uuid.uuid4().hex,
        )

    async def release(self, reservation: BudgetReservation) -> None:
        """Give a reservation back in full (the job's workflow was never started)."""
        await self.settle(reservation, 0.0)

    async def settle(self, reservation: BudgetReservation, actual_usd: float) -> bool:
        """Replace a reservation's estimate with the job's real cost, once per reservation.

        Returns:
            ``True`` when this call settled it, ``False`` when it was settled before.

        Raises:
            RedisError: Redis is unreachable. Settling again later is safe (idempotent); the
                worker does not wait for Redis, so the estimate then stays charged.
        """
        settled = await self._call(
            lambda: self._redis.eval(
                _SETTLE,
                2,
                _budget_key(reservation.key_id, reservation.day),
                f"agentflow:budget:settled:{reservation.reservation_id or reservation.job_id}",
                repr(actual_usd - reservation.estimate_usd),
                SETTLED_MARKER_TTL_S,
                BUDGET_KEY_TTL_S,
            )
        )
        return bool(int(settled))

    async def spent_usd(self, key_id: str, day: str | None = None) -> float:
        """What the key spent or has reserved on ``day`` (default today), in USD."""
        value = await self._call(lambda: self._redis.get(_budget_key(key_id, day or self.day())))
        return float(value) if value is not None else 0.0

    async def aclose(self) -> None:
        """Close the Redis connections if these quotas built them; shared ones stay open."""
        await self._window.aclose()


def _budget_key(key_id: str, day: str) -> str:
    return f"agentflow:budget:{key_id}:{day}"
