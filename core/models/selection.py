"""Model selection: the ``select_model`` activity's input, scores and result."""

from __future__ import annotations

from pydantic import BaseModel, Field

from core.models.enums import TaskType, Tier
from core.models.usage import ModelUsage


class SelectionScores(BaseModel):
    """Scores computed from the query; 1 (low) to 5 (high), ``response_length`` in tokens."""

    complexity: int
    creativity_required: int
    reasoning_depth: int
    factual_knowledge: int
    response_length: int


class SelectModelInput(BaseModel):
    """Input of the ``select_model`` activity."""

    query: str
    tool_call_names: list[str] = Field(default_factory=list)
    context_items: int = 0
    pinned_tier: Tier | None = None
    context_tokens: int = Field(default=0, ge=0)
    """Expected prompt tokens of the context after compression (for the cost estimate and the
    context-window check)."""
    tools_answer: bool = False
    """Every planned tool call answers the question by itself (calculator, SQL, documentation
    search, page fetch: :attr:`core.tools.ToolMetadata.answers_query`), so the model only has to
    report its result; the learned router may then route to the small tier ("tool-answered")."""


class SelectModelResult(BaseModel):
    """The tier to answer with, the tier to escalate to when it fails, and why."""

    task_type: TaskType
    scores: SelectionScores
    tier: Tier
    escalation_tier: Tier | None
    reason: str
    attempt_timeouts_s: dict[Tier, float] = Field(default_factory=dict)
    """Start-to-close of one generation attempt per tier, in seconds, from the worker's catalog
    (``max_tokens / tokens_per_second`` with a margin); empty in jobs recorded before it."""
    estimated_cost_usd: float | None = None
    """Expected cost of the job's remaining model calls (draft and final answer on the chosen
    tier), in USD (:func:`core.catalog.estimate_remaining_cost_usd`); the approval policy's cost
    threshold compares against it. ``None`` in jobs recorded before it."""
    router: str | None = None
    """Which router chose: ``cue`` (the seed's table), ``learned`` or ``llm``; ``None`` in jobs
    recorded before routers were pluggable (always the cue table)."""
    router_version: str | None = None
    """The learned model's artifact version (``router-v1-<training set digest>``)."""
    p_large: float | None = None
    """Calibrated probability that the prompt needs the large tier (learned model, 0..1)."""
    p_small: float | None = None
    """Calibrated probability that the small tier suffices (learned model, 0..1)."""
    large_threshold: float | None = None
    """The operating point: the learned router sends to large when ``p_large`` is above it."""
    prompt_tokens: int | None = None
    """Expected prompt plus completion tokens that must fit the tier's context window."""
    usage: ModelUsage | None = None
    """The LLM router's own model call, when it made one (counted in the job's cost)."""
