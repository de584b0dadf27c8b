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
from dataclasses import dataclass
from typing import Any

from pydantic import JsonValue
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from core.models import ResponseCacheKeyInput

logger = logging.getLogger(__name__)

RESPONSE_KEY_PREFIX = "agentflow:response:v1:"
"""Prefix of response-cache keys; bump the version when the cached answer's shape changes."""


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
    ) -> None:
        """Create the client; no connection is opened until the first call.

        Args:
            url: ``redis://``, ``rediss://`` or ``unix://`` URL.
            timeout_s: connect and socket timeout of each call, in seconds.
            max_connections: pool size; further callers wait for a free connection.
            breaker_cooldown_s: after a failure, calls are skipped (miss) for this many seconds.
            pool_timeout_s: how long a caller waits for a free pooled connection, in seconds,
                before the call fails as a miss.
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


def normalize_query(text: str) -> str:
    """Normalize a query for cache lookup.

    Unicode NFKC, case-folded, runs of whitespace collapsed to one space, surrounding whitespace
    and trailing ``?``, ``!`` and ``.`` removed: ``"  What is   X? "`` becomes ``"what is x"``.
    """
    normalized = unicodedata.normalize("NFKC", text).casefold()
    normalized = " ".join(normalized.split())
    return normalized.rstrip("?!. ").strip()


def _canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def response_cache_key(inp: ResponseCacheKeyInput) -> str:
    """Redis key of a final answer: ``agentflow:response:v1:<sha256 hex>``.

    The digest covers the owner (the API key's id: every key has its own answers), the
    normalized query (:func:`normalize_query`), the model tier, and a SHA-256
    of the canonical JSON of the context items (content, importance, source, blob id, in order)
    and tool calls (name and parameters with sorted keys, in order). Tool call ids are left out:
    they do not change the answer.
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
    inputs_digest = hashlib.sha256(
        _canonical_json({"context": context, "tool_calls": tool_calls}).encode()
    ).hexdigest()
    fields: dict[str, Any] = {
        "query": normalize_query(inp.query),
        "inputs_sha256": inputs_digest,
        "model_tier": inp.model_tier,
    }
    if inp.owner is not None:  # jobs without an owner keep the keys they always had
        fields["owner"] = inp.owner
    payload = _canonical_json(fields)
    return RESPONSE_KEY_PREFIX + hashlib.sha256(payload.encode()).hexdigest()
