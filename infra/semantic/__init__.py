"""The semantic cache level: an earlier answer for a query that asks the same thing in other words.

A lookup embeds the query (:mod:`infra.embeddings`), finds the cached queries of the same
namespace whose cosine similarity is at least the threshold, and returns the response key of the
most similar one that also passes the wrong-hit guard (:mod:`domain.semantic_guard`, which says
why similarity alone is not enough and lists its rules).

The level is off by default (``AGENTFLOW_SEMANTIC_CACHE``); a deployment turns it on. With the
guard, the held-out near-miss split (``data/semantic/``, written for the tests and never used to
tune the guard) gets no wrong hit at thresholds 0.85 to 0.95; the price is that only paraphrases
differing in framing, function words, casing and punctuation hit.

One module per job: :mod:`~infra.semantic.store` (the cache: lookups, adds, Redis, breaker),
:mod:`~infra.semantic.entries` (the layout of a stream entry), :mod:`~infra.semantic.mirror`
(one process's copy of a namespace) and :mod:`~infra.semantic.results` (what calls return).
"""

from __future__ import annotations

from infra.semantic.results import SemanticHit, SemanticLookup, SemanticStats
from infra.semantic.store import INLINE_SEARCH_MAX_FLOATS, SEMANTIC_KEY_PREFIX, SemanticCache

__all__ = [
    "INLINE_SEARCH_MAX_FLOATS",
    "SEMANTIC_KEY_PREFIX",
    "SemanticCache",
    "SemanticHit",
    "SemanticLookup",
    "SemanticStats",
]
