"""The Redis cache: JSON values and byte-limited levels, failing soft.

The response, semantic, tool and component levels share it under separate key prefixes
(:mod:`infra.cache.keys`). A cache must never make a job slower or fail it:

- Every ``RedisError`` or ``OSError`` is a miss (``get_json`` returns ``None``, ``set_json``
  returns ``False``), never an exception.
- The client and the circuit breaker are the process's :class:`infra.redis_client.RedisClients`
  (retries off, short timeouts, a bounded pool): while the breaker is open every call answers a
  miss at once, without calling Redis. Failures here open it for every other user too.
- A level's writes keep it within its byte limit atomically (:mod:`infra.cache.scripts`).

One module on purpose (about 450 lines): the one class every level goes through (values, TTLs, byte
limits, breaker handling); keys, scripts, counters and the answer levels live beside it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from typing import Any

from pydantic import JsonValue
from redis.asyncio import Redis

from core.models import CacheLevel
from infra.cache.keys import glob_escape, level_prefix, meta_key
from infra.cache.scripts import DELETE_SCRIPT, GET_TTL_SCRIPT, SET_SCRIPT
from infra.cache.stats import RECENT_LOOKUPS, CacheCounters, LevelStats, LookupHook
from infra.redis_client import REDIS_ERRORS, RedisClients

logger = logging.getLogger(__name__)

_PURGE_EXPIRED_PER_WRITE = 64
"""Index entries of expired values a write removes (bounded work per write)."""

DEFAULT_LEVEL_MAX_BYTES: dict[CacheLevel, int] = {
    CacheLevel.RESPONSE: 64 * 2**20,
    CacheLevel.SEMANTIC: 32 * 2**20,
    CacheLevel.TOOL: 128 * 2**20,
    CacheLevel.COMPONENT: 32 * 2**20,
}
"""Byte limit of each level unless the settings say otherwise (``AGENTFLOW_*_CACHE_MAX_BYTES``)."""


class RedisCache:
    """JSON values in Redis, failing soft: a down or slow Redis reads as a miss.

    Safe to share between coroutines of one event loop.
    """

    def __init__(
        self,
        redis: RedisClients | str,
        *,
        timeout_s: float = 0.5,
        max_connections: int = 64,
        breaker_cooldown_s: float = 5.0,
        pool_timeout_s: float = 2.0,
        level_max_bytes: dict[CacheLevel, int] | None = None,
        on_lookup: LookupHook | None = None,
    ) -> None:
        """Create the cache; no connection is opened until the first call.

        Args:
            redis: the process's Redis (shared; closed by whoever built it), or a
                ``redis://``, ``rediss://`` or ``unix://`` URL for a cache with Redis clients
                of its own (closed by :meth:`aclose`; tests and benchmarks).
            timeout_s: with a URL, the connect and socket timeout of each call, in seconds.
            max_connections: with a URL, the pool size; further callers wait for a free
                connection.
            breaker_cooldown_s: with a URL, how many seconds calls are skipped (miss) after a
                failure.
            pool_timeout_s: with a URL, how long a caller waits for a free pooled connection,
                in seconds, before the call fails as a miss.
            level_max_bytes: byte limit per level (missing levels: :data:`DEFAULT_LEVEL_MAX_BYTES`).
            on_lookup: called after each level lookup with the level and its outcome.
        """
        self._owns_redis = isinstance(redis, str)
        if isinstance(redis, str):
            redis = RedisClients(
                redis,
                timeout_s=timeout_s,
                max_connections=max_connections,
                pool_timeout_s=pool_timeout_s,
                breaker_cooldown_s=breaker_cooldown_s,
            )
        self.redis = redis
        """The Redis clients and breaker this cache uses (shared with the process's other users)."""
        self._client: Redis = redis.client
        self._breaker = redis.breaker
        self.stats = CacheCounters()
        self.level_max_bytes = {**DEFAULT_LEVEL_MAX_BYTES, **(level_max_bytes or {})}
        self.on_lookup = on_lookup
        self._get_ttl_script = self._client.register_script(GET_TTL_SCRIPT)
        self._set_script = self._client.register_script(SET_SCRIPT)
        self._delete_script = self._client.register_script(DELETE_SCRIPT)

    @property
    def client(self) -> Redis:
        """The underlying client (retries off, bounded pool), shared with other Redis users.

        The semantic index and request coalescing use it.
        """
        return self._client

    @property
    def last_error(self) -> str | None:
        """``"<type>: <message>"`` of the latest Redis failure in this process, else ``None``."""
        return self._breaker.last_error

    @property
    def degraded_reason(self) -> str | None:
        """Why the cache is being skipped right now (no host or key in it), else ``None``."""
        return self._breaker.degraded_reason

    @property
    def breaker_open(self) -> bool:
        """Whether calls are being skipped right now (the process's shared breaker is open)."""
        return self._breaker.open

    def _failed(self, op: str, exc: BaseException) -> None:
        self.stats.errors += 1
        self._breaker.record_failure(op, exc)

    def record_failure(self, op: str, exc: BaseException) -> None:
        """Count a failed Redis call made with :attr:`client` and open the breaker.

        ``op`` names the call in the log.
        """
        self._failed(op, exc)

    def _succeeded(self) -> None:
        self._breaker.record_success()

    async def get_json(self, key: str) -> JsonValue | None:
        """The JSON value stored at ``key``, or ``None`` on a miss.

        A miss is an absent key, a value that is not valid JSON, an open breaker or any Redis
        failure; this never raises for those.
        """
        if self.breaker_open:
            self.stats.skipped += 1
            self.stats.misses += 1
            return None
        try:
            raw: Any = await self._client.get(key)
        except REDIS_ERRORS as exc:
            self._failed("GET", exc)
            self.stats.misses += 1
            return None
        self._succeeded()
        if raw is None:
            self.stats.misses += 1
            return None
        try:
            value: JsonValue = json.loads(raw)
        except ValueError:
            logger.warning("undecodable cache value at %s; treated as a miss", key)
            self.stats.misses += 1
            return None
        self.stats.hits += 1
        return value

    async def set_json(self, key: str, value: JsonValue, ttl_s: int) -> bool:
        """Store ``value`` as compact JSON at ``key`` for ``ttl_s`` seconds.

        Returns:
            ``True`` when stored; ``False`` when Redis failed or the breaker is open.

        Raises:
            ValueError: ``ttl_s`` is not positive (a cache entry always expires), or ``value``
                cannot be encoded as JSON.
        """
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be positive, got {ttl_s}")
        data = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        if self.breaker_open:
            self.stats.skipped += 1
            return False
        try:
            await self._client.set(key, data, ex=ttl_s)
        except REDIS_ERRORS as exc:
            self._failed("SET", exc)
            return False
        self._succeeded()
        self.stats.sets += 1
        return True

    async def delete(self, key: str) -> None:
        """Delete ``key`` if present; failures are logged and ignored."""
        if self.breaker_open:
            self.stats.skipped += 1
            return
        try:
            await self._client.delete(key)
        except REDIS_ERRORS as exc:
            self._failed("DEL", exc)
            return
        self._succeeded()

    # ------------------------------------------------------------------ levels

    def _lookup_done(self, level: CacheLevel, outcome: str) -> None:
        if self.on_lookup is not None:
            self.on_lookup(level, outcome)

    async def get_level(self, level: CacheLevel, key: str) -> JsonValue | None:
        """The JSON value at ``key`` in ``level`` (a key from :func:`level_prefix`), or ``None``.

        Counts the lookup in the level's recent hit rate (same round trip). Never raises for
        Redis trouble: a down Redis, an open breaker or an undecodable value is a miss.
        """
        value, _ = await self.get_level_ttl(level, key)
        return value

    async def get_level_ttl(
        self, level: CacheLevel, key: str
    ) -> tuple[JsonValue | None, float | None]:
        """Like :meth:`get_level`, also returning the entry's remaining TTL in seconds.

        An answer built on a cached tool result must not outlive that result: the remaining
        TTL, not the tool's full TTL, bounds it.
        """
        if self.breaker_open:
            self.stats.skipped += 1
            self.stats.misses += 1
            self._lookup_done(level, "skipped")
            return None, None
        try:
            raw: Any = await self._get_ttl_script(
                keys=[key, meta_key(level, "recent")], args=[RECENT_LOOKUPS]
            )
        except REDIS_ERRORS as exc:
            self._failed("GET", exc)
            self.stats.misses += 1
            self._lookup_done(level, "error")
            return None, None
        self._succeeded()
        data, pttl = raw[0], int(raw[1])
        value: JsonValue | None = None
        if data is not None:
            try:
                value = json.loads(data)
            except ValueError:
                logger.warning("undecodable cache value at %s; treated as a miss", key)
        if value is None:
            self.stats.misses += 1
            self._lookup_done(level, "miss")
            return None, None
        self.stats.hits += 1
        self._lookup_done(level, "hit")
        return value, (pttl / 1000 if pttl > 0 else None)

    async def prune_level(self, level: CacheLevel, *, batch: int = 500) -> int:
        """Drop the bookkeeping of entries that no longer exist (deleted by their owner).

        Returns:
            How many were dropped.

        Raises:
            RedisError: Redis is down.
        """
        index = meta_key(level, "index")
        pruned = 0
        members: list[str] = []

        async def flush() -> int:
            async with self._client.pipeline(transaction=False) as pipe:
                for name in members:
                    pipe.exists(name)
                present = await pipe.execute()
            gone = [m for m, p in zip(members, present, strict=True) if not p]
            if gone:
                await self._delete_batch(level, gone)
            return len(gone)

        async for member in self._client.zscan_iter(index, count=batch):
            name = member[0]
            members.append(name.decode() if isinstance(name, bytes) else str(name))
            if len(members) >= batch:
                pruned += await flush()
                members = []
        if members:
            pruned += await flush()
        return pruned

    async def set_level(self, level: CacheLevel, key: str, value: JsonValue, ttl_s: int) -> bool:
        """Store ``value`` at ``key`` in ``level`` for ``ttl_s`` seconds within the level's bytes.

        When the level would exceed its byte limit, the entries closest to expiry are evicted
        first (atomically, in one Lua script, so workers sharing Redis agree on the total).

        Returns:
            ``True`` when stored; ``False`` when Redis failed, the breaker is open, or the value
            alone is larger than the level's limit.

        Raises:
            ValueError: ``ttl_s`` is not positive, or ``value`` cannot be encoded as JSON.
        """
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be positive, got {ttl_s}")
        data = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        if self.breaker_open:
            self.stats.skipped += 1
            return False
        try:
            evicted = await self._run_set(level, key, data, ttl_s, "set")
        except REDIS_ERRORS as exc:
            self._failed("SET", exc)
            return False
        self._succeeded()
        if evicted < 0:
            logger.info(
                "a %d-byte %s entry exceeds the level's limit; not cached", len(data), level
            )
            return False
        self.stats.sets += 1
        self.stats.evicted += evicted
        return True

    async def _run_set(self, level: CacheLevel, key: str, data: str, ttl_s: int, mode: str) -> int:
        result: Any = await self._set_script(
            keys=[
                key,
                meta_key(level, "index"),
                meta_key(level, "sizes"),
                meta_key(level, "bytes"),
            ],
            args=[
                data,
                int(ttl_s),
                int(time.time() * 1000),
                self.level_max_bytes[level],
                _PURGE_EXPIRED_PER_WRITE,
                mode,
            ],
        )
        return int(result)

    async def track_level(self, level: CacheLevel, key: str, size_bytes: int, ttl_s: int) -> bool:
        """Record ``key``, an entry another structure wrote, at ``size_bytes`` now.

        The semantic level's streams are written by :class:`infra.semantic.SemanticCache`;
        tracking them here puts them under the level's byte limit (a stream is evicted whole,
        closest to expiry first) and in :meth:`level_stats`. The entry's expiry moves to ``ttl_s``
        from now unless it was later already.

        Returns:
            Whether it was counted (``False``: Redis down, or larger than the level).

        Raises:
            ValueError: ``ttl_s`` not positive or ``size_bytes`` negative.
        """
        if ttl_s <= 0 or size_bytes < 0:
            raise ValueError("ttl_s must be positive and size_bytes non-negative")
        if self.breaker_open:
            return False
        try:
            evicted = await self._run_set(level, key, str(size_bytes), ttl_s, "track")
        except REDIS_ERRORS as exc:
            self._failed("TRACK", exc)
            return False
        self._succeeded()
        self.stats.evicted += max(evicted, 0)
        return evicted >= 0

    async def delete_level(self, level: CacheLevel, prefix: str = "", *, batch: int = 500) -> int:
        """Delete the entries of ``level`` whose key suffix starts with ``prefix``.

        ``prefix`` is relative to the level's namespace (:func:`level_prefix`), for example a
        tool name plus ``:`` on the tool level; empty deletes the whole level. The scan walks
        the level's index (bounded by its byte limit), deleting in batches of ``batch``.

        Returns:
            How many live entries were deleted.

        Raises:
            RedisError: Redis is down (an invalidation must not report success it did not have).
        """
        pattern = level_prefix(level) + glob_escape(prefix) + "*"
        index = meta_key(level, "index")
        deleted = 0
        keys: list[str] = []
        async for member in self._client.zscan_iter(index, match=pattern, count=batch):
            name = member[0]
            keys.append(name.decode() if isinstance(name, bytes) else str(name))
            if len(keys) >= batch:
                deleted += await self._delete_batch(level, keys)
                keys = []
        if keys:
            deleted += await self._delete_batch(level, keys)
        return deleted

    async def _delete_batch(self, level: CacheLevel, keys: Iterable[str]) -> int:
        meta = [meta_key(level, part) for part in ("index", "sizes", "bytes")]
        result: Any = await self._delete_script(keys=meta, args=list(keys))
        return int(result)

    async def level_stats(self, level: CacheLevel) -> LevelStats:
        """Entries, bytes and the recent hit rate of ``level``.

        Raises:
            RedisError: Redis is down.
        """
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.zcount(meta_key(level, "index"), int(time.time() * 1000), "+inf")
            pipe.get(meta_key(level, "bytes"))
            pipe.lrange(meta_key(level, "recent"), 0, RECENT_LOOKUPS - 1)
            entries, total, recent = await pipe.execute()
        outcomes = [r.decode() if isinstance(r, bytes) else str(r) for r in recent]
        return LevelStats(
            level=level,
            entries=int(entries),
            bytes=max(0, int(total or 0)),
            max_bytes=self.level_max_bytes[level],
            recent_lookups=len(outcomes),
            recent_hits=outcomes.count("1"),
        )

    async def record_lookup(self, level: CacheLevel, hit: bool) -> None:
        """Count a lookup made outside :meth:`get_level` (the semantic level's search)."""
        self._lookup_done(level, "hit" if hit else "miss")
        if self.breaker_open:
            return
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.lpush(meta_key(level, "recent"), "1" if hit else "0")
                pipe.ltrim(meta_key(level, "recent"), 0, RECENT_LOOKUPS - 1)
                await pipe.execute()
        except REDIS_ERRORS as exc:
            self._failed("LPUSH", exc)

    async def ping(self) -> bool:
        """Whether Redis answers PING now (for readiness checks).

        Always tries Redis, even with the breaker open, and closes the breaker on success.
        """
        try:
            await self._client.ping()
        except REDIS_ERRORS as exc:
            self._failed("PING", exc)
            return False
        self._succeeded()
        return True

    async def aclose(self) -> None:
        """Close the Redis clients if this cache built them from a URL; shared ones stay open."""
        if self._owns_redis:
            await self.redis.aclose()
