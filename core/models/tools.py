"""Tools: the registry's public description, the tool plan and tool results."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, JsonValue

from core.models.requests import BlobRef, ToolCall
from core.models.usage import ModelUsage


class ToolSpecPublic(BaseModel):
    """A tool as the registry describes it (``GET /v1/tools`` and the tool plan)."""

    name: str
    description: str
    parameters_schema: dict[str, Any]
    parallel_safe: bool
    cacheable: bool
    cache_ttl_s: int
    requires_approval: bool
    timeout_s: float


class PlannedToolCall(BaseModel):
    """A validated tool call with the metadata the workflow needs to schedule it."""

    call: ToolCall
    parallel_safe: bool
    requires_approval: bool
    timeout_s: float
    runs_locally: bool = False
    """The tool may run inside the workflow task (``ToolMetadata.runs_locally``)."""
    origin: Literal["request", "planner"] = "request"


class PlanToolsInput(BaseModel):
    """Input of the ``plan_tools`` activity."""

    query: str
    tool_calls: list[ToolCall] = Field(default_factory=list)


class PlanToolsResult(BaseModel):
    """The calls to run, and the planner's proposals that did not validate (with reasons)."""

    planned: list[PlannedToolCall] = Field(default_factory=list)
    rejected: list[str] = Field(default_factory=list)
    planner: str = "rules"
    """``rules``, ``model``, or ``rules (model failed: ...)`` when the model could not plan."""
    usage: ModelUsage | None = None
    """The planning call's usage when a model planned."""


class ToolSuccess(BaseModel):
    """A tool call that produced a value.

    ``value`` is always inline since the v2 core (the data converter's external storage keeps
    large payloads out of history); ``value_ref`` only appears in jobs recorded before it.
    """

    status: Literal["success"] = "success"
    call_id: str
    name: str
    value: JsonValue = None
    value_ref: BlobRef | None = None
    cache_hit: bool = False
    latency_ms: float = 0.0
    coalesced: bool = False
    """An identical call in flight (in any worker) produced this result; this job ran nothing."""
    expires_in_s: float | None = None
    """How long this result stays valid, in seconds: the remaining TTL of a cached result,
    the tool's TTL of a fresh one (an answer built on it is cached no longer)."""


class ToolFailure(BaseModel):
    """A tool call that failed; the job carries on without it."""

    status: Literal["error"] = "error"
    call_id: str
    name: str
    error_type: str
    error: str
    cache_hit: bool = False
    latency_ms: float = 0.0
    retryable: bool = False
    """A transient failure inside a batch; the workflow retries the call on its own."""


ToolResult = Annotated[ToolSuccess | ToolFailure, Field(discriminator="status")]


class RunToolsInput(BaseModel):
    """Input of the ``run_tools`` activity: several calls run concurrently in one activity.

    ``raise_transient`` decides what a transient failure does: in a first-attempt batch (False)
    it comes back as a retryable :class:`ToolFailure`, so one flaky call does not re-run the
    batch; when the workflow retries that call alone (True) it raises ``ToolTransient`` so
    Temporal's retry policy (and history) owns each retry.
    """

    job_id: str
    calls: list[ToolCall] = Field(min_length=1)
    raise_transient: bool = False


class RunToolsResult(BaseModel):
    """One result per call, in the input's order."""

    results: list[ToolResult]
