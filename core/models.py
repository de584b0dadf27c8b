"""Durable contracts: the pydantic models that travel between API, workflow and activities.

These models are serialized into Temporal history by ``pydantic_data_converter``, so they are
long-lived contracts: a new field is optional with a default, a field is never renamed, and no
field has a clock or uuid default factory (a workflow would silently read the wall clock).
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StrictBool,
    ValidationError,
    field_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError


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


# --------------------------------------------------------------------------- client input
#
# Text and JSON from clients are checked more strictly than the durable contracts decode them:
# a NUL character cannot be stored in PostgreSQL text (the worker's record write would fail), an
# unpaired UTF-16 surrogate (``"\ud800"`` sent as a JSON escape) cannot be encoded as UTF-8
# at all, and NaN or an infinity is not JSON. The checks run on the client-facing classes only
# (``client_input = True``); the durable subclasses turn them off, so a history recorded before
# them still decodes.

MAX_JSON_DEPTH = 64
"""Deepest nesting of free-form JSON in a request (``metadata``, tool ``parameters``).

The worker decodes a job's input with pydantic's JSON parser, which refuses more than 200 levels
in all; a request nested deeper than the API's parser minded would fail its first workflow task
forever. 64 leaves room for the contract's own levels around these fields."""


UNPAIRED_SURROGATE = re.compile("[\ud800-\udfff]")
"""Matches a UTF-16 surrogate that no pair completes (such text cannot be encoded as UTF-8)."""


def text_problem(value: str) -> str | None:
    """Why ``value`` cannot be accepted from a client, or ``None`` when it can.

    Returns:
        A short message (never quoting ``value``) when it holds a NUL character or an unpaired
        UTF-16 surrogate; ``None`` otherwise.
    """
    if "\x00" in value:
        return "must not contain NUL characters (U+0000)"
    if UNPAIRED_SURROGATE.search(value) is not None:
        return "must not contain unpaired UTF-16 surrogates (U+D800 to U+DFFF)"
    return None


def check_client_text(value: str) -> str:
    """Return ``value`` unchanged when a client may send it (see :func:`text_problem`).

    Raises:
        ValueError: it holds a NUL character or an unpaired surrogate (a pydantic validator
            turns this into a 422 naming the field).
    """
    problem = text_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


ClientText = Annotated[str, AfterValidator(check_client_text)]
"""A string field of a client-facing model: NUL characters and unpaired surrogates refused."""


def _refused(loc: tuple[str | int, ...], message: str) -> ValidationError:
    """A validation error at ``loc`` (relative to the field being validated).

    Raised inside a field validator, pydantic prefixes ``loc`` with the field's own location, so
    the 422 names the exact place, e.g. ``["body", "metadata", "tags", 2]``.
    """
    detail = InitErrorDetails(
        type=PydanticCustomError("client_input", message), loc=loc, input=None
    )
    return ValidationError.from_exception_data("client input", [detail])


def check_client_json(
    value: JsonValue, loc: tuple[str | int, ...] = (), limit: int = MAX_JSON_DEPTH
) -> JsonValue:
    """Return free-form client JSON unchanged when every part of it can be carried and stored.

    Refuses strings and object keys holding NUL characters or unpaired surrogates, floats that
    are NaN or infinite, and nesting deeper than ``limit`` levels of lists and objects.

    Args:
        value: decoded JSON (``metadata`` or a tool call's ``parameters``).
        loc: where ``value`` sits, prefixed to the error's location.
        limit: deepest nesting allowed (:data:`MAX_JSON_DEPTH`).

    Raises:
        pydantic.ValidationError: with the location of the first offending value (a key's
            problem is reported at the object holding it); raised inside a field validator it
            becomes a 422 naming that place.
    """
    _walk_json(value, loc, limit, client=True)
    return value


def _walk_json(value: JsonValue, loc: tuple[str | int, ...], limit: int, *, client: bool) -> None:
    """Check nesting depth, and with ``client`` also text and numbers (see the callers)."""
    stack: list[tuple[JsonValue, tuple[str | int, ...], int]] = [(value, loc, 1)]
    while stack:
        item, where, depth = stack.pop()
        if isinstance(item, str):
            problem = text_problem(item) if client else None
            if problem is not None:
                raise _refused(where, problem)
        elif isinstance(item, float):
            if client and not math.isfinite(item):
                raise _refused(where, "must be a finite number (NaN and infinities are not JSON)")
        elif isinstance(item, dict):
            if depth > limit:
                raise _refused(where, f"nested deeper than {limit} levels")
            for key, child in item.items():
                problem = text_problem(key) if client else None
                if problem is not None:
                    raise _refused(where, f"an object key {problem}")
                stack.append((child, (*where, key), depth + 1))
        elif isinstance(item, list):
            if depth > limit:
                raise _refused(where, f"nested deeper than {limit} levels")
            stack.extend((child, (*where, i), depth + 1) for i, child in enumerate(item))


