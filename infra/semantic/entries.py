"""The layout of one semantic-cache stream entry, and the script that appends it.

Bump :data:`infra.semantic.store.SEMANTIC_KEY_PREFIX`'s version when the layout changes.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from infra.embeddings import Vectors

ADD_SCRIPT = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[1], '*', 'e', ARGV[2])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[3]) then
    redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return id
"""
"""XADD trimmed to exactly ARGV[1] entries; the stream lives as long as its longest-lived entry."""


ENTRY_HEADER = struct.Struct("<2sqIIII")
"""An entry's one field ``e``: magic, expiry (Unix ms), dim, then the byte lengths of the
response key, the query and the namespace; the float32 vector and those three follow. One field
instead of five: redis-py's pure-Python parser pays per bulk string, so a process loading a large
namespace parses about three times fewer."""


ENTRY_MAGIC = b"S1"


def pack_entry(
    vector: Vectors, expires_ms: int, response_key: str, query: str, namespace: str
) -> bytes:
    """The ``e`` field of a new entry (:data:`ENTRY_HEADER`, then the parts).

    Args:
        vector: the query's row, shape ``(dim,)``, stored as little-endian float32.
        expires_ms: when the entry stops matching, Unix time in ms.
        response_key: the response-cache key of the answer.
        query: the query as asked.
        namespace: the namespace it was stored under.

    Returns:
        The packed bytes.
    """
    key_bytes, query_bytes, ns_bytes = response_key.encode(), query.encode(), namespace.encode()
    header = ENTRY_HEADER.pack(
        ENTRY_MAGIC,
        expires_ms,
        vector.shape[0],
        len(key_bytes),
        len(query_bytes),
        len(ns_bytes),
    )
    return b"".join((header, vector.astype("<f4").tobytes(), key_bytes, query_bytes, ns_bytes))


class Entry(NamedTuple):
    """An entry's parts: the raw float32 vector bytes, expiry (Unix ms) and three strings."""

    vector: bytes
    expires_ms: int
    response_key: str
    query: str
    namespace: str


def unpack_entry(fields: dict[bytes, bytes]) -> Entry | None:
    """An entry's parts, or ``None`` when it is not one this module wrote."""
    payload = fields.get(b"e")
    if payload is None or len(payload) < ENTRY_HEADER.size:
        return None
    magic, expires_ms, dim, key_len, query_len, ns_len = ENTRY_HEADER.unpack_from(payload)
    start = ENTRY_HEADER.size
    vector_end = start + 4 * dim
    key_end = vector_end + key_len
    query_end = key_end + query_len
    if magic != ENTRY_MAGIC or query_end + ns_len != len(payload) or key_len == 0:
        return None
    return Entry(
        vector=payload[start:vector_end],
        expires_ms=expires_ms,
        response_key=payload[vector_end:key_end].decode(errors="replace"),
        query=payload[key_end:query_end].decode(errors="replace"),
        namespace=payload[query_end:].decode(errors="replace"),
    )


def parse_stream_id(stream_id: bytes) -> tuple[int, int]:
    """A stream id ``b"<ms>-<seq>"`` as ``(ms, seq)``, ordered as Redis orders ids."""
    ms, _, seq = stream_id.partition(b"-")
    return int(ms), int(seq or 0)
