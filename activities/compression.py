"""The compression stage as activities run it, behind the component level for large inputs.

A job's context and tool results are fitted to its token budget.
:class:`ContextCompressor` is shared by ``generate_answer`` (which compresses before it calls the
model, from workflow shape 2 on) and the ``compress_context`` local activity (shapes 0 and 1, kept
so their histories replay). The algorithm itself is :func:`domain.compression.compress_context`.
"""

from __future__ import annotations

import asyncio
import json

from sqlalchemy import Engine

from activities.errors import to_application_error
from core.errors import AgentflowError, BlobNotFoundError
from core.models import (
    CompressContextInput,
    CompressContextResult,
    ContextItem,
    Importance,
    ToolFailure,
    ToolResult,
)
from domain.compression import compress_context
from infra.cache.answers import AnswerCache
from infra.payloads import read_legacy_blob

COMPONENT_MIN_CHARS = 32 * 1024
"""Smallest canonical compression input (characters) looked up on the component level.

The rule: a lookup is made only where it is expected to save more than it costs. A miss costs two
round trips (a GET, and a SET through the level's Lua script: about 0.9 ms of worker time here),
a hit about 0.5 ms; running ``examples/requests.jsonl`` twice, 14 of 132 component lookups hit
(11 %), so a lookup pays only for work over about 8 ms. Compressing 4.5 KB of context took
0.35-1.0 ms here, 18 KB 1.3-5 ms and 72 KB 5-15 ms (less and more of the budget kept), so inputs
under 32 KiB are compressed without a lookup. Model selection is never looked up: the learned
router takes about 1 ms. Measured 2026-12-08 (issue 21).
"""


class ContextCompressor:
    """Fits context items and tool results into a token budget by importance.

    Args:
        answers: the cache whose component level holds large inputs' results.
        engine: the job database, for blob references of jobs from before ``ExternalStorage``.
    """

    def __init__(self, answers: AnswerCache, engine: Engine) -> None:
        self.answers = answers
        self.engine = engine

    async def compress(self, inp: CompressContextInput) -> CompressContextResult:
        """Fit ``inp.items`` and ``inp.tool_results`` into ``inp.max_tokens`` (tokens).

        Successful tool results join as ``high`` items, failed ones as ``low`` notes. Jobs of the
        v1 shape may pass context items and tool results by blob reference; they are read back
        first (``allow_blob_refs``), and refused otherwise. When the canonical input is at least
        :data:`COMPONENT_MIN_CHARS`, the result comes from the component level if the same query,
        items and budget were compressed before (``cache_hit``; ``None`` for smaller inputs,
        never looked up). The CPU work runs in a thread, off the event loop.

        Raises:
            ApplicationError: ``ContextBudgetExceeded`` (non-retryable) when critical items alone
                exceed the budget; ``BlobNotFound`` (non-retryable) for a dangling or refused
                reference; ``StoreUnavailable`` (retryable) when a blob cannot be read.
        """

        def items_of() -> tuple[list[ContextItem], str]:
            items = [self._resolve(item, inp.allow_blob_refs) for item in inp.items]
            items += [self._tool_result_item(r, inp.allow_blob_refs) for r in inp.tool_results]
            canonical = json.dumps(
                [inp.query, inp.max_tokens]
                + [[i.content, i.importance.value, i.source] for i in items],
                separators=(",", ":"),
                ensure_ascii=False,
            )
            return items, canonical

        try:
            items, canonical = await asyncio.to_thread(items_of)

            async def compute() -> CompressContextResult:
                return await asyncio.to_thread(compress_context, inp.query, items, inp.max_tokens)

            if len(canonical) < COMPONENT_MIN_CHARS:
                return await compute()  # cheaper than a lookup that misses (cache_hit: None)
            result, hit = await self.answers.component(
                "compression", canonical, compute, CompressContextResult
            )
        except AgentflowError as exc:
            raise to_application_error(exc) from exc
        return result.model_copy(update={"cache_hit": hit})

    def _resolve(self, item: ContextItem, allow_refs: bool) -> ContextItem:
        if item.blob is None:
            return item
        if not allow_refs:
            raise BlobNotFoundError("context items cannot reference stored blobs")
        content = read_legacy_blob(self.engine, item.blob.blob_id)
        return item.model_copy(update={"content": content, "blob": None})

    def _tool_result_item(self, result: ToolResult, allow_refs: bool) -> ContextItem:
        source = f"tool:{result.name}#{result.call_id}"
        if isinstance(result, ToolFailure):
            return ContextItem(
                content=f"The {result.name} tool failed: {result.error}",
                importance=Importance.LOW,
                source=source,
            )
        if result.value_ref is not None:
            if not allow_refs:
                raise BlobNotFoundError("tool results cannot reference stored blobs")
            text = read_legacy_blob(self.engine, result.value_ref.blob_id)
        else:
            text = json.dumps(result.value, ensure_ascii=False)
        return ContextItem(content=text, importance=Importance.HIGH, source=source)
