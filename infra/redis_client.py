"""The one way a process reaches Redis: a bounded client and one circuit breaker.

Every Redis user of a process (the cache levels, request coalescing, the quotas and the
analytics limit, the semantic level, the token channel and the API's event hub) shares one
:class:`RedisClients`: one connection pool and one :class:`RedisBreaker`. Hazards it handles,
as measured on this project's machine:

- redis-py's default retry policy makes every call against a down Redis take 3-4 s. Retries are
  off here and the connect and socket timeouts are short, so a call fails in about a
  millisecond (refused) or at most ``timeout_s`` (hung server).
- An unbounded fan-out of calls (5,000 GETs in one gather) exhausts an unbounded pool. The pool
  is a ``BlockingConnectionPool`` of ``max_connections``; further callers wait up to
  ``pool_timeout_s`` for a free connection, then fail like any other Redis error.
- While Redis is down, each failed call would still cost its caller a round trip or a
  timeout. The breaker opens on a failure and tells fail-soft callers (the caches, the token
  channel, coalescing) to skip Redis for ``breaker_cooldown_s``; the next call after the
  cooldown tries again and a success closes it. Each trip is logged once, not per call.
- Rate limits and budgets fail open when Redis fails (a down Redis must not stop submissions),
  so a limit check that merely waited for a connection the caches were using would let a
  request through unchecked. They get a small pool of their own (:attr:`RedisClients.limits`,
  ``limits_connections``), on the same Redis and the same breaker.
- A blocking read (the event hub's ``XREAD ... BLOCK``) must outlast the short socket timeout;
  :meth:`RedisClients.xread_blocking` gives that one read a longer timeout on a pooled
  connection instead of opening a second pool.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from core.settings import Settings

logger = logging.getLogger(__name__)

REDIS_ERRORS = (RedisError, OSError)
"""What a failed Redis call raises: redis-py's errors, and socket errors it lets through."""


def bounded_pool(
    url: str, *, timeout_s: float, max_connections: int, pool_timeout_s: float
) -> BlockingConnectionPool:
    """A blocking pool of at most ``max_connections``, retries off, ``timeout_s`` timeouts.

    Args:
        url: ``redis://``, ``rediss://`` or ``unix://`` URL.
        timeout_s: connect and socket timeout of each call, in seconds.
        max_connections: pool size; further callers wait for a free connection.
        pool_timeout_s: how long a caller waits for a free connection, in seconds.
    """
    pool: BlockingConnectionPool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=pool_timeout_s,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
    )
    return pool


class RedisBreaker:
    """A circuit breaker over one Redis: open for a cooldown after each failure.

    Not a lock and not thread-safe: one per process, used from one event loop.

    Attributes:
        cooldown_s: after a failure, :attr:`open` is ``True`` for this many seconds.
        errors: failures recorded since the breaker was created.
        last_error: ``"<exception type>: <message>"`` of the latest failure, or ``None``.
    """

    def __init__(self, cooldown_s: float = 5.0) -> None:
        """Create a closed breaker.

        Args:
            cooldown_s: seconds fail-soft callers skip Redis after each failure.
        """
        self.cooldown_s = cooldown_s
        self.errors = 0
        self.last_error: str | None = None
        self._open_until = 0.0
        self._tripped = False

    @property
    def open(self) -> bool:
        """Whether fail-soft callers should skip Redis right now."""
        return time.monotonic() < self._open_until

    @property
    def degraded_reason(self) -> str | None:
        """Why Redis is being skipped right now (no host or key in it), else ``None``."""
        if not self.open or self.last_error is None:
            return None
        return f"redis unreachable ({self.last_error.split(':', 1)[0]})"

    def record_failure(self, op: str, exc: BaseException) -> None:
        """Count a failed call and open the breaker for :attr:`cooldown_s` seconds.

        Args:
            op: the command or use that failed, for the log (``GET``, ``token publish``).
            exc: what it raised.
        """
        self.errors += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        if not self.open:
            logger.warning(
                "redis %s failed (%s); skipping Redis (caches miss) for %.1fs",
                op,
                self.last_error,
                self.cooldown_s,
            )
        self._tripped = True
        self._open_until = time.monotonic() + self.cooldown_s

    def record_success(self) -> None:
        """Close the breaker after a call that reached Redis (logged once per recovery)."""
        if self._tripped:
            logger.info("redis is reachable again; caches resumed")
            self._tripped = False
            self._open_until = 0.0


