"""The tool registry: typed tools with a pydantic parameter model, a description and metadata.

A tool is an async function ``fn(params) -> JsonValue``. The registry validates calls (unknown
tool, bad parameters) before anything runs, so the API can refuse a bad request with a 422 and the
planner can drop a bad proposal. The built-in tools live in :mod:`infra.tools`; their
implementations touch the world, the registry itself does no I/O.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, JsonValue, ValidationError

from core.canonical import canonical_json
from core.errors import ToolCallInvalidError
from core.models import CacheLevel, ToolCall, ToolSpecPublic


@dataclass(frozen=True)
class ToolMetadata:
    """Scheduling and caching facts about a tool.

    Attributes:
        parallel_safe: may run concurrently with other parallel-safe calls.
        cacheable: results may be served from the Redis tool-result cache.
        cache_ttl_s: how long a cached result stays valid, in seconds.
        requires_approval: a job planning this tool waits for a human approval first.
        timeout_s: the activity's start-to-close timeout in seconds.
        version: the tool's behaviour version, part of its cache keys: bump it when the tool
            returns something else for the same parameters, and old results are never served.
        answers_query: the tool's result answers a question by itself (a computation, a lookup,
            a query, a fetched page), so a model only has to report it; when every planned
            call's tool does, routing may choose the small tier (:mod:`domain.routing`).
        runs_locally: the tool is quick (its timeout is a few seconds), its CPU is bounded and
            it touches nothing but memory and the tool cache (no network, no database; the docs
            search reads Python's bundled topics once per process to build its index): a batch
            of only such calls runs as a local activity inside the workflow task, without a
            round trip through the task queue.
    """

    parallel_safe: bool = True
    cacheable: bool = True
    cache_ttl_s: int = 3600
    requires_approval: bool = False
    timeout_s: float = 30.0
    answers_query: bool = False
    runs_locally: bool = False
    version: str = "1"


ToolFn = Callable[[Any], Awaitable[JsonValue]]


@dataclass(frozen=True)
class Tool:
    """A registered tool: ``fn`` receives an instance of ``params_model``."""

    name: str
    description: str
    params_model: type[BaseModel]
    fn: ToolFn
    metadata: ToolMetadata

    def public(self) -> ToolSpecPublic:
        """The tool's public description (``GET /v1/tools``)."""
        m = self.metadata
        return ToolSpecPublic(
            name=self.name,
            description=self.description,
            parameters_schema=self.params_model.model_json_schema(),
            parallel_safe=m.parallel_safe,
            cacheable=m.cacheable,
            cache_ttl_s=m.cache_ttl_s,
            requires_approval=m.requires_approval,
            timeout_s=m.timeout_s,
        )


class ToolRegistry:
    """Tools by name. Registration order is the listing order."""

    def __init__(self, tools: list[Tool] | None = None) -> None:
        """Create a registry holding ``tools``.

        Raises:
            ValueError: two tools share a name.
        """
        self._tools: dict[str, Tool] = {}
        for tool in tools or []:
            self.register(tool)

    def register(self, tool: Tool) -> None:
        """Add ``tool``. Raises ValueError when its name is taken."""
        if tool.name in self._tools:
            raise ValueError(f"tool {tool.name!r} is already registered")
        self._tools[tool.name] = tool

    def get(self, name: str) -> Tool | None:
        """The tool called ``name``, or ``None``."""
        return self._tools.get(name)

    def all_answer_query(self, names: Iterable[str]) -> bool:
        """Whether every one of ``names`` (at least one) answers a question by itself.

        True when each names a registered tool with :attr:`ToolMetadata.answers_query`; an
        unknown name does not answer.
        """
        tools = [self._tools.get(name) for name in names]
        return bool(tools) and all(t is not None and t.metadata.answers_query for t in tools)

    def __iter__(self) -> Iterator[Tool]:
        """Tools in registration order."""
        return iter(self._tools.values())

    def __contains__(self, name: object) -> bool:
        """Whether a tool of that name is registered."""
        return name in self._tools

    def names(self) -> list[str]:
        """Registered tool names, in order."""
        return list(self._tools)

    def validate(self, call: ToolCall) -> tuple[Tool, BaseModel]:
        """Resolve ``call`` to its tool and validated parameters.

        Parameters are validated as the JSON they are, strictly and closed: a parameter the
        tool's model does not declare is refused, and so is a value of the wrong JSON type (a
        string for a number, ``0`` or ``"yes"`` for a boolean), whatever the model's own config.

        Raises:
            ToolCallInvalidError: unknown tool (``field="name"``) or invalid parameters
                (``field="parameters"``, message lists each error with its location).
        """
        tool = self._tools.get(call.name)
        if tool is None:
            known = ", ".join(self._tools) or "none"
            raise ToolCallInvalidError(
                call.id, "name", f"unknown tool {call.name!r} (registered: {known})"
            )
        try:
            # JSON mode, so strictness means JSON types (a string still fills an enum field).
            params = tool.params_model.model_validate_json(
                json.dumps(call.parameters), strict=True, extra="forbid"
            )
        except ValidationError as exc:
            details = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}"
                for err in exc.errors()
            )
            raise ToolCallInvalidError(
                call.id, "parameters", f"invalid parameters for {call.name!r}: {details}"
            ) from exc
        return tool, params


def canonical_parameters(params: BaseModel) -> str:
    """Canonical JSON of validated parameters: defaults filled, keys sorted, no whitespace.

    Two calls that mean the same thing (``{"a": 1, "b": 2}`` and ``{"b": 2, "a": 1.0}`` after
    validation, or with a default spelled out) produce the same string.
    """
    return canonical_json(params.model_dump(mode="json"))


def tool_cache_key(tool_name: str, params: BaseModel, version: str = "1") -> str:
    """Content-addressed Redis key of a tool result on the tool level.

    ``agentflow:{cache:tool}:<name>:<version>:<sha256 of the canonical parameters>``: a new
    tool version never reads an old version's results, and ``DELETE /v1/cache/tool?tool=<name>``
    removes one tool's entries by prefix.
    """
    digest = hashlib.sha256(canonical_parameters(params).encode()).hexdigest()
    return f"{CacheLevel.TOOL.prefix}{tool_name}:{version}:{digest}"
