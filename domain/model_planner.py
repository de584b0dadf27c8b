"""Tool planning by a model: ask the small tier which registered tools would help.

Used by ``plan_tools`` when the small tier is served by a real provider (not the simulated one).
The model sees each tool's name, description and JSON parameter schema and answers with a JSON
array of ``{"name": ..., "parameters": {...}}``. Its proposals are untrusted input: the caller
validates each against the registry and drops (and reports) those that do not validate. A model
that fails or answers with something that is not such an array raises, and the caller falls back
to the transparent rules.
"""

from __future__ import annotations

import json
import re

from core.catalog import ModelSpec
from core.errors import AgentflowError, ErrorType
from core.models import ToolCall
from core.providers import ChatMessage, Completion, ModelProvider
from core.tools import ToolRegistry

MAX_PROPOSALS = 8
"""The most tool calls one planning answer may add."""

_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$", re.MULTILINE)


class PlanParseError(AgentflowError, ValueError):
    """The model's planning answer is not a JSON array of tool calls."""

    type = ErrorType.MODEL_PLAN_INVALID
    retryable = False


def planning_messages(query: str, registry: ToolRegistry) -> list[ChatMessage]:
    """The planning prompt: the tool catalogue and the question."""
    catalogue = "\n".join(
        f"- {tool.name}: {tool.description} Parameters (JSON schema): "
        f"{json.dumps(tool.params_model.model_json_schema(), separators=(',', ':'))}"
        for tool in registry
    )
    system = (
        "You decide which tools help answer a question. Available tools:\n"
        f"{catalogue}\n"
        'Answer with only a JSON array such as [{"name": "calculator", "parameters": '
        '{"expression": "2*3"}}]. Use [] when no tool helps. At most '
        f"{MAX_PROPOSALS} calls."
    )
    return [ChatMessage(role="system", content=system), ChatMessage(role="user", content=query)]


def parse_plan(text: str) -> list[ToolCall]:
    """Tool calls from a planning answer, ids ``model-1``, ``model-2``, ...

    Raises:
        PlanParseError: the text is not a JSON array of objects with a string ``name`` and an
            object ``parameters``.
    """
    try:
        data = json.loads(_FENCE.sub("", text.strip()))
    except json.JSONDecodeError as exc:
        raise PlanParseError(f"planning answer is not JSON: {exc}") from exc
    if not isinstance(data, list):
        raise PlanParseError("planning answer is not a JSON array")
    calls: list[ToolCall] = []
    for index, entry in enumerate(data[:MAX_PROPOSALS], start=1):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise PlanParseError(f"proposal {index} has no tool name")
        params = entry.get("parameters", {})
        if not isinstance(params, dict):
            raise PlanParseError(f"proposal {index} parameters are not an object")
        calls.append(ToolCall(id=f"model-{index}", name=entry["name"], parameters=params))
    return calls


async def plan_with_model(
    provider: ModelProvider, spec: ModelSpec, query: str, registry: ToolRegistry
) -> tuple[list[ToolCall], Completion]:
    """Ask ``spec``'s model for tool calls.

    Returns:
        The proposed calls (not yet validated) and the completion, for usage accounting.

    Raises:
        core.errors.ModelError: the provider failed.
        PlanParseError: the answer could not be parsed.
    """
    completion = await provider.complete(spec, planning_messages(query, registry), 512)
    return parse_plan(completion.text), completion
