"""Hostile input over real HTTP: every refusal is a 4xx naming the field, never a 500.

The API runs under uvicorn on a loopback port against a real ``temporal server start-dev`` (the
session's ``dev_env``; the shared stack of ``tests/stack.py``), a real Redis and a SQLite job
database, with a real admin API key. No
worker polls the API's task queue: every request here is refused before a workflow would start,
except the ones that prove valid input is accepted (those jobs are cancelled).

Requests are sent as raw bytes where the point is a value a JSON encoder would not produce:
``NaN``/``Infinity`` (Python's and FastAPI's parser accept them), ``"\\ud800"`` (an unpaired
surrogate as a JSON escape) and ``"\\u0000"``.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import sqlalchemy
from fastapi import FastAPI
from sqlalchemy.engine import make_url

from api.app import create_app
from api.routes.health import WRITE_CHECK_REUSE_S
from core.auth import Scope
from infra.db import make_engine
from infra.keys import KeyStore
from infra.migrations import create_tables
from tests.helpers import serve_asgi
from tests.stack import Stack, StackSpec

pytestmark = pytest.mark.devserver

MAX_REQUEST_BYTES = 64_000


def admin_key(database_url: str) -> str:
    """A real admin API key in the database at ``database_url``."""
    engine = make_engine(database_url)
    try:
        create_tables(engine)
        return KeyStore(engine).create("inputs-test", [Scope.ADMIN]).secret
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def stack_spec() -> StackSpec:
    """The API alone (no worker), with a small body limit and quotas out of the way."""
    return StackSpec(
        settings={
            "_env_file": None,
            "max_request_bytes": MAX_REQUEST_BYTES,
            "rate_limit_per_minute": 100_000,
            "daily_budget_usd": 1_000.0,
            # No worker answers progress queries here: reads of a running job (the cancel's
            # ownership check) fall back to the record at once instead of after 5 s.
            "progress_query_timeout_s": 0.2,
        },
        worker=False,
    )


@pytest.fixture(scope="module")
def admin(stack: Stack) -> str:
    return stack.key("inputs-test", Scope.ADMIN).secret


@pytest.fixture
async def http(stack: Stack, admin: str) -> AsyncIterator[httpx.AsyncClient]:
    async with stack.http(admin) as client:
        yield client


async def post_raw(http: httpx.AsyncClient, path: str, raw: str) -> httpx.Response:
    """POST ``raw`` exactly as written (escapes and all) as a JSON body."""
    return await http.post(path, content=raw.encode(), headers={"Content-Type": "application/json"})


def issues(response: httpx.Response) -> list[dict[str, Any]]:
    """The 422's issues, after checking the body is strict JSON (no NaN, valid UTF-8)."""
    assert response.status_code == 422, response.text
    body = json.loads(response.content.decode("utf-8"), parse_constant=_no_constants)
    detail = body["detail"]
    assert isinstance(detail, list) and detail, body
    for issue in detail:
        assert "input" not in issue  # the refused value is never echoed
    return detail


def _no_constants(name: str) -> Any:
    raise AssertionError(f"response body holds {name}, which is not JSON")


def assert_names(response: httpx.Response, loc: list[str | int]) -> None:
    """The 422 names exactly ``loc`` (possibly among other issues)."""
    locs = [issue["loc"] for issue in issues(response)]
    assert loc in locs, locs


async def cancel(http: httpx.AsyncClient, response: httpx.Response) -> None:
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    assert (await http.post(f"/v1/jobs/{job_id}/cancel")).status_code == 202


# ---------------------------------------------------------------------------- the four 500s


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize(
    ("template", "loc"),
    [
        ('{"query": "q", "max_context_tokens": %s}', ["body", "max_context_tokens"]),
        ('{"query": "q", "metadata": {"score": %s}}', ["body", "metadata", "score"]),
        (
            '{"query": "q", "metadata": {"a": [1, {"b": %s}]}}',
            ["body", "metadata", "a", 1, "b"],
        ),
        (
            '{"query": "q", "tool_calls": [{"id": "c1", "name": "calculator", '
            '"parameters": {"expression": "1+1", "x": %s}}]}',
            ["body", "tool_calls", 0, "parameters", "x"],
        ),
    ],
)
async def test_nan_and_infinities_are_422_naming_the_field(
    http: httpx.AsyncClient, template: str, loc: list[str | int], constant: str
) -> None:
    assert_names(await post_raw(http, "/v1/jobs", template % constant), loc)


SURROGATE = "\\ud800"
"""An unpaired high surrogate, as the JSON escape a client sends."""
LOW_SURROGATE = "\\udfff"
NUL = "\\u0000"


