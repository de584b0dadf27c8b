"""The job event stream over real HTTP: ``GET /v1/jobs/{id}/events`` and ``agentflow submit``.

A real ``temporal server start-dev``, real workers (in-process, and ``python worker.py`` processes
for the crash test), the real app under uvicorn, real Redis and SQLite. The stream is read as a
client reads it: Server-Sent Events over HTTP, parsed by ``httpx-sse`` as the CLI's
:mod:`cli.follow.stream` parses it.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import EventSource, ServerSentEvent
from pydantic import TypeAdapter
from rich.console import Console
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from temporalio import workflow
from temporalio.client import Client
from temporalio.worker import Worker

from api import streams
from api.app import create_app
from api.event_hub import Cursor, token_id_after
from api.schemas import JobLinks, JobPublic
from api.streams import synthesize_terminal_event, with_keepalive
from cli.follow import FollowError, FollowView, follow_events, parse_tool_option
from core.auth import Scope
from core.events import (
    TERMINAL_EVENTS,
    EventType,
    FinalResponse,
    JobEvent,
    ResponseError,
    ResponseStarted,
    StageCompleted,
    StageStarted,
    TokenDelta,
    assemble_text,
)
from core.models import AgentResult, JobStatus, ModelUsage, Stage, Tier
from core.settings import Settings
from infra.jobs import JobStore
from infra.providers import ProviderRegistry, SimulatedProvider
from tests.helpers import ROOT, free_port, serve_asgi, worker_process
from tests.stack import Stack, StackSpec

EVENT = TypeAdapter[JobEvent](JobEvent)


def sse_messages(response: httpx.Response) -> AsyncIterator[ServerSentEvent]:
    """The response's SSE messages that carry data, parsed by httpx-sse as the CLI parses them.

    The format dispatches no message without data; httpx-sse dispatches one at the blank line
    after a keep-alive comment once an id was seen, so those are dropped here, as the CLI does.
    """

    async def messages() -> AsyncIterator[ServerSentEvent]:
        async for message in EventSource(response).aiter_sse():
            if message.data:
                yield message

    return messages()


# ------------------------------------------------------------------------------ CLI (unit)


def test_tool_option_parsing() -> None:
    assert parse_tool_option('calculator:{"expression": "2 + 2"}', 1) == {
        "id": "t1",
        "name": "calculator",
        "parameters": {"expression": "2 + 2"},
    }
    assert parse_tool_option("python_docs_search", 2)["parameters"] == {}
    for bad in (":{}", "calculator:[1]", "calculator:{nope"):
        with pytest.raises(ValueError):
            parse_tool_option(bad, 1)


def test_a_synthesized_terminal_event_comes_from_the_record() -> None:
    now = datetime.now(UTC)
    base = {
        "job_id": "j1",
        "workflow_id": "agent-j1",
        "query": "q",
        "created_at": now,
        "updated_at": now,
        "links": JobLinks(self="/v1/jobs/j1", temporal_ui="http://ui"),
    }
    usage = ModelUsage(
        purpose="final",
        tier=Tier.SMALL,
        provider="simulated",
        model="m",
        simulated=True,
        prompt_tokens=10,
        completion_tokens=5,
        cost_usd=0.25,
        latency_ms=1.0,
    )
    result = AgentResult(
        job_id="j1", status=JobStatus.COMPLETED, answer="42", simulated=True, usage=[usage]
    )
    done = synthesize_terminal_event(
        JobPublic(**base, status=JobStatus.COMPLETED, completed_at=now, result=result)
    )
    assert isinstance(done, FinalResponse)
    assert (done.answer, done.simulated, done.total_cost_usd, done.offset, done.at) == (
        "42",
        True,
        0.25,
        None,
        now,
    )
    failed = synthesize_terminal_event(JobPublic(**base, status=JobStatus.FAILED, error="boom"))
    assert isinstance(failed, ResponseError)
    assert (failed.status, failed.error) == (JobStatus.FAILED, "boom")
    assert synthesize_terminal_event(JobPublic(**base, status=JobStatus.RUNNING)) is None


async def test_keepalive_fills_silences_and_leaving_early_cancels_the_source() -> None:
    cleaned = asyncio.Event()

    async def slow() -> AsyncIterator[str]:
        try:
            yield "a"
            await asyncio.sleep(0.35)
            yield "b"
            await asyncio.sleep(3600)  # a poll that never answers
            yield "never"
        finally:
            cleaned.set()

    seen: list[str] = []
    stream = with_keepalive(slow(), 0.1, "ping")
    async for item in stream:
        seen.append(item)
        if seen.count("b") and seen.count("ping") >= 5:
            break
    await stream.aclose()  # type: ignore[attr-defined]
    assert seen[0] == "a" and "b" in seen
    assert 2 <= seen[1 : seen.index("b")].count("ping") <= 4, seen
    assert cleaned.is_set(), "the source's pending item was cancelled and its clean-up ran"


def fake_api(events: list[JobEvent], drop_after: int, seen: list[str | None]) -> Starlette:
    """An SSE server that stands in for the API's stream to test the CLI's reconnection: the
    first connection ends after ``drop_after`` events, later ones resume after Last-Event-ID.
    The real API's resume is tested against the real stack below."""

    async def stream(request: Request) -> Response:
        last = request.headers.get("last-event-id")
        seen.append(last)
        if request.path_params["job_id"] == "gone":
            return JSONResponse({"detail": "job gone not found"}, status_code=404)
        if request.path_params["job_id"] == "down":
            return JSONResponse({"detail": "Temporal is unreachable"}, status_code=503)
        start = 0 if last is None else int(last) + 1
        stop = drop_after if last is None else len(events)

        async def body() -> AsyncIterator[bytes]:
            yield b": keep-alive\n\n"
            for e in events[start:stop]:
                message = f"id: {e.offset}\nevent: {e.type.value}\ndata: {e.model_dump_json()}"
                yield message.encode() + b"\n\n"

        return StreamingResponse(body(), media_type="text/event-stream")

    async def job(request: Request) -> Response:
        return JSONResponse({"job_id": request.path_params["job_id"], "status": "RUNNING"})

    return Starlette(
        routes=[
            Route("/v1/jobs/{job_id}/events", stream),
            Route("/v1/jobs/{job_id}", job),
        ]
    )


