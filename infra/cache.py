"""The Redis cache (response cache and tool-result cache share it, under separate key prefixes).

A cache must never make a job slower or fail it. Hazards this module handles:

- redis-py's default retry policy makes every call against a down Redis take seconds. Retries are
  off here and socket timeouts are short, so a call fails in about a millisecond (refused) or at
  most ``timeout_s`` (hung server).
- Every ``RedisError`` or ``OSError`` is a miss (``get_json`` returns ``None``, ``set_json``
  returns ``False``), never an exception.
- While Redis is down, a circuit breaker skips calls for ``breaker_cooldown_s`` after each failure
  and answers a miss at once; the next call after the cooldown tries Redis again. Each trip is
  logged once, not every failed call.
- An unbounded fan-out of calls would exhaust an unbounded pool; the pool is a bounded
  ``BlockingConnectionPool`` whose callers wait for a free connection.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import JsonValue
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from core.canonical import canonical_digest, canonical_json
from core.models import CacheLevel, ResponseCacheKeyInput
from core.settings import Settings

if TYPE_CHECKING:
    from infra.semantic import SemanticCache

logger = logging.getLogger(__name__)

RECENT_LOOKUPS = 1000
"""How many of each level's latest lookups (hit or miss) ``GET /v1/cache/stats`` rates."""

_PURGE_EXPIRED_PER_WRITE = 64
"""Index entries of expired values a write removes (bounded work per write)."""


def level_prefix(level: CacheLevel) -> str:
    """Namespace of a level's entries (:attr:`core.models.CacheLevel.prefix`)."""
    return level.prefix


def _meta(level: CacheLevel, part: str) -> str:
    # '#' never occurs in an entry suffix (hex digests, tool names), so no entry collides.
    return f"agentflow:{{cache:{level.value}}}#{part}"


RESPONSE_KEY_PREFIX = level_prefix(CacheLevel.RESPONSE) + "v2:"
"""Prefix of response-cache keys; bump the version when the cached answer's shape changes."""

# A lookup that also appends 1 (hit) or 0 (miss) to the level's list of recent lookups, trimmed
# to RECENT_LOOKUPS, and returns the entry's remaining time to live in ms: one round trip.
_GET_TTL_SCRIPT = """
local value = redis.call('GET', KEYS[1])
redis.call('LPUSH', KEYS[2], value and '1' or '0')
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[1]) - 1)
return {value, redis.call('PTTL', KEYS[1])}
"""

# Store a value in a level with a byte limit. The index is a sorted set of entry keys scored by
# expiry (ms); sizes holds each entry's bytes and total the level's sum. Expired entries are
# dropped from the bookkeeping first (bounded per write); then, while the level is over its
# limit, the entry closest to expiry is evicted. Returns the number evicted, or -1 when the
# value alone exceeds the limit (nothing stored).
_SET_SCRIPT = """
local key, idx, sizes, total = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local value = ARGV[1]
local ttl = tonumber(ARGV[2])
-- Redis's clock, not a worker's: workers whose clocks differ still agree on what expired.
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local maxb = tonumber(ARGV[4])
local purge = tonumber(ARGV[5])
local function forget(k)
  local s = tonumber(redis.call('HGET', sizes, k) or '0')
  redis.call('HDEL', sizes, k)
  redis.call('ZREM', idx, k)
  redis.call('DECRBY', total, s)
end
for _, k in ipairs(redis.call('ZRANGEBYSCORE', idx, '-inf', now, 'LIMIT', 0, purge)) do
  forget(k)
  redis.call('DEL', k)
end
local size
if ARGV[6] == 'track' then
  -- An entry another structure owns (a semantic stream): record its current size, and move its
  -- expiry only later (a short-lived addition never shortens the whole stream's life).
  size = tonumber(value)
  if size > maxb then return -1 end
  redis.call('DECRBY', total, tonumber(redis.call('HGET', sizes, key) or '0'))
  redis.call('HSET', sizes, key, size)
  redis.call('ZADD', idx, 'GT', now + ttl * 1000, key)
  redis.call('ZADD', idx, 'NX', now + ttl * 1000, key)
else
  size = string.len(value) + string.len(key)
  if size > maxb then return -1 end
  if redis.call('HEXISTS', sizes, key) == 1 then forget(key) end
  redis.call('SET', key, value, 'EX', ttl)
  redis.call('HSET', sizes, key, size)
  redis.call('ZADD', idx, now + ttl * 1000, key)
end
local t = redis.call('INCRBY', total, size)
local evicted = 0
while t > maxb do
  -- The entry closest to expiry, unless that is the one just written: then the next one.
  local first = redis.call('ZRANGE', idx, 0, 1)
  local victim = first[1]
  if victim == key then victim = first[2] end
  if not victim then break end
  forget(victim)
  redis.call('DEL', victim)
  t = tonumber(redis.call('GET', total) or '0')
  evicted = evicted + 1
end
return evicted
"""

