"""A job's progress (the ``get_progress`` query), its result and the ``record_job`` projection."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from core.models.approvals import ApprovalDecision, ApprovalRecord, ApprovalRequest
from core.models.cache import CacheReport
from core.models.compression import CompressionSummary
from core.models.enums import JobStatus, Stage, Tier
from core.models.requests import AgentRequest
from core.models.selection import SelectModelResult
from core.models.tools import PlannedToolCall, ToolResult
from core.models.usage import BudgetReservation, ModelUsage


class StageTiming(BaseModel):
    """How long one stage took, in milliseconds of workflow time."""

    stage: Stage
    duration_ms: float


class AgentProgress(BaseModel):
    """Intermediate state, returned by the ``get_progress`` query at any point of the run."""

    job_id: str
    status: JobStatus = JobStatus.RUNNING
    stage: Stage = Stage.STARTED
    query: str = ""
    started_at: datetime | None = None
    """When the workflow started (aware UTC)."""
    owner: str | None = None
    """Key id of the API key that submitted the job (``None``: submitted without one)."""
    selection: SelectModelResult | None = None
    draft: str | None = None
    tool_plan: list[PlannedToolCall] = Field(default_factory=list)
    tool_results: list[ToolResult] = Field(default_factory=list)
    approval: ApprovalDecision | None = None
    usage: list[ModelUsage] = Field(default_factory=list)
    timings: list[StageTiming] = Field(default_factory=list)
    approval_request: ApprovalRequest | None = None
    """What the job waits for (set while it waits at the approval gate, kept afterwards)."""
    approval_record: ApprovalRecord | None = None
    """The approval's outcome, once decided or timed out."""
    cache: CacheReport | None = None
    """What the caches did so far (from the front of the job and compression)."""


class AgentResult(BaseModel):
    """The job's outcome, returned by ``AgentWorkflow.run`` and persisted as the job record."""

    job_id: str
    status: JobStatus
    answer: str | None = None
    simulated: bool = False
    """True when the answer came from the offline simulated provider, not a real model."""
    response_cache_hit: bool = False
    selection: SelectModelResult | None = None
    escalated_to: Tier | None = None
    draft: str | None = None
    tool_results: list[ToolResult] = Field(default_factory=list)
    compression: CompressionSummary | None = None
    approval: ApprovalDecision | None = None
    usage: list[ModelUsage] = Field(default_factory=list)
    timings: list[StageTiming] = Field(default_factory=list)
    error: str | None = None
    error_type: str | None = None
    approval_record: ApprovalRecord | None = None
    """Who decided what on each planned call, and when (``None``: the job never waited)."""
    cache: CacheReport | None = None
    """What the caches did for this job (``None`` for jobs recorded before cache reports)."""

    @property
    def total_cost_usd(self) -> float:
        """Sum of every model call's cost in USD."""
        return sum(u.cost_usd for u in self.usage)


class RecordJobInput(BaseModel):
    """Input of the ``record_job`` activity: the projection to persist (and cache, when completed).

    ``revision`` orders projections of one job (a lower one never overwrites a higher one);
    ``request``, ``created_at``, ``idempotency_key`` and ``request_hash`` travel with the first.
    """

    result: AgentResult
    response_cache_key: str | None = None
    revision: int = 0
    request: AgentRequest | None = None
    created_at: datetime | None = None
    idempotency_key: str | None = None
    request_hash: str | None = None
    owner: str | None = None
    """Key id of the submitting API key, written with every projection."""
    budget: BudgetReservation | None = None
    """Settled with the job's real cost when ``result`` is terminal."""
    query: str | None = None
    """The query, with a completed result: the cached answer and its semantic entry keep it."""
    semantic_namespace: str | None = None
    """The semantic level's namespace of the request (from ``prepare_job``)."""
    events_json: str | None = None
    """With the terminal projection: the job's whole event stream as a JSON array of
    ``core.events.JobEvent`` (offsets filled in, the terminal event last), stored so readers of
    a finished job never need a worker."""
