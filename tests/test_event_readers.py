"""Readers cost a job nothing: many, abandoned, slow or hostile readers never touch the job.

A real ``temporal server start-dev``, the real app under uvicorn, real Redis, real workers. What
these tests hold (each failed on the code before the event hub):

* a job at its approval gate with 200 live readers and 50 abandoned connections is decided at
  once (each reader used to hold one of the workflow's 10 update slots: the decision got 503);
* readers add nothing to a job's history, and token events add little (they go through Redis);
* the work a job's readers cause is one poll per job per API process, whatever their number;
* odd ``Last-Event-ID`` values only affect the reader that sent them;
* Redis lost mid-stream: readers still get the outcome (token events stop, nothing else does);
* an answer that fits in one token batch takes one attempt and one model call.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.client import Client
from temporalio.testing import ActivityEnvironment

from activities.token_stream import TokenPublisher, TokenStreamSettings
from api.app import create_app
from api.event_hub import EventHub
from core.events import EventType, JobEvent
from core.models import CURRENT_SHAPE, AgentRequest, AgentWorkflowInput, Tier
from core.settings import Settings
from infra.cache import RedisCache
from infra.providers import ProviderRegistry
from infra.providers.scripted import ScriptedProvider
from infra.token_channel import TOKEN_FIELD, token_stream_key
from tests.helpers import redis_server, serve_asgi, worker_process
from tests.stack import Stack
from tests.test_events import EVENT, sse_messages, submit, worker_env
from tests.test_events import stack_spec as _events_stack_spec
from tests.workflow_support import agent_worker
from workflows.agent import AgentWorkflow

# The events tests' stack (the API and an in-process worker whose large tier streams for a few
# seconds), on a task queue of this module's own.
stack_spec = _events_stack_spec


@pytest.fixture(scope="module")
def api_settings(stack: Stack) -> Settings:
    return stack.settings


@pytest.fixture(scope="module")
def temporal(stack: Stack) -> Client:
    return stack.temporal


@pytest.fixture(scope="module")
def readers(stack: Stack) -> tuple[str, EventHub]:
    """The API's URL and its process's event hub."""
    assert stack.app is not None
    return stack.url, stack.app.state.agentflow.event_hub


@pytest.fixture
async def http(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=400, max_keepalive_connections=400)
    async with httpx.AsyncClient(base_url=stack.url, timeout=60, limits=limits) as c:
        yield c


async def read_until_outcome(http: httpx.AsyncClient, job_id: str) -> list[JobEvent]:
    """One reader: every event until the terminal one (or the end of the stream)."""
    events: list[JobEvent] = []
    async with http.stream("GET", f"/v1/jobs/{job_id}/events") as response:
        assert response.status_code == 200, await response.aread()
        async for message in sse_messages(response):
            assert message.event != "stream_error", message.data
            events.append(EVENT.validate_json(message.data))
            if events[-1].type in (EventType.FINAL_RESPONSE, EventType.RESPONSE_ERROR):
                break
    return events


async def wait_for_status(http: httpx.AsyncClient, job_id: str, status: str) -> None:
    deadline = time.monotonic() + 30
    while (await http.get(f"/v1/jobs/{job_id}")).json()["status"] != status:
        assert time.monotonic() < deadline, f"job {job_id} never reached {status}"
        await asyncio.sleep(0.1)


async def history_events(client: Client, job_id: str) -> list[Any]:
    handle = client.get_workflow_handle(f"agent-{job_id}")
    return [e async for e in handle.fetch_history_events()]


def abandoned_connection(url: str, job_id: str) -> socket.socket:
    """A raw connection that asks for the stream and never reads a byte."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.sendall(
        f"GET /v1/jobs/{job_id}/events HTTP/1.1\r\nHost: {host}\r\n"
        "Accept: text/event-stream\r\n\r\n".encode()
    )
    return sock


# ---------------------------------------------------------------------------------- tests