# Delete the given entries of a level and their bookkeeping; returns how many existed.
_DELETE_SCRIPT = """
local idx, sizes, total = KEYS[1], KEYS[2], KEYS[3]
local n = 0
for i = 1, #ARGV do
  local k = ARGV[i]
  local s = tonumber(redis.call('HGET', sizes, k) or '0')
  redis.call('HDEL', sizes, k)
  redis.call('ZREM', idx, k)
  redis.call('DECRBY', total, s)
  n = n + redis.call('DEL', k)
end
return n
"""


@dataclass
class CacheStats:
    """Counters since the cache was created.

    Attributes:
        hits: ``get_json`` calls that found a value.
        misses: ``get_json`` calls that returned ``None`` for any reason (absent key, Redis
            error, breaker open, undecodable value).
        errors: calls that reached Redis and failed (``RedisError`` or ``OSError``).
        sets: ``set_json`` calls that stored their value.
        skipped: calls answered at once because the breaker was open.
    """

    hits: int = 0
    misses: int = 0
    errors: int = 0
    sets: int = 0
    skipped: int = 0
    evicted: int = 0


@dataclass(frozen=True)
class LevelStats:
    """One cache level as Redis holds it now.

    Attributes:
        level: the level.
        entries: live entries in the level's index.
        bytes: their keys and values, in bytes (the level's limit bounds this).
        max_bytes: the level's byte limit.
        recent_lookups: lookups among the last :data:`RECENT_LOOKUPS` (fewer early on).
        recent_hits: how many of those were hits.
    """

    level: CacheLevel
    entries: int
    bytes: int
    max_bytes: int
    recent_lookups: int
    recent_hits: int

    @property
    def recent_hit_rate(self) -> float | None:
        """Hits per lookup over the recent lookups; ``None`` before the first lookup."""
        return self.recent_hits / self.recent_lookups if self.recent_lookups else None


DEFAULT_LEVEL_MAX_BYTES: dict[CacheLevel, int] = {
    CacheLevel.RESPONSE: 64 * 2**20,
    CacheLevel.SEMANTIC: 32 * 2**20,
    CacheLevel.TOOL: 128 * 2**20,
    CacheLevel.COMPONENT: 32 * 2**20,
}
"""Byte limit of each level unless the settings say otherwise (``AGENTFLOW_*_CACHE_MAX_BYTES``)."""

LookupHook = Callable[[CacheLevel, str], None]
"""Called with a level and ``hit``/``miss``/``error``/``skipped`` after each level lookup (the
Prometheus counters)."""


