"""Providers stream their answers: ``complete(..., on_delta=...)``.

The OpenAI-compatible adapter streams from the same real local server as
``tests/test_providers.py`` (uvicorn on a loopback port, Server-Sent Events when the request says
``"stream": true``); a stream cut mid-way comes from a raw TCP server that writes part of an HTTP
response and then closes its socket, so the client sees exactly what a dropped connection looks
like on the wire. The simulated provider is timed with the monotonic clock, and its pieces are
checked against the non-streamed answer for the same input.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from core.catalog import ModelCatalog, ModelSpec
from core.errors import (
    ModelError,
    ModelOutputInvalidError,
    ModelRateLimitedError,
    ModelRequestRejectedError,
    ModelUnavailableError,
)
from core.models import ContextItem, Tier
from core.tokens import count_tokens, encode, encoding
from infra.providers import (
    ChatMessage,
    Completion,
    OpenAICompatibleProvider,
    ScriptedProvider,
    ScriptedStream,
    SimulatedProvider,
    build_messages,
    token_pieces,
)
from infra.providers.simulated import MIN_DELTA_INTERVAL_S
from tests.helpers import serve_asgi
from tests.test_providers import (
    CLIENT_TIMEOUT_S,
    DRIP_INTERVAL_S,
    ECHOED_KEY,
    FAILURES,
    HANG_S,
    MESSAGES,
    STREAMED_PIECES,
    STREAMED_USAGE,
    LocalServer,
    ServerState,
    make_app,
    spec_for,
)


class Pieces:
    """An ``on_delta`` that records each piece and when it arrived (monotonic seconds)."""

    def __init__(self) -> None:
        self.pieces: list[str] = []
        self.at: list[float] = []

    def __call__(self, piece: str) -> None:
        self.pieces.append(piece)
        self.at.append(time.monotonic())

    @property
    def text(self) -> str:
        return "".join(self.pieces)


@pytest.fixture(scope="module")
def local_server() -> Iterator[LocalServer]:
    state = ServerState()
    with serve_asgi(make_app(state), lifespan="off", timeout_graceful_shutdown=1) as url:
        yield LocalServer(base_url=f"{url}/v1", state=state)


@pytest.fixture
async def provider(local_server: LocalServer) -> AsyncIterator[OpenAICompatibleProvider]:
    provider = OpenAICompatibleProvider(local_server.base_url, None, CLIENT_TIMEOUT_S)
    try:
        yield provider
    finally:
        await provider.aclose()


# --------------------------------------------------------------------------- OpenAI-compatible


async def test_stream_pieces_concatenate_to_the_text_and_usage_comes_from_the_last_chunk(
    provider: OpenAICompatibleProvider, local_server: LocalServer
) -> None:
    before = local_server.state.counts["ok"]
    got = Pieces()
    completion = await provider.complete(spec_for("ok"), MESSAGES, max_tokens=64, on_delta=got)
    assert got.pieces == STREAMED_PIECES  # the empty role-only delta is not passed on
    assert completion == Completion(
        text="".join(STREAMED_PIECES),
        prompt_tokens=STREAMED_USAGE["prompt_tokens"],
        completion_tokens=STREAMED_USAGE["completion_tokens"],
        model="served-ok",
        simulated=False,
    )
    assert local_server.state.counts["ok"] == before + 1
    body = local_server.state.bodies[-1]
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert (body["max_tokens"], body["temperature"]) == (64, 0.2)


async def test_stream_without_usage_counts_with_the_tokenizer(
    provider: OpenAICompatibleProvider,
) -> None:
    got = Pieces()
    completion = await provider.complete(spec_for("no-usage"), MESSAGES, 8, on_delta=got)
    assert got.text == completion.text == "four words right here"
    assert completion.completion_tokens == count_tokens("four words right here")
    assert completion.prompt_tokens == sum(count_tokens(m.content) for m in MESSAGES)


async def test_a_piece_reaches_the_callback_while_the_stream_is_still_open(
    provider: OpenAICompatibleProvider, local_server: LocalServer
) -> None:
    """The server holds its second chunk until the client has seen the first one."""
    local_server.state.client_saw_first_piece.clear()
    got: list[str] = []

    def on_delta(piece: str) -> None:
        got.append(piece)
        local_server.state.client_saw_first_piece.set()

    spec = spec_for("wait-for-client", request_timeout_s=HANG_S * 2)
    completion = await provider.complete(spec, MESSAGES, 16, on_delta=on_delta)
    assert got == ["first", " then the rest"]
    assert completion.text == "first then the rest"


@pytest.mark.parametrize(("model", "error", "retry_after_s"), FAILURES)
async def test_stream_failures_map_like_the_plain_call(
    provider: OpenAICompatibleProvider,
    local_server: LocalServer,
    model: str,
    error: type[ModelError],
    retry_after_s: float | None,
) -> None:
    before = local_server.state.counts[model]
    got = Pieces()
    spec = spec_for(model, request_timeout_s=CLIENT_TIMEOUT_S)
    with pytest.raises(ModelError) as caught:
        await provider.complete(spec, MESSAGES, max_tokens=16, on_delta=got)
    assert type(caught.value) is error
    assert caught.value.retryable is error.retryable
    assert caught.value.retry_after_s == retry_after_s
    assert local_server.state.bodies[-1]["stream"] is True
    await asyncio.sleep(0.05)
    assert local_server.state.counts[model] == before + 1  # one request, no SDK retry
    assert got.pieces == []


async def test_a_rate_limit_before_the_stream_keeps_its_retry_after(
    provider: OpenAICompatibleProvider,
) -> None:
    with pytest.raises(ModelRateLimitedError) as caught:
        await provider.complete(spec_for("rate-limited"), MESSAGES, 8, on_delta=Pieces())
    assert caught.value.retryable and caught.value.retry_after_s == 7.0


async def test_a_whitespace_only_stream_is_invalid_output(
    provider: OpenAICompatibleProvider,
) -> None:
    got = Pieces()
    with pytest.raises(ModelOutputInvalidError, match="no content"):
        await provider.complete(spec_for("whitespace"), MESSAGES, 8, on_delta=got)
    assert got.text == " \n"  # what arrived was passed on; the call still fails


async def test_a_chunk_that_is_not_json_is_invalid_output(
    provider: OpenAICompatibleProvider,
) -> None:
    got = Pieces()
    with pytest.raises(ModelOutputInvalidError, match="not JSON"):
        await provider.complete(spec_for("not-json-chunk"), MESSAGES, 8, on_delta=got)
    assert got.pieces == ["partial"]


async def test_a_slow_stream_is_bounded_by_the_attempt_timeout(
    provider: OpenAICompatibleProvider,
) -> None:
    """Each chunk comes well within the read timeout; the whole call must still stop in time."""
    got = Pieces()
    spec = spec_for("drip", request_timeout_s=CLIENT_TIMEOUT_S)
    assert DRIP_INTERVAL_S < CLIENT_TIMEOUT_S < HANG_S
    started = time.monotonic()
    with pytest.raises(ModelUnavailableError, match="attempt timeout") as caught:
        await provider.complete(spec, MESSAGES, 8, on_delta=got)
    elapsed = time.monotonic() - started
    assert caught.value.retryable
    assert got.pieces  # it was streaming when the timeout struck
    assert CLIENT_TIMEOUT_S <= elapsed < HANG_S  # the server would have streamed for HANG_S


async def test_keys_echoed_by_the_endpoint_are_redacted(local_server: LocalServer) -> None:
    provider = OpenAICompatibleProvider(local_server.base_url, ECHOED_KEY, CLIENT_TIMEOUT_S)
    try:
        with pytest.raises(ModelRequestRejectedError) as rejected:
            await provider.complete(spec_for("unauthorized-echo"), MESSAGES, 8, on_delta=Pieces())
        got = Pieces()
        with pytest.raises(ModelUnavailableError) as in_stream:
            await provider.complete(spec_for("error-in-stream-echo"), MESSAGES, 8, on_delta=got)
    finally:
        await provider.aclose()
    assert local_server.state.auth[-1] == f"Bearer {ECHOED_KEY}"
    assert got.pieces == ["partial"]
    for caught in (rejected, in_stream):
        error = caught.value
        assert ECHOED_KEY not in error.message and ECHOED_KEY[:16] not in error.message
        assert "[redacted]" in error.message
        chain: BaseException | None = error
        while chain is not None:
            assert ECHOED_KEY not in str(chain) and ECHOED_KEY not in repr(chain.args)
            chain = chain.__cause__ or chain.__context__
    assert "401" in rejected.value.message
    assert "overloaded" in in_stream.value.message


async def test_an_error_in_on_delta_propagates_unchanged(
    provider: OpenAICompatibleProvider,
) -> None:
    class Stop(Exception):
        pass

    def on_delta(piece: str) -> None:
        raise Stop(piece)

    with pytest.raises(Stop, match="hello"):
        await provider.complete(spec_for("ok"), MESSAGES, 8, on_delta=on_delta)
    # The connection was released: the provider still works.
    assert (await provider.complete(spec_for("ok"), MESSAGES, 8, on_delta=Pieces())).text


# --------------------------------------------------------------------------- a cut connection


def _sse_chunk(content: str) -> bytes:
    data = {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "raw",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}],
    }
    return f"data: {json.dumps(data)}\n\n".encode()


@asynccontextmanager
async def cut_stream_server(parts: list[bytes], *, chunked: bool) -> AsyncIterator[str]:
    """A raw HTTP server that streams ``parts`` of an SSE body, then closes the socket.

    With ``chunked`` the body uses chunked transfer encoding and the closing chunk never comes
    (the client sees a broken body); without, the response has no length and ends at the close
    (the body ends cleanly, but before any ``finish_reason``).
    """

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        await reader.readexactly(length)
        framing = b"Transfer-Encoding: chunked" if chunked else b"Connection: close"
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n" + framing + b"\r\n\r\n"
        )
        for part in parts:
            writer.write(b"%x\r\n%s\r\n" % (len(part), part) if chunked else part)
            await writer.drain()
            await asyncio.sleep(0.01)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    ("chunked", "tail"),
    [
        (True, b""),  # the connection drops between events
        (True, b'data: {"id": "c", "object": "chat.completion.ch'),  # ... inside an event
        (False, b""),  # an unchunked body that simply stops
    ],
    ids=["chunked-between-events", "chunked-inside-an-event", "unchunked"],
)
async def test_a_stream_cut_mid_way_is_unavailable(chunked: bool, tail: bytes) -> None:
    parts = [_sse_chunk("one"), _sse_chunk(" two")] + ([tail] if tail else [])
    got = Pieces()
    async with cut_stream_server(parts, chunked=chunked) as url:
        provider = OpenAICompatibleProvider(url, None, CLIENT_TIMEOUT_S * 4)
        try:
            with pytest.raises(ModelUnavailableError) as caught:
                await provider.complete(spec_for("cut"), MESSAGES, 8, on_delta=got)
        finally:
            await provider.aclose()
    assert caught.value.retryable
    assert got.pieces == ["one", " two"]


# --------------------------------------------------------------------------- simulated

CONTEXT = [
    ContextItem(
        content="价格在第三季度上涨了 12%🚀🎉, 团队很高兴 👍🏽. Ünïcödé naïve café 😀 — done.",
        source="报告-q3",
    ),
    ContextItem(
        content="Les résultats: 🇵🇹 Lisboa, 東京, and Zürich all grew. More text.",
    ),
    ContextItem(content=" ".join(f"Line {i} has some words in it." for i in range(60))),
]
QUESTION = "Wie hoch war der Umsatz? 收入是多少 🤔?"


def simulated_spec(tokens_per_second: float) -> ModelSpec:
    return spec_for("sim", tier=Tier.SMALL, tokens_per_second=tokens_per_second).model_copy(
        update={"provider": "simulated"}
    )


def test_the_test_text_has_characters_that_span_tokens() -> None:
    """Precondition for the next tests: some tokens of the answer are not whole characters."""
    enc = encoding()
    text = "".join(m.content for m in build_messages(QUESTION, CONTEXT, "final"))
    partial = 0
    for token in encode(text):
        try:
            enc.decode_single_token_bytes(token).decode("utf-8")
        except UnicodeDecodeError:
            partial += 1
    assert partial > 0


def test_token_pieces_are_whole_characters_that_add_up() -> None:
    text = QUESTION + " " + CONTEXT[0].content + CONTEXT[1].content
    pieces = token_pieces(text)
    assert "".join(p for p, _ in pieces) == text
    assert sum(n for _, n in pieces) == count_tokens(text)
    assert all(p and n >= 1 for p, n in pieces)
    assert len(pieces) > count_tokens(text) / 2  # cut at token boundaries, not returned whole
    assert any(n > 1 for _, n in pieces)  # merged tokens that split a character
    assert all("\ufffd" not in p for p, _ in pieces)
    assert token_pieces("") == []


@pytest.mark.parametrize("max_tokens", [5, 60, 400])
async def test_simulated_pieces_concatenate_to_the_plain_answer(max_tokens: int) -> None:
    provider = SimulatedProvider(0)
    messages = build_messages(QUESTION, CONTEXT, "final")
    plain = await provider.complete(LARGE, messages, max_tokens)
    got = Pieces()
    streamed = await provider.complete(LARGE, messages, max_tokens, on_delta=got)
    assert streamed == plain
    assert got.text == plain.text
    assert len(got.pieces) > 1
    for piece in got.pieces:
        assert piece and "\ufffd" not in piece
        piece.encode("utf-8")  # no lone surrogates: every piece is whole characters
    # At latency 0 every piece is one token, or the few tokens that make up one character.
    assert len(got.pieces) == len(token_pieces(plain.text))


async def test_simulated_first_piece_comes_long_before_the_last() -> None:
    spec = simulated_spec(tokens_per_second=400)
    provider = SimulatedProvider(1.0)
    messages = build_messages(QUESTION, CONTEXT, "final")
    got = Pieces()
    started = time.monotonic()
    completion = await provider.complete(spec, messages, 200, on_delta=got)
    total_s = time.monotonic() - started
    assert completion.completion_tokens > 150  # a long answer: most of the time is generation
    first_piece_s = got.at[0] - started
    last_piece_s = got.at[-1] - started
    assert first_piece_s < total_s / 2
    assert last_piece_s > total_s / 2
    assert total_s >= 0.95 * provider.latency_s(spec, completion.completion_tokens)
    assert got.text == completion.text


@pytest.mark.parametrize("tokens_per_second", [30.0, 3000.0])
async def test_simulated_groups_tokens_so_pieces_are_not_too_frequent(
    tokens_per_second: float,
) -> None:
    spec = simulated_spec(tokens_per_second)
    provider = SimulatedProvider(1.0)
    max_tokens = 30 if tokens_per_second < 100 else 400
    got = Pieces()
    completion = await provider.complete(
        spec, build_messages("q", CONTEXT, "final"), max_tokens, on_delta=got
    )
    generation_s = completion.completion_tokens / tokens_per_second
    assert len(got.pieces) <= math.ceil(generation_s / MIN_DELTA_INTERVAL_S) + 1
    if tokens_per_second < 100:  # 33 ms a token: one token per piece
        assert len(got.pieces) == len(token_pieces(completion.text))
    assert got.text == completion.text


# --------------------------------------------------------------------------- scripted

SMALL = ModelCatalog.default().for_tier(Tier.SMALL)
LARGE = ModelCatalog.default().for_tier(Tier.LARGE)


async def test_scripted_streams_its_text_in_a_few_pieces() -> None:
    text = "A scripted answer 🚀 with several words in it, long enough to cut."
    provider = ScriptedProvider(lambda spec, messages, max_tokens: text)
    got = Pieces()
    completion = await provider.complete(SMALL, MESSAGES, 64, on_delta=got)
    assert completion.text == got.text == text
    assert 1 < len(got.pieces) <= 3
    assert provider.calls[-1].streamed is True
    plain = await provider.complete(SMALL, MESSAGES, 64)
    assert plain == completion and provider.calls[-1].streamed is False


async def test_scripted_stream_can_break_after_its_pieces() -> None:
    def script(spec: ModelSpec, messages: list[ChatMessage], max_tokens: int) -> Any:
        return ScriptedStream(["one", "", " two"], ModelUnavailableError("cut"))

    got = Pieces()
    with pytest.raises(ModelUnavailableError, match="cut"):
        await ScriptedProvider(script).complete(SMALL, MESSAGES, 8, on_delta=got)
    assert got.pieces == ["one", " two"]
    done = await ScriptedProvider(lambda *_: ScriptedStream(["a", "b"])).complete(
        SMALL, MESSAGES, 8
    )
    assert done.text == "ab"
