"""The response cache: cache levels, the per-job cache report, keys and cached answers."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, Field

from core.models.enums import Tier
from core.models.requests import ContextItem, TierChoice, ToolCall


class CacheLevel(StrEnum):
    """The four cache levels, each with its own Redis namespace, TTL and byte limit.

    ``response``: exact final answers (normalized query, context hash, model identity);
    ``semantic``: final answers of an earlier query with the same meaning (embeddings plus a
    wrong-hit guard); ``tool``: tool results (per-tool TTL, tool version in the key);
    ``component``: compression outputs for identical large inputs, and generations shared by
    identical calls in flight.
    """

    RESPONSE = "response"
    SEMANTIC = "semantic"
    TOOL = "tool"
    COMPONENT = "component"

    @property
    def prefix(self) -> str:
        """Namespace of the level's Redis keys: ``agentflow:{cache:<level>}:``.

        The braces are a Redis Cluster hash tag: a level's entries and its bookkeeping share one
        slot, so the cache's Lua scripts touch one node.
        """
        return f"agentflow:{{cache:{self.value}}}:"


class CacheReport(BaseModel):
    """What the caches did for one job, recorded in its result (analytics read it from there).

    ``hits`` and ``misses`` count lookups per :class:`CacheLevel` value (a level the job never
    looked up is absent). Savings are what the hits avoided, as recorded when the entry was
    stored: model tokens, USD and milliseconds of the original work.
    """

    hits: dict[str, int] = Field(default_factory=dict)
    misses: dict[str, int] = Field(default_factory=dict)
    degraded: bool = False
    """Redis was unreachable during the job: it ran (partly) uncached."""
    degraded_reason: str | None = None
    """Why, without hosts or keys (for example ``redis unreachable (ConnectionError)``)."""
    stored: bool = False
    """The final answer was stored in the response cache."""
    not_stored_reason: str | None = None
    """Why a completed answer was not stored (a tool failed, escalated after a failure,
    approval gate, cache hit, Redis down)."""
    coalesced: int = 0
    """Tool calls or generations this job did not run because an identical one in flight
    (in any worker) shared its result."""
    semantic_similarity: float | None = None
    """Cosine similarity of the semantic hit, when the answer came from the semantic level."""
    bypassed: str | None = None
    """Why a cached answer that matched was not served (for example: the approval policy now
    gates a tool it used)."""
    saved_tokens: int = 0
    saved_cost_usd: float = 0.0
    saved_ms: float = 0.0


class ResponseCacheKeyInput(BaseModel):
    """What identifies a final answer in the response cache."""

    query: str
    context: list[ContextItem] = Field(default_factory=list)
    tool_calls: list[ToolCall] = Field(default_factory=list)
    model_tier: TierChoice = "auto"
    owner: str | None = None
    """Key id of the API key asking: each key has its own cached answers, so one key never
    receives what another's job produced (nor learns that it was asked)."""
    model_identity: str = ""
    """The catalog's model identity (:meth:`core.catalog.ModelCatalog.fingerprint`): another
    provider, model or endpoint never matches."""
    require_approval: bool = False
    """Whether the request asks for a human gate (such requests are never answered from the
    cache; the flag keeps their keys apart too)."""
    max_context_tokens: int | None = None
    """The request's context budget (it changes what the model reads)."""


class CachedResponse(BaseModel):
    """A final answer stored in the response cache.

    The facts after ``job_id`` let a later hit re-check the approval policy (the tools the
    answer used and the cost it had) and report what the hit saved.
    """

    answer: str
    tier: Tier
    model: str
    simulated: bool
    job_id: str
    query: str = ""
    """The query as asked (the semantic level's guard compares it)."""
    tools: list[str] = Field(default_factory=list)
    """Names of the tools whose results the answer was built on."""
    cost_usd: float = 0.0
    """What producing the answer cost (every model call of the job), in USD."""
    tokens: int = 0
    """Prompt plus completion tokens of those calls."""
    duration_ms: float = 0.0
    """How long the job took, in ms."""


class CheckResponseCacheResult(BaseModel):
    """Outcome of a response-cache lookup (inside ``prepare_job``); ``hit`` is None on a miss."""

    key: str
    hit: CachedResponse | None = None
    error: str | None = None
    """Set when the cache was unreachable (treated as a miss)."""
    level: CacheLevel | None = None
    """Which level answered: ``response`` (exact) or ``semantic``; ``None`` on a miss."""
    similarity: float | None = None
    """Cosine similarity of a semantic hit."""
    report: CacheReport | None = None
    """What the front of the job's caches did (lookups per level, degradation, a hit's
    savings, why a hit was not served)."""
    semantic_namespace: str | None = None
    """Where the semantic level files this request's answer (owner and inputs digest)."""
