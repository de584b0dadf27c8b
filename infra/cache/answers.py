"""A job's view of the answer caches: the response and semantic levels and the component level.

:class:`AnswerCache` is what the stage activities call: look a request up (the exact response
level, then the semantic level, never serving a hit that the approval policy now gates), compute
a stage's output behind the component level, and store a finished job's answer for as long as
the rules allow (:mod:`domain.cache_guard` says which answers may be cached and for how long;
this module does the Redis side). A down Redis is a miss and a skipped write, reported in the
job's :class:`~core.models.CacheReport`, never a failure.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from pydantic import BaseModel
from redis.exceptions import RedisError

from core.models import (
    AgentResult,
    ApprovalPolicy,
    CachedResponse,
    CacheLevel,
    CacheReport,
    CheckResponseCacheResult,
    RecordJobInput,
    ResponseCacheKeyInput,
)
from core.tools import ToolRegistry
from domain.cache_guard import (
    answer_ttl_s,
    cached_answer,
    cached_response,
    component_key,
    count_lookup,
    gated_by_policy,
    report_with_tool_lookups,
)
from infra.cache.keys import inputs_digest, response_cache_key
from infra.cache.store import RedisCache

if TYPE_CHECKING:
    from infra.semantic import SemanticCache

log = logging.getLogger(__name__)

_M = TypeVar("_M", bound=BaseModel)

SEMANTIC_ADD_TIMEOUT_S = 1.0
"""Most seconds filing an answer on the semantic level may take inside ``record_job``."""


def semantic_namespace(inp: ResponseCacheKeyInput) -> str:
    """The semantic level's namespace of a request: its owner and :func:`inputs_digest`.

    Only queries from the same key, with the same context, tool calls, tier choice and models
    can share an answer; the query itself is compared by meaning.
    """
    return f"{inp.owner or '-'}:{inputs_digest(inp)}"


class AnswerCache:
    """The response, semantic and component levels as one worker's stages use them.

    Args:
        cache: the Redis cache (its levels; a down Redis is a miss).
        tools: the tool registry (tool TTLs and approval requirements).
        model_identity: the catalog's fingerprint, part of every response key.
        response_ttl_s: TTL of cached final answers, in seconds.
        semantic: the semantic response level (``None``: off).
        semantic_ttl_s: TTL of a semantic entry, in seconds.
        component_ttl_s: TTL of cached compression outputs, in seconds.
    """

    def __init__(
        self,
        cache: RedisCache,
        tools: ToolRegistry,
        *,
        model_identity: str,
        response_ttl_s: int = 3600,
        semantic: SemanticCache | None = None,
        semantic_ttl_s: int = 3600,
        component_ttl_s: int = 3600,
    ) -> None:
        self.cache = cache
        self.tools = tools
        self.model_identity = model_identity
        self.response_ttl_s = response_ttl_s
        self.semantic = semantic
        self.semantic_ttl_s = semantic_ttl_s
        self.component_ttl_s = component_ttl_s

    # ------------------------------------------------------------------ lookups

    async def check(self, inp: ResponseCacheKeyInput) -> CheckResponseCacheResult:
        """Look the request up in the response level (exact match only).

        Returns:
            The cache key (used later to store the answer) and the cached answer on a hit. An
            unreachable Redis is reported in ``error`` and treated as a miss.
        """
        if not inp.model_identity:
            inp = inp.model_copy(update={"model_identity": self.model_identity})
        key = response_cache_key(inp)
        raw = await self.cache.get_level(CacheLevel.RESPONSE, key)
        hit = cached_response(raw)
        error = None if raw is not None or self.cache.last_error is None else self.cache.last_error
        return CheckResponseCacheResult(
            key=key, hit=hit, error=error, level=CacheLevel.RESPONSE if hit else None
        )

    def bypass(self, inp: ResponseCacheKeyInput, why: str) -> CheckResponseCacheResult:
        """No lookup at all (a request that asked for a human gate): the key and ``why``."""
        report = CacheReport(bypassed=why)
        self.note_degradation(report)
        return CheckResponseCacheResult(key=response_cache_key(inp), report=report)

    async def lookup(
        self, inp: ResponseCacheKeyInput, policy: ApprovalPolicy | None
    ) -> CheckResponseCacheResult:
        """The response level, then the semantic level.

        A hit the approval policy gates now is not served (see :func:`gated_by_policy`); the
        report says why.
        """
        report = CacheReport()
        checked = await self.check(inp)
        count_lookup(report, CacheLevel.RESPONSE, checked.hit is not None)
        hit, level, similarity = checked.hit, checked.level, None
        if hit is not None and (why := self._gated(hit, policy)) is not None:
            report.bypassed = why
            hit, level = None, None
        namespace = semantic_namespace(inp)
        if hit is None and self.semantic is not None:
            found = await self.semantic.lookup(namespace, inp.query)
            if found.degraded:
                report.degraded = True
                report.degraded_reason = found.reason
            entry = None
            if found.hit is not None:
                entry = cached_response(await self.cache.get_json(found.hit.response_key))
            await self.cache.record_lookup(CacheLevel.SEMANTIC, entry is not None)
            count_lookup(report, CacheLevel.SEMANTIC, entry is not None)
            if entry is not None and (why := self._gated(entry, policy)) is not None:
                report.bypassed = why
                entry = None
            if entry is not None and found.hit is not None:
                hit, level, similarity = entry, CacheLevel.SEMANTIC, found.hit.similarity
        if hit is not None:
            report.saved_tokens = hit.tokens
            report.saved_cost_usd = hit.cost_usd
            report.saved_ms = hit.duration_ms
            report.semantic_similarity = similarity
            report.not_stored_reason = "served from the cache"
        self.note_degradation(report)
        return checked.model_copy(
            update={
                "hit": hit,
                "level": level,
                "similarity": similarity,
                "report": report,
                "semantic_namespace": namespace,
            }
        )

    def _gated(self, hit: CachedResponse, policy: ApprovalPolicy | None) -> str | None:
        """Why ``hit`` may not be served under ``policy`` (``None``: it may)."""
        if policy is None:
            return None
        return gated_by_policy(hit.tools, policy, self.tools)

    def note_degradation(self, report: CacheReport) -> None:
        """Mark ``report`` degraded when the cache is (Redis down or its breaker open)."""
        reason = self.cache.degraded_reason
        if reason is not None:
            report.degraded = True
            report.degraded_reason = reason

    # ------------------------------------------------------------------ component level

    async def component(
        self, kind: str, payload: str, compute: Callable[[], Awaitable[_M]], model: type[_M]
    ) -> tuple[_M, bool]:
        """``compute()``'s result, from the component level when an identical input was seen.

        ``payload`` is the canonical input (it is hashed with ``kind`` and the component
        version into the key). Returns the result and whether it was a hit.
        """
        key = component_key(kind, payload)
        raw = await self.cache.get_level(CacheLevel.COMPONENT, key)
        if isinstance(raw, dict):
            try:
                return model.model_validate(raw), True
            except ValueError:
                log.warning("undecodable %s component entry; recomputed", kind)
        value = await compute()
        await self.cache.set_level(
            CacheLevel.COMPONENT, key, value.model_dump(mode="json"), self.component_ttl_s
        )
        return value, False

    # ------------------------------------------------------------------ storing answers

    def answer_ttl_s(self, result: AgentResult) -> tuple[int | None, str | None]:
        """How long ``result``'s answer may be cached, in seconds, or why it may not be.

        :func:`domain.cache_guard.answer_ttl_s` with this worker's tools and response TTL.
        """
        return answer_ttl_s(result, self.tools, self.response_ttl_s)

    async def store(self, inp: RecordJobInput, result: AgentResult) -> AgentResult:
        """Store a terminal result's answer when it may be cached.

        Returns:
            The result with its complete cache report.
        """
        report = report_with_tool_lookups(result, self.tools)
        ttl, reason = self.answer_ttl_s(result)
        if ttl is not None and inp.response_cache_key and result.selection is not None:
            cached = cached_answer(result, inp.query)
            report.stored = await self.cache.set_level(
                CacheLevel.RESPONSE, inp.response_cache_key, cached.model_dump(mode="json"), ttl
            )
            if not report.stored:
                reason = self.cache.degraded_reason or "the response level refused the entry"
            elif self.semantic is not None and inp.query and inp.semantic_namespace:
                # Bounded: a slow embeddings endpoint must not hold the record (a local
                # activity with a 5 s budget); the answer is on the response level already.
                try:
                    await asyncio.wait_for(
                        self._add_semantic(
                            inp.semantic_namespace, inp.query, inp.response_cache_key, ttl
                        ),
                        SEMANTIC_ADD_TIMEOUT_S,
                    )
                except TimeoutError:
                    log.warning("semantic entry of job %s not added in time", result.job_id)
        if reason is not None and report.not_stored_reason is None:
            report.not_stored_reason = reason
        self.note_degradation(report)
        return result.model_copy(update={"cache": report})

    async def _add_semantic(self, namespace: str, query: str, response_key: str, ttl: int) -> None:
        """File ``query`` under ``namespace`` on the semantic level, pointing at its answer."""
        assert self.semantic is not None
        semantic_ttl = min(ttl, self.semantic_ttl_s)
        if await self.semantic.add(namespace, query, response_key, semantic_ttl):
            # Under the semantic level's byte limit: the stream's size now, about one vector
            # plus a query and a key per entry (the stream trims itself to its entry limit).
            stream = self.semantic.stream_key(namespace)
            try:
                entries = int(await self.cache.client.xlen(stream))
            except (RedisError, OSError):
                return
            per_entry = 4 * self.semantic.embedder.dim + len(query.encode()) + len(response_key)
            await self.cache.track_level(
                CacheLevel.SEMANTIC, stream, entries * (per_entry + 64), semantic_ttl
            )