@pytest.mark.parametrize("bad", [SURROGATE, LOW_SURROGATE, NUL], ids=["high", "low", "nul"])
@pytest.mark.parametrize(
    ("template", "loc"),
    [
        ('{"query": "before %s after"}', ["body", "query"]),
        ('{"query": "q", "context": [{"content": "%s"}]}', ["body", "context", 0, "content"]),
        (
            '{"query": "q", "context": [{"content": "ok"}, {"content": "c", "source": "%s"}]}',
            ["body", "context", 1, "source"],
        ),
        ('{"query": "q", "metadata": {"note": "%s"}}', ["body", "metadata", "note"]),
        ('{"query": "q", "metadata": {"tags": ["a", "%s"]}}', ["body", "metadata", "tags", 1]),
        ('{"query": "q", "metadata": {"k%s": 1}}', ["body", "metadata"]),
        (
            '{"query": "q", "tool_calls": [{"id": "c%s", "name": "calculator"}]}',
            ["body", "tool_calls", 0, "id"],
        ),
        (
            '{"query": "q", "tool_calls": [{"id": "c1", "name": "calculator", '
            '"parameters": {"expression": "1+%s"}}]}',
            ["body", "tool_calls", 0, "parameters", "expression"],
        ),
    ],
)
async def test_unpaired_surrogates_and_nul_are_422_naming_the_field(
    http: httpx.AsyncClient, template: str, loc: list[str | int], bad: str
) -> None:
    # A NUL cannot be stored in PostgreSQL text and a lone surrogate cannot be encoded as
    # UTF-8: both are refused at the door, whatever the database.
    response = await post_raw(http, "/v1/jobs", template % bad)
    assert_names(response, loc)


async def test_surrogate_pairs_and_other_unicode_are_accepted(http: httpx.AsyncClient) -> None:
    raw = (
        '{"query": "smile \\ud83d\\ude00 caf\\u00e9 \\u4e2d", "metadata": '
        '{"emoji": "\\ud83d\\ude00"}, "context": [{"content": "\\ud83d\\ude00"}]}'
    )
    response = await post_raw(http, "/v1/jobs", raw)
    assert response.json()["query"] == "smile \U0001f600 caf\u00e9 \u4e2d"
    await cancel(http, response)


@pytest.mark.parametrize(
    "params",
    [
        {"offset": "99999999999999999999"},
        {"offset": "-1"},
        {"offset": "1e3"},
        {"limit": "0"},
        {"limit": "99999999999999999999"},
        {"limit": "NaN"},
    ],
)
async def test_pagination_is_bounded(http: httpx.AsyncClient, params: dict[str, str]) -> None:
    (name,) = params
    assert_names(await http.get("/v1/jobs", params=params), ["query", name])


async def test_pagination_within_bounds_answers(http: httpx.AsyncClient) -> None:
    response = await http.get("/v1/jobs", params={"offset": 1_000_000, "limit": 500})
    assert response.status_code == 200, response.text
    assert response.json()["data"] == []


# ---------------------------------------------------------------------------- strict types


@pytest.mark.parametrize("value", ['"yes"', '"true"', "0", "1", "null", '"false"'])
async def test_require_approval_takes_only_json_booleans(
    http: httpx.AsyncClient, value: str
) -> None:
    response = await post_raw(http, "/v1/jobs", f'{{"query": "q", "require_approval": {value}}}')
    assert_names(response, ["body", "require_approval"])


@pytest.mark.parametrize("value", ['"100"', "100.0", "true", "100.5"])
async def test_max_context_tokens_takes_only_json_integers(
    http: httpx.AsyncClient, value: str
) -> None:
    raw = f'{{"query": "q", "max_context_tokens": {value}}}'
    assert_names(await post_raw(http, "/v1/jobs", raw), ["body", "max_context_tokens"])


@pytest.mark.parametrize("value", ['"yes"', "0", "1"])
async def test_approval_decision_takes_only_json_booleans(
    http: httpx.AsyncClient, value: str
) -> None:
    raw = f'{{"approved": {value}}}'
    response = await post_raw(http, f"/v1/jobs/{uuid.uuid4().hex}/approval", raw)
    assert_names(response, ["body", "approved"])


async def test_strict_booleans_still_accept_true_and_false(http: httpx.AsyncClient) -> None:
    for value in ("true", "false"):
        raw = f'{{"query": "strict {value}", "require_approval": {value}}}'
        await cancel(http, await post_raw(http, "/v1/jobs", raw))


@pytest.mark.parametrize(
    ("tool", "parameters", "loc_tail"),
    [
        ("calculator", {"expression": "1+1", "precision": 3}, "parameters"),
        ("python_docs_search", {"query": "list", "top_k": 3, "verbose": True}, "parameters"),
        ("python_docs_search", {"query": "list", "top_k": "3"}, "parameters"),
        ("python_docs_search", {"query": "list", "top_k": True}, "parameters"),
    ],
)
async def test_unknown_or_mistyped_tool_parameters_are_refused(
    http: httpx.AsyncClient, tool: str, parameters: dict[str, Any], loc_tail: str
) -> None:
    body = {"query": "q", "tool_calls": [{"id": "c1", "name": tool, "parameters": parameters}]}
    response = await http.post("/v1/jobs", json=body)
    assert_names(response, ["body", "tool_calls", 0, loc_tail])


async def test_422_never_echoes_the_refused_value(http: httpx.AsyncClient) -> None:
    secret = "sk-live-" + uuid.uuid4().hex
    response = await http.post("/v1/jobs", json={"query": "q", "model_tier": secret})
    assert_names(response, ["body", "model_tier"])
    assert secret not in response.text


