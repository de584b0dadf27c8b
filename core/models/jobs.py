"""A job's workflow input and the ``prepare_job`` local activity's input and result."""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel, Field

from core.models.approvals import ApprovalPolicy
from core.models.cache import CheckResponseCacheResult
from core.models.progress import RecordJobInput
from core.models.requests import AgentRequest
from core.models.selection import SelectModelResult
from core.models.tools import PlanToolsResult, ToolResult
from core.models.usage import BudgetReservation

CURRENT_SHAPE = 2
"""The workflow shape new jobs run: every starter sets ``AgentWorkflowInput.shape`` to it.

Shapes (what the workflow commands, in order): 0, before 0.3.0: the first record is a local
activity of its own beside ``prepare_job`` and every tool batch a regular activity; 1 (0.3.0):
``prepare_job`` writes the first record, and a batch of only quick in-memory tools
(``ToolMetadata.runs_locally``) is a local activity; 2 (0.3.1): compression runs inside the
final answer's ``generate_answer`` activity instead of a ``compress_context`` local activity of
its own, and ``prepare_job`` runs the tools when they all run locally and the job will not wait
for approval. README, "Changing
workflow code", says when a change is keyed by the shape instead of ``workflow.patched``."""


class AgentWorkflowInput(BaseModel):
    """Everything ``AgentWorkflow`` needs: the request plus the settings that shape the run.

    Settings travel in the input because workflow code must not read the environment.
    """

    job_id: str
    request: AgentRequest
    approval_timeout: timedelta = timedelta(hours=24)
    model_timeout: timedelta = timedelta(seconds=60)
    """Start-to-close of one generation attempt in jobs started before per-tier timeouts."""
    draft_enabled: bool = True
    draft_max_tokens: int = 256
    heartbeat_timeout: timedelta = timedelta(seconds=10)
    """How long a model or tool activity may go without heartbeating before Temporal retries it
    elsewhere (a lost worker is noticed this fast)."""
    idempotency_key: str | None = None
    """The client's key; recorded with the job's first projection."""
    request_hash: str | None = None
    """:func:`core.ids.request_hash` of ``request``; recorded with the first projection."""
    owner: str | None = None
    """Key id of the API key that submitted the job (:mod:`core.auth`); ``None`` for jobs
    submitted before keys existed. Recorded with every projection; only that key (or an admin
    key) sees the job."""
    budget: BudgetReservation | None = None
    """The budget reserved for the job at submission, settled with its real cost when it ends."""
    approval_policy: ApprovalPolicy = Field(default_factory=lambda: ApprovalPolicy())
    """When the job waits for a human and what a timeout does (from ``AGENTFLOW_APPROVAL_*``)."""
    stream_tokens: bool = False
    """Stream the final answer as ``token`` events (``AGENTFLOW_STREAM_TOKENS``); jobs started
    before streaming existed leave it off, so they replay unchanged."""
    shape: int = 0
    """The workflow shape this execution runs (:data:`CURRENT_SHAPE` for new jobs). An input
    recorded before the field existed reads as 0, so executions started by an older release
    replay the branch they ran."""
    search_attributes: bool = False
    """Upsert the ``Agent*`` search attributes as the job moves (:mod:`core.search_attributes`);
    set by the API only when the namespace has them registered."""


class PrepareJobInput(BaseModel):
    """Input of the ``prepare_job`` local activity: the request as the workflow carries it."""

    request: AgentRequest
    owner: str | None = None
    """Key id of the submitting API key (the response cache is per key)."""
    approval_policy: ApprovalPolicy | None = None
    """The job's approval policy: a cached answer whose tools or cost the policy gates now is
    not served (``None``: jobs started before this field; only ``require_approval`` gates)."""
    run_local_tools: bool = False
    """Run the plan's tools here when they all run locally and the job will not wait for
    approval (workflow shape 2 on): one local activity fewer per such job."""
    record: RecordJobInput | None = None
    """The job's first record (RUNNING, with the request), written beside the lookup so the job
    needs no local activity of its own for it (``None``: the workflow writes it itself, as jobs
    started before this field do)."""


class PrepareJobResult(BaseModel):
    """The front of a job in one local activity: cache lookup, then (on a miss) plan and tier.

    ``plan`` and ``selection`` are ``None`` on a cache hit. ``duration_ms`` holds each part's
    wall time (``response_cache``, ``tool_plan``, ``model_selection``, and ``tools`` when it ran
    them) for the stage timings.
    """

    cache: CheckResponseCacheResult
    plan: PlanToolsResult | None = None
    selection: SelectModelResult | None = None
    duration_ms: dict[str, float] = Field(default_factory=dict)
    recorded: bool = False
    """Whether ``PrepareJobInput.record`` was written; ``False`` also when the database was
    unavailable or refused it (the workflow then writes it through its usual path)."""
    tool_results: list[ToolResult] | None = None
    """One result per planned call, in plan order, when it ran the tools
    (``PrepareJobInput.run_local_tools``); ``None`` when it did not (the workflow runs them)."""
