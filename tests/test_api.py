"""The REST API over real HTTP, against a real ``temporal server start-dev`` and a real worker.

The module's stack (``tests/stack.py``) runs on the session's dev server: its client, every
worker and the API share one ``AgentflowPlugin`` setup on the API's SQLite job database, so
large payloads stored by one side are read by the others. The test that stops its server starts
one of its own.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment

from core.catalog import ModelSpec
from core.ids import job_id_for
from core.settings import Settings
from infra.providers import ChatMessage, ProviderRegistry, ScriptedProvider
from tests.helpers import find_binary, free_port
from tests.stack import Stack, StackSpec, serve_api
from workflows.agent import AgentWorkflow

pytestmark = pytest.mark.devserver

TERMINAL = {"COMPLETED", "FAILED", "CANCELED", "REJECTED", "EXPIRED"}
ORDER = {"RUNNING": 0, **dict.fromkeys(TERMINAL, 1)}
"""Status rank of a job that needs no approval: it only moves forwards, RUNNING to terminal."""


# ---------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def stack_spec() -> StackSpec:
    """The module's API and worker on the session's dev server.

    Job behaviour is tested as the anonymous admin (tests/test_auth.py covers API keys), with
    search attributes off, as on a server without the ``Agent*`` attributes.
    """
    return StackSpec(
        settings={
            "max_request_bytes": 256_000,
            "max_job_input_bytes": 200_000,
            "large_payload_threshold_bytes": 8 * 1024,
            "auth_disabled": True,
            "search_attributes": "off",
        }
    )


@pytest.fixture(scope="module")
def api_settings(stack: Stack) -> Settings:
    """The API's settings (the worker's too)."""
    return stack.settings


@pytest.fixture(scope="module")
def temporal(stack: Stack) -> Client:
    """A client of the dev server with the worker's plugin (to look behind the API's back)."""
    return stack.temporal


class HeldModel:
    """A model whose answers wait until the test releases them: keeps a job RUNNING on demand.

    Jobs pinned to the small tier make exactly one model call (no draft), the final answer.
    """

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.called = asyncio.Event()

    async def _answer(self, spec: ModelSpec, messages: list[ChatMessage], max_tokens: int) -> str:
        self.called.set()
        await self.release.wait()
        return f"[simulated {spec.tier.value} model {spec.model_id}] held answer"

    def providers(self) -> ProviderRegistry:
        return ProviderRegistry({"simulated": ScriptedProvider(self._answer)})


# ---------------------------------------------------------------------------------- helpers


async def wait_terminal(
    http: httpx.AsyncClient, job_id: str, timeout_s: float = 30
) -> dict[str, Any]:
    """The job once it ended (GET shows a terminal status)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        r = await http.get(f"/v1/jobs/{job_id}")
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        if body["status"] in TERMINAL:
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


async def job_count(http: httpx.AsyncClient) -> int:
    count: int = (await http.get("/v1/jobs", params={"limit": 500})).json()["count"]
    return count


