"""Generation: the ``generate_answer`` activity's input and result."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from core.models.compression import CompressContextInput, CompressionSummary
from core.models.enums import Tier
from core.models.requests import ContextItem
from core.models.usage import ModelUsage


class GenerateInput(BaseModel):
    """Input of the ``generate_answer`` activity.

    ``purpose`` is ``draft`` or ``final``. ``context`` is already compressed to the budget,
    unless ``compress`` is given: then the activity compresses first and answers over that.
    """

    job_id: str
    purpose: Literal["draft", "final"]
    tier: Tier
    query: str
    context: list[ContextItem] = Field(default_factory=list)
    max_tokens: int | None = None
    stream: bool = False
    """Publish the answer's text as ``token`` events on the job's event stream while the
    provider produces it (:mod:`activities.token_stream`)."""
    revision_base: int = 0
    """Added to the activity's attempt number to make the ``revision`` of its token events: each
    attempt (and the escalation tier's, whose base is higher) streams under a new revision."""
    owner: str | None = None
    """Key id of the job's API key: coalesced generations are shared within one key only."""
    compress: CompressContextInput | None = None
    """The compression stage, run by the activity before the model call (workflow shape 2 on:
    one local activity fewer per job); its result replaces ``context``."""


class GenerateResult(BaseModel):
    """The text a model produced and what it cost."""

    text: str
    usage: ModelUsage
    revision: int = 0
    """Revision of the token events that carried ``text`` (0: not streamed)."""
    compression: CompressionSummary | None = None
    """What compression did, when the input asked for it (``GenerateInput.compress``)."""
    compression_ms: float | None = None
    """Wall time of that compression, in ms."""
    compression_cache_hit: bool | None = None
    """Whether the component level answered it (``None``: not looked up)."""
