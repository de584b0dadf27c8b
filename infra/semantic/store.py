"""The semantic cache: nearest cached query per namespace, shared by every process through Redis.

Storage, shared by every worker and API process through Redis: one Redis stream per namespace
(``agentflow:cache:semantic:v1:<sha256 of embedder name and namespace>``), one entry per stored
query (one packed field: expiry in ms, float32 vector, response key, query, namespace), trimmed
to exactly ``max_entries`` by ``XADD MAXLEN`` and expiring as a whole after the longest TTL of
its entries (a small Lua script, so it works on Redis 6.2). Each process keeps a numpy copy per
namespace and reads only entries newer than the last one it saw, 256 per ``XRANGE``, each page
with ``XLEN`` in the same ``MULTI``: streams are trimmed from the oldest end, so once a page
reaches the end the local copy keeps its newest ``XLEN`` rows. Entries past their expiry never
match and are dropped. A stream deleted and re-created is picked up the same way.

Size limits: nearest neighbours are a brute-force float32 matrix-vector product, exact and
without an index, meant for at most 20,000 rows per namespace (``semantic_cache_max_entries``'s
upper bound). A lexical row is 4 KiB: 2,000 rows are 8 MiB per namespace in each process that
looks it up and about 9 MiB in Redis (20,000 rows: about 80 and 88 MiB). The product runs in the
event loop up to :data:`INLINE_SEARCH_MAX_FLOATS` elements (2,048 lexical rows), in a worker
thread above. The first lookup of a namespace in a process reads the whole stream: with
redis-py's pure-Python parser about 0.3 s for 2,000 rows and 3.5 s for 20,000 on the
benchmark's busy 2-core machine (``hiredis`` parses several times faster). Each process holds
at most ``max_namespaces`` namespaces and ``max_local_bytes`` of vectors (least recently used
evicted first; the namespace in use stays even if it alone is larger). Every stream expires;
the level's total across namespaces is bounded by Redis's ``maxmemory`` policy, not by this module.

A cache never fails a job: every ``RedisError`` or ``OSError`` is a miss (``degraded=True``),
and after one a breaker answers misses at once for ``breaker_cooldown_s``. An embedder failure
is a miss too. The client must return bytes (``decode_responses=False``, as
:class:`infra.cache.RedisCache` builds it); retries off and short timeouts keep a down Redis fast.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from typing import Any

import numpy as np
from redis.asyncio import Redis
from redis.exceptions import RedisError

from core.errors import ModelError
from domain.semantic_guard.facts import guard_allows, guard_signature
from infra.embeddings import MAX_EMBED_CHARS, Embedder, Vectors
from infra.redis_client import RedisBreaker
from infra.semantic.entries import ADD_SCRIPT, Entry, pack_entry, parse_stream_id, unpack_entry
from infra.semantic.mirror import NamespaceMirror
from infra.semantic.results import SemanticHit, SemanticLookup, SemanticStats

logger = logging.getLogger(__name__)


logger = logging.getLogger(__name__)


SEMANTIC_KEY_PREFIX = "agentflow:cache:semantic:v1:"
"""Prefix of the per-namespace streams; bump the version when the entry layout changes."""


INLINE_SEARCH_MAX_FLOATS = 2**21
"""A search over more matrix elements than this (8 MiB of float32, about a millisecond) runs in
a worker thread instead of the event loop."""


SYNC_PAGE_ENTRIES = 256
"""Entries read per ``XRANGE`` (1 MiB of lexical vectors): a process that loads a large
namespace reads it in pages, so Redis never builds one huge reply that would stall its other
clients."""


MAX_CANDIDATES = 16
"""Most rows above the threshold that the guard examines per lookup (most similar first)."""


class SemanticCache:
    """Nearest cached query per namespace, shared by every process through Redis.

    See the module docstring for storage, limits and failure behaviour. Safe to share between
    coroutines of one event loop.
    """

    def __init__(
        self,
        redis: Redis,
        embedder: Embedder,
        *,
        threshold: float,
        max_entries: int,
        max_namespaces: int = 256,
        max_local_bytes: int = 256 * 2**20,
        breaker_cooldown_s: float = 5.0,
        breaker: RedisBreaker | None = None,
    ) -> None:
        """Create the cache; nothing is read until the first lookup.

        Args:
            redis: an asyncio client returning bytes (``decode_responses=False``), ideally with
                retries off and short timeouts (:class:`infra.cache.RedisCache`'s client).
            embedder: embeds queries; its ``name`` is part of every stream key.
            threshold: cosine similarity at or above which a cached query is a candidate
                (``semantic_cache_threshold``), in ``(0, 1]``.
            max_entries: stored queries per namespace (``semantic_cache_max_entries``).
            max_namespaces: namespaces one process keeps in memory (least recently used
                evicted first).
            max_local_bytes: bytes of vectors one process keeps in memory across namespaces.
            breaker_cooldown_s: after a Redis failure, lookups and adds are misses for this
                many seconds without calling Redis (when no ``breaker`` is given).
            breaker: the process's shared breaker (:class:`infra.redis_client.RedisClients`):
                failures here open it for every Redis user, and this level skips Redis while
                any user's failure holds it open. ``None``: a breaker of its own.

        Raises:
            ValueError: an argument is out of range, or the client decodes responses.
        """
        if not 0 < threshold <= 1:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        if max_entries < 1 or max_namespaces < 1 or max_local_bytes < 1:
            raise ValueError("max_entries, max_namespaces and max_local_bytes must be positive")
        if redis.connection_pool.connection_kwargs.get("decode_responses"):
            raise ValueError("the semantic cache needs a Redis client with decode_responses=False")
        self._redis = redis
        self.embedder = embedder
        self.threshold = threshold
        self.max_entries = max_entries
        self.max_namespaces = max_namespaces
        self.max_local_bytes = max_local_bytes
        self._breaker = breaker if breaker is not None else RedisBreaker(breaker_cooldown_s)
        self._namespaces: OrderedDict[str, NamespaceMirror] = OrderedDict()
        self._vectors: OrderedDict[str, Vectors] = OrderedDict()
        self._add = redis.register_script(ADD_SCRIPT)

    # ----------------------------------------------------------------- keys and state

    def stream_key(self, namespace: str) -> str:
        """The Redis key of ``namespace``'s stream for this cache's embedder."""
        digest = hashlib.sha256(f"{self.embedder.name}\n{namespace}".encode()).hexdigest()
        return SEMANTIC_KEY_PREFIX + digest

    @property
    def breaker_open(self) -> bool:
        """Whether Redis calls are being skipped right now (after a failure)."""
        return self._breaker.open

    @property
    def local_namespaces(self) -> int:
        """Namespaces this process holds in memory."""
        return len(self._namespaces)

    @property
    def local_bytes(self) -> int:
        """Bytes of vectors this process holds across namespaces."""
        return sum(ns.nbytes for ns in self._namespaces.values())

    def _failed(self, op: str, exc: BaseException) -> str:
        self._breaker.record_failure(f"semantic {op}", exc)
        return f"redis unreachable ({type(exc).__name__})"

    async def _embed(self, query: str) -> Vectors:
        """The query's row (shape ``(dim,)``), remembered for the next 128 distinct queries."""
        memo = self._vectors.get(query)
        if memo is not None:
            self._vectors.move_to_end(query)
            return memo
        row: Vectors = (await self.embedder.embed([query]))[0]
        self._vectors[query] = row
        while len(self._vectors) > 128:
            self._vectors.popitem(last=False)
        return row

    def _namespace(self, key: str, dim: int) -> NamespaceMirror:
        state = self._namespaces.get(key)
        if state is None or state.dim != dim:
            state = NamespaceMirror(dim=dim, max_rows=self.max_entries + SYNC_PAGE_ENTRIES)
            self._namespaces[key] = state
        self._namespaces.move_to_end(key)
        return state

    def _evict(self) -> None:
        """Drop least recently used namespaces beyond the count or byte budget (not the newest)."""
        while len(self._namespaces) > 1 and (
            len(self._namespaces) > self.max_namespaces or self.local_bytes > self.max_local_bytes
        ):
            self._namespaces.popitem(last=False)

    async def _sync(self, key: str, state: NamespaceMirror) -> None:
        """Read entries newer than the last one seen, and drop those Redis trimmed or expired.

        Raises:
            RedisError, OSError: Redis failed.
        """
        zero = bytes(4 * state.dim)
        while True:
            low = "-" if state.last_id is None else f"{state.last_id[0]}-{state.last_id[1] + 1}"
            # XLEN in the same MULTI as the page: once a page reaches the stream's end, the
            # stream is exactly the newest XLEN of the rows read so far (streams trim the
            # oldest), whatever was added or trimmed between pages.
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.xrange(key, min=low, max="+", count=SYNC_PAGE_ENTRIES)
                pipe.xlen(key)
                page, length = await pipe.execute()
            vectors: list[bytes] = []
            expires: list[int] = []
            keys: list[str] = []
            queries: list[str] = []
            for entry_id, fields in page:
                state.last_id = parse_stream_id(entry_id)
                entry = unpack_entry(fields)
                if entry is None or len(entry.vector) != len(zero):
                    # An unusable entry keeps its place as a row that matches nothing, so the
                    # rows stay one-to-one with the stream's entries (trimming counts on it).
                    entry = Entry(zero, 0, "", "", "")
                vectors.append(entry.vector)
                expires.append(entry.expires_ms)
                keys.append(entry.response_key)
                queries.append(entry.query)
            if vectors:
                rows = np.frombuffer(b"".join(vectors), dtype="<f4").reshape(len(vectors), -1)
                bad = ~np.isfinite(rows).all(axis=1)
                if bad.any():
                    rows = np.where(bad[:, None], np.float32(0), rows)
                    expires = [0 if b else e for b, e in zip(bad.tolist(), expires, strict=True)]
                state.append(rows.astype(np.float32), expires, keys, queries)
            if len(page) < SYNC_PAGE_ENTRIES:
                break
        state.drop_oldest(state.size - int(length))
        state.drop_expired_prefix(int(time.time() * 1000))

    # ----------------------------------------------------------------- public

    async def lookup(self, namespace: str, query: str) -> SemanticLookup:
        """The most similar cached query of ``namespace`` that the guard lets serve ``query``.

        Args:
            namespace: whose entries to search (the caller builds it from owner, model
                identity and context digest); entries never cross namespaces.
            query: the new query, as asked.

        Returns:
            A :class:`SemanticLookup`. Never raises for Redis or embedder failures: those are
            misses with ``degraded=True``.
        """
        name = self.embedder.name
        if len(query) > MAX_EMBED_CHARS:
            return SemanticLookup(reason="query too long for the semantic level", embedder=name)
        if self.breaker_open:
            return SemanticLookup(
                reason="redis unreachable (breaker open)", degraded=True, embedder=name
            )
        try:
            vector = await self._embed(query)
        except ModelError as exc:
            return SemanticLookup(
                reason=f"embeddings unavailable ({exc.type})", degraded=True, embedder=name
            )
        if not np.any(vector):
            return SemanticLookup(reason="nothing to compare in the query", embedder=name)
        key = self.stream_key(namespace)
        state = self._namespace(key, vector.shape[0])
        try:
            async with state.lock:
                await self._sync(key, state)
                start, end = state.start, state.end
                matrix = state.vectors[start:end]
                expires = state.expires_ms[start:end]
                keys = state.keys[start:end]
                queries = state.queries[start:end]
        except (RedisError, OSError) as exc:
            return SemanticLookup(reason=self._failed("lookup", exc), degraded=True, embedder=name)
        finally:
            self._evict()
        if not keys:
            return SemanticLookup(embedder=name)
        if matrix.size > INLINE_SEARCH_MAX_FLOATS:
            sims = await asyncio.to_thread(np.matmul, matrix, vector)
        else:
            sims = matrix @ vector
        sims[expires <= int(time.time() * 1000)] = -1.0
        best = float(sims.max())
        if best < self.threshold:
            return SemanticLookup(similarity=best, embedder=name)
        above = np.flatnonzero(sims >= self.threshold)
        ranked = above[np.argsort(-sims[above], kind="stable")][:MAX_CANDIDATES]
        facts = guard_signature(query)
        first_reason: str | None = None
        for row in ranked:
            reason = guard_allows(facts, guard_signature(queries[row]))
            if reason is None:
                hit = SemanticHit(
                    response_key=keys[row],
                    similarity=float(sims[row]),
                    cached_query=queries[row],
                )
                return SemanticLookup(hit=hit, similarity=best, embedder=name)
            first_reason = first_reason or reason
        return SemanticLookup(similarity=best, reason=first_reason, embedder=name)

    async def add(self, namespace: str, query: str, response_key: str, ttl_s: float) -> bool:
        """Store ``query`` as pointing at ``response_key`` for ``ttl_s`` seconds.

        Args:
            namespace: as for :meth:`lookup`.
            query: the query as asked (at most :data:`infra.embeddings.MAX_EMBED_CHARS`
                characters; longer ones are not stored).
            response_key: the response-cache key of its answer.
            ttl_s: seconds the entry lives (at most as long as the answer it points at).

        Returns:
            ``True`` when stored; ``False`` when the query is too long or empty, the embedder
            failed, Redis failed or the breaker is open.

        Raises:
            ValueError: ``ttl_s`` is not positive or ``response_key`` is empty.
        """
        if not ttl_s > 0:
            raise ValueError(f"ttl_s must be positive, got {ttl_s}")
        if not response_key:
            raise ValueError("response_key must not be empty")
        if len(query) > MAX_EMBED_CHARS or self.breaker_open:
            return False
        try:
            vector = await self._embed(query)
        except ModelError:
            return False
        if not np.any(vector):
            return False
        ttl_ms = max(1, int(ttl_s * 1000))
        expires_ms = int(time.time() * 1000) + ttl_ms
        try:
            await self._add(
                keys=[self.stream_key(namespace)],
                args=[
                    self.max_entries,
                    pack_entry(vector, expires_ms, response_key, query, namespace),
                    ttl_ms,
                ],
            )
        except (RedisError, OSError) as exc:
            self._failed("add", exc)
            return False
        return True

    async def _streams(self) -> list[bytes]:
        found: list[bytes] = []
        async for key in self._redis.scan_iter(
            match=f"{SEMANTIC_KEY_PREFIX}*", count=500, _type="stream"
        ):
            found.append(key)
        return found

    async def clear(self, namespace_prefix: str | None = None) -> int:
        """Delete the namespaces whose name starts with ``namespace_prefix`` (all when ``None``).

        Scans the keyspace for semantic streams (``SCAN``, so its cost grows with the number
        of Redis keys; meant for administration, e.g. ``DELETE /v1/cache/semantic``).

        Returns:
            The number of entries deleted.

        Raises:
            redis.RedisError, OSError: Redis failed (nothing is guaranteed deleted).
        """
        deleted = 0
        for key in await self._streams():
            if namespace_prefix is not None:
                first: Any = await self._redis.xrange(key, min="-", max="+", count=1)
                if not first:
                    continue
                entry = unpack_entry(first[0][1])
                if entry is None or not entry.namespace.startswith(namespace_prefix):
                    continue
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.xlen(key)
                pipe.delete(key)
                length, _ = await pipe.execute()
            deleted += int(length)
            self._namespaces.pop(key.decode(), None)
        self._breaker.record_success()
        return deleted

    async def stats(self) -> SemanticStats:
        """Entries and bytes of the semantic level in Redis, across namespaces.

        Raises:
            redis.RedisError, OSError: Redis failed.
        """
        entries = size = streams = 0
        for key in await self._streams():
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.xlen(key)
                pipe.memory_usage(key, samples=0)
                length, usage = await pipe.execute()
            if length:
                streams += 1
                entries += int(length)
                size += int(usage or 0)
        return SemanticStats(entries=entries, size_bytes=size, streams=streams)