async def closed_runs(temporal: Client, workflow_id: str, timeout_s: float = 30) -> list[Any]:
    """Every run of ``workflow_id`` in visibility, once the latest shows as closed there."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        runs = [wf async for wf in temporal.list_workflows(f"WorkflowId = '{workflow_id}'")]
        if runs and all(r.status != WorkflowExecutionStatus.RUNNING for r in runs):
            return runs
        await asyncio.sleep(0.2)
    raise AssertionError(f"{workflow_id} never showed as closed in visibility")


def q(text: str) -> str:
    return f"{text} ({uuid.uuid4().hex[:6]})"


ANONYMOUS = "anonymous (anonymous)"
"""The reviewer of every decision while authentication is off (the key's identity)."""


def approve(comment: str, approved: bool = True) -> dict[str, Any]:
    return {"approved": approved, "comment": comment}


# ---------------------------------------------------------------------------------- jobs


async def test_submit_runs_to_completion(http: httpx.AsyncClient) -> None:
    body = {
        "query": q("How many orders per country?"),
        # Above small, so the job has a draft and a final answer (two model calls).
        "model_tier": "medium",
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
    assert "Idempotent-Replayed" not in created.headers

    done = await wait_terminal(http, job["job_id"])
    assert done["status"] == "COMPLETED", done
    result = done["result"]
    assert result["answer"].startswith("[simulated") and result["simulated"] is True
    orders = result["tool_results"][0]
    assert orders["status"] == "success" and orders["value"]["row_count"] > 0
    assert done["usage"]["cost_usd"] > 0 and done["usage"]["calls"] == 2
    assert done["tier"] == "medium"

    listed = (await http.get("/v1/jobs", params={"status": "COMPLETED"})).json()
    assert job["job_id"] in [j["job_id"] for j in listed["data"]]


async def test_get_right_after_post_never_404s_and_shows_the_result_once_done(
    http: httpx.AsyncClient, temporal: Client
) -> None:
    """The job is readable from the moment POST answers (before its first workflow task wrote
    anything), its status only moves forwards, and as soon as its workflow has completed GET
    shows COMPLETED with the result: no grace period."""

    async def submit_and_follow() -> None:
        created = await http.post("/v1/jobs", json={"query": q("What is a Python generator?")})
        assert created.status_code == 202, created.text
        job_id = created.json()["job_id"]
        seen: list[str] = []
        deadline = time.monotonic() + 30
        while not seen or seen[-1] not in TERMINAL:
            assert time.monotonic() < deadline, f"job {job_id} did not finish: {seen}"
            r = await http.get(f"/v1/jobs/{job_id}")
            assert r.status_code == 200, (seen, r.text)
            seen.append(r.json()["status"])
        assert seen[0] in ("RUNNING", "COMPLETED"), seen
        assert [ORDER[s] for s in seen] == sorted(ORDER[s] for s in seen), seen
        assert seen[-1] == "COMPLETED", seen

    await asyncio.gather(*(submit_and_follow() for _ in range(6)))

    created = (await http.post("/v1/jobs", json={"query": q("Explain list slicing")})).json()
    handle = temporal.get_workflow_handle_for(AgentWorkflow.run, created["workflow_id"])
    result = await asyncio.wait_for(handle.result(), timeout=30)
    done = (await http.get(f"/v1/jobs/{created['job_id']}")).json()
    assert done["status"] == "COMPLETED", done
    assert done["result"]["answer"] == result.answer and done["completed_at"] is not None


async def test_a_terminal_status_always_comes_with_its_result(http: httpx.AsyncClient) -> None:
    """Whenever GET says a job ended, it also shows how: result and completed_at are set (even
    when the record read was not yet terminal and the workflow's query says it ended)."""

    async def first_terminal_view() -> dict[str, Any]:
        created = await http.post("/v1/jobs", json={"query": q("What does zip() do?")})
        job_id = created.json()["job_id"]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            body: dict[str, Any] = (await http.get(f"/v1/jobs/{job_id}")).json()
            if body["status"] in TERMINAL:
                return body
        raise AssertionError(f"job {job_id} did not finish")

    views = await asyncio.gather(*(first_terminal_view() for _ in range(8)))
    bare = [v["job_id"] for v in views if v["result"] is None or v["completed_at"] is None]
    assert not bare, f"terminal status without its result for {bare}"


async def test_idempotency_key_returns_the_same_job(
    http: httpx.AsyncClient, temporal: Client
) -> None:
    key = uuid.uuid4().hex
    body = {"query": q("What is a lambda in Python?")}
    first = await http.post("/v1/jobs", json=body, headers={"Idempotency-Key": key})
    second = await http.post("/v1/jobs", json=body, headers={"Idempotency-Key": key})
    assert first.status_code == second.status_code == 202, (first.text, second.text)
    job_id = first.json()["job_id"]
    assert job_id == second.json()["job_id"] == job_id_for(key)
    assert "Idempotent-Replayed" not in first.headers
    assert second.headers.get("Idempotent-Replayed") == "true"

    other = await http.post(
        "/v1/jobs", json={"query": q("something else")}, headers={"Idempotency-Key": key}
    )
    assert other.status_code == 409 and job_id in other.json()["detail"]

    done = await wait_terminal(http, job_id)
    assert done["status"] == "COMPLETED"
    runs = await closed_runs(temporal, f"agent-{job_id}")
    assert len(runs) == 1, "the repeat and the conflicting body started nothing"

    # The key still names the same job after it ended (REJECT_DUPLICATE: never a second run).
    later = await http.post("/v1/jobs", json=body, headers={"Idempotency-Key": key})
    assert later.status_code == 202, later.text
    assert later.json()["job_id"] == job_id and later.headers.get("Idempotent-Replayed") == "true"
    assert later.json()["status"] == "COMPLETED"
    assert later.json()["result"]["answer"] == done["result"]["answer"]
    again = await http.post(
        "/v1/jobs", json={"query": q("another one")}, headers={"Idempotency-Key": key}
    )
    assert again.status_code == 409 and job_id in again.json()["detail"]
    assert len(await closed_runs(temporal, f"agent-{job_id}")) == 1


async def test_concurrent_submissions_with_one_key_start_one_workflow(
    http: httpx.AsyncClient, temporal: Client
) -> None:
    key = uuid.uuid4().hex
    body = {"query": q("How do Python decorators work?")}
    answers = await asyncio.gather(
        *(http.post("/v1/jobs", json=body, headers={"Idempotency-Key": key}) for _ in range(4))
    )
    assert [r.status_code for r in answers] == [202] * 4, [r.text for r in answers]
    assert {r.json()["job_id"] for r in answers} == {job_id_for(key)}
    replayed = [r.headers.get("Idempotent-Replayed") for r in answers]
    assert replayed.count("true") == 3 and replayed.count(None) == 1, replayed

    job_id = job_id_for(key)
    assert (await wait_terminal(http, job_id))["status"] == "COMPLETED"
    assert len(await closed_runs(temporal, f"agent-{job_id}")) == 1


async def test_cancel_via_api(http: httpx.AsyncClient) -> None:
    job_id = (
        await http.post("/v1/jobs", json={"query": q("Wait"), "require_approval": True})
    ).json()["job_id"]
    await wait_status(http, job_id, "AWAITING_APPROVAL")
    assert (await http.post(f"/v1/jobs/{job_id}/cancel")).status_code == 202
    assert (await wait_terminal(http, job_id))["status"] == "CANCELED"
    assert (await http.post(f"/v1/jobs/{job_id}/cancel")).status_code == 409


# ---------------------------------------------------------------------------------- approvals


async def test_approval_flow_and_409(http: httpx.AsyncClient) -> None:
    created = (
        await http.post("/v1/jobs", json={"query": q("Rotate keys"), "require_approval": True})
    ).json()
    job_id = created["job_id"]
    waiting = await wait_status(http, job_id, "AWAITING_APPROVAL")
    assert waiting["progress"]["stage"] == "awaiting_approval"
    listed = (await http.get("/v1/jobs", params={"status": "AWAITING_APPROVAL"})).json()
    assert job_id in [j["job_id"] for j in listed["data"]]

    ok = await http.post(f"/v1/jobs/{job_id}/approval", json=approve("ana"))
    assert ok.status_code == 200, ok.text
    assert ok.json() == {
        "job_id": job_id,
        "approved": True,
        "reviewer": ANONYMOUS,
        "status": "RUNNING",
        "calls": [],
    }
    done = await wait_terminal(http, job_id)
    assert done["status"] == "COMPLETED"
    assert done["result"]["approval"]["comment"] == "ana"

    # The same body again is the same update (same id): its outcome, even after the job ended.
    same = await http.post(f"/v1/jobs/{job_id}/approval", json=approve("ana"))
    assert same.status_code == 200 and same.json() == ok.json(), same.text
    again = await http.post(f"/v1/jobs/{job_id}/approval", json=approve("x"))
    assert again.status_code == 409 and "COMPLETED" in again.json()["detail"], again.text


async def test_reject_via_api(http: httpx.AsyncClient) -> None:
    job_id = (
        await http.post("/v1/jobs", json={"query": q("Drop it"), "require_approval": True})
    ).json()["job_id"]
    await wait_status(http, job_id, "AWAITING_APPROVAL")
    r = await http.post(f"/v1/jobs/{job_id}/approval", json=approve("bo", approved=False))
    assert r.status_code == 200, r.text
    assert r.json() == {
        "job_id": job_id,
        "approved": False,
        "reviewer": ANONYMOUS,
        "status": "REJECTED",
        "calls": [],
    }
    done = await wait_terminal(http, job_id)
    assert done["status"] == "REJECTED" and done["result"]["approval"]["comment"] == "bo"


async def test_concurrent_decisions_exactly_one_wins(http: httpx.AsyncClient) -> None:
    job_id = (
        await http.post("/v1/jobs", json={"query": q("Deploy v2"), "require_approval": True})
    ).json()["job_id"]
    await wait_status(http, job_id, "AWAITING_APPROVAL")

    reviewers = [f"reviewer-{i}" for i in range(6)]
    answers = await asyncio.gather(
        *(http.post(f"/v1/jobs/{job_id}/approval", json=approve(r)) for r in reviewers)
    )
    codes = sorted(a.status_code for a in answers)
    assert codes == [200] + [409] * 5, [a.text for a in answers]
    winner = next(r for r, a in zip(reviewers, answers, strict=True) if a.status_code == 200)
    won = next(a for a in answers if a.status_code == 200).json()
    assert won == {
        "job_id": job_id,
        "approved": True,
        "reviewer": ANONYMOUS,
        "status": "RUNNING",
        "calls": [],
    }
    for a in answers:
        if a.status_code == 409:
            assert job_id in a.json()["detail"], a.text

    done = await wait_terminal(http, job_id)
    assert done["status"] == "COMPLETED"
    assert done["result"]["approval"]["comment"] == winner


async def test_decision_for_a_job_not_at_its_gate_is_409(stack: Stack) -> None:
    """A job that needs no approval refuses a decision while it runs and after it completed."""
    held = HeldModel()
    async with (
        stack.own_api() as (settings, c),
        stack.worker(settings, held.providers()),
    ):
        body = {"query": q("Summarise the release notes"), "model_tier": "small"}
        job_id = (await c.post("/v1/jobs", json=body)).json()["job_id"]
        await asyncio.wait_for(held.called.wait(), timeout=30)
        assert (await c.get(f"/v1/jobs/{job_id}")).json()["status"] == "RUNNING"

        running = await c.post(f"/v1/jobs/{job_id}/approval", json=approve("early"))
        assert running.status_code == 409, running.text
        assert "RUNNING" in running.json()["detail"] and job_id in running.json()["detail"]

        held.release.set()
        done = await wait_terminal(c, job_id)
        assert done["status"] == "COMPLETED" and done["result"]["approval"] is None

        ended = await c.post(f"/v1/jobs/{job_id}/approval", json=approve("late"))
        assert ended.status_code == 409, ended.text
        assert "COMPLETED" in ended.json()["detail"] and job_id in ended.json()["detail"]


async def test_decision_sent_while_the_worker_is_down_applies_when_one_is_back(
    stack: Stack, temporal: Client
) -> None:
    async with stack.own_api() as (settings, c):
        async with stack.worker(settings):
            # Small: no draft runs beside the wait, so nothing but the decision is pending.
            body = {
                "query": q("Restart the cluster"),
                "require_approval": True,
                "model_tier": "small",
            }
            job_id = (await c.post("/v1/jobs", json=body)).json()["job_id"]
            await wait_status(c, job_id, "AWAITING_APPROVAL")
        # The worker is stopped: the decision waits for one instead of failing.
        desc = await temporal.get_workflow_handle(f"agent-{job_id}").describe()
        assert not desc.raw_description.HasField("pending_workflow_task")
        decision = asyncio.create_task(
            c.post(f"/v1/jobs/{job_id}/approval", json=approve("night-shift"))
        )
        await wait_for_pending_workflow_task(temporal, f"agent-{job_id}")
        assert not decision.done(), "the decision was answered with no worker polling"
        async with stack.worker(settings):
            answer = await asyncio.wait_for(decision, timeout=settings.decision_wait_s + 10)
            assert answer.status_code == 200, answer.text
            assert answer.json() == {
                "job_id": job_id,
                "approved": True,
                "reviewer": ANONYMOUS,
                "status": "RUNNING",
                "calls": [],
            }
            done = await wait_terminal(c, job_id)
            assert done["status"] == "COMPLETED"
            assert done["result"]["approval"]["comment"] == "night-shift"


async def test_decision_past_its_wait_is_503_then_applies_and_repeats_its_outcome(
    stack: Stack,
) -> None:
    """No worker within decision_wait_s: 503 with Retry-After; the decision still applies when
    a worker comes back, and the same body again returns its outcome (same update id)."""
    held = HeldModel()
    async with stack.own_api(decision_wait_s=1.0) as (settings, c):
        async with stack.worker(settings):
            body = {"query": q("Rotate the certs"), "require_approval": True, "model_tier": "small"}
            job_id = (await c.post("/v1/jobs", json=body)).json()["job_id"]
            await wait_status(c, job_id, "AWAITING_APPROVAL")

        late = await c.post(
            f"/v1/jobs/{job_id}/approval",
            json=approve("ops"),
            timeout=settings.decision_wait_s + 10,
        )
        assert late.status_code == 503, late.text
        assert late.headers.get("Retry-After") and "same body" in late.json()["detail"]

        async with stack.worker(settings, held.providers()):
            await asyncio.wait_for(held.called.wait(), timeout=30)  # approved: it generates
            repeat = await c.post(f"/v1/jobs/{job_id}/approval", json=approve("ops"))
            assert repeat.status_code == 200, repeat.text
            assert repeat.json() == {
                "job_id": job_id,
                "approved": True,
                "reviewer": ANONYMOUS,
                "status": "RUNNING",
                "calls": [],
            }
            other = await c.post(f"/v1/jobs/{job_id}/approval", json=approve("someone-else"))
            assert other.status_code == 409 and ANONYMOUS in other.json()["detail"], other.text
            held.release.set()
            done = await wait_terminal(c, job_id)
            assert done["status"] == "COMPLETED" and done["result"]["approval"]["comment"] == "ops"


async def wait_for_pending_workflow_task(
    temporal: Client, workflow_id: str, timeout_s: float = 15
) -> None:
    """Until Temporal shows a workflow task scheduled for ``workflow_id`` (e.g. an update's)."""
    handle = temporal.get_workflow_handle(workflow_id)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        desc = await handle.describe()
        if desc.raw_description.HasField("pending_workflow_task"):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"no workflow task was scheduled for {workflow_id}")


# ---------------------------------------------------------------------------------- input


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
    before = await job_count(http)
    r = await http.post("/v1/jobs", json=body)
    assert r.status_code == 422, r.text
    locs = [err["loc"] for err in r.json()["detail"]]
    assert any(field in loc for loc in locs), locs
    assert await job_count(http) == before, "a refused request creates no job"


@pytest.mark.parametrize("where", ["metadata", "parameters"])
async def test_input_the_worker_could_not_decode_is_422(
    http: httpx.AsyncClient, temporal: Client, where: str
) -> None:
    """Nesting the API's parser accepts but the worker's JSON parser refuses (over 200 levels).

    Accepted, such a job failed its first workflow task forever: stuck RUNNING, not even
    cancellable. The contract bounds free-form JSON at MAX_JSON_DEPTH levels: a 422 naming the
    field.
    """
    nested: Any = "leaf"
    for _ in range(210):
        nested = {"k": nested}
    body: dict[str, Any] = {"query": q("deep")}
    if where == "metadata":
        body["metadata"] = {"deep": nested}
    else:
        body["tool_calls"] = [
            {"id": "c", "name": "sql_query", "parameters": {"sql": "SELECT 1", "x": nested}}
        ]
    before = await job_count(http)
    r = await http.post("/v1/jobs", json=body)
    assert r.status_code == 422, r.text
    errors = r.json()["detail"]
    assert any(where in err["loc"] and "deeper than" in err["msg"] for err in errors), errors
    assert await job_count(http) == before, "a refused request creates no job"


async def test_context_blob_from_a_client_is_422(http: httpx.AsyncClient) -> None:
    """Clients cannot name server-side storage: ``context[].blob`` is not a field of theirs."""
    before = await job_count(http)
    blob = {"sha256": "0" * 64, "size_bytes": 10}
    r = await http.post(
        "/v1/jobs", json={"query": q("x"), "context": [{"content": "", "blob": blob}]}
    )
    assert r.status_code == 422, r.text
    locs = [err["loc"] for err in r.json()["detail"]]
    assert any("context" in loc and "blob" in loc for loc in locs), locs
    assert await job_count(http) == before


async def test_unknown_job_is_404(http: httpx.AsyncClient) -> None:
    assert (await http.get("/v1/jobs/nope")).status_code == 404
    assert (await http.post("/v1/jobs/nope/cancel")).status_code == 404
    r = await http.post("/v1/jobs/nope/approval", json=approve("x"))
    assert r.status_code == 404


async def test_oversized_body_is_413(http: httpx.AsyncClient) -> None:
    r = await http.post("/v1/jobs", json={"query": "x", "context": [{"content": "a" * 300_000}]})
    assert r.status_code == 413 and "exceeds" in r.json()["detail"]


async def test_job_input_over_its_limit_is_413_naming_the_setting(
    http: httpx.AsyncClient, api_settings: Settings
) -> None:
    before = await job_count(http)
    items = [{"content": "b" * 7_000} for _ in range(31)]  # ~217 KB: under the body limit
    r = await http.post("/v1/jobs", json={"query": q("too much"), "context": items})
    assert r.status_code == 413, r.text
    detail = r.json()["detail"]
    assert "AGENTFLOW_MAX_JOB_INPUT_BYTES" in detail
    assert str(api_settings.max_job_input_bytes) in detail
    assert await job_count(http) == before, "a refused request creates no job"


async def test_large_context_completes_and_stays_out_of_history(
    http: httpx.AsyncClient, temporal: Client, api_settings: Settings
) -> None:
    """A request near the input limit, in items each under the payload threshold, runs to
    completion while its history stays small: the input travels through ExternalStorage."""
    paragraph = "Background paragraph about the migration plan, step {i}. "
    items = [
        {"content": (paragraph.format(i=i) * 80)[:4_500], "importance": "low"} for i in range(40)
    ]
    assert all(len(i["content"]) < api_settings.large_payload_threshold_bytes for i in items)
    total = sum(len(i["content"]) for i in items)
    assert total > 170_000
    created = await http.post("/v1/jobs", json={"query": q("Summarise the plan"), "context": items})
    assert created.status_code == 202, created.text
    job_id = created.json()["job_id"]
    done = await wait_terminal(http, job_id)
    assert done["status"] == "COMPLETED", done

    history = await temporal.get_workflow_handle(f"agent-{job_id}").fetch_history()
    started = history.events[0].workflow_execution_started_event_attributes
    assert started.input.ByteSize() < 8 * 1024, "the input payload is a reference"
    history_bytes = sum(e.ByteSize() for e in history.events)
    assert history_bytes < total // 4, f"history is {history_bytes} bytes for {total} of context"


# ---------------------------------------------------------------------------------- misc


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
            "search_attributes": "auto",  # the default
        }
    )
    with serve_api(settings) as url:
        async with httpx.AsyncClient(base_url=url, timeout=20) as c:
            r = await c.post("/v1/jobs", json={"query": "hello"})
            assert r.status_code == 503 and "Temporal is unreachable" in r.json()["detail"]
            keyed = await c.post(
                "/v1/jobs", json={"query": "hello"}, headers={"Idempotency-Key": "k-down"}
            )
            assert keyed.status_code == 503, keyed.text
            assert (await c.get("/v1/jobs")).json()["count"] == 0
            assert (await c.get(f"/v1/jobs/{job_id_for('k-down')}")).status_code == 503
            ready = await c.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["down"] == ["temporal"]
            assert ready.json()["degraded"] == ["redis"]


async def test_temporal_lost_after_connecting_is_503_and_writes_no_job(
    api_settings: Settings, tmp_path: Path
) -> None:
    """The API connected, then its Temporal went away: starting the workflow fails with 503 and
    no job appears (the workflow is the first thing a submission writes)."""
    port = free_port()
    settings = api_settings.model_copy(
        update={
            "temporal_address": f"127.0.0.1:{port}",
            "database_url": f"sqlite:///{tmp_path / 'lost.db'}",
            "search_attributes": "auto",  # the default: a server of its own has none
        }
    )
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=find_binary("temporal"), port=port, ui=False
    )
    with serve_api(settings) as url:
        async with httpx.AsyncClient(base_url=url, timeout=60) as c:
            async with env:
                assert (await c.get("/readyz")).json()["checks"]["temporal"] == "ok"
            r = await c.post("/v1/jobs", json={"query": q("hello")})
            assert r.status_code == 503, r.text
            assert "try again" in r.json()["detail"]
            assert (await c.get("/v1/jobs")).json()["count"] == 0