# --------------------------------------------------------------------------- request


class BlobRef(BaseModel):
    """A reference to a large payload stored outside Temporal history (in the job database).

    Content-addressed: ``blob_id`` is the SHA-256 hex digest of the UTF-8 text, so storing the same
    text twice is idempotent.
    """

    blob_id: str
    size_bytes: int
    preview: str = ""
    """The first few hundred characters, for humans reading history in the Web UI."""


class ContextItemCreate(BaseModel):
    """One piece of context for the answer, as a client sends it.

    ``content`` and ``source`` may hold no NUL characters or unpaired surrogates (422).
    """

    model_config = ConfigDict(extra="forbid")

    client_input: ClassVar[bool] = True
    """Check text as client input (see the "client input" section); durable subclasses don't."""

    content: str = ""
    importance: Importance = Importance.MEDIUM
    source: str | None = None

    @field_validator("content", "source")
    @classmethod
    def _client_text(cls, value: str | None) -> str | None:
        if cls.client_input and value is not None:
            check_client_text(value)
        return value


class ContextItem(ContextItemCreate):
    """One piece of context inside the durable contracts.

    ``blob`` is only ever set in jobs started before payloads moved to Temporal's
    ``ExternalStorage`` (the API then moved large items to the ``blobs`` table itself). Clients
    cannot send it (:class:`ContextItemCreate` has no such field) and jobs started since refuse it.
    """

    client_input: ClassVar[bool] = False

    blob: BlobRef | None = None


def check_json_depth(value: JsonValue, limit: int = MAX_JSON_DEPTH) -> JsonValue:
    """Return ``value`` unchanged when it nests at most ``limit`` levels of lists and objects.

    Raises:
        pydantic.ValidationError: it nests deeper, located at the first object or list past
            the limit (raised inside a field validator it becomes a 422 naming that place).
    """
    _walk_json(value, (), limit, client=False)
    return value


