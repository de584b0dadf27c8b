"""Search attributes: registration, detection by the API, and ``GET /v1/jobs?status=`` from them.

A real dev server (the ``dev_env`` fixture registers the attributes, as ``agentflow dev`` does),
a real worker, the real app under uvicorn with API keys, real Redis and SQLite. The job's record
is changed behind the API's back to show that an open job is listed with its live status.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import pytest
from sqlalchemy import text
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.client import Client, WorkflowExecution
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from api.state import SearchAttributesMissingError, TemporalGateway
from api.visibility import open_jobs_query, quote
from cli.devstack import missing_search_attributes, search_attribute_args
from core import search_attributes as sa
from core.auth import Scope
from core.models import JobStatus, Tier
from core.settings import Settings
from infra.temporal import AgentflowPlugin
from tests.helpers import find_binary, free_port, serve_asgi
from tests.stack import Stack, StackSpec

pytestmark = pytest.mark.devserver


# ------------------------------------------------------------------------------ pure parts


def test_registrations_name_every_attribute_with_its_cli_type() -> None:
    assert sa.cli_registrations() == [
        "AgentStatus=Keyword",
        "AgentTier=Keyword",
        "AgentCostUsd=Double",
        "AgentAwaitingApproval=Bool",
        "AgentOwner=Keyword",
    ]
    args = search_attribute_args()
    assert args[0::2] == ["--search-attribute"] * 5 and args[1::2] == sa.cli_registrations()


def test_missing_reports_absent_and_wrongly_typed_attributes() -> None:
    right = {k.name: int(k.indexed_value_type) for k in sa.ALL_KEYS}
    assert sa.missing(right) == []
    assert sa.missing({**right, "Unrelated": 1}) == []
    wrong = {**right, "AgentCostUsd": int(sa.AGENT_STATUS.indexed_value_type)}
    del wrong["AgentOwner"]
    assert [k.name for k in sa.missing(wrong)] == ["AgentCostUsd", "AgentOwner"]


def test_updates_carry_a_float_cost_even_for_an_int_sum() -> None:
    """``sum()`` of no costs is the int 0, which a Double attribute refuses in a workflow."""
    (status, waiting, tier, cost) = sa.updates(
        JobStatus.AWAITING_APPROVAL, tier=Tier.SMALL, cost_usd=0
    )
    assert (status.value, waiting.value, tier.value) == ("AWAITING_APPROVAL", True, "small")
    assert type(cost.value) is float and cost.value == 0.0


def test_open_jobs_query_escapes_values_and_refuses_terminal_statuses() -> None:
    assert quote('a"b\\c') == '"a\\"b\\\\c"'
    query = open_jobs_query(JobStatus.AWAITING_APPROVAL, 'x" OR AgentOwner!="x', "q")
    assert 'AgentOwner="x\\" OR AgentOwner!=\\"x"' in query
    assert query.startswith(
        'WorkflowType="AgentWorkflow" AND TaskQueue="q" AND ExecutionStatus="Running"'
    )
    with pytest.raises(ValueError, match="terminal"):
        open_jobs_query(JobStatus.COMPLETED, None, "q")


# ------------------------------------------------------------------------------ registration


@pytest.mark.subprocess
async def test_dev_env_has_the_attributes_and_the_cli_lists_them(
    dev_env: WorkflowEnvironment,
) -> None:
    client = dev_env.client
    listed = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=client.namespace)
    )
    assert sa.missing(listed.custom_attributes) == []
    address = client.service_client.config.target_host
    assert await missing_search_attributes(address, client.namespace) == []
    temporal = find_binary("temporal")
    assert temporal is not None
    cli = await asyncio.to_thread(
        subprocess.run,
        [temporal, "operator", "search-attribute", "list", "--address", address],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    rows = {line.split()[0]: line.split()[1] for line in cli.stdout.splitlines() if "Agent" in line}
    assert rows == dict(r.split("=") for r in sa.cli_registrations())


@pytest.mark.subprocess
async def test_detection_on_a_server_without_them_then_the_create_command_fixes_it(
    plugin: AgentflowPlugin,
) -> None:
    """auto: off; on: an error naming the attributes and the command; the command registers
    them, and ``on`` then succeeds without a restart (the error is not cached)."""
    temporal = find_binary("temporal")
    assert temporal is not None
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal, port=free_port(), ui=False
    )
    async with env:
        address = env.client.service_client.config.target_host

        def gateway(mode: Literal["auto", "on", "off"]) -> TemporalGateway:
            settings = Settings(temporal_address=address, search_attributes=mode)
            return TemporalGateway(settings, plugin)

        assert await missing_search_attributes(address, "default") == [k.name for k in sa.ALL_KEYS]
        assert await gateway("auto").search_attributes_enabled() is False
        assert await gateway("off").search_attributes_enabled() is False
        strict = gateway("on")
        with pytest.raises(SearchAttributesMissingError) as caught:
            await strict.search_attributes_enabled()
        command = sa.create_command("default")
        assert caught.value.missing == [k.name for k in sa.ALL_KEYS]
        assert command in caught.value.message and caught.value.status_code == 503

        args = command.split()[1:]  # the command as printed, against this server
        await asyncio.to_thread(
            subprocess.run, [temporal, *args, "--address", address], check=True, timeout=30
        )
        assert await strict.search_attributes_enabled() is True
        assert await gateway("auto").search_attributes_enabled() is True


# ------------------------------------------------------------------------------ over HTTP


@dataclass
class Keys:
    alice: str
    alice_id: str
    bob: str
    admin: str


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def stack_spec() -> StackSpec:
    """Keys on, and search attributes required (the dev server has them registered)."""
    return StackSpec(settings={"api_key_pepper": "test-pepper", "search_attributes": "on"})


@pytest.fixture(scope="module")
def keys(stack: Stack) -> Keys:
    everyday = [Scope.SUBMIT, Scope.READ, Scope.APPROVE]
    alice = stack.key("alice", *everyday)
    return Keys(
        alice=alice.secret,
        alice_id=alice.key_id,
        bob=stack.key("bob", *everyday).secret,
        admin=stack.key("root", Scope.ADMIN).secret,
    )


async def eventually(check: Callable[[], Any], what: str, timeout_s: float = 15) -> Any:
    """Poll the coroutine function ``check`` until it returns something truthy."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = await check()
        if found:
            return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"never happened: {what}")


