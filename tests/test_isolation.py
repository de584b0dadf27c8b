"""No request can hurt another: hostile jobs against the whole job path, on real servers.

The hostile report behind these tests: a 14 KB arithmetic query made the rules planner spend
9-14 s of CPU on the worker's event loop, and ten innocent jobs went from p50 1.1 s to 9.8 s; a
deeper expression failed its job with "maximum recursion depth exceeded";
``SELECT printf('%.*c', 20000000, 'x')`` took the worker from 196 MB to 3.26 GB, the job failed
after 184 s and the worker then ignored SIGTERM; ``zeroblob(1e9)`` was accepted. And an
``http_get`` call could fetch the API's own JSON (a self-fetch through the worker).

Everything here is real: the Temporal dev server, Redis, SQLite, the worker (in this process for
the latency test, ``python worker.py`` for the memory test) and the API under uvicorn.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import subprocess
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from fastapi import FastAPI
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from core.models import (
    CURRENT_SHAPE,
    AgentRequest,
    AgentResult,
    AgentWorkflowInput,
    JobStatus,
    ToolCall,
    ToolFailure,
    ToolResult,
    ToolSuccess,
)
from core.settings import Settings
from infra.db import make_engine
from infra.migrations import create_tables
from infra.tools.sql_query import ensure_example_database
from tests.helpers import serve_asgi, worker_process
from tests.stack import api_stack, stack_settings
from tests.workflow_support import Harness
from worker import worker_plugin
from workflows.agent import AgentWorkflow

pytestmark = pytest.mark.devserver

ROOT = Path(__file__).resolve().parent.parent


def tag() -> str:
    return uuid.uuid4().hex[:10]


def error_texts(exc: BaseException) -> list[str]:
    """Message and type name of ``exc`` and of every cause below it."""
    texts: list[str] = []
    current: BaseException | None = exc
    while current is not None:
        texts.append(f"{type(current).__name__}: {current}")
        kind = getattr(current, "type", None)
        if isinstance(kind, str):
            texts.append(kind)
        current = current.__cause__
    return texts


def failure_texts(results: list[ToolResult]) -> list[str]:
    return [f"{r.error_type}: {r.error}" for r in results if isinstance(r, ToolFailure)]


# --------------------------------------------------------------------------- event-loop stall

NORMAL_JOBS = 10
ROUNDS = 2
"""Rounds of the ten normal jobs pooled into each p50 (alone, then under attack, with one attack
job of each kind started just before each attacked round): one round's median moved by up to 30%
between runs here."""
P50_SLACK_S = 0.15
"""Absolute slack on the 2x rule: the baseline p50 on the dev server is a few hundred ms, where
scheduling noise alone moves a median by tens of ms; the slack absorbs that, not a stall (the
report's stall was seconds)."""
ATTACK_TIMEOUT_S = 30.0


@dataclass
class AttackLog:
    """Every attack job's ``(kind, status)`` (``STUCK``: no end in time), error texts and the
    results of those that completed."""

    outcomes: list[tuple[str, list[str]]] = field(default_factory=list)
    statuses: list[tuple[str, str]] = field(default_factory=list)
    completed: list[tuple[str, AgentResult]] = field(default_factory=list)
    started: asyncio.Event = field(default_factory=asyncio.Event)


def arithmetic_attack(nonce: str) -> AgentRequest:
    """A 13 KB arithmetic query whose math run ends in 7,000 unbalanced parentheses.

    The rules planner looks for math in it; trimming that run one character per parse is the
    report's quadratic case (10 s of CPU here without the planner's run and trim bounds).
    """
    expression = "1+2*3-" * 1000 + "1" + ")" * 7000
    return AgentRequest(query=f"what is {expression} [{nonce}]", model_tier="small")


def nested_attack(nonce: str) -> AgentRequest:
    """A 10 KB expression nested 5,000 parentheses deep."""
    return AgentRequest(query=f"{'(' * 5000}1{')' * 5000} [{nonce}]", model_tier="small")


def whitespace_attack(nonce: str) -> AgentRequest:
    """14 KB of spaces: a token search that restarts at every space is quadratic (20 s here)."""
    return AgentRequest(query=f"what is{' ' * 14_000}? [{nonce}]", model_tier="small")


def calculator_attack(nonce: str) -> AgentRequest:
    """Explicit calculator calls: 499 unary minus signs (deep), and a 14 KB expression."""
    return AgentRequest(
        query=f"calculate these [{nonce}]",
        model_tier="small",
        tool_calls=[
            ToolCall(id="deep", name="calculator", parameters={"expression": "-" * 499 + "1"}),
            ToolCall(id="long", name="calculator", parameters={"expression": "1+" * 7000 + "1"}),
        ],
    )


ATTACKS: dict[str, Callable[[str], AgentRequest]] = {
    "arithmetic-13kb": arithmetic_attack,
    "nested-5000": nested_attack,
    "whitespace-14kb": whitespace_attack,
    "calculator-calls": calculator_attack,
}


async def run_attack(h: Harness, kind: str, log: AttackLog) -> None:
    """One attack job to its end; records its status and every error text it produced."""
    handle = await h.start(ATTACKS[kind](tag()))
    log.started.set()
    try:
        result = await asyncio.wait_for(handle.result(), ATTACK_TIMEOUT_S)
    except WorkflowFailureError as exc:
        log.statuses.append((kind, "FAILED"))
        log.outcomes.append((kind, error_texts(exc)))
        return
    except TimeoutError:
        log.statuses.append((kind, "STUCK"))
        with suppress(Exception):
            await handle.terminate("attack job did not end in time")
        return
    log.statuses.append((kind, result.status.value))
    log.completed.append((kind, result))
    texts = failure_texts(result.tool_results)
    texts += [t for t in (result.error, result.error_type) if t]
    log.outcomes.append((kind, texts))


def normal_request(i: int, round_tag: str) -> tuple[AgentRequest, int | None]:
    """Job ``i`` of a round: even ones carry a calculator call (its expected value is returned)."""
    if i % 2 == 0:
        a, b = 17 + i, 23 + len(round_tag)
        call = ToolCall(id="calc", name="calculator", parameters={"expression": f"{a} * {b}"})
        request = AgentRequest(
            query=f"How much is the product? [{round_tag}-{i}]",
            model_tier="small",
            tool_calls=[call],
        )
        return request, a * b
    return AgentRequest(query=f"Capital of France? [{round_tag}-{i}]", model_tier="small"), None


async def normal_round(h: Harness) -> list[float]:
    """Ten normal jobs at once; each one's latency (start to result) in seconds."""
    round_tag = tag()

    async def one(i: int) -> float:
        request, expected = normal_request(i, round_tag)
        started = time.perf_counter()
        result = await asyncio.wait_for(h.run(request), 60)
        elapsed = time.perf_counter() - started
        assert result.status is JobStatus.COMPLETED, f"normal job {i}: {result.error}"
        if expected is not None:
            calc = [r for r in result.tool_results if r.call_id == "calc"]
            assert calc and isinstance(calc[0], ToolSuccess), f"normal job {i}: {calc}"
            assert isinstance(calc[0].value, dict) and calc[0].value["value"] == expected
        return elapsed

    return list(await asyncio.gather(*(one(i) for i in range(NORMAL_JOBS))))


async def test_attack_jobs_do_not_slow_normal_jobs(dev_harness: Harness) -> None:
    """Ten normal jobs keep their p50 within 2x while attack jobs run on the same worker.

    The worker runs in this process, so a stall of its event loop delays every job here.
    """
    await normal_round(dev_harness)  # warm-up: workflow imports, caches, connections
    baseline: list[float] = []
    for _ in range(ROUNDS):
        baseline += await normal_round(dev_harness)

    log = AttackLog()
    attacked: list[float] = []
    for _ in range(ROUNDS):
        attacks = [asyncio.create_task(run_attack(dev_harness, kind, log)) for kind in ATTACKS]
        try:
            await asyncio.wait_for(log.started.wait(), 10)
            await asyncio.sleep(0.3)  # the attack jobs are inside their first stages now
            attacked += await normal_round(dev_harness)
        finally:
            await asyncio.gather(*attacks)
        log.started.clear()

    p50_alone, p50_attacked = statistics.median(baseline), statistics.median(attacked)
    print(
        f"\nnormal p50 alone {p50_alone * 1000:.0f} ms, under attack {p50_attacked * 1000:.0f} ms "
        f"({len(log.statuses)} attack jobs: {sorted({s for _, s in log.statuses})})"
    )
    stuck = [kind for kind, status in log.statuses if status == "STUCK"]
    assert not stuck, f"attack jobs never ended: {stuck}"
    assert {kind for kind, _ in log.statuses} == set(ATTACKS)
    for kind, status in log.statuses:
        assert status in ("COMPLETED", "FAILED"), f"{kind} ended {status}"
    for kind, texts in log.outcomes:
        for text in texts:
            assert "recursion" not in text.lower(), f"{kind}: {text}"
            assert "Traceback" not in text, f"{kind}: {text}"
    for kind, result in log.completed:
        if kind != "calculator-calls":
            continue
        calls = {r.call_id: r for r in result.tool_results}
        # Over the calculator's 500-character limit: refused, and the refusal is on the job (as
        # the call's failure, or as the plan's rejection of it, which names the call).
        assert any(
            isinstance(r, ToolFailure)
            and (r.call_id == "long" or (r.call_id == "plan" and "long" in r.error))
            for r in result.tool_results
        ), result.tool_results
        # 499 nested minus signs: refused as too deep, or evaluated (it is -1); never a crash.
        deep = calls.get("deep")
        assert isinstance(deep, ToolFailure) or (
            isinstance(deep, ToolSuccess)
            and isinstance(deep.value, dict)
            and deep.value["value"] == -1
        ), deep
    assert p50_attacked <= 2 * p50_alone + P50_SLACK_S, (
        f"normal p50 went from {p50_alone:.3f}s to {p50_attacked:.3f}s under attack"
    )


# --------------------------------------------------------------------------- memory bound

RSS_ALLOWANCE_BYTES = 300 * 1024 * 1024
"""The worker's peak RSS may exceed its RSS after a warm-up job by at most this much (300 MiB)
while the hostile queries run; the report saw +3 GB (printf) and +7.5 GB (a 50 MB variant)."""
SIGTERM_EXIT_S = 8.0
"""How long the worker may take to exit after SIGTERM once its jobs ended (its graceful-shutdown
window for running activities is 10 s, and none is running)."""

HOSTILE_SQL = {
    "printf-20mb": "SELECT printf('%.*c', 20000000, 'x') AS s",
    "zeroblob-1gb": "SELECT zeroblob(1000000000) AS b",
    "randomblob-1gb": "SELECT randomblob(1000000000) AS b",
    "cte-doubling": (
        "WITH RECURSIVE grow(n, s) AS (SELECT 1, 'x' UNION ALL "
        "SELECT n + 1, s || s FROM grow WHERE n < 28) "
        "SELECT n, length(s) AS size, s FROM grow ORDER BY n DESC LIMIT 1"
    ),
    "group-concat-80mb": (
        "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < 5000000) "
        "SELECT group_concat('0123456789abcdef') FROM c"
    ),
    # Values under the cell limit, but a million rows of them (8 GB in all).
    "many-8kb-rows": (
        "WITH RECURSIVE w(n, s) AS (SELECT 1, 'x' UNION ALL "
        "SELECT n + 1, s || s FROM w WHERE n < 14), "
        "c(k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM c WHERE k < 1000000) "
        "SELECT k, (SELECT s FROM w WHERE n = 14) AS s FROM c"
    ),
    # One row of 60 cells of 8 KB each (480 KB in one row).
    "wide-row": (
        "WITH RECURSIVE w(n, s) AS (SELECT 1, 'x' UNION ALL "
        "SELECT n + 1, s || s FROM w WHERE n < 14) "
        "SELECT " + ", ".join(f"s AS c{i}" for i in range(60)) + " FROM w WHERE n = 14"
    ),
}


class RssWatch:
    """Samples a process's RSS every 10 ms in a thread; kills it when it passes ``limit_bytes``.

    Killing keeps a failing run (a worker without the bound) from taking the machine down: the
    report's worker grew to 7.7 GB.
    """

    def __init__(self, pid: int, limit_bytes: int) -> None:
        self.process = psutil.Process(pid)
        self.limit_bytes = limit_bytes
        self.peak_bytes = 0
        self.killed_at_bytes: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                rss = self.process.memory_info().rss
            except psutil.NoSuchProcess:
                return
            self.peak_bytes = max(self.peak_bytes, rss)
            if rss > self.limit_bytes:
                self.killed_at_bytes = rss
                with suppress(psutil.NoSuchProcess):
                    self.process.kill()
                return
            time.sleep(0.01)

    def high_water_mark_bytes(self) -> int:
        """The kernel's peak RSS of the process (``VmHWM``; catches spikes between samples)."""
        status = Path(f"/proc/{self.process.pid}/status")
        with suppress(OSError):
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return self.peak_bytes

    def __enter__(self) -> RssWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def log_tail(log: Path, lines: int = 30) -> str:
    with suppress(OSError):
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    return ""


def check_sql_outcome(name: str, result: AgentResult, db_path: Path) -> str:
    """The hostile call failed with a clear message, or came back cut and bounded; a summary."""
    assert result.status is JobStatus.COMPLETED, f"{name}: a failing tool is not fatal"
    calls = [r for r in result.tool_results if r.call_id == "sql"]
    assert len(calls) == 1, f"{name}: {result.tool_results}"
    outcome = calls[0]
    if isinstance(outcome, ToolFailure):
        text = f"{outcome.error_type}: {outcome.error}"
        assert outcome.error.strip() and len(outcome.error) < 1000, f"{name}: {text}"
        assert outcome.error_type not in ("MemoryError", "RecursionError", "OverflowError"), text
        assert "Traceback" not in outcome.error and str(db_path) not in outcome.error, text
        return f"{name}: failed, {text}"
    limit = Settings().sql_max_result_bytes
    size = len(json.dumps(outcome.value))
    assert isinstance(outcome.value, dict) and outcome.value.get("truncated") is True, (
        f"{name}: a result this large must be cut and marked truncated ({size} bytes)"
    )
    # Blobs travel as hex: two characters per byte of cell data, plus the JSON around them.
    assert size <= 2 * limit + 64 * 1024, f"{name}: result of {size} bytes"
    return f"{name}: truncated to {size} bytes of JSON"


@pytest.mark.subprocess
async def test_hostile_sql_keeps_the_worker_under_its_memory_bound(
    dev_env: WorkflowEnvironment, redis_url: str, tmp_path: Path
) -> None:
    """Huge values built by SQL are refused or cut; RSS stays bounded; SIGTERM still works."""
    database_url = f"sqlite:///{tmp_path / 'jobs.db'}"
    shop = ensure_example_database(tmp_path / "shop.sqlite")
    queue = f"isolation-{uuid.uuid4()}"
    target = dev_env.client.service_client.config.target_host
    env = {
        **os.environ,
        "TEMPORAL_ADDRESS": target,
        "AGENTFLOW_TASK_QUEUE": queue,
        "REDIS_URL": redis_url,
        "DATABASE_URL": database_url,
        "AGENTFLOW_SQL_DATABASE_PATH": str(shop),
        "AGENTFLOW_SIMULATED_LATENCY_SCALE": "0",
        "PYTHONUNBUFFERED": "1",
    }
    engine = make_engine(database_url)
    create_tables(engine)
    client = await Client.connect(
        target, plugins=[worker_plugin(Settings(database_url=database_url), engine)]
    )

    async def start(query: str, sql: str) -> WorkflowHandle[AgentWorkflow, AgentResult]:
        job_id = uuid.uuid4().hex
        request = AgentRequest(
            query=f"{query} [{job_id[:8]}]",
            model_tier="small",
            tool_calls=[ToolCall(id="sql", name="sql_query", parameters={"sql": sql})],
        )
        return await client.start_workflow(
            AgentWorkflow.run,
            AgentWorkflowInput(job_id=job_id, request=request, shape=CURRENT_SHAPE),
            id=f"agent-{job_id}",
            task_queue=queue,
        )

    log = tmp_path / "worker.log"
    handles: list[WorkflowHandle[AgentWorkflow, AgentResult]] = []
    tasks: list[asyncio.Future[AgentResult]] = []
    try:
        with worker_process(env, log) as proc:
            warm = await start("How many products are there?", "SELECT count(*) FROM products")
            warmed = await asyncio.wait_for(warm.result(), 60)
            assert warmed.status is JobStatus.COMPLETED, log_tail(log)
            assert isinstance(warmed.tool_results[0], ToolSuccess), warmed.tool_results
            baseline = psutil.Process(proc.pid).memory_info().rss
            bound = baseline + RSS_ALLOWANCE_BYTES

            with RssWatch(proc.pid, bound) as watch:
                handles = [await start(f"Run {name}", sql) for name, sql in HOSTILE_SQL.items()]
                tasks = [asyncio.ensure_future(h.result()) for h in handles]
                deadline = time.monotonic() + 60
                while not all(t.done() for t in tasks):
                    assert watch.killed_at_bytes is None, (
                        f"worker RSS reached {watch.killed_at_bytes / 2**20:.0f} MiB "
                        f"(baseline {baseline / 2**20:.0f} MiB, bound {bound / 2**20:.0f} MiB); "
                        "killed it"
                    )
                    assert time.monotonic() < deadline, "hostile jobs still running after 60 s"
                    await asyncio.wait(tasks, timeout=0.2)
                results = [t.result() for t in tasks]
                peak = max(watch.peak_bytes, watch.high_water_mark_bytes())

            summaries = [
                check_sql_outcome(name, result, shop)
                for name, result in zip(HOSTILE_SQL, results, strict=True)
            ]
            print(
                f"\nworker RSS baseline {baseline / 2**20:.0f} MiB, peak {peak / 2**20:.0f} MiB "
                f"(+{(peak - baseline) / 2**20:.0f} MiB)\n  " + "\n  ".join(summaries)
            )
            assert peak <= bound, (
                f"peak RSS {peak / 2**20:.0f} MiB over the bound {bound / 2**20:.0f} MiB"
            )

            asked = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=SIGTERM_EXIT_S)
            except subprocess.TimeoutExpired:
                pytest.fail(f"the worker ignored SIGTERM for {SIGTERM_EXIT_S} s\n{log_tail(log)}")
            print(f"  worker exited {time.monotonic() - asked:.2f} s after SIGTERM")
    finally:
        for handle in handles:
            with suppress(Exception):
                await handle.terminate("isolation test cleanup")
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        engine.dispose()


