"""Cache key derivation: level namespaces, query normalization and response-cache keys.

Keys are content-addressed: a SHA-256 of canonical JSON (:mod:`core.canonical`) under a
versioned prefix, so every worker derives the same key for the same question and a change of
what an answer depends on can never serve an old answer.
"""

from __future__ import annotations

import unicodedata
from typing import Any

from core.canonical import canonical_digest
from core.models import CacheLevel, ResponseCacheKeyInput


def level_prefix(level: CacheLevel) -> str:
    """Namespace of a level's entries (:attr:`core.models.CacheLevel.prefix`)."""
    return level.prefix


def meta_key(level: CacheLevel, part: str) -> str:
    """Key of a level's bookkeeping structure ``part`` (``index``, ``sizes``, ``bytes``, ...)."""
    # '#' never occurs in an entry suffix (hex digests, tool names), so no entry collides.
    return f"agentflow:{{cache:{level.value}}}#{part}"


RESPONSE_KEY_PREFIX = level_prefix(CacheLevel.RESPONSE) + "v2:"
"""Prefix of response-cache keys; bump the version when the cached answer's shape changes."""

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


def glob_escape(text: str) -> str:
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
    return RESPONSE_KEY_PREFIX + canonical_digest(fields)


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
