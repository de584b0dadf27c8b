"""What the cache counts: per-process counters and each level's figures as Redis holds them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from core.models import CacheLevel

RECENT_LOOKUPS = 1000
"""How many of each level's latest lookups (hit or miss) ``GET /v1/cache/stats`` rates."""

LookupHook = Callable[[CacheLevel, str], None]
"""Called with a level and ``hit``/``miss``/``error``/``skipped`` after each level lookup (the
Prometheus counters)."""


@dataclass
class CacheCounters:
    """Counters since the cache was created.

    Attributes:
        hits: ``get_json`` calls that found a value.
        misses: ``get_json`` calls that returned ``None`` for any reason (absent key, Redis
            error, breaker open, undecodable value).
        errors: calls that reached Redis and failed (``RedisError`` or ``OSError``).
        sets: ``set_json`` calls that stored their value.
        skipped: calls answered at once because the breaker was open.
        evicted: entries the level writes evicted to stay within their byte limits.
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
