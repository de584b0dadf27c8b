"""The Redis cache, one module per job.

- :mod:`infra.cache.store`: :class:`RedisCache`, JSON values and byte-limited levels that
  fail soft (a down Redis reads as a miss), on the process's shared
  :class:`infra.redis_client.RedisClients`.
- :mod:`infra.cache.keys`: level namespaces, query normalization and response-cache keys.
- :mod:`infra.cache.scripts`: the levels' Lua scripts.
- :mod:`infra.cache.stats`: counters and level figures.
- :mod:`infra.cache.wiring`: the cache and the semantic level from the settings.
- :mod:`infra.cache.answers`: :class:`AnswerCache`, a job's view of the response, semantic
  and component levels (lookups that respect the approval policy, storing answers).

The names callers use are importable from the package itself.
"""

from infra.cache.keys import (
    RESPONSE_KEY_PREFIX,
    inputs_digest,
    level_prefix,
    normalize_query,
    response_cache_key,
)
from infra.cache.stats import RECENT_LOOKUPS, CacheCounters, LevelStats, LookupHook
from infra.cache.store import DEFAULT_LEVEL_MAX_BYTES, RedisCache
from infra.cache.wiring import cache_from_settings, semantic_from_settings

__all__ = [
    "DEFAULT_LEVEL_MAX_BYTES",
    "RECENT_LOOKUPS",
    "RESPONSE_KEY_PREFIX",
    "CacheCounters",
    "LevelStats",
    "LookupHook",
    "RedisCache",
    "cache_from_settings",
    "inputs_digest",
    "level_prefix",
    "normalize_query",
    "response_cache_key",
    "semantic_from_settings",
]