@pytest.mark.devserver
@pytest.mark.timeout(240)
async def test_a_gated_job_with_200_readers_and_50_abandoned_connections_is_decided_at_once(
    readers: tuple[str, EventHub], http: httpx.AsyncClient, temporal: Client
) -> None:
    url, hub = readers
    job_id = await submit(
        http, query="Explain how a hash map works.", model_tier="medium", require_approval=True
    )
    await wait_for_status(http, job_id, "AWAITING_APPROVAL")
    readers = [asyncio.create_task(read_until_outcome(http, job_id)) for _ in range(200)]
    with ExitStack() as stack_of_sockets:
        for _ in range(50):
            sock = abandoned_connection(url, job_id)
            stack_of_sockets.callback(sock.close)
        deadline = time.monotonic() + 60
        while hub.readers(job_id) < 200:
            assert time.monotonic() < deadline, f"{hub.readers(job_id)} readers attached"
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # the readers poll (through the hub) for a while
    # The abandoned connections are closed now; the readers are all still attached.
    started = time.monotonic()
    decision = await http.post(f"/v1/jobs/{job_id}/approval", json={"approved": True})
    took = time.monotonic() - started
    print(f"decision with 200 readers: {took:.3f} s")
    assert decision.status_code == 200, decision.text
    outcomes = await asyncio.wait_for(asyncio.gather(*readers), 120)
    assert all(events and events[-1].type is EventType.FINAL_RESPONSE for events in outcomes)
    assert len({events[-1].model_dump_json() for events in outcomes}) == 1, "one outcome"
    # The only update the workflow ever saw is the decision: readers hold no update slot.
    updates = [
        e
        for e in await history_events(temporal, job_id)
        if e.HasField("workflow_execution_update_accepted_event_attributes")
    ]
    assert len(updates) == 1


@pytest.mark.devserver
@pytest.mark.timeout(240)
async def test_readers_add_nothing_to_history_and_tokens_little(
    readers: tuple[str, EventHub],
    http: httpx.AsyncClient,
    temporal: Client,
    api_settings: Settings,
) -> None:
    query = "Write a paragraph about rivers."
    alone = await submit(http, query=query, model_tier="large")
    await read_until_outcome(http, alone)  # one reader, to know when it ended
    watched = await submit(http, query=query, model_tier="large")
    outcomes = await asyncio.gather(*(read_until_outcome(http, watched) for _ in range(10)))
    tokens = sum(e.type is EventType.TOKEN for e in outcomes[0])
    assert tokens >= 3, "the answer streamed"

    async def run_direct(stream_tokens: bool) -> str:
        job_id = uuid.uuid4().hex
        inp = AgentWorkflowInput(
            job_id=job_id,
            request=AgentRequest(query=f"{query} [{job_id[:6]}]", model_tier=Tier.LARGE),
            stream_tokens=stream_tokens,
            shape=CURRENT_SHAPE,
        )
        await temporal.execute_workflow(
            AgentWorkflow.run, inp, id=f"agent-{job_id}", task_queue=api_settings.task_queue
        )
        return job_id

    with_tokens, without_tokens = await asyncio.gather(run_direct(True), run_direct(False))
    counts = {
        "1 reader": len(await history_events(temporal, alone)),
        "10 readers": len(await history_events(temporal, watched)),
        "tokens on, no reader": len(await history_events(temporal, with_tokens)),
        "tokens off": len(await history_events(temporal, without_tokens)),
    }
    print(counts)
    # Equal within the noise of how activity completions batch into workflow tasks.
    assert abs(counts["10 readers"] - counts["1 reader"]) <= 4, counts
    assert counts["tokens on, no reader"] <= 2 * counts["tokens off"], counts


@pytest.mark.devserver
@pytest.mark.timeout(120)
async def test_a_jobs_reads_are_one_poll_per_process_whatever_the_readers(
    readers: tuple[str, EventHub], http: httpx.AsyncClient
) -> None:
    """The queries Temporal answers for a job's readers do not grow with their number."""
    url, hub = readers

    async def polls_while_watched(readers: int, sockets: int) -> float:
        job_id = await submit(
            http, query="Explain recursion.", model_tier="medium", require_approval=True
        )
        await wait_for_status(http, job_id, "AWAITING_APPROVAL")
        tasks = [asyncio.create_task(read_until_outcome(http, job_id)) for _ in range(readers)]
        with ExitStack() as stack_of_sockets:
            for _ in range(sockets):
                stack_of_sockets.callback(abandoned_connection(url, job_id).close)
            deadline = time.monotonic() + 30
            while hub.readers(job_id) < readers + sockets:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            before, started = hub.queries, time.monotonic()
            await asyncio.sleep(2.0)
            rate = (hub.queries - before) / (time.monotonic() - started)
            await http.post(f"/v1/jobs/{job_id}/approval", json={"approved": False})
            await asyncio.wait_for(asyncio.gather(*tasks), 60)
        return rate

    one = await polls_while_watched(1, 0)
    many = await polls_while_watched(50, 100)
    print(f"poll queries per second: 1 reader {one:.1f}, 50 readers + 100 sockets {many:.1f}")
    # Other jobs' feeds may still linger in the hub; neither number may scale with readers.
    assert many <= one * 2 + 5, (one, many)