class RedisCache:
    """JSON values in Redis, failing soft: a down or slow Redis reads as a miss.

    Safe to share between coroutines of one event loop.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 0.5,
        max_connections: int = 64,
        breaker_cooldown_s: float = 5.0,
        pool_timeout_s: float = 2.0,
        level_max_bytes: dict[CacheLevel, int] | None = None,
        on_lookup: LookupHook | None = None,
    ) -> None:
        """Create the client; no connection is opened until the first call.

        Args:
            url: ``redis://``, ``rediss://`` or ``unix://`` URL.
            timeout_s: connect and socket timeout of each call, in seconds.
            max_connections: pool size; further callers wait for a free connection.
            breaker_cooldown_s: after a failure, calls are skipped (miss) for this many seconds.
            pool_timeout_s: how long a caller waits for a free pooled connection, in seconds,
                before the call fails as a miss.
            level_max_bytes: byte limit per level (missing levels: :data:`DEFAULT_LEVEL_MAX_BYTES`).
            on_lookup: called after each level lookup with the level and its outcome.
        """
        self._pool: BlockingConnectionPool = BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=pool_timeout_s,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        self._client: Redis = Redis(connection_pool=self._pool)
        self._cooldown_s = breaker_cooldown_s
        self._open_until = 0.0
        self._tripped = False
        self.stats = CacheStats()
        self.last_error: str | None = None
        self.level_max_bytes = {**DEFAULT_LEVEL_MAX_BYTES, **(level_max_bytes or {})}
        self.on_lookup = on_lookup
        self._get_ttl_script = self._client.register_script(_GET_TTL_SCRIPT)
        self._set_script = self._client.register_script(_SET_SCRIPT)
        self._delete_script = self._client.register_script(_DELETE_SCRIPT)

    @property
    def client(self) -> Redis:
        """The underlying client (retries off, bounded pool), shared with other Redis users.

        The semantic index and request coalescing use it.
        """
        return self._client

    @property
    def degraded_reason(self) -> str | None:
        """Why the cache is being skipped right now (no host or key in it), else ``None``."""
        if not self.breaker_open or self.last_error is None:
            return None
        return f"redis unreachable ({self.last_error.split(':', 1)[0]})"

    @property
    def breaker_open(self) -> bool:
        """Whether calls are being skipped right now."""
        return time.monotonic() < self._open_until

    def _failed(self, op: str, exc: BaseException) -> None:
        self.stats.errors += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        if not self.breaker_open:
            logger.warning(
                "redis %s failed (%s); treating the cache as a miss for %.1fs",
                op,
                self.last_error,
                self._cooldown_s,
            )
        self._tripped = True
        self._open_until = time.monotonic() + self._cooldown_s

    def record_failure(self, op: str, exc: BaseException) -> None:
        """Count a failed Redis call made with :attr:`client` and open the breaker.

        ``op`` names the call in the log.
        """
        self._failed(op, exc)

    def _succeeded(self) -> None:
        if self._tripped:
            logger.info("redis is reachable again; cache resumed")
            self._tripped = False
            self._open_until = 0.0

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
        except (RedisError, OSError) as exc:
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
        except (RedisError, OSError) as exc:
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
        except (RedisError, OSError) as exc:
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
                keys=[key, _meta(level, "recent")], args=[RECENT_LOOKUPS]
            )
        except (RedisError, OSError) as exc:
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
        index = _meta(level, "index")
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
        except (RedisError, OSError) as exc:
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
            keys=[key, _meta(level, "index"), _meta(level, "sizes"), _meta(level, "bytes")],
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
        except (RedisError, OSError) as exc:
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
        pattern = level_prefix(level) + _glob_escape(prefix) + "*"
        index = _meta(level, "index")
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
        meta = [_meta(level, "index"), _meta(level, "sizes"), _meta(level, "bytes")]
        result: Any = await self._delete_script(keys=meta, args=list(keys))
        return int(result)

    async def level_stats(self, level: CacheLevel) -> LevelStats:
        """Entries, bytes and the recent hit rate of ``level``.

        Raises:
            RedisError: Redis is down.
        """
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.zcount(_meta(level, "index"), int(time.time() * 1000), "+inf")
            pipe.get(_meta(level, "bytes"))
            pipe.lrange(_meta(level, "recent"), 0, RECENT_LOOKUPS - 1)
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
                pipe.lpush(_meta(level, "recent"), "1" if hit else "0")
                pipe.ltrim(_meta(level, "recent"), 0, RECENT_LOOKUPS - 1)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            self._failed("LPUSH", exc)

    async def ping(self) -> bool:
        """Whether Redis answers PING now (for readiness checks).

        Always tries Redis, even with the breaker open, and closes the breaker on success.
        """
        try:
            await self._client.ping()
        except (RedisError, OSError) as exc:
            self._failed("PING", exc)
            return False
        self._succeeded()
        return True

    async def aclose(self) -> None:
        """Close the client and every pooled connection."""
        await self._client.aclose()
        await self._pool.aclose()


# --------------------------------------------------------------------------- response cache keys


_FULLWIDTH = {code: code - 0xFEE0 for code in range(0xFF01, 0xFF5F)}
"""Full-width ASCII forms (U+FF01-U+FF5E) to ASCII: the only compatibility folding applied."""

_KEEP_CASE = frozenset("[]{}()\\^$|")
"""A token with one of these (a regular expression, code) keeps its case: ``[A-Z]`` is not
``[a-z]``."""


def normalize_query(text: str) -> str:
    """Normalize a query for cache lookup, never making two questions one.

    Unicode NFC with full-width ASCII folded (NFKC would turn ``2³`` into ``23``), words
    case-folded except tokens that look like code or a pattern (``[A-Z]+`` keeps its case), runs
    of whitespace collapsed to one space, and trailing ``?``, ``.`` and ``!`` removed, except a
    ``!`` after a digit or ``)`` (a factorial): ``"  What is   X? "`` becomes ``"what is x"``,
    ``"Compute 10!"`` stays apart from ``"Compute 10."``.
    """
    normalized = unicodedata.normalize("NFC", text).translate(_FULLWIDTH)
    words = [w if _KEEP_CASE.intersection(w) else w.casefold() for w in normalized.split()]
    normalized = " ".join(words)
    while normalized and normalized[-1] in "?!. ":
        if normalized[-1] == "!" and len(normalized) > 1 and normalized[-2] in "0123456789)":
            break
        normalized = normalized[:-1]
    return normalized


def _glob_escape(text: str) -> str:
    """``text`` with Redis glob characters escaped, so a client's prefix matches literally."""
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