async def test_follow_reconnects_after_the_last_event_it_saw() -> None:
    events: list[JobEvent] = [
        ResponseStarted(job_id="j", offset=0),
        TokenDelta(job_id="j", revision=1, text="Hello, ", offset=1),
        TokenDelta(job_id="j", revision=1, text="world", offset=2),
        FinalResponse(job_id="j", revision=1, answer="Hello, world", offset=3),
    ]
    seen: list[str | None] = []
    out = io.StringIO()
    view = FollowView(Console(file=out, width=200))
    with serve_asgi(fake_api(events, drop_after=2, seen=seen), lifespan="off") as url:
        async with httpx.AsyncClient(base_url=url) as client:
            end = await follow_events(client, "j", view)
            assert isinstance(end, FinalResponse) and end.answer == "Hello, world"
            assert seen == [None, "1"], "reconnected once, after the last event it saw"
            text = out.getvalue()
            assert "reconnecting after event 1" in text and text.count("Hello, world") == 1

            with pytest.raises(FollowError, match="refused"):
                await follow_events(client, "gone", view)
            seen.clear()
            with pytest.raises(FollowError, match="gave up after 1 reconnections"):
                await follow_events(client, "down", view, max_reconnects=1)
            assert seen == [None, None], "bounded: one try and one retry"


# ------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def stack_spec() -> StackSpec:
    """The module's API and worker on the session's dev server, whose simulated model streams
    at a third of each tier's real speed (a medium answer then streams over several token
    events); search attributes off, as on a server without the ``Agent*`` attributes."""
    return StackSpec(
        settings={
            "auth_disabled": True,
            "sse_keepalive_s": 1.0,
            "activity_heartbeat_timeout_s": 2.0,
            "api_key_pepper": "test-pepper",
            "search_attributes": "off",
        },
        latency_scale=0.3,
    )


@pytest.fixture(scope="module")
def api_settings(stack: Stack) -> Settings:
    return stack.settings


