"""The request as clients send it and as ``AgentWorkflow`` carries it.

Context items, tool calls and the request itself.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, StrictBool, field_validator

from core.models.enums import Importance
from core.models.validation import (
    check_client_json,
    check_client_text,
    check_json_depth,
    refused_at,
    text_problem,
)


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
                        raise refused_at((index, name), problem)
                check_client_json(call.parameters, (index, "parameters"))
        return value


class AgentRequest(RequestBase):
    """The request carried by ``AgentWorkflow`` (a durable contract)."""

    client_input: ClassVar[bool] = False

    context: list[ContextItem] = Field(default_factory=list, max_length=200)
