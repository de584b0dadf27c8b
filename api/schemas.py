"""REST schemas: the ``Job*`` family and small response bodies.

``JobCreate`` shares every field but ``context`` with the durable :class:`core.models.AgentRequest`
(through :class:`core.models.RequestBase`); its context items cannot carry a stored-payload
reference, so client input never names server-side storage.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, StrictBool, field_validator

from core.models import (
    AgentProgress,
    AgentRequest,
    AgentResult,
    ApprovalDecision,
    CacheLevel,
    CallDecision,
    ClientText,
    ContextItem,
    ContextItemCreate,
    JobStatus,
    RequestBase,
    check_client_json,
)
from infra.analytics.models import CostAnalysis, PerformanceSummary, TimeSeries


class JobCreate(RequestBase):
    """Body of ``POST /v1/jobs``."""

    context: list[ContextItemCreate] = Field(default_factory=list, max_length=200)

    def to_request(self) -> AgentRequest:
        """The durable request the workflow runs."""
        data = self.model_dump(exclude={"context"})
        context = [ContextItem(**item.model_dump()) for item in self.context]
        return AgentRequest(**data, context=context)


class CallDecisionCreate(BaseModel):
    """A decision on one planned call: ``approve``, ``reject``, or ``edit`` with new parameters."""

    model_config = ConfigDict(extra="forbid")

    call_id: ClientText = Field(min_length=1, max_length=128)
    action: Literal["approve", "reject", "edit"]
    parameters: dict[str, JsonValue] | None = None
    """The call's new parameters (``edit`` only), checked against the tool's schema."""

    @field_validator("parameters")
    @classmethod
    def _client_json(cls, value: dict[str, JsonValue] | None) -> dict[str, JsonValue] | None:
        if value is not None:
            check_client_json(value)
        return value


class ApprovalCreate(BaseModel):
    """Body of ``POST /v1/jobs/{job_id}/approval``.

    ``approved`` decides the job: ``false`` rejects it (``calls`` must then be empty), ``true``
    lets it run. ``calls`` decides single planned calls (see
    ``progress.approval_request.calls``): each listed call is approved, rejected (recorded as
    ``ToolCallRejected``, not run) or edited (run with ``parameters``); a call that needed
    approval and is not listed takes the job's decision; other calls run as planned. The
    reviewer is the calling API key (:attr:`core.auth.Principal.identity`), never a body field:
    a body naming ``reviewer`` is refused (422).
    """

    model_config = ConfigDict(extra="forbid")

    approved: StrictBool
    comment: ClientText | None = Field(default=None, max_length=2000)
    calls: list[CallDecisionCreate] = Field(default_factory=list, max_length=64)

    def decision(self, reviewer: str) -> ApprovalDecision:
        """The durable decision the workflow's ``decide`` update takes."""
        return ApprovalDecision(
            approved=self.approved,
            reviewer=reviewer,
            comment=self.comment,
            calls=[CallDecision(**c.model_dump()) for c in self.calls],
        )


class JobLinks(BaseModel):
    """Where to look at a job: this API and the Temporal Web UI."""

    self: str
    temporal_ui: str


