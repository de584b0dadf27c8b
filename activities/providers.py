"""Model providers behind one protocol: simulated (offline), OpenAI-compatible, and scripted.

Every provider implements :class:`ModelProvider`: ``complete(spec, messages, max_tokens)`` returns
a :class:`Completion` or raises a :class:`core.errors.ModelError` subclass, which the generation
activity turns into an ``ApplicationError`` (see :mod:`activities.errors`).

Retries belong to Temporal, not to the SDK: the ``openai`` client is built with ``max_retries=0``
so every attempt is one HTTP request and one visible activity attempt in the workflow history, and
a 429's Retry-After reaches Temporal as ``next_retry_delay`` instead of being slept on silently.

The :class:`SimulatedProvider` is what runs when no model endpoint is configured. It never
pretends to know anything: its answers are labelled ``[simulated <tier> model <model_id>]`` and
only restate the question and the facts present in the context it was given.
"""

from __future__ import annotations

import asyncio
import inspect
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Literal, NamedTuple, Protocol

import openai
from pydantic import BaseModel

from activities.errors import map_openai_error
from core.catalog import ModelSpec
from core.errors import ModelOutputInvalidError
from core.models import ContextItem
from core.tokens import count_tokens, truncate_to_tokens

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletionMessageParam

    from core.settings import Settings


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


def _prompt_tokens(messages: list[ChatMessage]) -> int:
    return sum(count_tokens(m.content) for m in messages)


# --------------------------------------------------------------------------- prompts

_SYSTEM_DRAFT = (
    "You are a concise assistant. Give a quick, short first answer to the question in two or "
    "three sentences; a fuller answer will follow."
)
_SYSTEM_FINAL = (
    "You are a concise assistant. Answer the question using the context provided. When a context "
    "item names a source, cite it in square brackets, for example [source]. If the context does "
    "not contain the answer, say so rather than guessing."
)
_CONTEXT_HEADER = "Context:\n"


def render_context_item(item: ContextItem) -> str:
    """One context item as the prompt shows it: ``[source] (importance) content``.

    The ``[source] `` part is left out when the item names no source.
    """
    source = f"[{item.source}] " if item.source else ""
    return f"{source}({item.importance.value}) {item.content}"


def build_messages(
    query: str, context: list[ContextItem], purpose: Literal["draft", "final"]
) -> list[ChatMessage]:
    """The chat messages for one generation call.

    Args:
        query: the user's question.
        context: context items, already compressed to the token budget. Items whose content was
            moved to the blob store must be resolved first; items with empty ``content`` are left
            out.
        purpose: ``draft`` asks for a quick, short first answer; ``final`` asks for an answer
            grounded in the context, citing sources in brackets.

    Returns:
        ``[system, user(context block), user(question)]``; the context message is omitted when
        there is no non-empty context.
    """
    system = _SYSTEM_DRAFT if purpose == "draft" else _SYSTEM_FINAL
    messages = [ChatMessage(role="system", content=system)]
    rendered = [render_context_item(item) for item in context if item.content.strip()]
    if rendered:
        messages.append(ChatMessage(role="user", content=_CONTEXT_HEADER + "\n".join(rendered)))
    messages.append(ChatMessage(role="user", content=query))
    return messages


# --------------------------------------------------------------------------- simulated

_ITEM_START = re.compile(r"^(?:\[(?P<source>[^\]]*)\] )?\((?:critical|high|medium|low)\) ")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s")
_NUMBER = re.compile(r"(?<![\w.])-?\d[\d,]*(?:\.\d+)?%?")
_MAX_FACT_CHARS = 200
_MAX_QUESTION_CHARS = 300
_MAX_NUMBERS = 5


