"""The provider protocol and the values every provider exchanges.

Every provider implements :class:`ModelProvider`: ``complete(spec, messages, max_tokens)`` returns
a :class:`Completion` or raises a :class:`core.errors.ModelError` subclass, which the generation
activity turns into an ``ApplicationError`` (see :mod:`activities.errors`).
"""

from __future__ import annotations

from typing import Literal, Protocol

from pydantic import BaseModel

from core.catalog import ModelSpec
from core.tokens import count_tokens


class ChatMessage(BaseModel):
    """One chat message sent to a model."""

    role: Literal["system", "user", "assistant"]
    content: str


class Completion(BaseModel):
    """What one model call produced.

    Attributes:
        text: the answer text.
        prompt_tokens: tokens in the request, as reported by the endpoint (or our cl100k_base
            count when it reports none).
        completion_tokens: tokens in ``text``, counted the same way.
        model: the model that answered (the endpoint's name for it when it gives one).
        simulated: True when no real model produced ``text`` (simulated or scripted provider).
    """

    text: str
    prompt_tokens: int
    completion_tokens: int
    model: str
    simulated: bool


class ModelProvider(Protocol):
    """A model vendor adapter.

    Attributes:
        name: the provider's name, recorded in :class:`core.models.ModelUsage`.
    """

    name: str

    async def complete(
        self, spec: ModelSpec, messages: list[ChatMessage], max_tokens: int
    ) -> Completion:
        """Answer ``messages`` with the model ``spec`` names.

        Args:
            spec: the catalog entry (model id, temperature, speed).
            messages: the conversation, system prompt first.
            max_tokens: the most completion tokens to produce.

        Returns:
            The completion with token counts.

        Raises:
            ModelRateLimitedError: the endpoint answered 429 (retryable, ``retry_after_s`` set when
                it sent Retry-After).
            ModelUnavailableError: connection failure, timeout or 5xx (retryable).
            ModelRequestRejectedError: a 4xx other than 408/409/429 (non-retryable).
            ModelOutputInvalidError: the answer was empty or malformed (non-retryable).
        """
        ...


def prompt_tokens(messages: list[ChatMessage]) -> int:
    """Tokens in ``messages`` by our cl100k_base count (for endpoints that report none)."""
    return sum(count_tokens(m.content) for m in messages)
