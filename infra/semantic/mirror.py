"""One process's numpy copy of a namespace's stream (float32 rows, expiries, keys, queries)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from infra.embeddings import Vectors


@dataclass
class NamespaceMirror:
    """One process's copy of a namespace's stream: rows ``start..end`` of ``vectors`` are live.

    Rows are appended at the end and dropped from the start (streams trim their oldest
    entries). Compaction copies into a new array, so a search holding a view of the old one
    reads consistent rows while another coroutine syncs.
    """

    dim: int
    max_rows: int
    vectors: Vectors = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))
    expires_ms: np.ndarray[Any, np.dtype[np.int64]] = field(
        default_factory=lambda: np.zeros(0, dtype=np.int64)
    )
    keys: list[str] = field(default_factory=list)
    queries: list[str] = field(default_factory=list)
    start: int = 0
    end: int = 0
    last_id: tuple[int, int] | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def size(self) -> int:
        """Live rows."""
        return self.end - self.start

    @property
    def nbytes(self) -> int:
        """Bytes of the vector and expiry arrays (live rows and spare capacity)."""
        return int(self.vectors.nbytes + self.expires_ms.nbytes)

    def drop_oldest(self, count: int) -> None:
        """Forget the ``count`` oldest live rows (the stream trimmed them)."""
        self.start = min(self.end, self.start + max(count, 0))

    def drop_expired_prefix(self, now_ms: int) -> None:
        """Forget the oldest rows expired at ``now_ms`` (Unix ms), up to the first live one."""
        while self.start < self.end and self.expires_ms[self.start] <= now_ms:
            self.start += 1

    def append(
        self, rows: Vectors, expires_ms: list[int], keys: list[str], queries: list[str]
    ) -> None:
        """Add rows at the end, growing (and compacting) the arrays when full.

        Args:
            rows: shape ``(len(keys), dim)``, float32.
            expires_ms: each row's expiry, Unix ms.
            keys: each row's response key.
            queries: each row's query.
        """
        count = len(keys)
        if count == 0:
            return
        if self.end + count > len(self.keys) or self.vectors.shape[1] != self.dim:
            live = self.size
            # Double, but never far beyond what the stream can hold (max_rows).
            capacity = max(live + count, min(max(16, 2 * (live + count)), self.max_rows))
            vectors = np.zeros((capacity, self.dim), dtype=np.float32)
            expires = np.zeros(capacity, dtype=np.int64)
            if live:
                vectors[:live] = self.vectors[self.start : self.end]
                expires[:live] = self.expires_ms[self.start : self.end]
            self.keys = self.keys[self.start : self.end] + [""] * (capacity - live)
            self.queries = self.queries[self.start : self.end] + [""] * (capacity - live)
            self.vectors, self.expires_ms = vectors, expires
            self.start, self.end = 0, live
        stop = self.end + count
        self.vectors[self.end : stop] = rows
        self.expires_ms[self.end : stop] = expires_ms
        self.keys[self.end : stop] = keys
        self.queries[self.end : stop] = queries
        self.end = stop