def _shorten(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _context_entries(message: ChatMessage) -> list[tuple[str | None, str]]:
    """``(source, content)`` pairs from a rendered context block, or the whole message as one."""
    if not message.content.startswith(_CONTEXT_HEADER):
        return [(None, message.content)]
    entries: list[tuple[str | None, list[str]]] = []
    for line in message.content[len(_CONTEXT_HEADER) :].splitlines():
        match = _ITEM_START.match(line)
        if match:
            entries.append((match.group("source"), [line[match.end() :]]))
        elif entries:
            entries[-1][1].append(line)
        else:
            entries.append((None, [line]))
    return [(source, "\n".join(lines)) for source, lines in entries]


def _key_fact(content: str) -> str:
    """The first sentence of ``content``, plus numbers that appear only later in it."""
    flat = " ".join(content.split())
    first = _SENTENCE_END.split(flat, maxsplit=1)[0]
    fact = _shorten(first, _MAX_FACT_CHARS)
    later = [n for n in _NUMBER.findall(flat[len(first) :]) if n not in fact]
    if later:
        fact += f" (figures: {', '.join(dict.fromkeys(later[:_MAX_NUMBERS]))})"
    return fact


def simulated_answer(spec: ModelSpec, messages: list[ChatMessage]) -> str:
    """The simulated provider's full (untruncated) answer to ``messages``.

    Deterministic: the same spec and messages give the same text. The text starts with the label
    ``[simulated <tier> model <model_id>] ``, states that no real model is behind it, restates the
    question (the last user message) and lists the first sentence of each context item (and the
    numbers found later in it) from the other non-system messages.
    """
    label = f"[simulated {spec.tier.value} model {spec.model_id}] "
    conversation = [m for m in messages if m.role != "system"]
    question_index = max((i for i, m in enumerate(conversation) if m.role == "user"), default=None)
    question = (
        _shorten(conversation[question_index].content, _MAX_QUESTION_CHARS)
        if question_index is not None
        else "(no question given)"
    )
    facts: list[str] = []
    for i, message in enumerate(conversation):
        if i == question_index:
            continue
        for source, content in _context_entries(message):
            if content.strip():
                prefix = f"[{source}] " if source else ""
                facts.append(f"- {prefix}{_key_fact(content)}")
    lines = [
        f"{label}This is a simulated answer: no real model is behind it, so it only restates "
        "the question and the context it was given.",
        f"Question: {question}",
    ]
    if facts:
        lines.append("Key facts in the provided context:")
        lines.extend(facts)
    else:
        lines.append("No context was provided, so there are no facts to report.")
    return "\n".join(lines)


class SimulatedProvider:
    """Offline stand-in for a model; every answer is labelled as simulated.

    The answer (see :func:`simulated_answer`) is capped at ``max_tokens`` completion tokens, except
    that the ``[simulated ...]`` label is always kept whole, even when it alone exceeds a very
    small ``max_tokens``. Latency follows the tier: the call sleeps
    ``latency_scale * (0.05 + completion_tokens / spec.tokens_per_second)`` seconds.
    """

    name: str = "simulated"

    def __init__(self, latency_scale: float = 1.0) -> None:
        """Create the provider.

        Args:
            latency_scale: multiplier on the simulated latency; 0 answers at once.

        Raises:
            ValueError: ``latency_scale`` is negative.
        """
        if latency_scale < 0:
            raise ValueError(f"latency_scale must be >= 0, got {latency_scale}")
        self.latency_scale = latency_scale

    def latency_s(self, spec: ModelSpec, completion_tokens: int) -> float:
        """Seconds a call producing ``completion_tokens`` tokens sleeps for ``spec``'s tier."""
        return self.latency_scale * (0.05 + completion_tokens / spec.tokens_per_second)

    async def complete(
        self, spec: ModelSpec, messages: list[ChatMessage], max_tokens: int
    ) -> Completion:
        """Answer with a labelled, deterministic synthesis of ``messages``.

        Args:
            spec: the catalog entry; its tier and model id label the answer, its
                ``tokens_per_second`` sets the latency.
            messages: the conversation, as :func:`build_messages` builds it.
            max_tokens: the most completion tokens (cl100k_base) to produce.

        Returns:
            The completion with ``simulated=True`` and cl100k_base token counts.
        """
        label = f"[simulated {spec.tier.value} model {spec.model_id}] "
        full = simulated_answer(spec, messages)
        body_budget = max(max_tokens - count_tokens(label), 0)
        text = label + truncate_to_tokens(full[len(label) :], body_budget)
        completion_tokens = count_tokens(text)
        delay = self.latency_s(spec, completion_tokens)
        if delay > 0:
            await asyncio.sleep(delay)
        return Completion(
            text=text,
            prompt_tokens=_prompt_tokens(messages),
            completion_tokens=completion_tokens,
            model=spec.model_id,
            simulated=True,
        )


# --------------------------------------------------------------------------- OpenAI-compatible


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
            )
        except openai.OpenAIError as exc:
            raise map_openai_error(exc) from exc
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
                prompt_tokens if isinstance(prompt_tokens, int) else _prompt_tokens(messages)
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


# --------------------------------------------------------------------------- scripted

ScriptResult = str | Completion
ScriptFn = Callable[[ModelSpec, list[ChatMessage], int], ScriptResult | Awaitable[ScriptResult]]
"""``fn(spec, messages, max_tokens)`` returning (or awaiting to) a text or a full Completion."""


class ScriptedCall(NamedTuple):
    """One call a :class:`ScriptedProvider` received."""

    spec: ModelSpec
    messages: list[ChatMessage]
    max_tokens: int


