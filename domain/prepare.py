"""The front of a job: what ``prepare_job`` derives from the request before it looks anything up.

Pure functions over the contracts: the response cache's key input (what identifies the request's
answer), the tool plan assembled from the request's calls and the planner's proposals, the
expected size of the context after compression, and the model-selection input built from the
request and its tool plan.
"""

from __future__ import annotations

from core.errors import ToolCallInvalidError
from core.models import (
    AgentRequest,
    ContextItem,
    PlannedToolCall,
    PlanToolsResult,
    ResponseCacheKeyInput,
    SelectModelInput,
    Tier,
    ToolCall,
)
from core.tokens import estimate_tokens
from core.tools import ToolRegistry, canonical_parameters


def response_key_input(
    request: AgentRequest, owner: str | None, model_identity: str
) -> ResponseCacheKeyInput:
    """What identifies ``request``'s final answer in the response cache.

    Args:
        request: the job's request.
        owner: key id of the submitting API key (each key has its own cached answers).
        model_identity: :meth:`core.catalog.ModelCatalog.fingerprint` of the worker's catalog.
    """
    return ResponseCacheKeyInput(
        query=request.query,
        context=request.context,
        tool_calls=request.tool_calls,
        model_tier=request.model_tier,
        owner=owner,
        model_identity=model_identity,
        require_approval=request.require_approval,
        max_context_tokens=request.max_context_tokens,
    )


def context_tokens_estimate(
    items: list[ContextItem], max_context_tokens: int, *, tools_planned: bool = False
) -> int:
    """Prompt tokens the context will take after compression, at most the budget.

    Each item is sized with :func:`core.tokens.estimate_tokens` (exact for short items, sampled
    for long ones), stopping once the budget is reached. Planned tool results are compressed
    into the same budget and their size is unknown before they run, so with tools planned the
    estimate is the whole budget. Tokenizer work: call it off the event loop.
    """
    if tools_planned:
        return max_context_tokens
    tokens = 0
    for item in items:
        tokens += estimate_tokens(item.content)
        if tokens >= max_context_tokens:
            return max_context_tokens
    return tokens


def selection_input(
    request: AgentRequest, plan: PlanToolsResult, tools: ToolRegistry
) -> SelectModelInput:
    """The ``select_model`` input for ``request`` once its tools are planned.

    The tier the client pinned (``model_tier`` other than ``auto``), the planned tools' names,
    whether those tools answer the question by themselves, and the context's expected size
    (:func:`context_tokens_estimate`; tokenizer work, so call it off the event loop).
    """
    names = [p.call.name for p in plan.planned]
    return SelectModelInput(
        query=request.query,
        tool_call_names=names,
        context_items=len(request.context),
        pinned_tier=None if request.model_tier == "auto" else Tier(request.model_tier),
        context_tokens=context_tokens_estimate(
            request.context, request.max_context_tokens, tools_planned=bool(plan.planned)
        ),
        tools_answer=tools.all_answer_query(names),
    )


def assemble_plan(
    request_calls: list[ToolCall], proposals: list[ToolCall], tools: ToolRegistry
) -> tuple[list[PlannedToolCall], list[str]]:
    """Validate the request's calls, then the planner's proposals, into one tool plan.

    Calls that do not validate are reported, not planned (the API refuses the request's own
    earlier; this guards workflows started directly). A call that repeats an earlier one (same
    tool, same canonical parameters) is skipped, so a proposal never duplicates an explicit call.

    Returns:
        The planned calls in order (request first) and one line per refused call.
    """
    planned: list[PlannedToolCall] = []
    rejected: list[str] = []
    seen: set[tuple[str, str]] = set()
    for origin, calls in (("request", request_calls), ("planner", proposals)):
        for call in calls:
            try:
                tool, params = tools.validate(call)
            except ToolCallInvalidError as exc:
                rejected.append(f"{origin} call {call.id}: {exc.message}")
                continue
            identity = (tool.name, canonical_parameters(params))
            if identity in seen:
                continue
            seen.add(identity)
            meta = tool.metadata
            planned.append(
                PlannedToolCall(
                    call=call,
                    parallel_safe=meta.parallel_safe,
                    requires_approval=meta.requires_approval,
                    timeout_s=meta.timeout_s,
                    runs_locally=meta.runs_locally,
                    origin="request" if origin == "request" else "planner",
                )
            )
    return planned, rejected
