"""What the semantic cache's calls return: a hit, a lookup's outcome, the level's size."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple


@dataclass(frozen=True, slots=True)
class SemanticHit:
    """A cached query close enough to the new one, and what it points at.

    Attributes:
        response_key: the response-cache key the cached query's answer lives under.
        similarity: cosine similarity of the two queries' embeddings (0..1).
        cached_query: the cached query as it was asked.
    """

    response_key: str
    similarity: float
    cached_query: str


@dataclass(frozen=True, slots=True)
class SemanticLookup:
    """Outcome of :meth:`SemanticCache.lookup`.

    Attributes:
        hit: the match, or ``None`` on a miss.
        similarity: best similarity among the namespace's live entries (``None`` when there
            were none or the lookup failed).
        reason: why the best candidate above the threshold was refused (the guard's reason), or
            why the lookup could not run (Redis, embedder, query too long); ``None`` otherwise.
        degraded: Redis or the embedder failed: the lookup ran (partly) uncached.
        embedder: the embedder's name (``lexical-hashing-v1`` says the match is lexical).
    """

    hit: SemanticHit | None = None
    similarity: float | None = None
    reason: str | None = None
    degraded: bool = False
    embedder: str = ""


class SemanticStats(NamedTuple):
    """Size of the semantic level in Redis (all namespaces).

    Attributes:
        entries: stored queries.
        size_bytes: Redis's ``MEMORY USAGE`` of the streams, in bytes.
        streams: namespaces with at least one entry.
    """

    entries: int
    size_bytes: int
    streams: int