async def listed(client: Client, query: str) -> list[WorkflowExecution]:
    return [w async for w in client.list_workflows(query)]


async def job_ids(http: httpx.AsyncClient, key: str, status: str | None = None) -> list[str]:
    params = {"status": status} if status else {}
    r = await http.get("/v1/jobs", params=params, headers=bearer(key))
    assert r.status_code == 200, r.text
    return [j["job_id"] for j in r.json()["data"]]


def set_record(stack: Stack, sql: str, job_id: str) -> None:
    with stack.engine.begin() as conn:
        assert conn.execute(text(sql), {"job_id": job_id}).rowcount == 1


async def test_waiting_job_is_found_by_its_attributes_and_listed_with_its_live_status(
    http: httpx.AsyncClient, stack: Stack, keys: Keys
) -> None:
    query = f"Deploy the release {uuid.uuid4().hex[:8]}"
    r = await http.post(
        "/v1/jobs", json={"query": query, "require_approval": True}, headers=bearer(keys.alice)
    )
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    wf = f"agent-{job_id}"

    async def waiting() -> list[WorkflowExecution]:
        found = await listed(stack.temporal, 'AgentStatus="AWAITING_APPROVAL"')
        return [w for w in found if w.id == wf]

    (execution,) = await eventually(waiting, "AgentStatus=AWAITING_APPROVAL in visibility")
    attrs = execution.typed_search_attributes
    assert attrs.get(sa.AGENT_AWAITING_APPROVAL) is True
    assert attrs.get(sa.AGENT_OWNER) == keys.alice_id
    assert attrs.get(sa.AGENT_TIER) in {t.value for t in Tier}

    async def listed_as_waiting() -> bool:
        return job_id in await job_ids(http, keys.alice, "AWAITING_APPROVAL")

    await eventually(listed_as_waiting, "listed as AWAITING_APPROVAL")
    assert job_id in await job_ids(http, keys.admin, "AWAITING_APPROVAL")
    assert job_id not in await job_ids(http, keys.bob, "AWAITING_APPROVAL")
    assert job_id not in await job_ids(http, keys.bob)

    # The record lags: it still says RUNNING. Visibility lists the job with its true status.
    set_record(stack, "UPDATE jobs SET status = 'RUNNING' WHERE job_id = :job_id", job_id)
    r = await http.get(
        "/v1/jobs", params={"status": "AWAITING_APPROVAL"}, headers=bearer(keys.alice)
    )
    (job,) = [j for j in r.json()["data"] if j["job_id"] == job_id]
    assert job["status"] == "AWAITING_APPROVAL" and job["query"] == query
    assert job_id not in await job_ids(http, keys.alice, "RUNNING")
    unfiltered = (await http.get("/v1/jobs", headers=bearer(keys.alice))).json()["data"]
    assert [j["status"] for j in unfiltered if j["job_id"] == job_id] == ["AWAITING_APPROVAL"]
    # The same database read alone (no search attributes) shows the lag this is about.
    off = stack.settings.model_copy(update={"search_attributes": "off"})
    with serve_asgi(create_app(off)) as plain_url:
        async with httpx.AsyncClient(base_url=plain_url, timeout=30) as plain:
            assert job_id in await job_ids(plain, keys.alice, "RUNNING")
            assert job_id not in await job_ids(plain, keys.alice, "AWAITING_APPROVAL")

    # No record at all: the job is built from visibility alone (memo query, owner, start time).
    set_record(stack, "DELETE FROM jobs WHERE job_id = :job_id", job_id)
    r = await http.get(
        "/v1/jobs", params={"status": "AWAITING_APPROVAL"}, headers=bearer(keys.alice)
    )
    (job,) = [j for j in r.json()["data"] if j["job_id"] == job_id]
    assert job["status"] == "AWAITING_APPROVAL" and job["query"] == query
    assert job["owner"] == keys.alice_id and job["workflow_id"] == wf
    assert job["warning"] and "visibility" in job["warning"]
    assert job_id not in await job_ids(http, keys.bob, "AWAITING_APPROVAL")

    decided = await http.post(
        f"/v1/jobs/{job_id}/approval", json={"approved": True}, headers=bearer(keys.alice)
    )
    assert decided.status_code == 200, decided.text

    async def completed() -> list[WorkflowExecution]:
        found = await listed(stack.temporal, f'AgentStatus="COMPLETED" AND WorkflowId={quote(wf)}')
        return [w for w in found if w.status is not None and w.status.name == "COMPLETED"]

    (done,) = await eventually(completed, "AgentStatus=COMPLETED in visibility")
    attrs = done.typed_search_attributes
    assert attrs.get(sa.AGENT_TIER) in {t.value for t in Tier}
    assert (attrs.get(sa.AGENT_COST_USD) or 0) > 0
    assert attrs.get(sa.AGENT_AWAITING_APPROVAL) is False
    assert job_id not in await job_ids(http, keys.alice, "AWAITING_APPROVAL")
    assert job_id in await job_ids(http, keys.alice, "COMPLETED")  # recorded again at the end


