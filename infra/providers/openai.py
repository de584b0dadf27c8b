"""Any endpoint speaking OpenAI's chat-completions API, through the official ``openai`` client.

Retries belong to Temporal, not to the SDK: the client is built with ``max_retries=0`` so every
attempt is one HTTP request and one visible activity attempt in the workflow history, and a 429's
Retry-After reaches Temporal as ``next_retry_delay`` instead of being slept on silently.

Streaming (``complete(..., on_delta=...)``) uses the same endpoint with ``stream=True`` and
``stream_options={"include_usage": True}``. Its hazards, and how each is handled:

- The SDK's ``timeout`` bounds each network read, not the call: an endpoint that drips one token
  a second would never time out. The whole call (both modes) therefore runs under
  ``asyncio.timeout(spec.attempt_timeout_s)``, and running out is ``ModelUnavailableError``.
- A status error (429, 4xx, 5xx) arrives before the first chunk and maps exactly as without
  streaming. A connection that breaks mid-stream is an ``APIConnectionError`` from the SDK, and a
  stream that ends cleanly but without a ``finish_reason`` or a usage chunk was cut short too
  (a proxy closing an unchunked response): both are ``ModelUnavailableError`` (retryable).
- An error object inside the stream (``data: {"error": ...}``) is raised by the SDK as an
  ``APIError`` and maps like one (retryable, text redacted); a chunk that is not JSON is
  ``ModelOutputInvalidError``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import TYPE_CHECKING, Any

import openai

from core.catalog import ModelSpec
from core.errors import ModelOutputInvalidError, ModelUnavailableError
from core.providers import ChatMessage, Completion, DeltaCallback
from core.providers import prompt_tokens as count_prompt_tokens
from core.tokens import count_tokens
from infra.providers.openai_errors import map_openai_error

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam


def _to_openai_message(message: ChatMessage) -> ChatCompletionMessageParam:
    if message.role == "system":
        return {"role": "system", "content": message.content}
    if message.role == "assistant":
        return {"role": "assistant", "content": message.content}
    return {"role": "user", "content": message.content}


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


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
        self,
        spec: ModelSpec,
        messages: list[ChatMessage],
        max_tokens: int,
        on_delta: DeltaCallback | None = None,
    ) -> Completion:
        """Ask the endpoint for one chat completion, streamed when ``on_delta`` is given.

        The whole call, streamed or not, is bounded by ``spec.attempt_timeout_s``.

        Args:
            spec: the catalog entry; ``model_id`` and ``temperature`` are sent.
            messages: the conversation, system prompt first.
            max_tokens: the most completion tokens to produce (sent as ``max_tokens``).
            on_delta: optional callback; when given the request streams and it receives each
                non-empty content delta of the first choice as it arrives.

        Returns:
            The first choice's text; token counts from the response's ``usage`` (streamed: the
            final usage chunk), or counted with cl100k_base when the server sends none; the
            model name the endpoint reports, else ``spec.model_id``.

        Raises:
            ModelRateLimitedError: 429 (retryable; ``retry_after_s`` from Retry-After).
            ModelUnavailableError: connection failure (also mid-stream), timeout (the SDK's or
                the attempt timeout), 408, 409, 5xx, an error inside the stream, or a stream
                that ended without finishing (retryable).
            ModelRequestRejectedError: any other 4xx, e.g. a bad key or unknown model
                (non-retryable).
            ModelOutputInvalidError: no choices, empty content, or a malformed body or chunk
                (non-retryable).
            Exception: whatever ``on_delta`` raises, unchanged.
        """
        timeout_s = spec.attempt_timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                if on_delta is None:
                    return await self._complete_once(spec, messages, max_tokens)
                return await self._complete_streamed(spec, messages, max_tokens, on_delta)
        except TimeoutError:
            raise ModelUnavailableError(
                f"model {spec.model_id} did not finish within its attempt timeout of "
                f"{timeout_s:g} s"
            ) from None

    async def _complete_once(
        self, spec: ModelSpec, messages: list[ChatMessage], max_tokens: int
    ) -> Completion:
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
        return self._completion(
            spec,
            messages,
            text,
            prompt_tokens=_int_or_none(getattr(usage, "prompt_tokens", None)),
            completion_tokens=_int_or_none(getattr(usage, "completion_tokens", None)),
            model=getattr(response, "model", None),
        )

    async def _complete_streamed(
        self,
        spec: ModelSpec,
        messages: list[ChatMessage],
        max_tokens: int,
        on_delta: DeltaCallback,
    ) -> Completion:
        parts: list[str] = []
        chunks = 0
        finished = False
        model: object = None
        prompt_tokens: int | None = None
        completion_tokens: int | None = None
        async with aclosing(self._chunks(spec, messages, max_tokens)) as stream:
            async for chunk in stream:
                chunks += 1
                if model is None:
                    model = getattr(chunk, "model", None) or None
                usage = getattr(chunk, "usage", None)
                if usage is not None:
                    prompt_tokens = _int_or_none(getattr(usage, "prompt_tokens", None))
                    completion_tokens = _int_or_none(getattr(usage, "completion_tokens", None))
                choices = getattr(chunk, "choices", None)
                for choice in choices if isinstance(choices, list) else []:
                    if getattr(choice, "index", 0) != 0:
                        continue
                    if getattr(choice, "finish_reason", None):
                        finished = True
                    content = getattr(getattr(choice, "delta", None), "content", None)
                    if content is None:
                        continue
                    if not isinstance(content, str):
                        raise ModelOutputInvalidError(
                            f"model {spec.model_id} streamed non-text content "
                            f"({type(content).__name__})"
                        )
                    if content:
                        parts.append(content)
                        on_delta(content)
        text = "".join(parts)
        if not text.strip():
            raise ModelOutputInvalidError(
                f"model {spec.model_id} streamed no content ({chunks} chunks)"
            )
        if not finished and prompt_tokens is None and completion_tokens is None:
            raise ModelUnavailableError(
                f"model {spec.model_id}'s stream ended after {chunks} chunks without a "
                "finish_reason or usage (connection cut short)"
            )
        return self._completion(
            spec,
            messages,
            text,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            model=model,
        )

    async def _chunks(
        self, spec: ModelSpec, messages: list[ChatMessage], max_tokens: int
    ) -> AsyncGenerator[ChatCompletionChunk, None]:
        """The stream's chunks, with every SDK failure already translated to a domain error.

        Only the SDK's own calls sit inside ``try``, so an exception from the caller's
        ``on_delta`` (raised while this generator is suspended) is never translated.
        """
        try:
            stream = await self._client.chat.completions.create(
                model=spec.model_id,
                messages=[_to_openai_message(m) for m in messages],
                max_tokens=max_tokens,
                temperature=spec.temperature,
                timeout=spec.attempt_timeout_s,
                stream=True,
                stream_options={"include_usage": True},
            )
        except openai.OpenAIError as exc:
            raise map_openai_error(exc) from None
        async with stream:
            iterator = stream.__aiter__()
            while True:
                try:
                    chunk = await anext(iterator)
                except StopAsyncIteration:
                    return
                except openai.OpenAIError as exc:
                    raise map_openai_error(exc) from None
                except json.JSONDecodeError as exc:
                    raise ModelOutputInvalidError(
                        f"model {spec.model_id} streamed a chunk that is not JSON "
                        f"(at character {exc.pos})"
                    ) from None
                yield chunk

    def _completion(
        self,
        spec: ModelSpec,
        messages: list[ChatMessage],
        text: str,
        *,
        prompt_tokens: int | None,
        completion_tokens: int | None,
        model: Any,
    ) -> Completion:
        return Completion(
            text=text,
            prompt_tokens=(
                prompt_tokens if prompt_tokens is not None else count_prompt_tokens(messages)
            ),
            completion_tokens=(
                completion_tokens if completion_tokens is not None else count_tokens(text)
            ),
            model=model if isinstance(model, str) and model else spec.model_id,
            simulated=False,
        )

    async def aclose(self) -> None:
        """Close the HTTP client's connections."""
        await self._client.close()