def response_cache_key(inp: ResponseCacheKeyInput) -> str:
    """Redis key of a final answer: ``agentflow:{cache:response}:v2:<sha256 hex>``.

    The digest covers the owner (the API key's id: every key has its own answers), the
    normalized query (:func:`normalize_query`), :func:`inputs_digest` (context, tool calls,
    model tier, model identity, ``require_approval``, context budget). Tool call ids are left
    out: they do not change the answer.
    """
    fields: dict[str, Any] = {
        "query": normalize_query(inp.query),
        "inputs_sha256": inputs_digest(inp),
    }
    if inp.owner is not None:
        fields["owner"] = inp.owner
    payload = canonical_json(fields)
    return RESPONSE_KEY_PREFIX + hashlib.sha256(payload.encode()).hexdigest()


def inputs_digest(inp: ResponseCacheKeyInput) -> str:
    """SHA-256 hex of everything but the query that changes an answer.

    Canonical JSON of the context items (content, importance, source, blob id, in order), tool
    calls (name and parameters with sorted keys, in order), the model tier asked for, the
    catalog's model identity (provider, model id, endpoint per tier:
    :meth:`core.catalog.ModelCatalog.fingerprint`), ``require_approval`` and the context
    budget (``max_context_tokens``). The semantic level
    uses it (with the owner) as its namespace: only queries asked with the same inputs of the
    same models can share an answer.
    """
    context = [
        {
            "content": item.content,
            "importance": item.importance.value,
            "source": item.source,
            "blob_id": item.blob.blob_id if item.blob is not None else None,
        }
        for item in inp.context
    ]
    tool_calls = [{"name": call.name, "parameters": call.parameters} for call in inp.tool_calls]
    payload = {
        "context": context,
        "tool_calls": tool_calls,
        "model_tier": inp.model_tier,
        "model_identity": inp.model_identity,
        "require_approval": inp.require_approval,
    }
    if inp.max_context_tokens is not None:
        payload["max_context_tokens"] = inp.max_context_tokens
    return canonical_digest(payload)


def cache_from_settings(settings: Settings, *, on_lookup: LookupHook | None = None) -> RedisCache:
    """The cache with the settings' Redis, timeout and per-level byte limits."""
    return RedisCache(
        settings.redis_url,
        timeout_s=settings.redis_timeout_s,
        level_max_bytes={
            CacheLevel.RESPONSE: settings.response_cache_max_bytes,
            CacheLevel.SEMANTIC: settings.semantic_cache_max_bytes,
            CacheLevel.TOOL: settings.tool_cache_max_bytes,
            CacheLevel.COMPONENT: settings.component_cache_max_bytes,
        },
        on_lookup=on_lookup,
    )


def semantic_from_settings(settings: Settings, cache: RedisCache) -> SemanticCache | None:
    """The semantic level the settings ask for, on ``cache``'s client (``None``: switched off).

    The embedder is the OpenAI-compatible endpoint's when ``AGENTFLOW_EMBEDDINGS_MODEL`` is set,
    else the offline lexical one (:func:`infra.embeddings.embedder_from_settings`).
    """
    if not settings.semantic_cache:
        return None
    from infra.embeddings import embedder_from_settings
    from infra.semantic import SemanticCache

    return SemanticCache(
        cache.client,
        embedder_from_settings(settings),
        threshold=settings.semantic_cache_threshold,
        max_entries=settings.semantic_cache_max_entries,
    )