# --------------------------------------------------------------------------- self-fetch


def docs_server() -> FastAPI:
    """A local docs server: the one loopback service the operator allowlisted."""
    app = FastAPI()

    @app.get("/page")
    async def page() -> dict[str, str]:
        return {"doc": "local docs page"}

    return app


@dataclass
class SelfFetchStack:
    api: str
    docs: str
    settings: Settings


@pytest.fixture
async def self_fetch_stack(
    dev_env: WorkflowEnvironment, redis_url: str, tmp_path: Path
) -> AsyncIterator[SelfFetchStack]:
    """The API under uvicorn and a worker, both on one operator config that allows a docs server.

    The config is what an operator with a local docs service writes: that service's
    ``host:port`` allowlisted and loopback opened for it (``127.0.0.1/32``). The API listens on
    the same address, another port.
    """
    target = dev_env.client.service_client.config.target_host
    with serve_asgi(docs_server(), lifespan="off") as docs:
        docs_hostport = docs.removeprefix("http://")
        settings = stack_settings(
            target,
            redis_url,
            tmp_path,
            prefix="self-fetch",
            auth_disabled=True,
            http_allowed_hosts=[docs_hostport],
            http_allowed_networks=["127.0.0.1/32"],
        )
        async with api_stack(settings) as stack:
            yield SelfFetchStack(api=stack.url, docs=docs, settings=settings)


