"""Any endpoint speaking OpenAI's chat-completions API, through the official ``openai`` client.

Retries belong to Temporal, not to the SDK: the client is built with ``max_retries=0`` so every
attempt is one HTTP request and one visible activity attempt in the workflow history, and a 429's
Retry-After reaches Temporal as ``next_retry_delay`` instead of being slept on silently.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import openai

from core.catalog import ModelSpec
from core.errors import ModelOutputInvalidError
from core.tokens import count_tokens
from infra.providers.base import ChatMessage, Completion
from infra.providers.base import prompt_tokens as count_prompt_tokens
from infra.providers.openai_errors import map_openai_error

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletionMessageParam


def _to_openai_message(message: ChatMessage) -> ChatCompletionMessageParam:
    if message.role == "system":
        return {"role": "system", "content": message.content}
    if message.role == "assistant":
        return {"role": "assistant", "content": message.content}
    return {"role": "user", "content": message.content}


class OpenAICompatibleProvider:
    """Any endpoint speaking OpenAI's ``/v1/chat/completions`` (OpenAI, vLLM, Ollama, llama.cpp).

    One ``AsyncOpenAI`` client per provider, reused across calls, with SDK retries off: each
    ``complete`` is exactly one HTTP request, and Temporal's retry policy decides what happens
    after a failure.
    """

    name: str = "openai"

    def __init__(self, base_url: str, api_key: str | None, timeout_s: float) -> None:
        """Create the provider and its HTTP client.

        Args:
            base_url: the endpoint's base URL including ``/v1``, e.g. ``http://127.0.0.1:8080/v1``.
            api_key: bearer token; ``None`` sends a placeholder (local servers ignore it).
            timeout_s: timeout of one request in seconds.
        """
        self.base_url = base_url
        self.api_key = api_key
        self.timeout_s = timeout_s
        self._client = openai.AsyncOpenAI(
            base_url=base_url,
            api_key=api_key or "not-needed",
            max_retries=0,
            timeout=timeout_s,
        )

    async def complete(
        self, spec: ModelSpec, messages: list[ChatMessage], max_tokens: int
    ) -> Completion:
        """Ask the endpoint for one chat completion.

        Args:
            spec: the catalog entry; ``model_id`` and ``temperature`` are sent.
            messages: the conversation, system prompt first.
            max_tokens: the most completion tokens to produce (sent as ``max_tokens``).

        Returns:
            The first choice's text; token counts from the response's ``usage``, or counted with
            cl100k_base when the server sends none.

        Raises:
            ModelRateLimitedError: 429 (retryable; ``retry_after_s`` from Retry-After).
            ModelUnavailableError: connection failure, timeout, 408, 409 or 5xx (retryable).
            ModelRequestRejectedError: any other 4xx, e.g. a bad key or unknown model
                (non-retryable).
            ModelOutputInvalidError: no choices, empty content, or a malformed body
                (non-retryable).
        """
        try:
            response = await self._client.chat.completions.create(
                model=spec.model_id,
                messages=[_to_openai_message(m) for m in messages],
                max_tokens=max_tokens,
                temperature=spec.temperature,
                timeout=spec.attempt_timeout_s,
            )
        except openai.OpenAIError as exc:
            raise map_openai_error(exc) from None  # the SDK error's text is not redacted
        # The SDK builds responses without strict validation, so a non-conforming server can
        # leave fields unset or of the wrong type: check what we use.
        choices = getattr(response, "choices", None)
        if not isinstance(choices, list) or not choices:
            raise ModelOutputInvalidError(f"model {spec.model_id} returned no choices")
        message = getattr(choices[0], "message", None)
        text = getattr(message, "content", None)
        if not isinstance(text, str) or not text.strip():
            raise ModelOutputInvalidError(f"model {spec.model_id} returned empty content")
        usage = getattr(response, "usage", None)
        prompt_tokens = getattr(usage, "prompt_tokens", None)
        completion_tokens = getattr(usage, "completion_tokens", None)
        model = getattr(response, "model", None)
        return Completion(
            text=text,
            prompt_tokens=(
                prompt_tokens if isinstance(prompt_tokens, int) else count_prompt_tokens(messages)
            ),
            completion_tokens=(
                completion_tokens if isinstance(completion_tokens, int) else count_tokens(text)
            ),
            model=model if isinstance(model, str) and model else spec.model_id,
            simulated=False,
        )

    async def aclose(self) -> None:
        """Close the HTTP client's connections."""
        await self._client.close()