@pytest.mark.devserver
async def test_odd_last_event_ids_affect_only_their_own_reader(
    readers: tuple[str, EventHub], http: httpx.AsyncClient
) -> None:
    job_id = await submit(http, query="Write a paragraph about rivers.", model_tier="large")
    live = asyncio.create_task(read_until_outcome(http, job_id))
    for value in ("9007199254740991", "0:99999999999999-0", "-1:0-0", "5"):
        for _ in range(2):
            async with http.stream(
                "GET", f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": value}
            ) as response:
                assert response.status_code == 200
                async for _line in response.aiter_lines():
                    break  # connect, take a line, leave
    events = await asyncio.wait_for(live, 60)
    assert events[-1].type is EventType.FINAL_RESPONSE
    assert [e.offset for e in events if e.offset is not None] == list(
        range(len([e for e in events if e.offset is not None]))
    )


@pytest.mark.devserver
async def test_a_cursor_past_the_end_gets_a_stream_error_not_silence(
    readers: tuple[str, EventHub], http: httpx.AsyncClient
) -> None:
    job_id = await submit(http, query="What is a Python set?", model_tier="small")
    events = await read_until_outcome(http, job_id)
    response = await http.get(
        f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": "9007199254740991"}
    )
    assert response.status_code == 200
    assert "event: stream_error" in response.text and "cursor_past_end" in response.text
    # A browser's EventSource reconnects after the end with the terminal event's id: it is
    # told the job ended, not that its id is wrong.
    last = events[-1].offset
    response = await http.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": str(last)})
    assert "event: stream_error" in response.text and "already_ended" in response.text


@pytest.mark.devserver
async def test_a_cursor_past_the_end_of_a_running_job_gets_no_token_events(
    readers: tuple[str, EventHub], http: httpx.AsyncClient
) -> None:
    """Token events never run ahead of the durable position a reader claims."""
    job_id = await submit(http, query="Write a paragraph about rivers.", model_tier="large")
    response = await http.get(
        f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": "9007199254740991"}
    )
    assert response.status_code == 200
    assert "event: token" not in response.text
    assert "event: stream_error" in response.text and "cursor_past_end" in response.text


@pytest.mark.devserver
@pytest.mark.timeout(180)
async def test_redis_lost_mid_stream_still_ends_with_the_outcome(
    api_settings: Settings, tmp_path: Path
) -> None:
    with ExitStack() as redis_stack:
        own_redis = redis_stack.enter_context(redis_server())
        settings = api_settings.model_copy(
            update={"task_queue": f"redis-down-{uuid.uuid4()}", "redis_url": own_redis}
        )
        env = worker_env(settings, latency_scale=1.0)
        with (
            serve_asgi(create_app(settings)) as url,
            worker_process(env, tmp_path / "worker.log"),
        ):
            async with httpx.AsyncClient(base_url=url, timeout=60) as c:
                job_id = await submit(
                    c, query="Write a paragraph about rivers.", model_tier="large"
                )
                events: list[JobEvent] = []
                async with c.stream("GET", f"/v1/jobs/{job_id}/events") as response:
                    async for message in sse_messages(response):
                        events.append(EVENT.validate_json(message.data))
                        if sum(e.type is EventType.TOKEN for e in events) == 2:
                            redis_stack.close()  # Redis is gone for the rest of the job
                        if events[-1].type in (EventType.FINAL_RESPONSE, EventType.RESPONSE_ERROR):
                            break
                assert events[-1].type is EventType.FINAL_RESPONSE, events[-1]
                job = (await c.get(f"/v1/jobs/{job_id}")).json()
                assert job["status"] == "COMPLETED"


