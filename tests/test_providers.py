"""Model providers: the OpenAI-compatible adapter against a real local HTTP server, the simulated
provider, the scripted double and the registry.

The local server is a small FastAPI app served by uvicorn on a free loopback port. Its behaviour is
chosen by the request's model name, and it counts requests per model so the tests can prove the
SDK makes exactly one HTTP request per call (SDK retries off; Temporal owns retries). A request
with ``"stream": true`` gets Server-Sent Events like OpenAI's (``tests/test_provider_streaming.py``
uses the same server); the error models answer the same way either way.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from core.catalog import ModelCatalog, ModelSpec
from core.errors import (
    ModelError,
    ModelOutputInvalidError,
    ModelRateLimitedError,
    ModelRequestRejectedError,
    ModelUnavailableError,
)
from core.models import ContextItem, Importance, Tier
from core.settings import Settings
from core.tokens import count_tokens
from infra.providers import (
    ChatMessage,
    Completion,
    ModelProvider,
    OpenAICompatibleProvider,
    ProviderRegistry,
    ScriptedProvider,
    SimulatedProvider,
    build_messages,
)
from tests.helpers import free_port, serve_asgi

HANG_S = 2.0
CLIENT_TIMEOUT_S = 0.5
STREAMED_PIECES = ["hello", " from", " the", " streaming", " server"]
STREAMED_USAGE = {"prompt_tokens": 13, "completion_tokens": 5, "total_tokens": 18}
DRIP_INTERVAL_S = 0.1
ECHOED_KEY = "sk-proj-echoed0123456789abcdefZq9"
"""A key the streaming tests send; the ``*-echo`` models quote it back in their errors."""


# --------------------------------------------------------------------------- the local server


@dataclass
class ServerState:
    counts: Counter[str] = field(default_factory=Counter)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    auth: list[str | None] = field(default_factory=list)
    # Set by a test's on_delta: the "wait-for-client" stream sends its second chunk only then.
    client_saw_first_piece: threading.Event = field(default_factory=threading.Event)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    body = {"error": {"message": message, "type": "test", "code": None}}
    return JSONResponse(body, status_code=status, headers=headers)


def _ok(model: str, content: str | None, *, usage: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 0,
        "model": f"served-{model}",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
    }
    if usage:
        body["usage"] = {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}
    return body


def _sse(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


def _chunk(
    model: str,
    content: str | None = None,
    *,
    finish: str | None = None,
    role: str | None = None,
    usage: dict[str, int] | None = None,
    choices: bool = True,
) -> dict[str, Any]:
    """One ``chat.completion.chunk`` as OpenAI streams it."""
    delta: dict[str, Any] = {}
    if role is not None:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    body: dict[str, Any] = {
        "id": "chatcmpl-stream",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": f"served-{model}",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}] if choices else [],
        "usage": usage,
    }
    return body


def _stream_events(model: str, state: ServerState, auth: str) -> AsyncIterator[str] | None:
    """The SSE body for a streamed request to ``model``, or None when it is not a stream model."""

    async def events(pieces: list[str], *, usage: bool = True, finish: bool = True) -> Any:
        yield _sse(_chunk(model, role="assistant", content=""))
        for piece in pieces:
            yield _sse(_chunk(model, piece))
        if finish:
            yield _sse(_chunk(model, finish="stop"))
        if usage:
            yield _sse(_chunk(model, usage=STREAMED_USAGE, choices=False))
        yield _sse("[DONE]")

    async def drip() -> Any:
        for i in range(int(HANG_S / DRIP_INTERVAL_S)):
            yield _sse(_chunk(model, f" drop{i}"))
            await asyncio.sleep(DRIP_INTERVAL_S)
        yield _sse(_chunk(model, finish="stop"))
        yield _sse("[DONE]")

    async def wait_for_client() -> Any:
        yield _sse(_chunk(model, "first"))
        seen = await asyncio.to_thread(state.client_saw_first_piece.wait, HANG_S)
        yield _sse(_chunk(model, " then the rest" if seen else " (client never saw the first)"))
        yield _sse(_chunk(model, finish="stop"))
        yield _sse("[DONE]")

    async def error_in_stream() -> Any:
        yield _sse(_chunk(model, "partial"))
        yield _sse({"error": {"message": f"overloaded, key was {auth}", "type": "server_error"}})

    async def not_json() -> Any:
        yield _sse(_chunk(model, "partial"))
        yield "data: {this is not json\n\n"

    match model:
        case "ok":
            return events(STREAMED_PIECES)
        case "no-usage":
            return events(["four", " words", " right", " here"], usage=False)
        case "empty-content":
            return events([])
        case "whitespace":
            return events([" ", "\n"])
        case "drip":
            return drip()
        case "wait-for-client":
            return wait_for_client()
        case "error-in-stream-echo":
            return error_in_stream()
        case "not-json-chunk":
            return not_json()
    return None


def make_app(state: ServerState) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        body = await request.json()
        model = body["model"]
        state.counts[model] += 1
        state.bodies.append(body)
        auth = request.headers.get("authorization")
        state.auth.append(auth)
        if body.get("stream"):
            events = _stream_events(model, state, auth or "")
            if events is not None:
                return StreamingResponse(events, media_type="text/event-stream")
        match model:
            case "ok":
                return _ok(model, "hello from the real server")
            case "no-usage":
                return _ok(model, "four words right here", usage=False)
            case "rate-limited":
                return _error(429, "slow down", {"Retry-After": "7"})
            case "rate-limited-ms":
                return _error(429, "slow down", {"retry-after-ms": "1500"})
            case "server-error":
                return _error(500, "internal")
            case "overloaded":
                return _error(503, "overloaded", {"Retry-After": "2"})
            case "unauthorized":
                return _error(401, "bad key")
            case "bad-request":
                return _error(400, "bad request")
            case "unknown-model":
                return _error(404, "no such model")
            case "conflict":
                return _error(409, "conflict")
            case "empty-choices":
                body = _ok(model, "x")
                body["choices"] = []
                return body
            case "empty-content":
                return _ok(model, None)
            case "not-json":
                return PlainTextResponse("this is not json")
            case "hang":
                await asyncio.sleep(HANG_S)
                return _ok(model, "too late")
            case "unauthorized-echo":
                return _error(401, f"invalid credentials: {auth}")
        return _error(400, f"unscripted model {model}")

    return app


@dataclass
class LocalServer:
    base_url: str
    state: ServerState


@pytest.fixture(scope="module")
def local_server() -> Iterator[LocalServer]:
    state = ServerState()
    with serve_asgi(make_app(state), lifespan="off", timeout_graceful_shutdown=1) as url:
        yield LocalServer(base_url=f"{url}/v1", state=state)


@pytest.fixture
async def openai_provider(local_server: LocalServer) -> AsyncIterator[OpenAICompatibleProvider]:
    provider = OpenAICompatibleProvider(local_server.base_url, None, CLIENT_TIMEOUT_S)
    try:
        yield provider
    finally:
        await provider.aclose()


def spec_for(
    model_id: str,
    *,
    tier: Tier = Tier.SMALL,
    tokens_per_second: float = 150,
    request_timeout_s: float | None = None,
) -> ModelSpec:
    return ModelSpec(
        tier=tier,
        provider="openai",
        model_id=model_id,
        cost_per_1k_tokens_usd=0.001,
        tokens_per_second=tokens_per_second,
        max_tokens=512,
        temperature=0.2,
        request_timeout_s=request_timeout_s,
    )


MESSAGES = [
    ChatMessage(role="system", content="Be brief."),
    ChatMessage(role="user", content="What is 2 + 2?"),
]


# --------------------------------------------------------------------------- OpenAI-compatible


async def test_openai_success_reads_text_usage_and_model(
    openai_provider: OpenAICompatibleProvider, local_server: LocalServer
) -> None:
    before = local_server.state.counts["ok"]
    completion = await openai_provider.complete(spec_for("ok"), MESSAGES, max_tokens=64)
    assert completion == Completion(
        text="hello from the real server",
        prompt_tokens=11,
        completion_tokens=3,
        model="served-ok",
        simulated=False,
    )
    assert local_server.state.counts["ok"] == before + 1
    body = local_server.state.bodies[-1]
    assert body["model"] == "ok"
    assert body["max_tokens"] == 64
    assert body["temperature"] == 0.2
    assert body["messages"] == [m.model_dump() for m in MESSAGES]
    assert local_server.state.auth[-1] == "Bearer not-needed"


async def test_openai_sends_api_key(local_server: LocalServer) -> None:
    provider = OpenAICompatibleProvider(local_server.base_url, "sk-test", CLIENT_TIMEOUT_S)
    try:
        await provider.complete(spec_for("ok"), MESSAGES, max_tokens=8)
    finally:
        await provider.aclose()
    assert local_server.state.auth[-1] == "Bearer sk-test"


async def test_openai_usage_falls_back_to_tokenizer(
    openai_provider: OpenAICompatibleProvider,
) -> None:
    completion = await openai_provider.complete(spec_for("no-usage"), MESSAGES, max_tokens=8)
    assert completion.text == "four words right here"
    assert completion.completion_tokens == count_tokens("four words right here")
    assert completion.prompt_tokens == sum(count_tokens(m.content) for m in MESSAGES)


FAILURES: list[tuple[str, type[ModelError], float | None]] = [
    ("rate-limited", ModelRateLimitedError, 7.0),
    ("rate-limited-ms", ModelRateLimitedError, 1.5),
    ("server-error", ModelUnavailableError, None),
    ("overloaded", ModelUnavailableError, 2.0),
    ("conflict", ModelUnavailableError, None),
    ("unauthorized", ModelRequestRejectedError, None),
    ("bad-request", ModelRequestRejectedError, None),
    ("unknown-model", ModelRequestRejectedError, None),
    ("empty-choices", ModelOutputInvalidError, None),
    ("empty-content", ModelOutputInvalidError, None),
    ("not-json", ModelOutputInvalidError, None),
    ("hang", ModelUnavailableError, None),
]
"""(model, domain error, retry_after_s): every failure the local server can produce, streamed
or not (the streaming tests run the same table)."""


@pytest.mark.parametrize(("model", "error", "retry_after_s"), FAILURES)
async def test_openai_failures_map_to_domain_errors_with_one_request(
    openai_provider: OpenAICompatibleProvider,
    local_server: LocalServer,
    model: str,
    error: type[ModelError],
    retry_after_s: float | None,
) -> None:
    before = local_server.state.counts[model]
    started = time.monotonic()
    # Each call times out at its model's attempt timeout (here set on the catalog entry): short
    # for the endpoint that hangs, long enough elsewhere that a loaded machine (CI) cannot turn
    # an HTTP error into a client timeout, which maps to the same error type.
    timeout_s = CLIENT_TIMEOUT_S if model == "hang" else 10 * CLIENT_TIMEOUT_S
    spec = spec_for(model, request_timeout_s=timeout_s)
    with pytest.raises(ModelError) as caught:
        await openai_provider.complete(spec, MESSAGES, max_tokens=16)
    elapsed = time.monotonic() - started
    assert type(caught.value) is error
    assert caught.value.retryable is error.retryable
    assert caught.value.retry_after_s == retry_after_s
    # Exactly one HTTP request: the SDK must not retry (and must not sleep on Retry-After).
    await asyncio.sleep(0.05)
    assert local_server.state.counts[model] == before + 1
    assert elapsed < HANG_S - 1
    if model == "hang":
        assert elapsed >= CLIENT_TIMEOUT_S * 0.9


async def test_openai_connection_refused_is_unavailable() -> None:
    provider = OpenAICompatibleProvider(f"http://127.0.0.1:{free_port()}/v1", None, 2.0)
    try:
        with pytest.raises(ModelUnavailableError) as caught:
            await provider.complete(spec_for("ok"), MESSAGES, max_tokens=8)
    finally:
        await provider.aclose()
    assert caught.value.retryable


async def test_openai_client_is_reused_across_calls(
    openai_provider: OpenAICompatibleProvider,
) -> None:
    client = openai_provider._client
    await openai_provider.complete(spec_for("ok"), MESSAGES, max_tokens=8)
    await openai_provider.complete(spec_for("ok"), MESSAGES, max_tokens=8)
    assert openai_provider._client is client
    assert client.max_retries == 0


# --------------------------------------------------------------------------- simulated


SMALL = ModelCatalog.default().for_tier(Tier.SMALL)
LARGE = ModelCatalog.default().for_tier(Tier.LARGE)
CONTEXT = [
    ContextItem(
        content="Revenue rose 12% to $4.2M in Q3. Costs grew by 1,200 units. Margin was 31.5%.",
        source="q3-report",
        importance=Importance.HIGH,
    ),
    ContextItem(content='{"result": 42}', source="tool:calculator"),
    ContextItem(content="The office moved to Lisbon in 2021.\nIt has 40 desks."),
]


async def test_simulated_is_labelled_and_honest() -> None:
    messages = build_messages("What was revenue in Q3?", CONTEXT, "final")
    completion = await SimulatedProvider(0).complete(LARGE, messages, max_tokens=400)
    assert completion.text.startswith("[simulated large model simulated-large] ")
    assert completion.simulated is True
    assert completion.model == "simulated-large"
    assert "no real model" in completion.text
    assert "What was revenue in Q3?" in completion.text
    # First sentence of each item, figures that only appear later, and the sources.
    assert "[q3-report] Revenue rose 12% to $4.2M in Q3." in completion.text
    assert "1,200" in completion.text and "31.5%" in completion.text
    assert "[tool:calculator]" in completion.text and "42" in completion.text
    assert "Lisbon in 2021." in completion.text and "40" in completion.text
    assert completion.prompt_tokens == sum(count_tokens(m.content) for m in messages)
    assert completion.completion_tokens == count_tokens(completion.text)


async def test_simulated_is_deterministic() -> None:
    provider = SimulatedProvider(0)
    messages = build_messages("Summarise the report.", CONTEXT, "draft")
    first = await provider.complete(SMALL, messages, max_tokens=200)
    second = await provider.complete(SMALL, messages, max_tokens=200)
    assert first == second


async def test_simulated_without_context_says_so() -> None:
    completion = await SimulatedProvider(0).complete(
        SMALL, build_messages("Hello?", [], "final"), max_tokens=200
    )
    assert "Question: Hello?" in completion.text
    assert "No context was provided" in completion.text


@pytest.mark.parametrize("max_tokens", [20, 40, 80])
async def test_simulated_respects_max_tokens(max_tokens: int) -> None:
    messages = build_messages("What was revenue in Q3?", CONTEXT * 5, "final")
    completion = await SimulatedProvider(0).complete(SMALL, messages, max_tokens=max_tokens)
    assert completion.completion_tokens <= max_tokens
    assert count_tokens(completion.text) <= max_tokens
    assert completion.text.startswith("[simulated small model simulated-small] ")


async def test_simulated_keeps_label_even_below_its_length() -> None:
    completion = await SimulatedProvider(0).complete(
        SMALL, build_messages("q", [], "final"), max_tokens=2
    )
    assert completion.text.strip() == "[simulated small model simulated-small]"


async def _timed(provider: SimulatedProvider, spec: ModelSpec, max_tokens: int) -> float:
    started = time.monotonic()
    await provider.complete(spec, build_messages("q", CONTEXT, "final"), max_tokens=max_tokens)
    return time.monotonic() - started


async def test_simulated_latency_follows_scale_and_tier() -> None:
    slow = spec_for("slow", tokens_per_second=300).model_copy(update={"provider": "simulated"})
    fast = spec_for("fast", tokens_per_second=3000).model_copy(update={"provider": "simulated"})
    instant = await _timed(SimulatedProvider(0), slow, 30)
    slow_s = await _timed(SimulatedProvider(1.0), slow, 30)  # 0.05 + 30/300 = 0.15 s
    fast_s = await _timed(SimulatedProvider(1.0), fast, 30)  # 0.05 + 30/3000 = 0.06 s
    assert instant < 0.04
    assert slow_s >= 0.14
    assert instant < fast_s < slow_s
    assert SimulatedProvider(0.5).latency_s(slow, 30) == pytest.approx(0.075)


def test_simulated_rejects_negative_scale() -> None:
    with pytest.raises(ValueError, match="latency_scale"):
        SimulatedProvider(-1)


# --------------------------------------------------------------------------- build_messages


def test_build_messages_shapes() -> None:
    final = build_messages("Why?", CONTEXT, "final")
    assert [m.role for m in final] == ["system", "user", "user"]
    assert "cite" in final[0].content
    assert final[1].content.startswith("Context:\n[q3-report] (high) Revenue rose")
    assert "\n[tool:calculator] (medium) {" in final[1].content
    assert "\n(medium) The office moved" in final[1].content
    assert final[2].content == "Why?"
    draft = build_messages("Why?", [], "draft")
    assert [m.role for m in draft] == ["system", "user"]
    assert "short" in draft[0].content
    blank = build_messages("Why?", [ContextItem(content="  ")], "final")
    assert len(blank) == 2


# --------------------------------------------------------------------------- scripted


async def test_scripted_sync_and_async_scripts() -> None:
    def sync_fn(spec: ModelSpec, messages: list[ChatMessage], max_tokens: int) -> str:
        return f"{spec.tier.value}:{messages[-1].content}:{max_tokens}"

    async def async_fn(spec: ModelSpec, messages: list[ChatMessage], max_tokens: int) -> str:
        await asyncio.sleep(0)
        return "async answer"

    provider = ScriptedProvider(sync_fn)
    completion = await provider.complete(SMALL, MESSAGES, 9)
    assert completion.text == "small:What is 2 + 2?:9"
    assert completion.simulated is True
    assert completion.model == "simulated-small"
    assert completion.completion_tokens == count_tokens(completion.text)
    assert provider.name == "scripted"
    assert len(provider.calls) == 1 and provider.calls[0].max_tokens == 9

    real = ScriptedProvider(async_fn, simulated=False)
    assert (await real.complete(SMALL, MESSAGES, 9)).simulated is False


async def test_scripted_returns_completion_and_propagates_errors() -> None:
    canned = Completion(text="t", prompt_tokens=1, completion_tokens=1, model="m", simulated=False)

    def script(spec: ModelSpec, messages: list[ChatMessage], max_tokens: int) -> Completion:
        if spec.tier is Tier.SMALL:
            raise ModelUnavailableError("small tier is down")
        return canned

    provider = ScriptedProvider(script)
    with pytest.raises(ModelUnavailableError, match="small tier is down"):
        await provider.complete(SMALL, MESSAGES, 8)
    assert await provider.complete(LARGE, MESSAGES, 8) is canned
    assert [c.spec.tier for c in provider.calls] == [Tier.SMALL, Tier.LARGE]


# --------------------------------------------------------------------------- registry


async def test_registry_simulated_and_missing_openai_base_url() -> None:
    simulated = SimulatedProvider(0)
    registry = ProviderRegistry({"simulated": simulated})
    assert registry.for_spec(SMALL) is simulated
    with pytest.raises(ValueError, match="OPENAI_BASE_URL"):
        registry.for_spec(spec_for("ok"))
    await registry.aclose()


async def test_registry_unknown_kind() -> None:
    registry = ProviderRegistry({})
    with pytest.raises(ValueError, match="simulated"):
        registry.for_spec(SMALL)


async def test_registry_openai_default_and_per_spec_endpoints(local_server: LocalServer) -> None:
    registry = ProviderRegistry(
        {"simulated": SimulatedProvider(0)},
        openai_timeout_s=CLIENT_TIMEOUT_S,
        openai_base_url=local_server.base_url,
        openai_api_key="sk-default",
    )
    try:
        default = registry.for_spec(spec_for("ok"))
        assert isinstance(default, OpenAICompatibleProvider)
        assert (default.base_url, default.api_key) == (local_server.base_url, "sk-default")
        assert registry.for_spec(spec_for("other")) is default
        assert default.timeout_s == CLIENT_TIMEOUT_S

        own_url = local_server.base_url.replace("127.0.0.1", "localhost")
        own = registry.for_spec(spec_for("ok").model_copy(update={"base_url": own_url}))
        assert isinstance(own, OpenAICompatibleProvider)
        assert own is not default
        # The default key is never sent to another endpoint.
        assert (own.base_url, own.api_key) == (own_url, None)
        again = registry.for_spec(spec_for("x").model_copy(update={"base_url": own_url}))
        assert again is own
        keyed = registry.for_spec(
            spec_for("ok").model_copy(update={"base_url": own_url, "api_key": "sk-own"})
        )
        assert keyed is not own and isinstance(keyed, OpenAICompatibleProvider)
        assert keyed.api_key == "sk-own"

        completion = await default.complete(spec_for("ok"), MESSAGES, max_tokens=8)
        assert completion.text == "hello from the real server"
        assert local_server.state.auth[-1] == "Bearer sk-default"
        await keyed.complete(spec_for("ok"), MESSAGES, max_tokens=8)
        assert local_server.state.auth[-1] == "Bearer sk-own"
    finally:
        await registry.aclose()


async def test_registry_prefers_registered_openai_provider() -> None:
    scripted: ModelProvider = ScriptedProvider(lambda spec, messages, max_tokens: "scripted")
    registry = ProviderRegistry({"openai": scripted})
    assert registry.for_spec(spec_for("ok")) is scripted


async def test_registry_from_settings(local_server: LocalServer) -> None:
    settings = Settings(
        _env_file=None,
        openai_base_url=local_server.base_url,
        openai_api_key=None,
        simulated_latency_scale=0.25,
        model_timeout_s=CLIENT_TIMEOUT_S,
    )
    registry = ProviderRegistry.from_settings(settings)
    try:
        simulated = registry.for_spec(SMALL)
        assert isinstance(simulated, SimulatedProvider) and simulated.latency_scale == 0.25
        openai_provider = registry.for_spec(spec_for("ok"))
        assert isinstance(openai_provider, OpenAICompatibleProvider)
        assert openai_provider.base_url == local_server.base_url
        assert openai_provider.timeout_s == CLIENT_TIMEOUT_S
        assert (await openai_provider.complete(spec_for("ok"), MESSAGES, 8)).simulated is False
    finally:
        await registry.aclose()

    offline = ProviderRegistry.from_settings(Settings(_env_file=None, openai_base_url=None))
    with pytest.raises(ValueError, match="OPENAI_BASE_URL"):
        offline.for_spec(spec_for("ok"))


def test_attempt_timeout_fits_the_tier() -> None:
    """A tier's attempt timeout covers producing max_tokens at its speed, with a margin."""
    for spec in ModelCatalog.default().models:
        needed_s = spec.max_tokens / spec.tokens_per_second
        assert spec.attempt_timeout_s > needed_s * 1.2
    large = ModelCatalog.default().for_tier(Tier.LARGE)
    assert large.attempt_timeout_s > 4096 / 30  # the old single 60 s timeout could not fit it
    pinned = large.model_copy(update={"request_timeout_s": 42.0})
    assert pinned.attempt_timeout_s == 42.0
