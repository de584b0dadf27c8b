"""The job event stream: typed events every job publishes as it runs.

Each job's workflow hosts a ``temporalio.contrib.workflow_streams.WorkflowStream``: an
append-only, offset-addressed log kept in workflow state (rebuilt by replay, so it survives a
worker restart) and read with a long-poll update while the job runs and with a query once it
ended. Events from workflow code cost no history events (they are state, not commands); token
events come from the generation activity as batched signals (one signal per flush).

All events travel on one topic, :data:`EVENTS_TOPIC`, so their offsets are one ordered sequence:
the offset is the SSE event id, and a client that resumes after offset ``n`` misses nothing and
sees nothing twice.

``revision`` marks the generation attempt that produced text: each attempt of the final answer
streams ``token`` events under a new, higher revision (the activity's attempt number, plus 10
for the escalation tier), and ``final_response`` carries the revision of its text. A client keeps
only the text of the highest revision it has seen, so a retried attempt never duplicates text.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, Field

from core.models import (
    ApprovalRecord,
    ApprovalRequest,
    JobStatus,
    ModelUsage,
    PlannedToolCall,
    Stage,
    Tier,
    ToolResult,
)

EVENTS_TOPIC = "events"
"""The one topic every job event is published on."""

ESCALATION_REVISION_BASE = 10
"""Revision base of the escalation tier's attempts (the selected tier's are 1, 2, 3)."""


class EventType(StrEnum):
    """The ``type`` of each job event (also the SSE ``event:`` name)."""

    RESPONSE_STARTED = "response_started"
    STAGE_STARTED = "stage_started"
    STAGE_COMPLETED = "stage_completed"
    INITIAL_RESPONSE = "initial_response"
    TOOL_EXECUTION_STARTED = "tool_execution_started"
    TOOL_RESULT = "tool_result"
    TOOL_EXECUTION_COMPLETE = "tool_execution_complete"
    APPROVAL_REQUESTED = "approval_requested"
    APPROVAL_REMINDER = "approval_reminder"
    APPROVAL_DECIDED = "approval_decided"
    TOKEN = "token"
    FINAL_RESPONSE = "final_response"
    RESPONSE_ERROR = "response_error"


TERMINAL_EVENTS = frozenset({EventType.FINAL_RESPONSE, EventType.RESPONSE_ERROR})
"""The last event of every job: a reader may stop after one of these."""


class EventBase(BaseModel):
    """Fields every event has.

    Attributes:
        job_id: the job.
        revision: the generation revision the event belongs to (0 before generation).
        at: when it happened: workflow time for workflow events, the worker's clock for tokens.
        offset: position in the job's stream; set by the reader (the API), not the publisher.
    """

    job_id: str
    revision: int = 0
    at: datetime | None = None
    offset: int | None = None


class ResponseStarted(EventBase):
    """The job was accepted and started (the acknowledgement)."""

    type: Literal[EventType.RESPONSE_STARTED] = EventType.RESPONSE_STARTED
    query: str = ""


class StageStarted(EventBase):
    """A stage began."""

    type: Literal[EventType.STAGE_STARTED] = EventType.STAGE_STARTED
    stage: Stage


class StageCompleted(EventBase):
    """A stage ended, with its duration in ms (workflow time)."""

    type: Literal[EventType.STAGE_COMPLETED] = EventType.STAGE_COMPLETED
    stage: Stage
    duration_ms: float


class InitialResponse(EventBase):
    """The small tier's draft, shown while the final answer is prepared."""

    type: Literal[EventType.INITIAL_RESPONSE] = EventType.INITIAL_RESPONSE
    text: str
    tier: Tier = Tier.SMALL
    simulated: bool = False


class ToolExecutionStarted(EventBase):
    """The tools stage starts these calls (the approved ones, with their final parameters)."""

    type: Literal[EventType.TOOL_EXECUTION_STARTED] = EventType.TOOL_EXECUTION_STARTED
    calls: list[PlannedToolCall] = Field(default_factory=list)


class ToolResultEvent(EventBase):
    """One call finished (a success or a failure); one event per call."""

    type: Literal[EventType.TOOL_RESULT] = EventType.TOOL_RESULT
    result: ToolResult


class ToolExecutionComplete(EventBase):
    """Every call of the tools stage finished."""

    type: Literal[EventType.TOOL_EXECUTION_COMPLETE] = EventType.TOOL_EXECUTION_COMPLETE
    succeeded: int = 0
    failed: int = 0
    duration_ms: float = 0.0


class ApprovalRequested(EventBase):
    """The job waits for a reviewer (see :class:`core.models.ApprovalRequest`)."""

    type: Literal[EventType.APPROVAL_REQUESTED] = EventType.APPROVAL_REQUESTED
    request: ApprovalRequest


class ApprovalReminder(EventBase):
    """The job still waits; published every ``reminder_interval`` while it does."""

    type: Literal[EventType.APPROVAL_REMINDER] = EventType.APPROVAL_REMINDER
    waiting_s: float
    expires_at: datetime


class ApprovalDecided(EventBase):
    """A reviewer decided, or the timeout did (``record.outcome`` says which)."""

    type: Literal[EventType.APPROVAL_DECIDED] = EventType.APPROVAL_DECIDED
    record: ApprovalRecord


class TokenDelta(EventBase):
    """A batch of the final answer's text, in order; ``seq`` counts batches within a revision."""

    type: Literal[EventType.TOKEN] = EventType.TOKEN
    text: str
    seq: int = 0
    tier: Tier | None = None


class FinalResponse(EventBase):
    """The job completed: the whole answer (authoritative over the tokens) and its usage."""

    type: Literal[EventType.FINAL_RESPONSE] = EventType.FINAL_RESPONSE
    status: JobStatus = JobStatus.COMPLETED
    answer: str
    simulated: bool = False
    response_cache_hit: bool = False
    tier: Tier | None = None
    escalated_to: Tier | None = None
    usage: list[ModelUsage] = Field(default_factory=list)
    total_cost_usd: float = 0.0


class ResponseError(EventBase):
    """The job ended without an answer: FAILED, CANCELED, REJECTED or EXPIRED."""

    type: Literal[EventType.RESPONSE_ERROR] = EventType.RESPONSE_ERROR
    status: JobStatus
    error: str | None = None
    error_type: str | None = None


JobEvent = Annotated[
    ResponseStarted
    | StageStarted
    | StageCompleted
    | InitialResponse
    | ToolExecutionStarted
    | ToolResultEvent
    | ToolExecutionComplete
    | ApprovalRequested
    | ApprovalReminder
    | ApprovalDecided
    | TokenDelta
    | FinalResponse
    | ResponseError,
    Field(discriminator="type"),
]
"""Any job event, told apart by ``type``."""


def assemble_text(events: list[JobEvent]) -> str:
    """The answer text a client assembles from ``events``, by the revision rule.

    Token text of the highest revision seen, in order; a ``final_response`` replaces it with the
    whole answer and a ``response_error`` with nothing (no answer). This is what a client shows;
    see the module docstring.
    """
    revision = -1
    parts: list[str] = []
    for event in events:
        if isinstance(event, FinalResponse):
            return event.answer
        if isinstance(event, ResponseError):
            return ""
        if isinstance(event, TokenDelta):
            if event.revision > revision:
                revision, parts = event.revision, []
            if event.revision == revision:
                parts.append(event.text)
    return "".join(parts)