async def wait_for_status(http: httpx.AsyncClient, job_id: str, wanted: set[str]) -> Any:
    deadline = time.monotonic() + 30
    while True:
        job = (await http.get(f"/v1/jobs/{job_id}")).json()
        if job["status"] in wanted:
            return job
        assert time.monotonic() < deadline, f"job stuck at {job['status']}"
        await asyncio.sleep(0.1)


async def test_http_get_cannot_fetch_the_api_itself(self_fetch_stack: SelfFetchStack) -> None:
    """An approved job's ``http_get`` calls to the API's own port are refused; the docs one runs.

    Nothing the API would have answered (its tool catalog, its OpenAPI document) reaches the job.
    """
    stack = self_fetch_stack
    api_port = stack.api.rsplit(":", 1)[1]
    self_urls = {
        "self-tools": f"{stack.api}/v1/tools",
        "self-openapi": f"{stack.api}/openapi.json",
        "self-localhost": f"http://localhost:{api_port}/v1/tools",
    }
    calls = [
        {"id": call_id, "name": "http_get", "parameters": {"url": url}}
        for call_id, url in self_urls.items()
    ]
    calls.append({"id": "docs", "name": "http_get", "parameters": {"url": f"{stack.docs}/page"}})

    async with httpx.AsyncClient(base_url=stack.api, timeout=30) as http:
        # What the API answers when asked directly: none of it may appear in the job.
        tools_body = (await http.get("/v1/tools")).text
        openapi_body = (await http.get("/openapi.json")).text
        markers = [
            "parameters_schema",
            "Evaluate an arithmetic expression",
            "Durable LLM agent requests on Temporal",
        ]
        assert markers[0] in tools_body and markers[1] in tools_body
        assert markers[2] in openapi_body

        created = await http.post(
            "/v1/jobs",
            json={
                "query": f"Summarise these pages [{tag()}]",
                "model_tier": "small",
                "tool_calls": calls,
            },
        )
        assert created.status_code == 202, created.text
        job_id = created.json()["job_id"]
        await wait_for_status(http, job_id, {"AWAITING_APPROVAL"})
        decided = await http.post(f"/v1/jobs/{job_id}/approval", json={"approved": True})
        assert decided.status_code == 200, decided.text
        job = await wait_for_status(http, job_id, {"COMPLETED", "FAILED"})

    assert job["status"] == "COMPLETED", job
    results = {r["call_id"]: r for r in job["result"]["tool_results"]}
    docs = results["docs"]
    assert docs["status"] == "success", f"the allowlisted docs server is reachable: {docs}"
    assert "local docs page" in docs["value"]["body"]
    for call_id in self_urls:
        refused = results[call_id]
        print(f"\n{call_id}: {refused['error_type']}: {refused['error']}")
        assert refused["status"] == "error", f"{call_id} fetched the API: {refused}"
        assert refused["error"].strip() and not refused["retryable"], refused
    dumped = json.dumps(job["result"])
    for marker in markers:
        assert marker not in dumped, f"the API's own answer leaked into the job: {marker!r}"