class RedisClients:
    """One process's Redis: a bounded pool, a client on it and the breaker its users share.

    Build one per process (:meth:`from_settings`) and close it once, after its users.
    Safe to share between coroutines of one event loop.

    Attributes:
        url: the Redis URL (the ``limits`` storage needs it besides the pool).
        timeout_s: connect and socket timeout of each call, in seconds.
        pool: the bounded connection pool.
        client: a client on :attr:`pool`, returning bytes (``decode_responses=False``).
        breaker: the breaker every fail-soft user of :attr:`client` reports to and consults.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 0.5,
        max_connections: int = 64,
        pool_timeout_s: float = 2.0,
        breaker_cooldown_s: float = 5.0,
        limits_connections: int = 8,
    ) -> None:
        """Create the pool and client; no connection is opened until the first call.

        Args:
            url: ``redis://``, ``rediss://`` or ``unix://`` URL.
            timeout_s: connect and socket timeout of each call, in seconds.
            max_connections: pool size; further callers wait for a free connection.
            pool_timeout_s: how long a caller waits for a free pooled connection, in seconds,
                before its call fails with a ``RedisError``.
            breaker_cooldown_s: seconds the breaker stays open after each failure.
            limits_connections: size of the pool reserved for rate limits and budgets
                (:attr:`limits`), which the caches' traffic cannot exhaust.
        """
        self.url = url
        self.timeout_s = timeout_s
        self.pool = bounded_pool(
            url, timeout_s=timeout_s, max_connections=max_connections, pool_timeout_s=pool_timeout_s
        )
        self.client: Redis = Redis(connection_pool=self.pool)
        self.limits_pool = bounded_pool(
            url,
            timeout_s=timeout_s,
            max_connections=limits_connections,
            pool_timeout_s=pool_timeout_s,
        )
        self.limits: Redis = Redis(connection_pool=self.limits_pool)
        """The client of the rate limits and budgets (:class:`infra.quotas.RedisWindow`)."""
        self.breaker = RedisBreaker(breaker_cooldown_s)

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisClients:
        """The settings' Redis (``redis_url``) with its timeout (``redis_timeout_s``)."""
        return cls(settings.redis_url, timeout_s=settings.redis_timeout_s)

    async def drop_idle_connections(self) -> None:
        """Close the pooled connections nobody is using (after a Redis restart they are dead).

        Connections in use are left to their callers: closing them would fail calls that may
        still succeed.
        """
        await self.pool.disconnect(inuse_connections=False)
        await self.limits_pool.disconnect(inuse_connections=False)

    async def xread_blocking(
        self, streams: Mapping[str, str], *, count: int, block_ms: int
    ) -> list[Any]:
        """``XREAD COUNT <count> BLOCK <block_ms> STREAMS ...`` on a pooled connection.

        The reply may take ``block_ms``, longer than the pool's socket timeout allows, so this
        one read waits ``block_ms`` plus :attr:`timeout_s`. The connection goes back to the pool
        afterwards, or is closed when the read failed or was cancelled (a reply may be pending
        on it). The breaker is neither consulted nor told: the caller decides.

        Args:
            streams: stream key -> last id seen (``"0-0"``: from the start).
            count: most entries per stream.
            block_ms: how long Redis waits for a new entry, in milliseconds.

        Returns:
            ``[[key, [(id, {field: value})...]]...]`` as redis-py's ``xread`` returns it (bytes),
            empty when nothing came within ``block_ms``.

        Raises:
            RedisError | OSError: Redis failed, timed out or no connection was free.
        """
        args: list[Any] = ["XREAD", "COUNT", count, "BLOCK", block_ms, "STREAMS"]
        args += list(streams.keys())
        args += list(streams.values())
        conn = await self.pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            await conn.send_command(*args)
            raw = await conn.read_response(timeout=block_ms / 1000 + self.timeout_s)
        except BaseException:
            await conn.disconnect(nowait=True)
            raise
        finally:
            await self.pool.release(conn)
        if not raw:
            return []
        # The callback redis-py's own ``xread`` applies (synchronous for XREAD).
        parsed: Any = self.client.response_callbacks["XREAD"](raw)
        return list(parsed)

    async def ping(self) -> bool:
        """Whether Redis answers PING now; updates the breaker either way (readiness checks).

        Always tries Redis, even with the breaker open.
        """
        try:
            await self.client.ping()
        except REDIS_ERRORS as exc:
            self.breaker.record_failure("PING", exc)
            return False
        self.breaker.record_success()
        return True

    async def aclose(self) -> None:
        """Close the client and every pooled connection."""
        await self.client.aclose()
        await self.pool.aclose()
        await self.limits.aclose()
        await self.limits_pool.aclose()


def make_client(
    url: str,
    *,
    timeout_s: float = 0.5,
    max_connections: int = 64,
    pool_timeout_s: float = 2.0,
) -> Redis:
    """A standalone client with the same settings as :class:`RedisClients` (tests, tools).

    Processes share one :class:`RedisClients`; this is for code that needs a client of its own,
    such as a test that plays several workers. The caller closes it with
    ``await client.aclose()``, which also closes its pool.

    Args:
        url: ``redis://``, ``rediss://`` or ``unix://`` URL.
        timeout_s: connect and socket timeout of each command, in seconds.
        max_connections: pool size; further callers wait up to ``pool_timeout_s``.
        pool_timeout_s: how long a command waits for a free pooled connection, in seconds.

    Returns:
        A client whose commands fail within about ``timeout_s`` when Redis is down or hung.
    """
    return Redis.from_pool(
        bounded_pool(
            url, timeout_s=timeout_s, max_connections=max_connections, pool_timeout_s=pool_timeout_s
        )
    )