class ScriptedProvider:
    """Test double whose answers come from a function (in the spirit of pydantic-ai FunctionModel).

    ``fn(spec, messages, max_tokens)`` may be sync or async and returns the answer text or a full
    :class:`Completion`; whatever it raises propagates unchanged, so a test can make one tier fail
    with a :class:`core.errors.ModelError`. Every call is recorded in :attr:`calls`.
    """

    def __init__(self, fn: ScriptFn, *, simulated: bool = True, name: str = "scripted") -> None:
        """Create the double.

        Args:
            fn: the script, ``fn(spec, messages, max_tokens) -> str | Completion`` (or awaitable).
            simulated: the ``simulated`` flag of completions built from a returned text; True by
                default because no real model wrote them.
            name: the provider name recorded in usage.
        """
        self.fn = fn
        self.simulated = simulated
        self.name = name
        self.calls: list[ScriptedCall] = []

    async def complete(
        self, spec: ModelSpec, messages: list[ChatMessage], max_tokens: int
    ) -> Completion:
        """Run the script and wrap a text answer with cl100k_base token counts.

        Returns:
            The script's Completion as is, or one built from its text (not truncated).

        Raises:
            Exception: whatever the script raises.
        """
        self.calls.append(ScriptedCall(spec, list(messages), max_tokens))
        result = self.fn(spec, messages, max_tokens)
        if inspect.isawaitable(result):
            result = await result
        if isinstance(result, Completion):
            return result
        return Completion(
            text=result,
            prompt_tokens=_prompt_tokens(messages),
            completion_tokens=count_tokens(result),
            model=spec.model_id,
            simulated=self.simulated,
        )


# --------------------------------------------------------------------------- registry


class ProviderRegistry:
    """Finds the provider for a catalog entry and owns the providers' clients.

    ``openai`` specs without their own ``base_url``/``api_key`` use the registered ``openai``
    provider, or one built lazily from the default endpoint. A spec with its own ``base_url`` gets
    its own :class:`OpenAICompatibleProvider` (one per ``(base_url, api_key)``, reused), and never
    receives the default API key: that key is only sent to the default endpoint.
    """

    def __init__(
        self,
        providers: dict[str, ModelProvider],
        *,
        openai_timeout_s: float = 60.0,
        openai_base_url: str | None = None,
        openai_api_key: str | None = None,
    ) -> None:
        """Create the registry.

        Args:
            providers: provider kind name (``simulated``, ``openai`` or a custom name) to provider.
            openai_timeout_s: request timeout in seconds for OpenAI-compatible providers built here.
            openai_base_url: default endpoint for ``openai`` specs (``OPENAI_BASE_URL``).
            openai_api_key: API key for the default endpoint (``OPENAI_API_KEY``).
        """
        self._providers = dict(providers)
        self._openai_timeout_s = openai_timeout_s
        self._openai_base_url = openai_base_url
        self._openai_api_key = openai_api_key
        self._openai: dict[tuple[str, str | None], OpenAICompatibleProvider] = {}
        registered = self._providers.get("openai")
        if isinstance(registered, OpenAICompatibleProvider):
            self._openai[(registered.base_url, registered.api_key)] = registered

    @classmethod
    def from_settings(cls, settings: Settings) -> ProviderRegistry:
        """The registry the settings describe.

        Registers ``simulated`` (with ``simulated_latency_scale``) and, when ``openai_base_url``
        is set, ``openai`` (with ``openai_api_key`` and ``model_timeout_s``).
        """
        providers: dict[str, ModelProvider] = {
            "simulated": SimulatedProvider(settings.simulated_latency_scale)
        }
        if settings.openai_base_url:
            providers["openai"] = OpenAICompatibleProvider(
                settings.openai_base_url, settings.openai_api_key, settings.model_timeout_s
            )
        return cls(
            providers,
            openai_timeout_s=settings.model_timeout_s,
            openai_base_url=settings.openai_base_url,
            openai_api_key=settings.openai_api_key,
        )

    def _openai_provider(self, base_url: str, api_key: str | None) -> OpenAICompatibleProvider:
        key = (base_url, api_key)
        provider = self._openai.get(key)
        if provider is None:
            provider = OpenAICompatibleProvider(base_url, api_key, self._openai_timeout_s)
            self._openai[key] = provider
        return provider

    def for_spec(self, spec: ModelSpec) -> ModelProvider:
        """The provider that serves ``spec``.

        Raises:
            ValueError: an ``openai`` spec has no ``base_url`` and ``OPENAI_BASE_URL`` is not set,
                or no provider is registered under ``spec.provider``.
        """
        if spec.provider == "openai":
            if spec.base_url is not None:
                return self._openai_provider(spec.base_url, spec.api_key)
            if spec.api_key is None and "openai" in self._providers:
                return self._providers["openai"]
            if self._openai_base_url is None:
                raise ValueError(
                    f"model {spec.model_id} ({spec.tier.value}) uses provider 'openai' but "
                    "OPENAI_BASE_URL is not set and the catalog entry has no base_url"
                )
            return self._openai_provider(
                self._openai_base_url, spec.api_key or self._openai_api_key
            )
        provider = self._providers.get(spec.provider)
        if provider is None:
            raise ValueError(
                f"model {spec.model_id} ({spec.tier.value}) uses provider {spec.provider!r}, "
                f"which is not registered (known: {sorted(self._providers)})"
            )
        return provider

    async def aclose(self) -> None:
        """Close every provider that holds connections (each once)."""
        seen: set[int] = set()
        for provider in [*self._providers.values(), *self._openai.values()]:
            if id(provider) in seen:
                continue
            seen.add(id(provider))
            close = getattr(provider, "aclose", None)
            if close is not None:
                await close()
