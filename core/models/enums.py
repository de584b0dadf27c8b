"""Enumerations shared by the contracts: importance, tiers, task types, job status and stages."""

from __future__ import annotations

from enum import StrEnum


class Importance(StrEnum):
    """How much a context item matters; drives how hard compression may cut it."""

    CRITICAL = "critical"
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"

    @property
    def rank(self) -> int:
        """0 for critical up to 3 for low: lower ranks are kept first."""
        return _IMPORTANCE_RANK[self]


_IMPORTANCE_RANK = {
    Importance.CRITICAL: 0,
    Importance.HIGH: 1,
    Importance.MEDIUM: 2,
    Importance.LOW: 3,
}


class Tier(StrEnum):
    """A model size class in the catalog, ordered small < medium < large."""

    SMALL = "small"
    MEDIUM = "medium"
    LARGE = "large"

    def next_up(self) -> Tier | None:
        """The next larger tier, or ``None`` for the largest."""
        order = list(Tier)
        index = order.index(self)
        return order[index + 1] if index + 1 < len(order) else None


class TaskType(StrEnum):
    """Task classes of the selection table (seed 000, ``model_tiers``)."""

    SIMPLE_FACTUAL = "simple_factual"
    CREATIVE_GENERATION = "creative_generation"
    COMPLEX_REASONING = "complex_reasoning"
    TOOL_USAGE = "tool_usage"


class JobStatus(StrEnum):
    """Externally visible job status; RUNNING and AWAITING_APPROVAL are the only open ones."""

    RUNNING = "RUNNING"
    AWAITING_APPROVAL = "AWAITING_APPROVAL"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    REJECTED = "REJECTED"
    EXPIRED = "EXPIRED"
    CANCELED = "CANCELED"

    @property
    def is_terminal(self) -> bool:
        """Whether the job can change no more."""
        return self not in (JobStatus.RUNNING, JobStatus.AWAITING_APPROVAL)


class Stage(StrEnum):
    """Workflow stages, as reported by the ``get_progress`` query.

    Since the v2 core the order is response cache, tool plan, model selection, (awaiting
    approval), tools, compression, generation, record, done; the draft runs beside the stages
    after selection and has no stage of its own. ``DRAFT`` is kept for recorded histories.
    """

    STARTED = "started"
    RESPONSE_CACHE = "response_cache"
    MODEL_SELECTION = "model_selection"
    DRAFT = "draft"
    TOOL_PLAN = "tool_plan"
    AWAITING_APPROVAL = "awaiting_approval"
    TOOLS = "tools"
    COMPRESSION = "compression"
    GENERATION = "generation"
    RECORD = "record"
    DONE = "done"
