"""Building the cache and the semantic level from the settings, on the process's Redis."""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.models import CacheLevel
from core.settings import Settings
from infra.cache.stats import LookupHook
from infra.cache.store import RedisCache
from infra.redis_client import RedisClients

if TYPE_CHECKING:
    from infra.semantic import SemanticCache


def cache_from_settings(
    settings: Settings,
    redis: RedisClients | None = None,
    *,
    on_lookup: LookupHook | None = None,
) -> RedisCache:
    """The cache with the settings' per-level byte limits.

    Args:
        settings: configuration (``redis_url``, ``redis_timeout_s``, ``*_cache_max_bytes``).
        redis: the process's shared Redis; ``None`` builds one from the settings that the
            cache owns (closed by :meth:`RedisCache.aclose`).
        on_lookup: called after each level lookup with the level and its outcome.
    """
    return RedisCache(
        redis if redis is not None else settings.redis_url,
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
    """The semantic level the settings ask for (``None``: switched off).

    It uses ``cache``'s client and breaker (the process's :class:`RedisClients`).

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
        breaker=cache.redis.breaker,
    )
