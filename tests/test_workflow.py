"""AgentWorkflow on the time-skipping test server, with real activities, Redis and SQLite."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.testing import WorkflowEnvironment

from core.catalog import ModelCatalog
from core.models import (
    AgentRequest,
    ApprovalDecision,
    ContextItem,
    Importance,
    JobStatus,
    Stage,
    Tier,
    ToolCall,
    ToolFailure,
    ToolSuccess,
)
from core.settings import Settings
from infra.providers import ProviderRegistry, SimulatedProvider
from tests.helpers import serve_asgi
from tests.test_providers import ServerState, make_app
from tests.workflow_support import (
    Harness,
    activity_spans,
    agent_worker,
    save_history,
    wait_for_stage,
)
from workflows.agent import AgentWorkflow

SAVE = bool(os.environ.get("AGENTFLOW_SAVE_HISTORIES"))


def unique(text: str) -> str:
    """A query no other test (or earlier run against the same Redis) has cached."""
    return f"{text} [{uuid.uuid4().hex[:8]}]"


async def test_happy_path_runs_every_stage(
    client: Client, redis_url: str, settings: Settings, tmp_path: Path
) -> None:
    # The simulated tiers at a fifth of their latency: the small draft then arrives before the
    # medium final answer (a draft still running when the answer is ready is cancelled).
    async with agent_worker(
        client,
        redis_url=redis_url,
        database_url=f"sqlite:///{tmp_path / 'jobs.db'}",
        settings=settings,
        providers=ProviderRegistry({"simulated": SimulatedProvider(latency_scale=0.2)}),
    ) as harness:
        await _happy_path(harness)


async def _happy_path(harness: Harness) -> None:
    request = AgentRequest(
        query=unique("What does a Python decorator do, and what is 12 * (3 + 4)?"),
        context=[ContextItem(content="The user is learning Python.", importance=Importance.HIGH)],
        tool_calls=[ToolCall(id="calc", name="calculator", parameters={"expression": "12*(3+4)"})],
        # Pinned above small so every stage runs, the draft included (the tools answer this
        # question, so the router alone would choose small).
        model_tier="medium",
    )
    handle = await harness.start(request)
    result = await handle.result()

    assert result.status is JobStatus.COMPLETED
    assert result.simulated and result.answer and result.answer.startswith("[simulated")
    assert not result.response_cache_hit
    assert result.selection is not None and result.selection.reason
    by_id = {r.call_id: r for r in result.tool_results}
    calc = by_id["calc"]
    assert isinstance(calc, ToolSuccess) and calc.value == {
        "expression": "12 * (3 + 4)",
        "value": 84,
    }
    assert any(r.name == "python_docs_search" for r in result.tool_results), "planner added docs"
    assert result.draft and result.draft.startswith("[simulated small")
    assert [u.purpose for u in result.usage] == ["draft", "final"]
    assert all(u.cost_usd > 0 and u.prompt_tokens > 0 for u in result.usage)
    assert result.compression is not None
    assert result.compression.tokens_after <= request.max_context_tokens
    assert {t.stage for t in result.timings} >= {
        Stage.MODEL_SELECTION,
        Stage.TOOLS,
        Stage.GENERATION,
    }
    # Shape 2: compression ran inside the final answer's activity, timed before generation.
    stages = [t.stage for t in result.timings]
    assert stages.index(Stage.COMPRESSION) < stages.index(Stage.GENERATION)

    record = await asyncio.to_thread(harness.store.get_job, handle.id.removeprefix("agent-"))
    assert record is not None and record.status == JobStatus.COMPLETED
    assert record.cost_usd == pytest.approx(result.total_cost_usd)
    stored = record.to_result()
    assert stored is not None
    assert Stage.GENERATION in {t.stage for t in stored.timings}, "record has every stage's timing"
    if SAVE:
        await save_history(handle, "v2_happy_path")


async def test_parallel_safe_tools_overlap(harness: Harness) -> None:
    calls = [
        ToolCall(id=f"s{i}", name="slow_echo", parameters={"text": f"t{i}", "delay_ms": 400})
        for i in range(4)
    ]
    handle = await harness.start(AgentRequest(query=unique("echo four things"), tool_calls=calls))
    result = await handle.result()
    assert [r.call_id for r in result.tool_results] == ["s0", "s1", "s2", "s3"]
    spans = await activity_spans(handle, "run_tools")
    assert len(spans) == 4
    latest_start = max(s for s, _ in spans)
    earliest_end = min(e for _, e in spans)
    # Every call started before any finished: they ran at the same time, not one after another.
    assert latest_start < earliest_end, spans
    if SAVE:
        await save_history(handle, "v2_parallel_tools")


async def test_short_stages_run_inside_the_first_workflow_task(harness: Harness) -> None:
    handle = await harness.start(
        # Pinned above small, so a draft is scheduled in the first task too (the tools answer
        # this question, so the router alone would choose small and skip the draft).
        AgentRequest(
            query=unique("What does a Python generator do? And what is 6 * 7?"),
            model_tier="medium",
        )
    )
    result = await handle.result()
    assert result.status is JobStatus.COMPLETED
    history = await handle.fetch_history()
    scheduled = {
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    }
    # Cache lookup, planning and selection with the first record (prepare_job), the quick
    # in-memory tools (docs search, calculator), compression and the final record are local
    # activities: only the model calls are scheduled on the task queue.
    assert {r.name for r in result.tool_results} == {"python_docs_search", "calculator"}
    assert scheduled == {"generate_answer"}
    # The first workflow task looked up the cache, planned, selected and ran the quick tools
    # (all inside prepare_job: shape 2), then scheduled the draft and the final answer: one
    # round trip for the whole front of the job.
    first_task: list[str] = []
    tasks_scheduled = 0
    for e in history.events:
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED:
            tasks_scheduled += 1
            if tasks_scheduled == 2:
                break
        elif e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED:
            data = e.marker_recorded_event_attributes.details.get("data")
            if data is not None:
                first_task.append(json.loads(data.payloads[0].data)["activity_type"])
        elif e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            first_task.append(e.activity_task_scheduled_event_attributes.activity_type.name)
    # The first record (RUNNING) is written inside prepare_job: no local activity of its own.
    assert "prepare_job" in first_task and "record_job" not in first_task
    assert "run_tools" not in first_task and "generate_answer" in first_task
    if SAVE:
        await save_history(handle, "v2_local_stages")


async def test_failing_tool_is_isolated(harness: Harness) -> None:
    request = AgentRequest(
        query=unique("divide and look things up"),
        tool_calls=[
            ToolCall(id="bad", name="calculator", parameters={"expression": "1/0"}),
            ToolCall(id="down", name="always_down", parameters={}),
            ToolCall(id="ok", name="slow_echo", parameters={"text": "fine", "delay_ms": 0}),
        ],
    )
    result = await harness.run(request)
    assert result.status is JobStatus.COMPLETED and result.answer
    by_id = {r.call_id: r for r in result.tool_results}
    assert isinstance(by_id["bad"], ToolFailure) and "zero" in by_id["bad"].error.lower()
    assert isinstance(by_id["down"], ToolFailure) and by_id["down"].error_type == "ToolTransient"
    assert isinstance(by_id["ok"], ToolSuccess)


async def test_repeated_request_hits_response_and_tool_caches(harness: Harness) -> None:
    expression = f"{uuid.uuid4().int % 1000} + 1"
    query = unique("add one")
    call = ToolCall(id="c1", name="calculator", parameters={"expression": expression})
    first = await harness.run(AgentRequest(query=query, tool_calls=[call]))
    assert first.status is JobStatus.COMPLETED and not first.response_cache_hit
    assert first.tool_results[0].cache_hit is False

    # Case and spacing do not matter (the bracketed tag looks like a pattern and keeps its case).
    repeat = "  " + query.replace("add one", "ADD  ONE") + " "
    second = await harness.run(AgentRequest(query=repeat, tool_calls=[call]))
    assert second.response_cache_hit and second.answer == first.answer
    assert second.usage == [] and second.tool_results == []

    # A different question with the same tool call reuses the tool result from Redis.
    third = await harness.run(AgentRequest(query=unique("add one again"), tool_calls=[call]))
    assert not third.response_cache_hit
    assert third.tool_results[0].cache_hit is True
    volatile = {"cache_hit", "latency_ms", "expires_in_s"}
    assert third.tool_results[0].model_dump(exclude=volatile) == first.tool_results[0].model_dump(
        exclude=volatile
    )


async def test_approval_approved_continues(harness: Harness) -> None:
    handle = await harness.start(
        AgentRequest(query=unique("Summarise the release notes"), require_approval=True)
    )
    progress = await wait_for_stage(handle, Stage.AWAITING_APPROVAL)
    assert progress.status is JobStatus.AWAITING_APPROVAL
    assert progress.selection is not None
    record = await asyncio.to_thread(harness.store.get_job, handle.id.removeprefix("agent-"))
    assert record is not None and record.status == JobStatus.AWAITING_APPROVAL

    decided = await handle.execute_update(
        AgentWorkflow.decide, ApprovalDecision(approved=True, reviewer="ana")
    )
    assert decided.status is JobStatus.RUNNING and decided.reviewer == "ana"
    result = await handle.result()
    assert result.status is JobStatus.COMPLETED and result.answer
    assert result.approval is not None and result.approval.reviewer == "ana"
    if SAVE:
        await save_history(handle, "v2_approved")


async def test_approval_rejected_ends_rejected(harness: Harness) -> None:
    handle = await harness.start(
        AgentRequest(query=unique("Delete the logs"), require_approval=True)
    )
    await wait_for_stage(handle, Stage.AWAITING_APPROVAL)
    decided = await handle.execute_update(
        AgentWorkflow.decide, ApprovalDecision(approved=False, reviewer="bo", comment="no")
    )
    assert decided.status is JobStatus.REJECTED
    result = await handle.result()
    assert result.status is JobStatus.REJECTED and result.answer is None
    assert "final" not in [u.purpose for u in result.usage], "no final answer was generated"


async def test_approval_times_out_after_24h_skipped(harness: Harness) -> None:
    started = time.monotonic()
    handle = await harness.start(AgentRequest(query=unique("Wait for me"), require_approval=True))
    result = await handle.result()  # the time-skipping server jumps over the 24 h timer
    elapsed = time.monotonic() - started
    assert result.status is JobStatus.EXPIRED
    assert elapsed < 5, f"24 h approval timeout took {elapsed:.1f}s of wall time"
    record = await asyncio.to_thread(harness.store.get_job, handle.id.removeprefix("agent-"))
    assert record is not None and record.status == JobStatus.EXPIRED
    if SAVE:
        await save_history(handle, "v2_expired")


async def test_tool_requiring_approval_gates_the_job(harness: Harness) -> None:
    handle = await harness.start(
        AgentRequest(
            query=unique("fetch the health page"),
            tool_calls=[
                ToolCall(id="h", name="http_get", parameters={"url": "http://127.0.0.1:9/x"})
            ],
        )
    )
    progress = await wait_for_stage(handle, Stage.AWAITING_APPROVAL)
    assert [p.call.name for p in progress.tool_plan] == ["http_get"]
    await handle.execute_update(
        AgentWorkflow.decide, ApprovalDecision(approved=False, reviewer="sec")
    )
    assert (await handle.result()).status is JobStatus.REJECTED


async def test_progress_query_mid_run_shows_draft(harness: Harness) -> None:
    handle = await harness.start(
        AgentRequest(query=unique("Explain generators"), require_approval=True, model_tier="medium")
    )
    progress = await wait_for_stage(handle, Stage.AWAITING_APPROVAL)
    deadline = time.monotonic() + 5
    while progress.draft is None and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        progress = await handle.query(AgentWorkflow.get_progress)
    assert progress.draft is not None and progress.draft.startswith("[simulated small")
    assert progress.usage and progress.usage[0].purpose == "draft"
    assert progress.tool_plan and progress.tool_plan[0].call.name == "python_docs_search"
    await handle.cancel()
    with pytest.raises(WorkflowFailureError):
        await handle.result()


async def test_cancel_ends_canceled(harness: Harness) -> None:
    handle = await harness.start(AgentRequest(query=unique("Long job"), require_approval=True))
    await wait_for_stage(handle, Stage.AWAITING_APPROVAL)
    await handle.cancel()
    with pytest.raises(WorkflowFailureError) as info:
        await handle.result()
    assert isinstance(info.value.cause, CancelledError)
    record = await asyncio.to_thread(harness.store.get_job, handle.id.removeprefix("agent-"))
    assert record is not None and record.status == JobStatus.CANCELED


async def test_critical_context_over_budget_fails_clearly(harness: Harness) -> None:
    request = AgentRequest(
        query=unique("Use all of this"),
        context=[ContextItem(content="critical fact. " * 400, importance=Importance.CRITICAL)],
        max_context_tokens=100,
        model_tier="small",  # small escalates to medium on a model failure
    )
    handle = await harness.start(request)
    with pytest.raises(WorkflowFailureError) as info:
        await handle.result()
    cause = info.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "ContextBudgetExceeded"
    progress = await handle.query(AgentWorkflow.get_progress)
    assert progress.selection is not None and progress.selection.escalation_tier is not None
    generations = [
        e
        async for e in handle.fetch_history_events()
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        and e.activity_task_scheduled_event_attributes.activity_type.name == "generate_answer"
    ]
    assert len(generations) == 1, "another tier would compress the same way: no escalation"
    record = await asyncio.to_thread(harness.store.get_job, handle.id.removeprefix("agent-"))
    assert record is not None and record.status == JobStatus.FAILED
    assert record.error and "100" in record.error


async def test_large_tool_result_is_stored_outside_history(harness: Harness) -> None:
    handle = await harness.start(
        AgentRequest(
            query=unique("summarise the report"),
            tool_calls=[ToolCall(id="r", name="big_report", parameters={"size_kib": 256})],
        )
    )
    result = await handle.result()
    report = result.tool_results[0]
    assert isinstance(report, ToolSuccess) and report.value_ref is None
    assert isinstance(report.value, dict) and len(str(report.value["report"])) > 256 * 1000
    history = await handle.fetch_history()
    # ExternalStorage kept the 256 KiB result (and every payload that carries it) in the job
    # database; history holds references.
    assert len(history.to_json()) < 128 * 1024, "the 256 KiB result stayed out of history"
    assert result.compression is not None and result.compression.tokens_after <= 4000


async def test_escalates_to_fallback_tier_when_primary_fails(
    client: Client, redis_url: str, settings: Settings, tmp_path: Path
) -> None:
    """The medium tier's endpoint answers 500 every time; the job escalates to large."""
    state = ServerState()
    with serve_asgi(make_app(state)) as url:
        base = ModelCatalog.default()
        models = [
            m.model_copy(
                update={
                    "provider": "openai",
                    "model_id": "server-error",
                    "base_url": f"{url}/v1",
                }
            )
            if m.tier is Tier.MEDIUM
            else m
            for m in base.models
        ]
        providers = ProviderRegistry(
            {"simulated": SimulatedProvider(latency_scale=0)}, openai_timeout_s=5
        )
        async with agent_worker(
            client,
            redis_url=redis_url,
            database_url=f"sqlite:///{tmp_path / 'jobs.db'}",
            settings=settings,
            catalog=ModelCatalog(models=models),
            providers=providers,
        ) as h:
            request = AgentRequest(query=unique("Who wrote Hamlet?"), model_tier="medium")
            handle = await h.start(request)
            result = await handle.result()
    assert result.status is JobStatus.COMPLETED
    assert result.escalated_to is Tier.LARGE
    final = [u for u in result.usage if u.purpose == "final"]
    assert len(final) == 1 and final[0].tier is Tier.LARGE
    assert state.counts["server-error"] == 3, "three attempts, one HTTP request each"
    if SAVE:
        await save_history(handle, "v2_escalated")


def test_environment_is_time_skipping(env: WorkflowEnvironment) -> None:
    assert env.supports_time_skipping
