"""Domain errors with stable type names.

Activities translate provider, Redis and database exceptions into these at the boundary, and raise
them to Temporal as ``ApplicationError(type=<ErrorType>, non_retryable=...)``. The API maps them to
HTTP status codes by type, never by message text. A deployed type name never changes: workflows and
clients branch on it.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorType(StrEnum):
    """Stable ``ApplicationError.type`` names used across workflow, activities and API."""

    CONTEXT_BUDGET_EXCEEDED = "ContextBudgetExceeded"
    """Critical context items alone exceed ``max_context_tokens``; non-retryable."""
    MODEL_RATE_LIMITED = "ModelRateLimited"
    """The model endpoint answered 429; retryable after its Retry-After."""
    MODEL_UNAVAILABLE = "ModelUnavailable"
    """Connection error, timeout or 5xx from the model endpoint; retryable."""
    MODEL_REQUEST_REJECTED = "ModelRequestRejected"
    """4xx other than 429 (bad request, unknown model, auth); non-retryable."""
    MODEL_OUTPUT_INVALID = "ModelOutputInvalid"
    """The model answered but the answer cannot be used; non-retryable."""
    TOOL_FAILED = "ToolFailed"
    """A tool raised; the workflow records it and carries on."""
    TOOL_TRANSIENT = "ToolTransient"
    """A tool hit a transient failure (network); retryable."""
    BLOB_NOT_FOUND = "BlobNotFound"
    """A payload reference points at nothing; non-retryable."""
    COMPRESSION_UNAVAILABLE = "CompressionUnavailable"
    """A ``generate_answer`` asked to compress reached a worker built without a compressor;
    non-retryable (and not escalated: every tier would fail the same way)."""
    STORE_UNAVAILABLE = "StoreUnavailable"
    """The job database is down or locked; retryable."""
    STORE_REJECTED = "StoreRejected"
    """The job database refused a write (bad data, constraint); retrying cannot help."""
    JOB_NOT_AWAITING_APPROVAL = "JobNotAwaitingApproval"
    """A ``decide`` update reached a job that is not waiting for a decision; non-retryable."""
    DECISION_INVALID = "DecisionInvalid"
    """A ``decide`` update's per-call decisions do not fit the job (unknown or repeated call,
    ``edit`` without parameters); non-retryable."""
    TOOL_CALL_INVALID = "ToolCallInvalid"
    """A tool call names an unknown tool or carries parameters its model refuses; recorded as the
    call's ``ToolFailure.error_type`` (the API answers 422 before a job starts)."""
    RATE_LIMITED = "RateLimited"
    """An API key made more requests this minute than it may (the API answers 429)."""
    BUDGET_EXCEEDED = "BudgetExceeded"
    """A job's estimated cost does not fit its API key's budget left today (the API answers
    402)."""
    TOOL_CALL_REJECTED = "ToolCallRejected"
    """A reviewer rejected the call (it did not run); its ``ToolFailure.error_type``."""
    TOOL_CALL_NOT_APPROVED = "ToolCallNotApproved"
    """The call was left undecided when the approval timeout's action was ``proceed``."""
    SCHEMA_UPGRADE_FAILED = "SchemaUpgradeFailed"
    """``agentflow db upgrade`` could not bring the database to head."""
    AGENT_JOB_FAILED = "AgentJobFailed"
    """The agent workflow's own failure type when its root cause carried none."""
    FAILED = "Failed"
    """A failed job's recorded ``error_type`` when its root cause carried none."""
    ANALYTICS_RATE_LIMITED = "AnalyticsRateLimited"
    """A key asked for analytics more often this minute than it may (the API answers 429)."""
    ANALYTICS_UNAVAILABLE = "AnalyticsUnavailable"
    """The analytics process died during a computation; retryable (the next call starts one)."""
    MODEL_PLAN_INVALID = "ModelPlanInvalid"
    """The model planner's answer is not a JSON array of tool calls (the rules plan is used)."""
    ROUTER_VERDICT_INVALID = "RouterVerdictInvalid"
    """The LLM router's answer is not a valid verdict (the learned router decides instead)."""
    PAYLOAD_NOT_FOUND = "PayloadNotFound"
    """A history references a stored payload the job database no longer holds; non-retryable."""
    PAYLOAD_DECRYPTION_FAILED = "PayloadDecryptionFailed"
    """An encrypted payload cannot be decrypted with the configured keys; non-retryable."""
    SCHEMA_OUT_OF_DATE = "SchemaOutOfDate"
    """The job database is not at this release's migration head (``agentflow db upgrade``)."""