async def test_an_answer_that_fits_in_one_batch_is_published_and_the_exit_returns(
    redis_url: str,
) -> None:
    """The hang: a publisher whose whole answer fit in one batch used to be able to wait for its
    activity's start-to-close timeout. 200 tiny answers in a row: each exit returns, each
    answer's events are in Redis, in order."""
    cache = RedisCache(redis_url)
    settings = TokenStreamSettings(batch_ms=50, batch_tokens=32)

    async def one(job_id: str) -> None:
        async with TokenPublisher(job_id, 1, Tier.SMALL, settings, cache) as publisher:
            publisher.on_delta("Hello")
            publisher.on_delta(" world")

    try:
        jobs = [f"hang-{uuid.uuid4().hex}" for _ in range(200)]
        env = ActivityEnvironment()
        for job_id in jobs:
            await asyncio.wait_for(env.run(one, job_id), 5)
        for job_id in jobs[:20]:
            entries = await cache.client.xrange(token_stream_key(job_id))
            texts = [EVENT.validate_json(fields[TOKEN_FIELD.encode()]) for _, fields in entries]
            assert "".join(t.text for t in texts) == "Hello world"  # type: ignore[union-attr]
    finally:
        await cache.aclose()


@pytest.mark.timeout(60)
async def test_a_short_streamed_answer_takes_one_attempt_and_one_model_call(
    client: Client, redis_url: str, settings: Settings, tmp_path: Path
) -> None:
    provider = ScriptedProvider(lambda spec, messages, max_tokens: "Short.", stream_pieces=1)
    async with agent_worker(
        client,
        redis_url=redis_url,
        database_url=f"sqlite:///{tmp_path / 'jobs.db'}",
        settings=settings,
        providers=ProviderRegistry({"simulated": provider}),
    ) as harness:
        result = await harness.run(
            AgentRequest(
                query=f"Say something short [{uuid.uuid4().hex[:6]}]", model_tier=Tier.SMALL
            ),
            stream_tokens=True,
        )
    assert result.answer == "Short."
    final = [u for u in result.usage if u.purpose == "final"]
    assert len(final) == 1 and len(provider.calls) == 1, provider.calls


@pytest.mark.devserver
@pytest.mark.timeout(120)
async def test_sockets_that_never_read_are_sent_the_outcome_and_closed(
    readers: tuple[str, EventHub], http: httpx.AsyncClient
) -> None:
    """100 connections that read nothing while the job runs: once it ended each holds the whole
    stream up to final_response and the server closes it (EOF), so none lingers."""
    url, hub = readers
    job_id = await submit(http, query="Write a paragraph about rivers.", model_tier="large")
    sockets = [abandoned_connection(url, job_id) for _ in range(100)]
    try:
        await read_until_outcome(http, job_id)

        def drain(sock: socket.socket) -> bytes:
            sock.settimeout(20)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
            return b"".join(chunks)

        received = await asyncio.gather(*(asyncio.to_thread(drain, s) for s in sockets))
    finally:
        for sock in sockets:
            sock.close()
    assert all(b"event: final_response" in data for data in received)
    assert hub.readers(job_id) == 0


@pytest.mark.devserver
@pytest.mark.timeout(120)
async def test_resume_with_a_token_cursor_loses_and_repeats_no_text(
    readers: tuple[str, EventHub], http: httpx.AsyncClient
) -> None:
    """Drop the connection after a few token events, reconnect with the last id (which names a
    token position): the text assembled across both connections is exactly the answer."""
    job_id = await submit(http, query="Write a paragraph about rivers.", model_tier="large")
    first: list[tuple[str, JobEvent]] = []
    async with http.stream("GET", f"/v1/jobs/{job_id}/events") as response:
        async for message in sse_messages(response):
            first.append((message.id, EVENT.validate_json(message.data)))
            if sum(e.type is EventType.TOKEN for _, e in first) == 3:
                break
    last_id = first[-1][0]
    assert ":" in last_id, "the cursor names the token position"
    rest: list[JobEvent] = []
    async with http.stream(
        "GET", f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": last_id}
    ) as response:
        async for message in sse_messages(response):
            rest.append(EVENT.validate_json(message.data))
    events = [e for _, e in first] + rest
    final = events[-1]
    assert final.type is EventType.FINAL_RESPONSE
    tokens = [e for e in events if e.type is EventType.TOKEN]
    seqs = [(t.revision, t.seq) for t in tokens]  # type: ignore[union-attr]
    assert len(seqs) == len(set(seqs)), "a token event came twice"
    assert "".join(t.text for t in tokens) == final.answer  # type: ignore[union-attr]
    durable = [e.offset for e in events if e.offset is not None]
    assert durable == list(range(len(durable))), "a durable event lost or repeated"
