"""Context compression: the ``compress_context`` activity's input, report and result."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from core.models.enums import Importance
from core.models.requests import ContextItem
from core.models.tools import ToolResult

CompressionAction = Literal["verbatim", "light", "medium", "heavy", "truncated", "dropped"]


class CompressContextInput(BaseModel):
    """Input of the ``compress_context`` activity: items to fit into ``max_tokens``."""

    query: str
    items: list[ContextItem]
    tool_results: list[ToolResult] = Field(default_factory=list)
    max_tokens: int = Field(gt=0)
    allow_blob_refs: bool = True
    """Resolve pre-``ExternalStorage`` blob references (jobs started before it); False refuses
    them, which is what every job started since sends."""


class CompressedItemReport(BaseModel):
    """What compression did to one item (tokens counted with the cl100k_base tokenizer)."""

    source: str | None
    importance: Importance
    action: CompressionAction
    tokens_before: int
    tokens_after: int


class CompressionSummary(BaseModel):
    """Per-item report and totals; ``tokens_after <= max_tokens`` always holds."""

    report: list[CompressedItemReport]
    tokens_before: int
    tokens_after: int
    max_tokens: int


class CompressContextResult(BaseModel):
    """Compressed context items (fit to the budget) plus the summary of what was done."""

    items: list[ContextItem]
    summary: CompressionSummary
    cache_hit: bool | None = None
    """Whether the component cache answered (``None``: not looked up)."""