class AgentflowError(Exception):
    """Base of every agentflow domain error.

    Attributes:
        type: the stable :class:`ErrorType` name.
        retryable: whether the same call may succeed later.
    """

    type: ErrorType = ErrorType.TOOL_FAILED
    retryable: bool = False

    def __init__(self, message: str) -> None:
        """Create the error with a human-readable ``message``."""
        super().__init__(message)
        self.message = message


class ContextBudgetExceededError(AgentflowError):
    """Critical context items alone need more tokens than the budget allows."""

    type = ErrorType.CONTEXT_BUDGET_EXCEEDED


class ModelError(AgentflowError):
    """A model provider failed; see subclasses for retryability."""

    type = ErrorType.MODEL_UNAVAILABLE
    retryable = True

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        """Create the error; ``retry_after_s`` is the endpoint's Retry-After in seconds, if any."""
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ModelRateLimitedError(ModelError):
    """HTTP 429 from a model endpoint (retryable, honours Retry-After)."""

    type = ErrorType.MODEL_RATE_LIMITED
    retryable = True


class ModelUnavailableError(ModelError):
    """Connection failure, timeout or 5xx from a model endpoint (retryable)."""

    type = ErrorType.MODEL_UNAVAILABLE
    retryable = True


class ModelRequestRejectedError(ModelError):
    """A 4xx other than 429: bad request, unknown model, bad key (non-retryable)."""

    type = ErrorType.MODEL_REQUEST_REJECTED
    retryable = False


class ModelOutputInvalidError(ModelError):
    """The endpoint answered with nothing usable (non-retryable)."""

    type = ErrorType.MODEL_OUTPUT_INVALID
    retryable = False


class ToolError(AgentflowError):
    """A tool refused its input or failed; reported in the job, never fatal to it."""

    type = ErrorType.TOOL_FAILED
    retryable = False


class ToolTransientError(ToolError):
    """A tool failed in a way worth retrying (network hiccup, timeout)."""

    type = ErrorType.TOOL_TRANSIENT
    retryable = True


class BlobNotFoundError(AgentflowError):
    """A payload reference names a blob the store does not hold."""

    type = ErrorType.BLOB_NOT_FOUND


class StoreUnavailableError(AgentflowError):
    """The job database cannot be reached or is locked (retryable)."""

    type = ErrorType.STORE_UNAVAILABLE
    retryable = True


class StoreRejectedError(AgentflowError):
    """The job database refused the statement: bad data or a constraint (non-retryable).

    Retrying the same write cannot succeed, so recording stops instead of retrying forever.
    """

    type = ErrorType.STORE_REJECTED
    retryable = False


class ToolCallInvalidError(AgentflowError, ValueError):
    """A tool call names an unknown tool or carries parameters its model refuses (non-retryable).

    Still a ``ValueError`` as it was before it joined this taxonomy, so an ``except ValueError``
    around tool validation keeps catching it.

    Attributes:
        call_id: the offending call's id.
        field: ``name`` (unknown tool), ``parameters`` (validation failed) or ``id`` (a
            repeated call id).
    """

    type = ErrorType.TOOL_CALL_INVALID
    retryable = False

    def __init__(self, call_id: str, field: str, message: str) -> None:
        """Create the error for ``call_id``; ``field`` is ``name``, ``parameters`` or ``id``."""
        super().__init__(message)
        self.call_id = call_id
        self.field = field


class RateLimitedError(AgentflowError):
    """The key made more requests this minute than it may (429, retryable after the wait).

    Attributes:
        retry_after_s: whole seconds until the next request fits.
        limit: the key's requests per minute.
    """

    type = ErrorType.RATE_LIMITED
    retryable = True

    def __init__(self, limit: int, retry_after_s: int) -> None:
        """Create the error for a limit of ``limit`` requests per minute."""
        super().__init__(
            f"rate limit of {limit} requests per minute reached; retry in {retry_after_s} s"
        )
        self.limit = limit
        self.retry_after_s = retry_after_s


class BudgetExceededError(AgentflowError):
    """The job's estimated cost does not fit the key's budget left today (402, non-retryable).

    Attributes:
        budget_usd / spent_usd / estimate_usd: the figures behind the refusal, in USD.
    """

    type = ErrorType.BUDGET_EXCEEDED
    retryable = False

    def __init__(self, budget_usd: float, spent_usd: float, estimate_usd: float) -> None:
        """Create the error from the key's budget, what is spent today and the job's estimate."""
        super().__init__(
            f"daily budget of {budget_usd:.4f} USD reached: {spent_usd:.4f} USD spent or reserved "
            f"today (UTC), this job may cost up to {estimate_usd:.4f} USD"
        )
        self.budget_usd = budget_usd
        self.spent_usd = spent_usd
        self.estimate_usd = estimate_usd