@pytest.fixture(scope="module")
def temporal(stack: Stack) -> Client:
    return stack.temporal


@pytest.fixture(scope="module")
def store(stack: Stack) -> JobStore:
    return stack.store


@pytest.fixture(scope="module")
def api(stack: Stack) -> str:
    """Base URL of the API, whose worker polls the same task queue."""
    return stack.url


# -------------------------------------------------------------------------------- helpers


@dataclass
class Received:
    """One SSE message and the event it carries."""

    message: ServerSentEvent
    event: JobEvent

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.message.id, self.message.event, self.message.data)

    @property
    def durable_key(self) -> tuple[str, str]:
        """The event without the reader's cursor (a replay's ids hold no token position)."""
        return (self.message.event, self.message.data)


def durable(received: list[Received]) -> list[Received]:
    """The durable events (not ``token``: those live on the side channel, not in storage)."""
    return [r for r in received if r.event.type is not EventType.TOKEN]


async def read_stream(
    http: httpx.AsyncClient,
    job_id: str,
    *,
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
    stop_after: int | None = None,
    timeout_s: float = 60.0,
) -> list[Received]:
    """The stream's events until it closes (or ``stop_after`` events, then the connection is
    dropped)."""
    received: list[Received] = []

    async def read() -> None:
        async with http.stream(
            "GET", f"/v1/jobs/{job_id}/events", headers=headers, params=params
        ) as response:
            assert response.status_code == 200, await response.aread()
            assert response.headers["content-type"].startswith("text/event-stream")
            async for message in sse_messages(response):
                received.append(Received(message, EVENT.validate_json(message.data)))
                if stop_after is not None and len(received) >= stop_after:
                    return

    await asyncio.wait_for(read(), timeout_s)
    return received


async def wait_for_polling_workers(log: Path, count: int, timeout_s: float = 60) -> None:
    """Wait until ``log`` shows ``count`` workers polling (each logs it once, when ready)."""
    deadline = time.monotonic() + timeout_s
    while (await asyncio.to_thread(log.read_text, errors="replace")).count(
        "worker polling task queue"
    ) < count:
        assert time.monotonic() < deadline, f"fewer than {count} workers started: {log}"
        await asyncio.sleep(0.1)