async def test_a_quote_in_the_owner_cannot_widen_the_query(
    http: httpx.AsyncClient, stack: Stack, keys: Keys
) -> None:
    """The escaped value is one literal: it matches no job, where the unescaped text would
    have matched the waiting job."""
    r = await http.post(
        "/v1/jobs",
        json={"query": "What is a tuple?", "require_approval": True},
        headers=bearer(keys.alice),
    )
    assert r.status_code == 202, r.text
    wf = f"agent-{r.json()['job_id']}"
    sneaky = 'x" OR AgentOwner!="x'
    widened = f'WorkflowType="AgentWorkflow" AND AgentOwner="{sneaky}"'

    async def unescaped_finds_it() -> bool:  # what the escaping prevents
        return wf in [w.id for w in await listed(stack.temporal, widened)]

    await eventually(unescaped_finds_it, "the unescaped owner matching the job")
    for status in (JobStatus.RUNNING, JobStatus.AWAITING_APPROVAL):
        query = open_jobs_query(status, sneaky, stack.settings.task_queue)
        assert await listed(stack.temporal, query) == []
    cancel = await http.post(f"/v1/jobs/{r.json()['job_id']}/cancel", headers=bearer(keys.alice))
    assert cancel.status_code == 202, cancel.text


async def test_temporal_down_lists_from_the_database(stack: Stack, keys: Keys) -> None:
    """With Temporal unreachable, ``?status=`` answers from the records, never a 5xx."""
    async with httpx.AsyncClient(base_url=stack.url, timeout=30) as http:
        r = await http.post(
            "/v1/jobs",
            json={"query": "What is a dict?", "require_approval": True},
            headers=bearer(keys.alice),
        )
        job_id = r.json()["job_id"]

        async def recorded() -> bool:
            return job_id in await job_ids(http, keys.alice, "AWAITING_APPROVAL")

        await eventually(recorded, "the waiting job listed")
    down = stack.settings.model_copy(update={"temporal_address": f"127.0.0.1:{free_port()}"})
    with serve_asgi(create_app(down)) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            started = time.monotonic()
            for status in ("AWAITING_APPROVAL", None):
                assert job_id in await job_ids(http, keys.alice, status)
            assert time.monotonic() - started < 15
    async with httpx.AsyncClient(base_url=stack.url, timeout=30) as http:
        cancel = await http.post(f"/v1/jobs/{job_id}/cancel", headers=bearer(keys.alice))
        assert cancel.status_code == 202, cancel.text
