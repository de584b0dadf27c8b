"""Durable contracts: the pydantic models that travel between API, workflow and activities.

These models are serialized into Temporal history by ``pydantic_data_converter``, so they are
long-lived contracts: a new field is optional with a default, a field is never renamed, and no
field has a clock or uuid default factory (a workflow would silently read the wall clock). A
history names no Python module, only field names and values, so moving a class between the
modules below changes nothing recorded.

One module per family, each importable on its own; ``from core.models import X`` keeps working
for every name listed in ``__all__``:

- :mod:`core.models.enums`: importance, tiers, task types, job status, stages;
- :mod:`core.models.validation`: the client-input checks on text and free-form JSON;
- :mod:`core.models.requests`: context items, tool calls, the request;
- :mod:`core.models.usage`: model usage and budget reservations;
- :mod:`core.models.selection`: model selection;
- :mod:`core.models.cache`: cache levels, cache reports, the response cache;
- :mod:`core.models.generation`: answer generation;
- :mod:`core.models.tools`: tool plans and tool results;
- :mod:`core.models.compression`: context compression;
- :mod:`core.models.approvals`: approval policy, decisions and records;
- :mod:`core.models.jobs`: the workflow input and ``prepare_job``;
- :mod:`core.models.progress`: progress, the job's result and its record.
"""

from __future__ import annotations

from core.models.approvals import (
    ApprovalDecision,
    ApprovalPolicy,
    ApprovalRecord,
    ApprovalRequest,
    CallDecision,
    CallOutcome,
    CallOutcomeKind,
    DecisionResult,
)
from core.models.batches import (
    BatchCounts,
    BatchStepInput,
    BatchStepResult,
    BatchWorkflowInput,
)
from core.models.cache import (
    CachedResponse,
    CacheLevel,
    CacheReport,
    CheckResponseCacheResult,
    ResponseCacheKeyInput,
)
from core.models.compression import (
    CompressContextInput,
    CompressContextResult,
    CompressedItemReport,
    CompressionAction,
    CompressionSummary,
)
from core.models.enums import Importance, JobStatus, Stage, TaskType, Tier
from core.models.generation import GenerateInput, GenerateResult
from core.models.jobs import CURRENT_SHAPE, AgentWorkflowInput, PrepareJobInput, PrepareJobResult
from core.models.progress import AgentProgress, AgentResult, RecordJobInput, StageTiming
from core.models.requests import (
    AgentRequest,
    BlobRef,
    ContextItem,
    ContextItemCreate,
    RequestBase,
    TierChoice,
    ToolCall,
)
from core.models.selection import SelectionScores, SelectModelInput, SelectModelResult
from core.models.tools import (
    PlannedToolCall,
    PlanToolsInput,
    PlanToolsResult,
    RunToolsInput,
    RunToolsResult,
    ToolFailure,
    ToolResult,
    ToolSpecPublic,
    ToolSuccess,
)
from core.models.usage import BudgetReservation, ModelUsage
from core.models.validation import (
    MAX_JSON_DEPTH,
    UNPAIRED_SURROGATE,
    ClientText,
    check_client_json,
    check_client_text,
    check_json_depth,
    text_problem,
)

__all__ = [
    "CURRENT_SHAPE",
    "MAX_JSON_DEPTH",
    "UNPAIRED_SURROGATE",
    "AgentProgress",
    "AgentRequest",
    "AgentResult",
    "AgentWorkflowInput",
    "ApprovalDecision",
    "ApprovalPolicy",
    "ApprovalRecord",
    "ApprovalRequest",
    "BatchCounts",
    "BatchStepInput",
    "BatchStepResult",
    "BatchWorkflowInput",
    "BlobRef",
    "BudgetReservation",
    "CacheLevel",
    "CacheReport",
    "CachedResponse",
    "CallDecision",
    "CallOutcome",
    "CallOutcomeKind",
    "CheckResponseCacheResult",
    "ClientText",
    "CompressContextInput",
    "CompressContextResult",
    "CompressedItemReport",
    "CompressionAction",
    "CompressionSummary",
    "ContextItem",
    "ContextItemCreate",
    "DecisionResult",
    "GenerateInput",
    "GenerateResult",
    "Importance",
    "JobStatus",
    "ModelUsage",
    "PlanToolsInput",
    "PlanToolsResult",
    "PlannedToolCall",
    "PrepareJobInput",
    "PrepareJobResult",
    "RecordJobInput",
    "RequestBase",
    "ResponseCacheKeyInput",
    "RunToolsInput",
    "RunToolsResult",
    "SelectModelInput",
    "SelectModelResult",
    "SelectionScores",
    "Stage",
    "StageTiming",
    "TaskType",
    "Tier",
    "TierChoice",
    "ToolCall",
    "ToolFailure",
    "ToolResult",
    "ToolSpecPublic",
    "ToolSuccess",
    "check_client_json",
    "check_client_text",
    "check_json_depth",
    "text_problem",
]