async def submit(http: httpx.AsyncClient, **body: Any) -> str:
    body["query"] = f"{body['query']} [{uuid.uuid4().hex[:6]}]"
    r = await http.post("/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    return str(r.json()["job_id"])


def check_offsets(received: list[Received], first: int = 0) -> None:
    """Durable offsets run on without a gap; each id is the reader's cursor after the event."""
    kept = durable(received)
    offsets = [r.event.offset for r in kept]
    assert offsets == list(range(first, first + len(kept))), offsets
    last_offset, last_token = first - 1, None
    for r in received:
        cursor = Cursor.parse(r.message.id or "")
        if r.event.type is EventType.TOKEN:
            assert cursor.token is not None and token_id_after(cursor.token, last_token)
            last_token = cursor.token
        else:
            last_offset = r.event.offset  # type: ignore[assignment]
        assert (cursor.offset, cursor.token) == (last_offset, last_token), r.message.id
    assert all(r.message.event == r.event.type.value for r in received)


def types(received: list[Received]) -> list[EventType]:
    return [r.event.type for r in received]


TOOL_JOB = {
    "query": "What is 17 * (3 + 4)? Explain the order of operations.",
    "model_tier": "medium",  # above small: the small tier drafts first
    "tool_calls": [
        {"id": "t1", "name": "calculator", "parameters": {"expression": "17 * (3 + 4)"}},
        {"id": "t2", "name": "calculator", "parameters": {"expression": "2 ** 10"}},
    ],
}


# ---------------------------------------------------------------------------------- tests


@pytest.mark.devserver
async def test_a_full_job_streams_its_events_in_order(http: httpx.AsyncClient) -> None:
    submitted = time.monotonic()
    job_id = await submit(http, **TOOL_JOB)
    first_event_s: float | None = None
    received: list[Received] = []

    async def read() -> None:
        nonlocal first_event_s
        async with http.stream("GET", f"/v1/jobs/{job_id}/events") as response:
            assert response.status_code == 200
            async for message in sse_messages(response):
                if first_event_s is None:
                    first_event_s = time.monotonic() - submitted
                received.append(Received(message, EVENT.validate_json(message.data)))

    await asyncio.wait_for(read(), 60)  # the stream closes by itself after the terminal event
    print(f"first event {first_event_s:.3f} s after submit")
    check_offsets(received)
    kinds = types(received)
    assert kinds[0] is EventType.RESPONSE_STARTED
    assert kinds[-1] is EventType.FINAL_RESPONSE
    assert sum(k in TERMINAL_EVENTS for k in kinds) == 1
    assert all(r.event.job_id == job_id for r in received)

    # Each stage starts once and completes once, in that order.
    for r in received:
        if isinstance(r.event, StageCompleted):
            started = [
                i
                for i, s in enumerate(received)
                if isinstance(s.event, StageStarted) and s.event.stage is r.event.stage
            ]
            assert len(started) == 1 and started[0] < received.index(r), r.event.stage
            assert r.event.duration_ms >= 0
    started_stages = [r.event.stage for r in received if isinstance(r.event, StageStarted)]
    completed_stages = [r.event.stage for r in received if isinstance(r.event, StageCompleted)]
    # The record stage's completion would come after the terminal event: it is not published.
    assert started_stages[-1] is Stage.RECORD
    assert sorted(started_stages[:-1]) == sorted(completed_stages) and completed_stages

    assert EventType.INITIAL_RESPONSE in kinds
    tools_started = kinds.index(EventType.TOOL_EXECUTION_STARTED)
    tools_done = kinds.index(EventType.TOOL_EXECUTION_COMPLETE)
    results = [i for i, k in enumerate(kinds) if k is EventType.TOOL_RESULT]
    assert tools_started < min(results) and max(results) < tools_done
    call_ids = sorted(received[i].event.result.call_id for i in results)  # type: ignore[union-attr]
    assert call_ids == ["t1", "t2"], "one tool_result per call"

    tokens = [r.event for r in received if isinstance(r.event, TokenDelta)]
    assert len(tokens) >= 2, "the answer streamed in several token events"
    assert kinds.index(EventType.TOKEN) > tools_done
    final = received[-1].event
    assert isinstance(final, FinalResponse)
    own_text = "".join(t.text for t in tokens if t.revision == final.revision)
    assert final.answer == own_text == assemble_text([r.event for r in received[:-1]])
    job = (await http.get(f"/v1/jobs/{job_id}")).json()
    assert job["status"] == "COMPLETED" and job["result"]["answer"] == final.answer
    assert final.simulated and final.usage and final.total_cost_usd > 0


@pytest.mark.devserver
async def test_resume_with_last_event_id_misses_nothing_and_repeats_nothing(
    http: httpx.AsyncClient,
) -> None:
    job_id = await submit(http, **TOOL_JOB)
    first = await read_stream(http, job_id, stop_after=4)  # then the connection drops
    check_offsets(first)
    rest = await read_stream(http, job_id, headers={"Last-Event-ID": first[-1].message.id or ""})
    check_offsets(rest, first=4)
    assert rest[-1].event.type is EventType.FINAL_RESPONSE

    # One uninterrupted read of the finished job replays the same durable events (from the
    # job's record) and closes; token events were live only (final_response has the text).
    whole = await read_stream(http, job_id)
    assert [r.durable_key for r in durable(first + rest)] == [r.durable_key for r in whole]
    assert all(r.event.type is not EventType.TOKEN for r in whole)

    # ``after`` does the same for clients that cannot set headers; the header wins over it.
    by_query = await read_stream(http, job_id, params={"after": "3"})
    assert [r.durable_key for r in by_query] == [r.durable_key for r in durable(rest)]
    both = await read_stream(
        http, job_id, params={"after": "0"}, headers={"Last-Event-ID": str(len(whole) - 2)}
    )
    assert [r.key for r in both] == [whole[-1].key]

    marker = "<script>x9q</script>"
    for value in ("x", "12:abc", "-2", "99999999999999999", marker):
        bad = await http.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": value})
        assert bad.status_code == 422, value
        assert "Last-Event-ID" in bad.text and marker not in bad.text


@pytest.mark.devserver
async def test_unknown_job_is_404_and_a_finished_job_replays_and_closes(
    http: httpx.AsyncClient,
) -> None:
    r = await http.get(f"/v1/jobs/{uuid.uuid4().hex}/events")
    assert r.status_code == 404 and r.headers["content-type"] == "application/json"
    job_id = await submit(http, query="What is a Python tuple?", model_tier="small")
    live = await read_stream(http, job_id)
    replay = await read_stream(http, job_id, timeout_s=10)
    assert [r.durable_key for r in replay] == [r.durable_key for r in durable(live)]
    assert replay[-1].event.type is EventType.FINAL_RESPONSE


@pytest.mark.devserver
async def test_another_keys_job_is_404_and_the_read_scope_is_needed(
    stack: Stack, api_settings: Settings
) -> None:
    """A second API, with authentication on, on the same task queue (the stack runs its worker)."""
    both = [Scope.SUBMIT, Scope.READ]
    alice, bob = stack.key("alice", *both).secret, stack.key("bob", *both).secret
    robot = stack.key("robot", Scope.SUBMIT).secret
    settings = api_settings.model_copy(update={"auth_disabled": False})
    with serve_asgi(create_app(settings)) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            c.headers["Authorization"] = f"Bearer {alice}"
            job_id = await submit(c, query="What is a Python set?", model_tier="small")
            own = await read_stream(c, job_id)
            assert own[-1].event.type is EventType.FINAL_RESPONSE
            c.headers["Authorization"] = f"Bearer {bob}"
            r = await c.get(f"/v1/jobs/{job_id}/events")
            assert r.status_code == 404, r.text
            c.headers["Authorization"] = f"Bearer {robot}"
            assert (await c.get(f"/v1/jobs/{job_id}/events")).status_code == 403
            del c.headers["Authorization"]
            assert (await c.get(f"/v1/jobs/{job_id}/events")).status_code == 401


@pytest.mark.devserver
async def test_a_disconnecting_client_cancels_its_subscription(http: httpx.AsyncClient) -> None:
    """A job waiting for approval publishes nothing for a while: the subscription sits in a long
    poll, with keep-alives; dropping the connection ends it (nothing left polling)."""
    before = streams.open_streams()
    job_id = await submit(http, query="What is a Python dict?", require_approval=True)
    comments: list[str] = []
    async with http.stream("GET", f"/v1/jobs/{job_id}/events") as response:
        lines = response.aiter_lines()
        async for line in lines:  # the raw lines: comments are part of what is checked
            if line.startswith(":"):
                comments.append(line)
            if line == f"event: {EventType.APPROVAL_REQUESTED.value}":
                break
        assert streams.open_streams() == before + 1
        async for line in lines:  # idle now: keep-alives only (1 s apart)
            if line.startswith(":"):
                comments.append(line)
                break
    assert ": keep-alive" in comments
    deadline = time.monotonic() + 10
    while streams.open_streams() != before:
        assert time.monotonic() < deadline, "the subscription outlived its connection"
        await asyncio.sleep(0.05)
    cancel = await http.post(f"/v1/jobs/{job_id}/cancel")
    assert cancel.status_code == 202
    end = await read_stream(http, job_id, params={"after": "0"})
    assert end[-1].event.type is EventType.RESPONSE_ERROR
    assert end[-1].event.status is JobStatus.CANCELED  # type: ignore[union-attr]


def _record(store: JobStore, job_id: str, answer: str) -> None:
    store.record(
        AgentResult(job_id=job_id, status=JobStatus.COMPLETED, answer=answer, simulated=True),
        revision=10,
        created_at=datetime.now(UTC),
    )


@pytest.mark.devserver
async def test_a_job_whose_history_is_gone_gets_one_synthesized_event(
    http: httpx.AsyncClient, store: JobStore
) -> None:
    job_id = uuid.uuid4().hex
    await asyncio.to_thread(_record, store, job_id, "recorded answer")
    received = await read_stream(http, job_id, timeout_s=10)
    assert len(received) == 1
    (only,) = received
    assert only.message.id == "", "no id: the event is not part of any stream"
    raw = (await http.get(f"/v1/jobs/{job_id}/events")).text
    assert raw.startswith(": synthesized from the job record")
    assert isinstance(only.event, FinalResponse) and only.event.offset is None
    assert only.event.answer == "recorded answer"


@workflow.defn(name="AgentWorkflowBeforeStreams", sandboxed=False)
class AgentWorkflowBeforeStreams:
    """A job's workflow as it ran before event streams: no poll update or query handler."""

    def __init__(self) -> None:
        self.done = False

    @workflow.run
    async def run(self) -> str:
        await workflow.wait_condition(lambda: self.done)
        return "done"

    @workflow.signal
    def finish(self) -> None:
        self.done = True


@pytest.mark.devserver
async def test_a_job_started_before_streams_gets_its_outcome_once_it_ends(
    http: httpx.AsyncClient, temporal: Client, store: JobStore
) -> None:
    job_id = uuid.uuid4().hex
    queue = f"legacy-{uuid.uuid4()}"
    async with Worker(temporal, task_queue=queue, workflows=[AgentWorkflowBeforeStreams]):
        handle = await temporal.start_workflow(
            AgentWorkflowBeforeStreams.run, id=f"agent-{job_id}", task_queue=queue
        )
        reading = asyncio.create_task(read_stream(http, job_id, timeout_s=30))
        await asyncio.sleep(1.5)  # the stream found no poll handler and waits for the end
        assert not reading.done()
        await asyncio.to_thread(_record, store, job_id, "answer from before streams")
        await handle.signal(AgentWorkflowBeforeStreams.finish)
        received = await reading
        assert [r.event.type for r in received] == [EventType.FINAL_RESPONSE]
        assert received[0].message.id == ""
        assert received[0].event.answer == "answer from before streams"  # type: ignore[union-attr]

        # Closed now: the stream's poll query is unknown as well; the same one event.
        again = await read_stream(http, job_id, timeout_s=30)
        assert [r.key for r in again] == [r.key for r in received]


@pytest.mark.devserver
async def test_temporal_unreachable_is_503_before_the_stream(
    api_settings: Settings, store: JobStore
) -> None:
    job_id = uuid.uuid4().hex
    await asyncio.to_thread(_record, store, job_id, "recorded")
    down = api_settings.model_copy(update={"temporal_address": f"127.0.0.1:{free_port()}"})
    with serve_asgi(create_app(down)) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            r = await c.get(f"/v1/jobs/{job_id}/events")
    assert r.status_code == 503, r.text


def worker_env(settings: Settings, latency_scale: float) -> dict[str, str]:
    return {
        **os.environ,
        "AGENTFLOW_TEMPORAL_ADDRESS": str(settings.temporal_address),
        "AGENTFLOW_REDIS_URL": settings.redis_url,
        "AGENTFLOW_DATABASE_URL": settings.database_url,
        "AGENTFLOW_TASK_QUEUE": settings.task_queue,
        "AGENTFLOW_SQL_DATABASE_PATH": str(settings.sql_database_path),
        "AGENTFLOW_SIMULATED_LATENCY_SCALE": str(latency_scale),
        # A killed worker's jobs move on after 2 s, not the default 10 s of waiting.
        "AGENTFLOW_STICKY_QUEUE_TIMEOUT_S": "2",
        # A retry waits out a killed attempt's coalescing lease (3 s here, 10 s by default).
        "AGENTFLOW_COALESCE_LEASE_S": "3",
        "PYTHONUNBUFFERED": "1",
    }


@pytest.mark.devserver
@pytest.mark.subprocess
@pytest.mark.timeout(180)
async def test_worker_killed_mid_stream_loses_and_repeats_no_text(
    stack: Stack, tmp_path: Path
) -> None:
    """SIGKILL the worker while the large tier streams its answer; a new worker retries the
    generation under a new revision, and the text a client assembles is exactly the answer."""
    async with stack.own_api() as (settings, c):
        env = worker_env(settings, latency_scale=2.0)  # large: ~15 tokens/s, several seconds
        log = tmp_path / "workers.log"
        received: list[Received] = []
        with worker_process(env, log) as first:
            job_id = await submit(c, query="Write a paragraph about rivers.", model_tier="large")
            async with c.stream("GET", f"/v1/jobs/{job_id}/events") as response:
                assert response.status_code == 200
                messages = sse_messages(response)
                async for message in messages:
                    received.append(Received(message, EVENT.validate_json(message.data)))
                    if sum(isinstance(r.event, TokenDelta) for r in received) >= 3:
                        break
                first.send_signal(signal.SIGKILL)
                first.wait(timeout=10)
                # The retry streams a whole new revision, faster: what is tested is what a
                # client assembles across the two, not how long the second takes.
                faster = {**env, "AGENTFLOW_SIMULATED_LATENCY_SCALE": "0.2"}
                with worker_process(faster, log):
                    async for message in messages:  # the same connection: still open
                        received.append(Received(message, EVENT.validate_json(message.data)))
                        if received[-1].event.type in TERMINAL_EVENTS:
                            break
        check_offsets(received)
        final = received[-1].event
        assert isinstance(final, FinalResponse), final
        tokens = [r.event for r in received if isinstance(r.event, TokenDelta)]
        revisions = sorted({t.revision for t in tokens})
        assert len(revisions) >= 2, f"a second generation attempt streamed: {revisions}"
        killed_text = "".join(t.text for t in tokens if t.revision == revisions[0])
        assert killed_text and final.answer.startswith(killed_text), "same simulated text"
        assert killed_text != final.answer, "the kill landed in the middle of the stream"
        assembled = assemble_text([r.event for r in received if r.event is not final])
        assert assembled == final.answer
        job = (await c.get(f"/v1/jobs/{job_id}")).json()
        assert job["result"]["answer"] == final.answer


@pytest.mark.devserver
async def test_a_finished_job_replays_from_storage_without_any_worker(stack: Stack) -> None:
    """A finished job's stream is stored with its record: with no worker running at all, 300
    replays are answered at once, and Temporal sees no query and no new history event.

    The job's worker is a real one in this process (``python worker.py`` processes and their
    SIGKILL are the test above's subject): stopped before the replays, nothing polls the queue.
    """
    async with stack.own_api() as (settings, c):
        instant = ProviderRegistry({"simulated": SimulatedProvider(latency_scale=0)})
        async with stack.worker(settings, instant):
            job_id = await submit(c, query="What is a Python list?", model_tier="small")
            live = await read_stream(c, job_id)
        handle = stack.temporal.get_workflow_handle(f"agent-{job_id}")
        events_before = len([e async for e in handle.fetch_history_events()])

        async def replay() -> list[Received]:
            return await read_stream(c, job_id, timeout_s=30)

        replays = await asyncio.gather(*(replay() for _ in range(300)))
        for one in replays:
            assert [r.durable_key for r in one] == [r.durable_key for r in durable(live)]
        events_after = len([e async for e in handle.fetch_history_events()])
        assert events_after == events_before, "a replay added to the job's history"


@pytest.mark.devserver
@pytest.mark.subprocess
async def test_cli_submit_follow_prints_the_answer(api: str, http: httpx.AsyncClient) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cli.main",
        "submit",
        f"What is 6 * 7? [{uuid.uuid4().hex[:6]}]",
        "--tool",
        "calculator:" + json.dumps({"expression": "6 * 7"}),
        "--tier",
        "medium",
        "--follow",
        "--api",
        api,
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "400", "AGENTFLOW_API_KEY": ""},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    text = out.decode()
    print(text)
    assert proc.returncode == 0, text
    job_id = text.split("job ", 1)[1].split()[0]
    job = (await http.get(f"/v1/jobs/{job_id}")).json()
    answer = job["result"]["answer"]
    for line in answer.splitlines():
        assert line.strip() in text, (line, text)
    assert "t1 calculator →" in text and '"value": 42' in text
    assert "SIMULATED" in text and "total" in text


@pytest.mark.devserver
@pytest.mark.subprocess
async def test_cli_submit_without_follow_prints_the_job(api: str) -> None:
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "cli.main", "submit", "What is a list?", "--api", api],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "RUNNING" in done.stdout and "/events" in done.stdout