class ToolCall(BaseModel):
    """A request to run one registered tool with JSON ``parameters``."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=128)
    name: str = Field(min_length=1, max_length=128)
    parameters: dict[str, JsonValue] = Field(default_factory=dict)

    @field_validator("parameters")
    @classmethod
    def _bounded_depth(cls, value: dict[str, JsonValue]) -> dict[str, JsonValue]:
        check_json_depth(value)
        return value


TierChoice = Literal["auto", "small", "medium", "large"]


class RequestBase(BaseModel):
    """The fields a request has whichever front fills it (REST today, batches later).

    As client input (``client_input``, true here and in ``JobCreate``) every string, including
    those nested in ``metadata`` and in tool calls, may hold no NUL characters or unpaired
    surrogates, and nested JSON no NaN or infinities; ``require_approval`` takes only ``true`` or
    ``false`` and ``max_context_tokens`` only a JSON integer. Each refusal is a 422 naming the
    field.
    """

    model_config = ConfigDict(extra="forbid")

    client_input: ClassVar[bool] = True
    """Check text and JSON as client input; :class:`AgentRequest` (durable) turns it off."""

    query: str = Field(min_length=1, max_length=20_000)
    tool_calls: list[ToolCall] = Field(default_factory=list, max_length=64)
    model_tier: TierChoice = "auto"
    max_context_tokens: int = Field(default=4000, gt=0, le=200_000, strict=True)
    require_approval: StrictBool = False
    metadata: dict[str, JsonValue] = Field(default_factory=dict)

    @field_validator("metadata")
    @classmethod
    def _bounded_depth(cls, value: dict[str, JsonValue]) -> dict[str, JsonValue]:
        if cls.client_input:
            check_client_json(value)
        else:
            check_json_depth(value)
        return value

    @field_validator("query")
    @classmethod
    def _query_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("query must not be empty or whitespace")
        if cls.client_input:
            check_client_text(value)
        return value

    @field_validator("tool_calls")
    @classmethod
    def _client_tool_calls(cls, value: list[ToolCall]) -> list[ToolCall]:
        if cls.client_input:
            for index, call in enumerate(value):
                for name in ("id", "name"):
                    problem = text_problem(getattr(call, name))
                    if problem is not None:
                        raise _refused((index, name), problem)
                check_client_json(call.parameters, (index, "parameters"))
        return value


class AgentRequest(RequestBase):
    """The request carried by ``AgentWorkflow`` (a durable contract)."""

    client_input: ClassVar[bool] = False

    context: list[ContextItem] = Field(default_factory=list, max_length=200)


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
    search_attributes: bool = False
    """Upsert the ``Agent*`` search attributes as the job moves (:mod:`core.search_attributes`);
    set by the API only when the namespace has them registered."""


class BudgetReservation(BaseModel):
    """Part of a key's daily budget set aside for one job (:mod:`infra.quotas`).

    Attributes:
        key_id: the API key whose budget it is.
        day: the UTC day it counts against, ``YYYY-MM-DD``.
        estimate_usd: what was reserved, in USD (an upper bound of the job's cost).
        job_id: the job it was made for.
    """

    key_id: str
    day: str
    estimate_usd: float
    job_id: str
    reservation_id: str = ""
    """Random id of this reservation: settling is once per reservation, so a repeated
    submission's reservation, given back, never settles the job's own."""


# --------------------------------------------------------------------------- usage & selection


class ModelUsage(BaseModel):
    """One model call's accounting.

    Attributes:
        purpose: ``draft``, ``final`` or ``plan``.
        prompt_tokens / completion_tokens: counted by the provider (or by our tokenizer for the
            simulated provider).
        cost_usd: ``(prompt + completion) / 1000 * cost_per_1k_tokens_usd`` from the catalog.
        latency_ms: wall time of the call in milliseconds.
    """

    purpose: str
    tier: Tier
    provider: str
    model: str
    simulated: bool
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    latency_ms: float
    coalesced: bool = False
    """An identical call in flight (in any worker) answered: no model was called, tokens and
    cost are 0 and ``latency_ms`` is the wait."""


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


# --------------------------------------------------------------------------- response cache


class CacheLevel(StrEnum):
    """The four cache levels, each with its own Redis namespace, TTL and byte limit.

    ``response``: exact final answers (normalized query, context hash, model identity);
    ``semantic``: final answers of an earlier query with the same meaning (embeddings plus a
    wrong-hit guard); ``tool``: tool results (per-tool TTL, tool version in the key);
    ``component``: model selection and compression outputs for identical inputs.
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
    """Outcome of the ``check_response_cache`` activity; ``hit`` is None on a miss."""

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


# --------------------------------------------------------------------------- generation


class GenerateInput(BaseModel):
    """Input of the ``generate_answer`` activity.

    ``context`` is already compressed to the budget; ``purpose`` is ``draft`` or ``final``.
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


class GenerateResult(BaseModel):
    """The text a model produced and what it cost."""

    text: str
    usage: ModelUsage
    revision: int = 0
    """Revision of the token events that carried ``text`` (0: not streamed)."""


# --------------------------------------------------------------------------- tools


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


class RunToolInput(BaseModel):
    """Input of the ``run_tool`` activity."""

    job_id: str
    call: ToolCall


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


# --------------------------------------------------------------------------- compression


CompressionAction = Literal["verbatim", "light", "medium", "heavy", "truncated", "dropped"]


class CompressContextInput(BaseModel):
    """Input of the ``compress_context`` activity: items to fit into ``max_tokens``."""

    query: str
    items: list[ContextItem]
    tool_results: list[ToolResult] = Field(default_factory=list)
    max_tokens: int = Field(gt=0)
    allow_blob_refs: bool = True
    """Resolve pre-``ExternalStorage`` blob references (jobs started before it); False refuses
    them, which is what every job started since sends."""


class CompressedItemReport(BaseModel):
    """What compression did to one item (tokens counted with the cl100k_base tokenizer)."""

    source: str | None
    importance: Importance
    action: CompressionAction
    tokens_before: int
    tokens_after: int


class CompressionSummary(BaseModel):
    """Per-item report and totals; ``tokens_after <= max_tokens`` always holds."""

    report: list[CompressedItemReport]
    tokens_before: int
    tokens_after: int
    max_tokens: int


class CompressContextResult(BaseModel):
    """Compressed context items (fit to the budget) plus the summary of what was done."""

    items: list[ContextItem]
    summary: CompressionSummary
    cache_hit: bool | None = None
    """Whether the component cache answered (``None``: not looked up)."""


# --------------------------------------------------------------------------- prepare


class PrepareJobInput(BaseModel):
    """Input of the ``prepare_job`` local activity: the request as the workflow carries it."""

    request: AgentRequest
    owner: str | None = None
    """Key id of the submitting API key (the response cache is per key)."""
    approval_policy: ApprovalPolicy | None = None
    """The job's approval policy: a cached answer whose tools or cost the policy gates now is
    not served (``None``: jobs started before this field; only ``require_approval`` gates)."""


class PrepareJobResult(BaseModel):
    """The front of a job in one local activity: cache lookup, then (on a miss) plan and tier.

    ``plan`` and ``selection`` are ``None`` on a cache hit. ``duration_ms`` holds each part's
    wall time (``response_cache``, ``tool_plan``, ``model_selection``) for the stage timings.
    """

    cache: CheckResponseCacheResult
    plan: PlanToolsResult | None = None
    selection: SelectModelResult | None = None
    duration_ms: dict[str, float] = Field(default_factory=dict)


# --------------------------------------------------------------------------- approval & progress


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
