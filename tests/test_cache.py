"""RedisCache against a real redis-server; response cache keys."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import pytest
from pydantic import JsonValue
from redis.asyncio import Redis

from core.models import BlobRef, ContextItem, Importance, ResponseCacheKeyInput, ToolCall
from infra.cache import RedisCache, normalize_query, response_cache_key
from tests.helpers import free_port, redis_server_binary, wait_for_port


@pytest.fixture
async def cache(redis_url: str) -> AsyncIterator[RedisCache]:
    c = RedisCache(redis_url)
    yield c
    await c.aclose()


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


def _key() -> str:
    return f"agentflow:test:{uuid.uuid4().hex}"


@contextmanager
def _redis_on_port(port: int) -> Iterator[None]:
    proc = subprocess.Popen(
        [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", ""],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# --------------------------------------------------------------------------- basic operations


async def test_roundtrip_with_ttl(cache: RedisCache, raw: Redis) -> None:
    key = _key()
    assert await cache.set_json(key, {"answer": "Paris", "n": 3}, ttl_s=30)
    assert await cache.get_json(key) == {"answer": "Paris", "n": 3}
    ttl = await raw.ttl(key)
    assert 0 < ttl <= 30
    assert cache.stats.sets == 1
    assert cache.stats.hits == 1
    assert cache.stats.errors == 0


async def test_miss(cache: RedisCache) -> None:
    assert await cache.get_json(_key()) is None
    assert cache.stats.misses == 1
    assert cache.stats.hits == 0
    assert cache.last_error is None


async def test_nested_json(cache: RedisCache) -> None:
    key = _key()
    value: JsonValue = {
        "rows": [{"id": 1, "name": "café ☕", "tags": ["a", "b"]}, {"id": 2, "ok": None}],
        "total": 2.5,
        "flag": True,
    }
    assert await cache.set_json(key, value, ttl_s=60)
    assert await cache.get_json(key) == value
    scalar_key = _key()
    assert await cache.set_json(scalar_key, "just a string", ttl_s=60)
    assert await cache.get_json(scalar_key) == "just a string"


async def test_delete(cache: RedisCache) -> None:
    key = _key()
    await cache.set_json(key, [1, 2, 3], ttl_s=60)
    await cache.delete(key)
    assert await cache.get_json(key) is None
    await cache.delete(key)


async def test_undecodable_value_is_a_miss(cache: RedisCache, raw: Redis) -> None:
    key = _key()
    await raw.set(key, b"\xff not json", ex=60)
    assert await cache.get_json(key) is None
    assert cache.stats.misses == 1
    assert cache.stats.errors == 0


async def test_ttl_must_be_positive(cache: RedisCache) -> None:
    with pytest.raises(ValueError, match="ttl_s"):
        await cache.set_json(_key(), 1, ttl_s=0)


async def test_ping(cache: RedisCache) -> None:
    assert await cache.ping()


async def test_bounded_pool_handles_fan_out(redis_url: str) -> None:
    cache = RedisCache(redis_url, max_connections=4)
    try:
        key = _key()
        await cache.set_json(key, {"v": 1}, ttl_s=60)
        results = await asyncio.gather(*(cache.get_json(key) for _ in range(500)))
        assert results == [{"v": 1}] * 500
        assert cache.stats.errors == 0
    finally:
        await cache.aclose()


# --------------------------------------------------------------------------- Redis down


async def test_breaker_with_redis_down_answers_miss_fast() -> None:
    cache = RedisCache(f"redis://127.0.0.1:{free_port()}/0", breaker_cooldown_s=5.0)
    try:
        for _ in range(20):
            started = time.perf_counter()
            assert await cache.get_json("k") is None
            assert time.perf_counter() - started < 0.05
        started = time.perf_counter()
        assert await cache.set_json("k", {"a": 1}, ttl_s=10) is False
        await cache.delete("k")
        assert time.perf_counter() - started < 0.05

        assert cache.stats.errors == 1  # the first call tripped the breaker
        assert cache.stats.skipped == 21
        assert cache.stats.misses == 20
        assert cache.stats.hits == 0
        assert cache.stats.sets == 0
        assert cache.breaker_open
        assert cache.last_error is not None
        assert await cache.ping() is False
        assert cache.stats.errors == 2
    finally:
        await cache.aclose()


async def test_hung_redis_is_bounded_by_timeout() -> None:
    # A socket that completes TCP handshakes (backlog) but never answers.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        port = listener.getsockname()[1]
        cache = RedisCache(f"redis://127.0.0.1:{port}/0", timeout_s=0.1)
        try:
            started = time.perf_counter()
            assert await cache.get_json("k") is None
            assert time.perf_counter() - started < 1.0
            assert cache.stats.errors == 1
            assert "Timeout" in (cache.last_error or "")
        finally:
            await cache.aclose()


async def test_recovers_after_cooldown() -> None:
    port = free_port()
    cache = RedisCache(f"redis://127.0.0.1:{port}/0", breaker_cooldown_s=0.3)
    try:
        assert await cache.get_json("k") is None
        assert cache.stats.errors == 1
        with _redis_on_port(port):
            # Still inside the cooldown: skipped without trying.
            if cache.breaker_open:
                assert await cache.set_json("k", 1, ttl_s=10) is False
                assert cache.stats.errors == 1
            await asyncio.sleep(0.35)
            assert not cache.breaker_open
            assert await cache.set_json("k", {"back": True}, ttl_s=10)
            assert await cache.get_json("k") == {"back": True}

        # Down again: the pooled connection fails once, then the breaker skips.
        assert await cache.get_json("k") is None
        errors_after_second_outage = cache.stats.errors
        assert errors_after_second_outage == 2
        assert cache.breaker_open

        with _redis_on_port(port):
            await asyncio.sleep(0.35)
            assert await cache.set_json("k", "again", ttl_s=10)
            assert await cache.get_json("k") == "again"
            assert await cache.ping()
        assert cache.stats.errors == errors_after_second_outage
    finally:
        await cache.aclose()


# --------------------------------------------------------------------------- response keys


def _key_for(query: str, **kwargs: object) -> str:
    return response_cache_key(ResponseCacheKeyInput.model_validate({"query": query, **kwargs}))


def test_normalize_query() -> None:
    assert normalize_query("What is X?") == "what is x"
    assert normalize_query("  what is   x ") == "what is x"
    assert normalize_query("WHAT\tIS\nX?!.") == "what is x"
    assert (
        normalize_query("\uff57\uff48\uff41\uff54 is \uff38") == "what is x"
    )  # NFKC folds full-width letters
    assert normalize_query("Straße") == "strasse"  # casefold, not lower
    assert normalize_query("x = 1.5") == "x = 1.5"
    assert normalize_query("?") == ""
    # Never two questions as one: a factorial, a superscript, a pattern's case.
    assert normalize_query("Compute 10!") != normalize_query("Compute 10.")
    assert normalize_query("What is 2\u00b3?") != normalize_query("What is 23?")
    assert normalize_query("regex [A-Z]+") != normalize_query("regex [a-z]+")


def test_response_key_shape() -> None:
    key = _key_for("What is X?")
    assert key.startswith("agentflow:{cache:response}:v2:")
    assert len(key.rsplit(":", 1)[1]) == 64


def test_response_key_normalizes_query() -> None:
    assert _key_for("What is X?") == _key_for("  what is   x ")
    assert _key_for("What is X?") != _key_for("What is Y?")


def test_response_key_depends_on_context() -> None:
    base = [ContextItem(content="X is a letter.", source="doc")]
    assert _key_for("q", context=base) == _key_for("q", context=list(base))
    assert _key_for("q", context=base) != _key_for("q")
    assert _key_for("q", context=base) != _key_for(
        "q", context=[ContextItem(content="X is a number.", source="doc")]
    )
    assert _key_for("q", context=base) != _key_for(
        "q",
        context=[ContextItem(content="X is a letter.", source="doc", importance=Importance.HIGH)],
    )
    blob_a = ContextItem(blob=BlobRef(blob_id="a" * 64, size_bytes=10))
    blob_b = ContextItem(blob=BlobRef(blob_id="b" * 64, size_bytes=10))
    assert _key_for("q", context=[blob_a]) != _key_for("q", context=[blob_b])


def test_response_key_ignores_tool_call_ids() -> None:
    call_1 = ToolCall(id="call-1", name="calculator", parameters={"a": 1, "b": 2})
    call_2 = ToolCall(id="call-2", name="calculator", parameters={"b": 2, "a": 1})
    assert _key_for("q", tool_calls=[call_1]) == _key_for("q", tool_calls=[call_2])
    other = ToolCall(id="call-1", name="calculator", parameters={"a": 1, "b": 3})
    assert _key_for("q", tool_calls=[call_1]) != _key_for("q", tool_calls=[other])
    assert _key_for("q", tool_calls=[call_1]) != _key_for("q")


def test_response_key_depends_on_tier() -> None:
    assert _key_for("q", model_tier="small") != _key_for("q", model_tier="large")
    assert _key_for("q") == _key_for("q", model_tier="auto")
    assert _key_for("q", model_tier="auto") != _key_for("q", model_tier="small")


def test_response_key_depends_on_model_identity_and_approval() -> None:
    assert _key_for("q", model_identity="a" * 16) != _key_for("q", model_identity="b" * 16)
    assert _key_for("q", require_approval=True) != _key_for("q")
