"""Approvals: the policy, a reviewer's decision, what waits for one and what was decided."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator

from core.models.enums import JobStatus, Tier
from core.models.tools import PlannedToolCall
from core.models.validation import check_json_depth


class CallDecision(BaseModel):
    """A reviewer's decision on one planned tool call.

    ``approve`` runs the call as planned, ``reject`` records it as rejected and runs it not,
    ``edit`` runs it with ``parameters`` instead of the planned ones (checked against the tool's
    schema by the API, and again when it runs).
    """

    model_config = ConfigDict(extra="forbid")

    call_id: str = Field(min_length=1, max_length=128)
    action: Literal["approve", "reject", "edit"]
    parameters: dict[str, JsonValue] | None = None
    """The call's new parameters; required with ``edit`` and refused otherwise."""

    @field_validator("parameters")
    @classmethod
    def _bounded_depth(cls, value: dict[str, JsonValue] | None) -> dict[str, JsonValue] | None:
        if value is not None:
            check_json_depth(value)
        return value


class ApprovalDecision(BaseModel):
    """A human decision on a job waiting for approval (the ``decide`` update).

    ``approved`` decides the job: ``false`` rejects it (nothing runs; ``calls`` must then be
    empty). With ``true`` the job runs, and ``calls`` decides single planned calls: each listed
    call is approved, rejected or edited; a call that needed approval and is not listed takes
    the job's decision, every other call runs as planned.
    """

    approved: bool
    reviewer: str = Field(min_length=1, max_length=200)
    comment: str | None = Field(default=None, max_length=2000)
    calls: list[CallDecision] = Field(default_factory=list, max_length=64)


class ApprovalPolicy(BaseModel):
    """When a job waits for a human, and what happens when nobody decides.

    Built from settings by the API (``AGENTFLOW_APPROVAL_*``) and carried in the workflow input.
    A job waits when the request asks for it (``require_approval``), when a planned call's tool
    requires approval (the tool's own metadata or ``tools``), or when the estimated cost of its
    remaining model calls is above ``cost_threshold_usd``. The defaults reproduce jobs started
    before the policy existed.
    """

    tools: list[str] = Field(default_factory=list)
    """Tools whose calls need a reviewer's approval, beyond those whose metadata says so."""
    cost_threshold_usd: float | None = None
    """A job whose estimated remaining cost is above this many USD waits for approval."""
    timeout_action: Literal["expire", "proceed"] = "expire"
    """When the approval timeout passes: ``expire`` ends the job as EXPIRED; ``proceed`` runs it
    without the calls that needed approval (recorded as ``not_approved``). A job that waited
    because the request asked or because of its cost expires either way."""
    reminder_interval: timedelta | None = None
    """While the job waits, an ``approval_reminder`` event is published this often."""


class ApprovalRequest(BaseModel):
    """What waits for a decision: shown by the ``approval_requested`` event and the job's progress.

    Attributes:
        reasons: why the job waits, one line each (the request asked, a tool requires approval,
            the estimated cost is above the threshold).
        calls: every planned call, with its parameters.
        gated_call_ids: the calls that need a decision (each takes the job's decision unless
            decided on its own).
        tier: the tier that will answer.
        estimated_cost_usd: expected cost of the remaining model calls, in USD.
        draft: the small tier's draft when it was ready (it may follow as ``initial_response``).
        requested_at / expires_at: when the wait began and when the timeout action applies.
        timeout_action: ``expire`` or ``proceed``.
    """

    reasons: list[str]
    calls: list[PlannedToolCall] = Field(default_factory=list)
    gated_call_ids: list[str] = Field(default_factory=list)
    tier: Tier | None = None
    estimated_cost_usd: float | None = None
    draft: str | None = None
    requested_at: datetime
    expires_at: datetime
    timeout_action: Literal["expire", "proceed"] = "expire"


CallOutcomeKind = Literal["approved", "edited", "rejected", "not_approved"]


class CallOutcome(BaseModel):
    """What the approval decided for one planned call.

    ``parameters`` are the ones the call ran with (or would have); ``original_parameters`` the
    planned ones when a reviewer edited them.
    """

    call_id: str
    name: str
    outcome: CallOutcomeKind
    parameters: dict[str, JsonValue] = Field(default_factory=dict)
    original_parameters: dict[str, JsonValue] | None = None


class ApprovalRecord(BaseModel):
    """Every approval, recorded in the job's result and record.

    Attributes:
        outcome: ``approved``, ``rejected``, ``expired`` (timeout, job ended) or ``proceeded``
            (timeout, the job ran without the calls that needed approval).
        reviewer: ``name (key_id)`` of the deciding API key; ``None`` after a timeout.
        decided_at: when the decision (or the timeout) took effect, workflow time (UTC).
        comment: the reviewer's comment.
        reasons: why the job waited.
        calls: the outcome of each planned call.
    """

    outcome: Literal["approved", "rejected", "expired", "proceeded"]
    reviewer: str | None = None
    decided_at: datetime
    comment: str | None = None
    reasons: list[str] = Field(default_factory=list)
    calls: list[CallOutcome] = Field(default_factory=list)


class DecisionResult(BaseModel):
    """What an accepted ``decide`` update returns: the decision and the job's new status.

    ``status`` is RUNNING after an approval (the job goes on to its tools) and REJECTED after a
    rejection (the job ends, recorded as REJECTED).
    """

    job_id: str
    approved: bool
    reviewer: str
    status: JobStatus
