"""Prometheus metrics: the registry's numbers, bounded labels, the API's and the worker's
``/metrics`` over real HTTP (parsed with prometheus-client's parser), a Redis outage showing in
them, and the Temporal SDK's own metrics through its Prometheus runtime."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from temporalio import activity
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

import core.metrics
from api.app import create_app
from api.routes import prometheus
from core.metrics import (
    OTHER,
    UNMATCHED_ROUTE,
    Metrics,
    serve_worker_metrics,
    temporal_runtime,
)
from core.models import AgentResult, JobStatus, ModelUsage, Stage, StageTiming, Tier
from core.settings import Settings
from tests.helpers import free_port, redis_server, serve_asgi

# ---------------------------------------------------------------------------------- helpers


def samples(text: str) -> list[Sample]:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def value(text: str, name: str, **labels: str) -> float:
    """The value of the one sample ``name`` whose labels include ``labels`` (0 when absent)."""
    found = [
        s.value
        for s in samples(text)
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(found) <= 1, (name, labels, found)
    return found[0] if found else 0.0


def label_values(text: str, name: str, label: str) -> set[str]:
    return {s.labels[label] for s in samples(text) if s.name == name and label in s.labels}


def usage(tier: Tier, prompt: int, completion: int, cost_usd: float) -> ModelUsage:
    return ModelUsage(
        purpose="final",
        tier=tier,
        provider="simulated",
        model=f"sim-{tier.value}",
        simulated=True,
        prompt_tokens=prompt,
        completion_tokens=completion,
        cost_usd=cost_usd,
        latency_ms=12.0,
    )


def result(
    job_id: str,
    status: JobStatus,
    timings: Iterable[tuple[Stage, float]] = (),
    usages: Iterable[ModelUsage] = (),
) -> AgentResult:
    return AgentResult(
        job_id=job_id,
        status=status,
        timings=[StageTiming(stage=s, duration_ms=ms) for s, ms in timings],
        usage=list(usages),
    )


def rendered(metrics: Metrics) -> str:
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    return body.decode()


# ---------------------------------------------------------------------------------- registry


def test_a_terminal_job_records_status_stages_duration_tokens_and_cost() -> None:
    m = Metrics()
    done = result(
        "j1",
        JobStatus.COMPLETED,
        timings=[(Stage.TOOLS, 40.0), (Stage.GENERATION, 1200.0)],
        usages=[usage(Tier.SMALL, 100, 20, 0.001), usage(Tier.LARGE, 300, 50, 0.03)],
    )
    assert m.observe_job(result("j1", JobStatus.RUNNING))
    assert m.observe_job(done)
    text = rendered(m)

    assert value(text, "agentflow_jobs_total", status="RUNNING") == 1
    assert value(text, "agentflow_jobs_total", status="COMPLETED") == 1
    assert value(text, "agentflow_stage_duration_seconds_count", stage="generation") == 1
    assert value(text, "agentflow_stage_duration_seconds_sum", stage="generation") == 1.2
    # 40 ms lands in the 50 ms bucket, not the 25 ms one.
    assert value(text, "agentflow_stage_duration_seconds_bucket", stage="tools", le="0.025") == 0
    assert value(text, "agentflow_stage_duration_seconds_bucket", stage="tools", le="0.05") == 1
    assert value(text, "agentflow_job_duration_seconds_sum") == pytest.approx(1.24)
    assert value(text, "agentflow_job_duration_seconds_count") == 1
    assert value(text, "agentflow_tokens_total", tier="small", kind="prompt") == 100
    assert value(text, "agentflow_tokens_total", tier="small", kind="completion") == 20
    assert value(text, "agentflow_tokens_total", tier="large", kind="prompt") == 300
    assert value(text, "agentflow_tokens_total", tier="large", kind="completion") == 50
    assert value(text, "agentflow_cost_usd_total", tier="large") == pytest.approx(0.03)
    assert value(text, "agentflow_cost_usd_total", tier="small") == pytest.approx(0.001)
    # The RUNNING projection counted its status only: one job duration, the completed one.
    assert "medium" not in label_values(text, "agentflow_tokens_total", "tier")


def test_a_retried_record_counts_once_per_job_and_status() -> None:
    m = Metrics()
    failed = result(
        "j2", JobStatus.FAILED, [(Stage.GENERATION, 500.0)], [usage(Tier.SMALL, 10, 0, 0.5)]
    )
    assert m.observe_job(failed)
    assert not m.observe_job(failed)  # record_job retried
    assert m.observe_job(result("j3", JobStatus.FAILED))  # another job, same status
    text = rendered(m)
    assert value(text, "agentflow_jobs_total", status="FAILED") == 2
    assert value(text, "agentflow_cost_usd_total", tier="small") == 0.5
    assert value(text, "agentflow_stage_duration_seconds_count", stage="generation") == 1


def test_the_memory_of_recorded_jobs_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core.metrics, "RECORDED_JOBS_REMEMBERED", 3)
    m = Metrics()
    for i in range(4):
        assert m.observe_job(result(f"b{i}", JobStatus.CANCELED))
    assert len(m._recorded) == 3
    # b0 was forgotten (oldest), so it counts again; b3 is remembered.
    assert m.observe_job(result("b0", JobStatus.CANCELED))
    assert not m.observe_job(result("b3", JobStatus.CANCELED))
    assert value(rendered(m), "agentflow_jobs_total", status="CANCELED") == 5


def test_cache_labels_are_bounded_and_counted() -> None:
    m = Metrics()
    m.observe_cache("tool", "hit")
    m.observe_cache("tool", "hit")
    m.observe_cache("response", "miss")
    m.observe_cache("semantic", "skipped")
    m.observe_cache("component", "error")
    m.observe_cache("user-42", "hit")  # an unbounded value never becomes a label
    m.observe_cache("tool", "maybe")
    m.observe_coalesced("tool")
    m.observe_coalesced("response", 2)
    m.observe_coalesced("job-abc")
    with pytest.raises(ValueError, match="negative"):
        m.observe_coalesced("tool", -1)
    text = rendered(m)

    assert value(text, "agentflow_cache_lookups_total", level="tool", outcome="hit") == 2
    assert value(text, "agentflow_cache_lookups_total", level="response", outcome="miss") == 1
    assert value(text, "agentflow_cache_lookups_total", level="semantic", outcome="skipped") == 1
    assert value(text, "agentflow_cache_lookups_total", level="component", outcome="error") == 1
    assert value(text, "agentflow_cache_lookups_total", level=OTHER, outcome="hit") == 1
    assert value(text, "agentflow_cache_lookups_total", level="tool", outcome=OTHER) == 1
    levels = label_values(text, "agentflow_cache_lookups_total", "level")
    assert levels <= {"response", "semantic", "tool", "component", OTHER}
    outcomes = label_values(text, "agentflow_cache_lookups_total", "outcome")
    assert outcomes <= {"hit", "miss", "error", "skipped", OTHER}
    assert value(text, "agentflow_coalesced_total", level="tool") == 1
    assert value(text, "agentflow_coalesced_total", level="response") == 2
    assert value(text, "agentflow_coalesced_total", level=OTHER) == 1
    assert "user-42" not in text and "job-abc" not in text


def test_cache_degraded_follows_the_setter_or_a_probe() -> None:
    m = Metrics()
    assert value(rendered(m), "agentflow_cache_degraded") == 0
    m.set_cache_degraded(True)
    assert value(rendered(m), "agentflow_cache_degraded") == 1
    down = {"now": False}
    m.watch_cache_degraded(lambda: down["now"])  # read at every scrape
    assert value(rendered(m), "agentflow_cache_degraded") == 0
    down["now"] = True
    assert value(rendered(m), "agentflow_cache_degraded") == 1

    def broken() -> bool:
        raise RuntimeError("probe bug")

    m.watch_cache_degraded(broken)  # a failing probe falls back to the set value
    assert value(rendered(m), "agentflow_cache_degraded") == 1
    m.watch_cache_degraded(None)
    m.set_cache_degraded(False)
    assert value(rendered(m), "agentflow_cache_degraded") == 0


def test_http_methods_are_bounded_and_openmetrics_is_negotiated() -> None:
    m = Metrics()
    m.observe_http("/v1/jobs", "post", 202, 0.03)
    m.observe_http("/v1/jobs", "BREW", 405, 0.001)
    text = rendered(m)
    assert value(text, "agentflow_http_requests_total", route="/v1/jobs", method="POST") == 1
    assert value(text, "agentflow_http_requests_total", route="/v1/jobs", method=OTHER) == 1
    body, content_type = m.render("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    families = {f.name: f for f in openmetrics_families(body.decode())}
    assert families["agentflow_http_requests"].type == "counter"


# ---------------------------------------------------------------------------------- API


def api_settings(tmp_path: Path, redis_url: str, temporal_address: str) -> Settings:
    return Settings(
        temporal_address=temporal_address,
        redis_url=redis_url,
        database_url=f"sqlite:///{tmp_path / 'jobs.db'}",
        task_queue=f"metrics-{uuid.uuid4()}",
        auth_disabled=True,
        max_request_bytes=10_000,
    )


async def test_api_metrics_use_route_templates_over_http(
    env: WorkflowEnvironment, redis_url: str, tmp_path: Path
) -> None:
    target = env.client.service_client.config.target_host
    job_id = uuid.uuid4().hex
    with serve_asgi(create_app(api_settings(tmp_path, redis_url, target))) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            before = (await http.get("/metrics")).text
            assert (await http.get("/healthz")).status_code == 200
            assert (await http.get(f"/v1/jobs/{job_id}")).status_code == 404
            assert (await http.get(f"/v1/jobs/{job_id}")).status_code == 404
            assert (await http.get("/v1/jobs/not.a.job")).status_code == 422
            assert (await http.get(f"/no/such/{job_id}")).status_code == 404
            # Refused by the body-limit middleware before any route ran.
            big = await http.post("/v1/jobs", content=b"x" * 20_000)
            assert big.status_code == 413
            scrape = await http.get("/metrics")
    assert scrape.status_code == 200
    assert scrape.headers["content-type"].startswith("text/plain")
    after = scrape.text

    def delta(**labels: str) -> float:
        name = "agentflow_http_requests_total"
        return value(after, name, **labels) - value(before, name, **labels)

    item = "/v1/jobs/{job_id}"
    assert delta(route=item, method="GET", status="404") == 2
    assert delta(route=item, method="GET", status="422") == 1
    assert delta(route="/healthz", method="GET", status="200") == 1
    assert delta(route=UNMATCHED_ROUTE, method="GET", status="404") == 1
    assert delta(route=UNMATCHED_ROUTE, method="POST", status="413") == 1
    count = "agentflow_http_request_duration_seconds_count"
    assert value(after, count, route=item) - value(before, count, route=item) == 3
    # No raw path or id ever becomes a label.
    assert job_id not in after and "not.a.job" not in after
    counted = {
        s.labels["route"]
        for s in samples(after)
        if s.name == "agentflow_http_requests_total" and s.value > value(before, s.name, **s.labels)
    }
    assert counted == {"/metrics", "/healthz", item, UNMATCHED_ROUTE}
    # Redis answered, and the process collectors are there.
    assert value(after, "agentflow_cache_degraded") == 0
    assert value(after, "process_cpu_seconds_total") > 0


async def test_redis_down_shows_in_the_api_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(prometheus, "REDIS_PROBE_REUSE_S", 0.1)
    port = free_port()
    settings = api_settings(tmp_path, f"redis://127.0.0.1:{port}/0", f"127.0.0.1:{free_port()}")
    with serve_asgi(create_app(settings)) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:

            async def degraded() -> float:
                return value((await http.get("/metrics")).text, "agentflow_cache_degraded")

            with redis_server(port):
                assert await degraded() == 0
            await asyncio.sleep(0.2)  # past the probe's reuse window
            assert await degraded() == 1
            with redis_server(port):
                await asyncio.sleep(0.2)
                assert await degraded() == 0


# ---------------------------------------------------------------------------------- worker


async def test_worker_metrics_server_on_port_zero_serves_its_registry() -> None:
    m = Metrics()
    m.observe_job(result("w1", JobStatus.COMPLETED, [(Stage.RECORD, 3.0)]))
    server = serve_worker_metrics(0, "127.0.0.1", m)
    try:
        assert server.port > 0
        async with httpx.AsyncClient(timeout=10) as http:
            r = await http.get(f"http://127.0.0.1:{server.port}/metrics")
        assert r.status_code == 200
        assert value(r.text, "agentflow_jobs_total", status="COMPLETED") == 1
        assert value(r.text, "agentflow_stage_duration_seconds_count", stage="record") == 1
    finally:
        server.close()
    async with httpx.AsyncClient(timeout=2) as http:
        with pytest.raises(httpx.ConnectError):
            await http.get(f"http://127.0.0.1:{server.port}/metrics")


@activity.defn(name="metrics_noop")
async def metrics_noop() -> None:
    return None


async def test_temporal_runtime_exports_the_sdk_worker_metrics(env: WorkflowEnvironment) -> None:
    assert temporal_runtime(None) is None
    port = free_port()
    runtime = temporal_runtime(port, "127.0.0.1")
    assert runtime is not None
    assert temporal_runtime(port, "127.0.0.1") is runtime  # one per address and process
    client = await Client.connect(
        env.client.service_client.config.target_host, namespace="default", runtime=runtime
    )
    worker = Worker(client, task_queue=f"metrics-{uuid.uuid4()}", activities=[metrics_noop])
    names: set[str] = set()
    async with worker, httpx.AsyncClient(timeout=5) as http:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
            names = {f.name for f in text_string_to_metric_families(text)}
            if {"temporal_request", "temporal_num_pollers"} <= names:
                break
            await asyncio.sleep(0.2)
    assert {"temporal_request", "temporal_num_pollers"} <= names, sorted(names)
    assert all(n.startswith("temporal_") for n in names)


def test_worker_metrics_refuse_a_bound_port() -> None:
    first = serve_worker_metrics(0, "127.0.0.1", Metrics())
    try:
        with pytest.raises(OSError):
            serve_worker_metrics(first.port, "127.0.0.1", Metrics())
    finally:
        first.close()


def test_stage_timings_use_seconds() -> None:
    m = Metrics()
    m.observe_job(result("s1", JobStatus.EXPIRED, [(Stage.AWAITING_APPROVAL, 90_000.0)]))
    text = rendered(m)
    # 90 s of waiting: past the 30 s bucket, counted in +Inf only.
    assert (
        value(text, "agentflow_stage_duration_seconds_bucket", stage="awaiting_approval", le="30.0")
        == 0
    )
    assert (
        value(text, "agentflow_stage_duration_seconds_bucket", stage="awaiting_approval", le="+Inf")
        == 1
    )
    assert value(text, "agentflow_job_duration_seconds_bucket", le="60.0") == 0
    assert value(text, "agentflow_job_duration_seconds_bucket", le="300.0") == 1
    assert timedelta(milliseconds=90_000).total_seconds() == value(
        text, "agentflow_job_duration_seconds_sum"
    )
