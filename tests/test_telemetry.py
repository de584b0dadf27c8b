"""One trace from starting the workflow through each activity (in-memory span exporter)."""

from __future__ import annotations

from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from core.models import AgentRequest, JobStatus, ToolCall
from core.telemetry import configure_tracing
from tests.workflow_support import Harness


async def test_workflow_and_activities_share_one_trace(harness: Harness) -> None:
    exporter = InMemorySpanExporter()
    configure_tracing("agentflow-tests").add_span_processor(SimpleSpanProcessor(exporter))
    request = AgentRequest(
        query="Explain Python decorators briefly (traced)",
        tool_calls=[ToolCall(id="c", name="calculator", parameters={"expression": "3 + 4"})],
    )
    handle = await harness.start(request)
    result = await handle.result()
    assert result.status is JobStatus.COMPLETED

    ours = [
        s
        for s in exporter.get_finished_spans()
        if (s.attributes or {}).get("temporalWorkflowID") == handle.id
    ]
    names = {s.name for s in ours}
    assert "StartWorkflow:AgentWorkflow" in names
    assert "RunWorkflow:AgentWorkflow" in names
    assert "RunActivity:generate_answer" in names
    # The quick tools ran inside prepare_job (workflow shape 2), whose span is below.
    for local in ("prepare_job", "record_job"):
        assert f"RunActivity:{local}" in names, f"local activity {local} traced"
    assert len({s.context.trace_id for s in ours}) == 1, "one trace from start to last activity"