class JobUsage(BaseModel):
    """Totals over every model call of a job (tokens, USD)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    calls: int = 0


class JobPublic(BaseModel):
    """A job as the API shows it.

    ``progress`` is live while the job runs (from the workflow's ``get_progress`` query);
    ``result`` is set once it ended. ``warning`` says when live progress could not be read.
    """

    job_id: str
    owner: str | None = None
    """Key id of the API key that submitted the job."""
    workflow_id: str
    status: JobStatus
    query: str
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None = None
    duration_ms: float | None = None
    tier: str | None = None
    response_cache_hit: bool = False
    progress: AgentProgress | None = None
    result: AgentResult | None = None
    usage: JobUsage = Field(default_factory=JobUsage)
    error: str | None = None
    warning: str | None = None
    links: JobLinks


class JobsPublic(BaseModel):
    """A page of jobs, newest first."""

    data: list[JobPublic]
    count: int


class ApprovalPublic(BaseModel):
    """Answer to an accepted decision: who decided what, and the job's status now.

    ``status`` is RUNNING after an approval and REJECTED after a rejection; ``calls`` echoes
    the per-call decisions taken (the job's ``approval_record`` holds every call's outcome).
    """

    job_id: str
    approved: bool
    reviewer: str
    status: JobStatus
    calls: list[CallDecision] = Field(default_factory=list)


class CancelAccepted(BaseModel):
    """Answer to a cancel request: cancellation was requested from Temporal."""

    job_id: str
    status: str = "CANCEL_REQUESTED"


class ReadyStatus(BaseModel):
    """Readiness: ``ok`` per dependency, ``down`` names the failing ones.

    ``status`` is ``ok``, ``degraded`` (only Redis is down: jobs still run, uncached and
    without quotas; answered with 200) or ``unavailable`` (Temporal or the database is down;
    503).
    """

    status: str
    checks: dict[str, str]
    down: list[str] = Field(default_factory=list)
    degraded: list[str] = Field(default_factory=list)
    """Dependencies that are down without stopping jobs (``redis``)."""


class CachePeriodStats(BaseModel):
    """One level's lookups and savings over a period, from the job records."""

    hits: int
    misses: int
    hit_rate: float | None
    """Hits per lookup (0..1); ``None`` without lookups."""
    saved_tokens: int = 0
    saved_cost_usd: float = 0.0
    saved_ms: float = 0.0


class CacheLevelStats(BaseModel):
    """One cache level now (Redis) and over the period (job records)."""

    level: CacheLevel
    entries: int
    bytes: int
    """Keys plus values, in bytes."""
    max_bytes: int
    """The level's limit; entries closest to expiry are evicted beyond it."""
    recent_lookups: int
    """Lookups counted, at most the last 1,000."""
    recent_hits: int
    recent_hit_rate: float | None
    period: CachePeriodStats | None = None
    """The period's figures (``None``: no job of the period looked this level up)."""


class CacheStats(BaseModel):
    """``GET /v1/cache/stats``."""

    period: str
    jobs_considered: int
    """Terminal jobs of the period read (at most 50,000, newest first)."""
    sampled: bool = False
    """More jobs ended in the period than were read."""
    degraded_jobs: int = 0
    """Jobs that ran (partly) uncached because Redis was unreachable."""
    coalesced: int = 0
    """Tool calls and generations not run because an identical one in flight shared its
    result."""
    levels: list[CacheLevelStats]


class CacheDeleted(BaseModel):
    """``DELETE /v1/cache/{level}``: how many entries were deleted."""

    level: CacheLevel
    prefix: str
    deleted: int


# --------------------------------------------------------------------------- metrics
#
# The figures are computed in :mod:`infra.analytics` (its module docstring defines each one);
# these bodies add which jobs the calling key sees. Units: ms, USD, tokens, rates 0..1.


class MetricsSummaryPublic(PerformanceSummary):
    """Body of ``GET /v1/metrics/summary``: latency, tokens, cost, cache, tier mix, suggestions.

    ``scope`` is ``own`` (the calling key's jobs) or ``all`` (an admin key, or authentication
    off).
    """

    scope: Literal["own", "all"]


class MetricsCostPublic(CostAnalysis):
    """Body of ``GET /v1/metrics/cost``: cost drivers and saving strategies with their arithmetic.

    ``scope``: see :class:`MetricsSummaryPublic`.
    """

    scope: Literal["own", "all"]


class MetricsTimeseriesPublic(TimeSeries):
    """Body of ``GET /v1/metrics/timeseries``: per-bucket latency, cost, cache and tier figures.

    ``scope``: see :class:`MetricsSummaryPublic`.
    """

    scope: Literal["own", "all"]
