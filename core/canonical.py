"""Canonical JSON and its digest: the one way agentflow turns a value into stable bytes.

Cache keys, request fingerprints, tool-call identities and the router artifact all hash or
compare JSON; two spellings of the same value (key order, whitespace, unicode escapes) must give
the same bytes, and a change to the rule would silently change every key, so it lives here once.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical_json(value: Any) -> str:
    """``value`` as JSON with keys sorted, no whitespace and non-ASCII kept as it is.

    Args:
        value: JSON-ready data (dicts, lists, strings, numbers, booleans, ``None``).

    Raises:
        TypeError: ``value`` holds something JSON cannot encode.
    """
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_digest(value: Any) -> str:
    """SHA-256 hex digest of :func:`canonical_json` of ``value`` (UTF-8)."""
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()