# ---------------------------------------------------------------------------- body limit


async def test_chunked_body_over_the_limit_is_413(http: httpx.AsyncClient) -> None:
    chunk = b" " * 8_192

    async def body() -> AsyncIterator[bytes]:
        yield b'{"query": "q", "metadata": {"pad": "'
        for _ in range(MAX_REQUEST_BYTES // len(chunk) + 2):
            yield chunk
        yield b'"}}'

    # An async iterator body has no Content-Length: httpx sends it chunked.
    response = await http.post(
        "/v1/jobs", content=body(), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413, response.text
    assert response.json()["detail"] == f"request body exceeds {MAX_REQUEST_BYTES} bytes"


async def test_chunked_body_under_the_limit_is_read(http: httpx.AsyncClient) -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b'{"query": "q", '
        yield b'"require_approval": "yes"}'

    response = await http.post(
        "/v1/jobs", content=body(), headers={"Content-Type": "application/json"}
    )
    assert_names(response, ["body", "require_approval"])


async def test_declared_length_over_the_limit_is_413(http: httpx.AsyncClient) -> None:
    response = await http.post("/v1/jobs", json={"query": "q", "pad": "x" * MAX_REQUEST_BYTES})
    assert response.status_code == 413, response.text


# ---------------------------------------------------------------------------- readiness


async def test_readyz_reports_a_database_whose_writes_are_locked(
    http: httpx.AsyncClient, stack: Stack
) -> None:
    async def database_check() -> tuple[int, str, float]:
        started = time.monotonic()
        response = await http.get("/readyz")
        return (
            response.status_code,
            response.json()["checks"]["database"],
            time.monotonic() - started,
        )

    assert (await database_check())[1] == "ok"
    # Another process holds the write lock (as a long migration or a stuck writer would).
    db_path = make_url(stack.settings.database_url).database
    assert db_path is not None
    holder = sqlite3.connect(db_path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        await asyncio.sleep(WRITE_CHECK_REUSE_S)  # the last check's answer is reused until then
        status, check, elapsed = await database_check()
        assert status == 503
        assert check.startswith("down"), check
        assert elapsed < 2.9  # the write probe gives up before the check's 3 s timeout
        # Reads still work: only writes are locked, and the list still answers.
        assert (await http.get("/v1/jobs")).status_code == 200
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    await asyncio.sleep(WRITE_CHECK_REUSE_S)
    assert (await database_check())[1] == "ok"


# ---------------------------------------------------------------------------- error bodies


def test_unexpected_errors_are_a_generic_500(stack: Stack) -> None:
    app = create_app(stack.settings)
    leak = "SELECT * FROM jobs WHERE secret = 'hunter2' -- db.internal:5432"

    def boom() -> None:
        raise RuntimeError(leak)

    assert isinstance(app, FastAPI)
    app.add_api_route("/boom", boom)
    with serve_asgi(app) as url:
        response = httpx.get(f"{url}/boom", timeout=10)
    assert response.status_code == 500
    assert response.json() == {"detail": "internal error"}


@pytest.mark.postgres
async def test_database_outage_bodies_carry_no_sql_parameters_or_host(
    stack: Stack, postgres_url: str
) -> None:
    """The job database refuses every connection: 503s that name nothing of it."""
    admin = sqlalchemy.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    name = f"outage_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    url = make_url(postgres_url).set(database=name, password="pw-" + uuid.uuid4().hex[:8])
    database_url = url.render_as_string(hide_password=False)
    key = admin_key(database_url)
    forbidden = {
        "SELECT",
        "INSERT",
        "UPDATE",
        "api_keys",
        "jobs.",
        "psycopg",
        "sqlalchemy",
        name,
        url.password or "",
        str(url.host),
        f":{url.port or 5432}",
        key,
    }
    try:
        async with stack.own_api(timeout_s=30, database_url=database_url) as (_, http):
            http.headers["Authorization"] = f"Bearer {key}"
            assert (await http.get("/v1/jobs")).status_code == 200
            with admin.connect() as conn:
                conn.exec_driver_sql(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")
                conn.exec_driver_sql(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    f"WHERE datname = '{name}'"
                )
            answers = [
                await http.get("/v1/jobs"),
                await http.get("/v1/jobs/unknown-job"),
                await http.get("/v1/tools"),
                await http.post("/v1/jobs", json={"query": "q"}),
                await http.post(
                    "/v1/jobs", json={"query": "q"}, headers={"Idempotency-Key": "k-out"}
                ),
                await http.post("/v1/jobs/unknown-job/cancel"),
            ]
            ready = await http.get("/readyz")
        for response in answers:
            assert response.status_code == 503, (response.request.url, response.text)
            assert response.headers.get("Retry-After")
        assert ready.status_code == 503 and "database" in ready.json()["down"]
        for response in [*answers, ready]:
            leaked = [word for word in forbidden if word and word in response.text]
            assert not leaked, (response.request.url, response.text)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")
            conn.exec_driver_sql(f"DROP DATABASE {name} WITH (FORCE)")
        admin.dispose()
