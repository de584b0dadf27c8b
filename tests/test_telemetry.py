"""One trace from starting the workflow through each activity (in-memory span exporter)."""

from __future__ import annotations

from pathlib import Path

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from temporalio.client import Client
from temporalio.contrib.opentelemetry import TracingInterceptor

from core.models import AgentRequest, JobStatus
from core.settings import Settings
from tests.workflow_support import agent_worker


async def test_workflow_and_activities_share_one_trace(
    client: Client, redis_url: str, settings: Settings, tmp_path: Path
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    config = client.config()
    config["interceptors"] = [TracingInterceptor(provider.get_tracer("test"))]
    traced = Client(**config)

    async with agent_worker(
        traced,
        redis_url=redis_url,
        database_url=f"sqlite:///{tmp_path / 'jobs.db'}",
        settings=settings,
    ) as h:
        result = await h.run(AgentRequest(query="What is 3 + 4? (traced)"))
    assert result.status is JobStatus.COMPLETED

    spans = exporter.get_finished_spans()
    names = {s.name for s in spans}
    assert "StartWorkflow:AgentWorkflow" in names
    assert "RunWorkflow:AgentWorkflow" in names
    for activity in (
        "select_model",
        "plan_tools",
        "run_tool",
        "compress_context",
        "generate_answer",
    ):
        assert f"StartActivity:{activity}" in names and f"RunActivity:{activity}" in names
    assert len({s.context.trace_id for s in spans}) == 1, "one trace from start to last activity"
