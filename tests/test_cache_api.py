"""``GET /v1/cache/stats`` and ``DELETE /v1/cache/{level}`` over real HTTP, real Redis, SQLite.

The app runs under uvicorn with keys on (the shared stack of ``tests/stack.py``, without a
worker). The module has its own redis-server: the levels' byte counters are per Redis, and these
tests compare them with what they wrote.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import httpx
import pytest
from pydantic import BaseModel, Field, TypeAdapter, ValidationError
from sqlalchemy import Engine
from temporalio.testing import WorkflowEnvironment

from api.errors import validation_issues
from core.auth import Scope
from core.models import (
    AgentResult,
    CacheLevel,
    CacheReport,
    JobStatus,
    Stage,
    StageTiming,
)
from infra.cache import RedisCache
from infra.jobs import JobStore
from tests.helpers import free_port, redis_server
from tests.stack import Stack, StackSpec


@dataclass
class Api:
    url: str
    redis_url: str
    admin: str
    reader: str
    reader_id: str
    engine: Engine


@pytest.fixture(scope="module")
def own_redis() -> Iterator[str]:
    """The module's own redis-server (the levels' byte counters are per Redis)."""
    with redis_server() as url:
        yield url


@pytest.fixture(scope="module")
def stack_spec(own_redis: str, env: WorkflowEnvironment) -> StackSpec:
    """The API alone on the module's Redis, with a Temporal it can reach (the session's test
    server, named in the settings: the stack itself needs no client of it), so every route
    validates its input: a job route whose Temporal is unreachable answers 503 before it looks
    at the body. No worker: nothing valid is sent to a job route."""
    settings = {
        "redis_url": own_redis,
        "api_key_pepper": "cache-pepper",
        "temporal_address": env.client.service_client.config.target_host,
    }
    return StackSpec(settings=settings, worker=False, temporal=False)


@pytest.fixture(scope="module")
def api(stack: Stack) -> Api:
    admin = stack.key("root", Scope.ADMIN)
    reader = stack.key("reader", Scope.READ)
    return Api(
        stack.url,
        stack.settings.redis_url,
        admin.secret,
        reader.secret,
        reader.key_id,
        stack.engine,
    )


def call(api: Api, method: str, path: str, key: str | None, **params: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.request(
        method, f"{api.url}{path}", headers=headers, params=params or None, timeout=10
    )


async def fill(api: Api, level: CacheLevel, names: list[str]) -> None:
    cache = RedisCache(api.redis_url)
    try:
        for name in names:
            assert await cache.set_level(level, f"{level.prefix}{name}", {"n": name}, 600)
    finally:
        await cache.aclose()


def test_delete_needs_admin_and_names_the_bad_field(api: Api) -> None:
    assert call(api, "DELETE", "/v1/cache/tool", None).status_code == 401
    assert call(api, "DELETE", "/v1/cache/tool", api.reader).status_code == 403
    bad = call(api, "DELETE", "/v1/cache/nope", api.admin)
    assert bad.status_code == 422 and "level" in bad.text
    for params, field in (
        ({"prefix": "a*b"}, "prefix"),
        ({"prefix": "x" * 201}, "prefix"),
        ({"tool": "no_such_tool"}, "tool"),
        ({"tool": "calculator", "prefix": "calculator:"}, "tool"),
    ):
        r = call(api, "DELETE", "/v1/cache/tool", api.admin, **params)
        assert r.status_code == 422 and field in r.text, (params, r.text)
    wrong_level = call(api, "DELETE", "/v1/cache/response", api.admin, tool="calculator")
    assert wrong_level.status_code == 422 and "tool" in wrong_level.text


def test_delete_by_tool_and_by_prefix(api: Api) -> None:
    tag = uuid.uuid4().hex[:8]
    asyncio.run(
        fill(
            api,
            CacheLevel.TOOL,
            [f"calculator:1:{tag}a", f"calculator:2:{tag}b", f"http_get:1:{tag}c"],
        )
    )
    r = call(api, "DELETE", "/v1/cache/tool", api.admin, tool="calculator")
    assert r.status_code == 200 and r.json()["deleted"] >= 2
    asyncio.run(fill(api, CacheLevel.COMPONENT, [f"selection:{tag}", f"compression:{tag}"]))
    r = call(api, "DELETE", "/v1/cache/component", api.admin, prefix="selection:")
    assert r.status_code == 200 and r.json() == {
        "level": "component",
        "prefix": "selection:",
        "deleted": 1,
    }
    stats = call(api, "GET", "/v1/cache/stats", api.admin).json()
    by_level = {level["level"]: level for level in stats["levels"]}
    assert by_level["component"]["entries"] == 1
    assert by_level["tool"]["entries"] == 1  # http_get's entry stays


def record(engine: Engine, owner: str, report: CacheReport, minutes_ago: float) -> None:
    ended = datetime.now(UTC) - timedelta(minutes=minutes_ago)
    result = AgentResult(
        job_id=uuid.uuid4().hex,
        status=JobStatus.COMPLETED,
        answer="a",
        response_cache_hit=bool(report.hits),
        timings=[StageTiming(stage=Stage.RECORD, duration_ms=1.0)],
        cache=report,
    )
    store = JobStore(engine)
    store.record(result, revision=1, created_at=ended - timedelta(seconds=1), owner=owner)
    rec = store.get_job(result.job_id)
    assert rec is not None


def test_stats_count_levels_and_the_periods_savings_per_key(api: Api) -> None:
    tag = uuid.uuid4().hex[:8]
    asyncio.run(fill(api, CacheLevel.RESPONSE, [f"v2:{tag}"]))
    hit = CacheReport(hits={"response": 1}, saved_tokens=120, saved_cost_usd=0.002, saved_ms=900)
    miss = CacheReport(misses={"response": 1, "semantic": 1})
    record(api.engine, api.reader_id, hit, minutes_ago=5)
    record(api.engine, api.reader_id, miss, minutes_ago=10)
    record(api.engine, "someone-else", hit, minutes_ago=5)

    mine = call(api, "GET", "/v1/cache/stats", api.reader, period="hour")
    assert mine.status_code == 200, mine.text
    body = mine.json()
    assert body["jobs_considered"] == 2, "a read key sees its own jobs' savings only"
    response = next(level for level in body["levels"] if level["level"] == "response")
    assert response["period"]["hits"] == 1 and response["period"]["misses"] == 1
    assert response["period"]["hit_rate"] == 0.5
    assert response["period"]["saved_tokens"] == 120
    assert response["entries"] >= 1 and 0 < response["bytes"] <= response["max_bytes"]
    everyone = call(api, "GET", "/v1/cache/stats", api.admin, period="hour").json()
    assert everyone["jobs_considered"] == 3
    bad = call(api, "GET", "/v1/cache/stats", api.reader, period="month")
    assert bad.status_code == 422 and "period" in bad.text


async def test_stats_and_delete_with_redis_down_are_503_naming_no_host(stack: Stack) -> None:
    port = free_port()
    down = {"redis_url": f"redis://127.0.0.1:{port}/0", "auth_disabled": True}
    async with stack.own_api(timeout_s=10, **down) as (_, http):
        for method, path in (("GET", "/v1/cache/stats"), ("DELETE", "/v1/cache/tool")):
            r = await http.request(method, path)
            assert r.status_code == 503, r.text
            assert "127.0.0.1" not in r.text and str(port) not in r.text
        ready = (await http.get("/readyz")).json()
        assert ready["degraded"] == ["redis"] and "redis" not in ready["down"]


# ---------------------------------------------------------------------------- no echo in a 422


# Fixed, not random: it is in parametrized test ids, which must match across xdist workers.
MARKER = "<img src=x onerror=alert('a9f3c1d7e2b4')>"
"""A hostile value no 422 may contain (no ``/``, so it stays one path segment)."""


def _tool_call(**fields: Any) -> dict[str, Any]:
    return {"id": "c1", "name": "calculator", "parameters": {"expression": "1+1"}, **fields}


HOSTILE_422 = [
    # (method, path, query params, JSON body, the field the 422 must name)
    ("DELETE", "/v1/cache/tool", {"tool": MARKER}, None, "tool"),
    ("DELETE", "/v1/cache/tool", {"prefix": MARKER}, None, "prefix"),
    ("DELETE", "/v1/cache/tool", {"prefix": MARKER * 20}, None, "prefix"),
    ("DELETE", "/v1/cache/tool", {"tool": MARKER * 5}, None, "tool"),
    ("DELETE", f"/v1/cache/{MARKER}", {}, None, "level"),
    ("GET", "/v1/cache/stats", {"period": MARKER}, None, "period"),
    ("GET", "/v1/metrics/summary", {"period": MARKER}, None, "period"),
    ("GET", "/v1/jobs", {"limit": MARKER}, None, "limit"),
    ("GET", "/v1/jobs", {"status": MARKER}, None, "status"),
    ("GET", f"/v1/jobs/{MARKER}", {}, None, "job_id"),
    ("POST", "/v1/jobs", {}, {"query": "q", "model_tier": MARKER}, "model_tier"),
    ("POST", "/v1/jobs", {}, {"query": "q", "max_context_tokens": MARKER}, "max_context_tokens"),
    ("POST", "/v1/jobs", {}, {"query": "q", "tool_calls": [_tool_call(name=MARKER)]}, "name"),
    (
        "POST",
        "/v1/jobs",
        {},
        {"query": "q", "tool_calls": [_tool_call(id=MARKER), _tool_call(id=MARKER)]},
        "id",
    ),
    (
        "POST",
        "/v1/jobs",
        {},
        {
            "query": "q",
            "tool_calls": [
                _tool_call(name="python_docs_search", parameters={"query": "x", "top_k": MARKER})
            ],
        },
        "top_k",
    ),
    (
        "POST",
        "/v1/jobs",
        {},
        {"query": "q", "tool_calls": [_tool_call(parameters={"expression": [MARKER]})]},
        "expression",
    ),
    ("POST", "/v1/jobs/abc/approval", {}, {"approved": MARKER}, "approved"),
    (
        "POST",
        "/v1/jobs/abc/approval",
        {},
        {"approved": True, "calls": [{"call_id": MARKER, "action": MARKER}]},
        "action",
    ),
]


@pytest.mark.parametrize(
    ("method", "path", "params", "body", "field"),
    HOSTILE_422,
    ids=[f"{c[0]} {c[1][:16]} {c[4]}" for c in HOSTILE_422],
)
def test_no_422_echoes_the_clients_value(
    api: Api,
    method: str,
    path: str,
    params: dict[str, str],
    body: Any,
    field: str,
) -> None:
    r = httpx.request(
        method,
        f"{api.url}{path}",
        headers={"Authorization": f"Bearer {api.admin}"},
        params=params or None,
        json=body,
        timeout=30,
    )
    assert r.status_code == 422, r.text
    assert field in r.text, r.text  # the field is named
    assert MARKER not in r.text and "onerror" not in r.text, r.text  # its value never is


def test_invalid_json_is_a_422_without_the_text(api: Api) -> None:
    raw = '{"query": "' + MARKER + '", "metadata": {'
    r = httpx.post(
        f"{api.url}/v1/jobs",
        headers={
            "Authorization": f"Bearer {api.admin}",
            "Content-Type": "application/json",
        },
        content=raw.encode(),
        timeout=30,
    )
    assert r.status_code == 422 and "body" in r.text, r.text
    assert "onerror" not in r.text, r.text


class _A(BaseModel):
    kind: Literal["a"]


class _B(BaseModel):
    kind: Literal["b"]


@pytest.mark.parametrize(
    ("annotation", "value"),
    [
        (Annotated[_A | _B, Field(discriminator="kind")], {"kind": "zq"}),
        (Annotated[_A | _B, Field(discriminator="kind")], {"kind": MARKER}),
        (uuid.UUID, "zq"),
        (uuid.UUID, MARKER),
        (datetime, MARKER),
        (int, MARKER),
    ],
)
def test_validation_issues_cut_pydantics_own_quotes_of_the_value(
    annotation: Any, value: Any
) -> None:
    """Pydantic messages that quote the input (a discriminator's tag, a UUID's bad character)
    lose the quote; the issue still names the type of error."""
    with pytest.raises(ValidationError) as caught:
        TypeAdapter(annotation).validate_python(value)
    issues = validation_issues(caught.value.errors())
    text = json.dumps(issues)
    assert "zq" not in text and "onerror" not in text and "`z`" not in text, text
    assert "`<`" not in text, text
    assert all(issue["type"] and issue["msg"] for issue in issues)
