"""Shape 2: ``prepare_job`` runs a job's quick in-memory tools when the job will not wait.

The rules (workflows/agent.py ``SHAPE_TOOLS_IN_PREPARE``, domain/approvals.py): only when every
planned call runs locally and the approval rule says the job does not wait; the stream still
shows the tools stage with its events in order; a transient failure runs again alone; a job that
waits for a decision runs no tool before it.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHandle
from temporalio.testing import ActivityEnvironment

from core.events import (
    StageCompleted,
    StageStarted,
    ToolExecutionComplete,
    ToolExecutionStarted,
    ToolResultEvent,
)
from core.models import (
    AgentRequest,
    AgentResult,
    ApprovalDecision,
    ApprovalPolicy,
    JobStatus,
    PrepareJobInput,
    Stage,
    ToolCall,
    ToolSuccess,
)
from tests.test_approval_policy import events_of, unique
from tests.workflow_support import FAILED_ONCE, Harness, wait_for_stage
from workflows.agent import AgentWorkflow

CALC = ToolCall(id="calc", name="calculator", parameters={"expression": "6*7"})


async def _activities(handle: WorkflowHandle[AgentWorkflow, AgentResult]) -> list[str]:
    """Every activity of the job in history order: regular ones and local ones (markers)."""
    names: list[str] = []
    async for e in handle.fetch_history_events():
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            names.append(e.activity_task_scheduled_event_attributes.activity_type.name)
        elif e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED:
            data = e.marker_recorded_event_attributes.details.get("data")
            if data is not None:
                names.append(json.loads(data.payloads[0].data)["activity_type"])
    return names


async def test_quick_tools_run_inside_prepare_and_the_stream_shows_them(harness: Harness) -> None:
    handle = await harness.start(
        AgentRequest(query=unique("What is the answer?"), tool_calls=[CALC], model_tier="small")
    )
    result = await handle.result()
    assert result.status is JobStatus.COMPLETED
    [calc] = [r for r in result.tool_results if r.call_id == "calc"]
    assert isinstance(calc, ToolSuccess) and calc.value == {"expression": "6 * 7", "value": 42}
    assert "run_tools" not in await _activities(handle)  # ran inside prepare_job
    assert Stage.TOOLS in [t.stage for t in result.timings]

    # Causes before effects: the tools stage opens, its events follow, then it closes.
    tool_events = (ToolExecutionStarted, ToolResultEvent, ToolExecutionComplete)
    kinds = [
        type(event).__name__
        for event in await events_of(harness, handle.id)
        if isinstance(event, tool_events)
        or (isinstance(event, (StageStarted, StageCompleted)) and event.stage is Stage.TOOLS)
    ]
    results = sum(1 for k in kinds if k == "ToolResultEvent")
    assert results == len(result.tool_results) >= 1
    assert kinds == [
        "StageStarted",
        "ToolExecutionStarted",
        *["ToolResultEvent"] * results,
        "ToolExecutionComplete",
        "StageCompleted",
    ]


async def test_a_transient_failure_in_prepare_runs_again_alone(harness: Harness) -> None:
    text = uuid.uuid4().hex
    flaky = ToolCall(id="f", name="local_flaky_once", parameters={"text": text, "delay_ms": 0})
    handle = await harness.start(
        AgentRequest(query=unique("Echo this"), tool_calls=[flaky], model_tier="small")
    )
    result = await handle.result()
    [echo] = [r for r in result.tool_results if r.call_id == "f"]
    assert isinstance(echo, ToolSuccess) and echo.value == {"echo": text}
    activities = await _activities(handle)
    assert activities.count("run_tools") == 1  # the retry alone (prepare_job ran the first try)


@pytest.mark.parametrize(
    ("why", "require_approval", "policy"),
    [
        ("cost", False, ApprovalPolicy(cost_threshold_usd=0.0)),  # any estimate is above it
        ("tool", False, ApprovalPolicy(tools=["local_flaky_once"])),
        ("request", True, ApprovalPolicy()),
    ],
)
async def test_a_job_that_waits_runs_no_tool_before_its_decision(
    harness: Harness, why: str, require_approval: bool, policy: ApprovalPolicy
) -> None:
    text = uuid.uuid4().hex  # the test tool notes each text it is called with (this process)
    flaky = ToolCall(id="f", name="local_flaky_once", parameters={"text": text, "delay_ms": 0})
    handle = await harness.start(
        AgentRequest(
            query=unique(f"Work this out ({why})"),
            tool_calls=[flaky],
            model_tier="small",
            require_approval=require_approval,
        ),
        approval_policy=policy,
    )
    progress = await wait_for_stage(handle, Stage.AWAITING_APPROVAL)
    assert text not in FAILED_ONCE, "the tool ran before the decision"
    assert progress.tool_results == []
    await handle.execute_update(AgentWorkflow.decide, ApprovalDecision(approved=True, reviewer="r"))
    result = await handle.result()
    assert result.status is JobStatus.COMPLETED
    [echo] = [r for r in result.tool_results if r.call_id == "f"]
    assert isinstance(echo, ToolSuccess) and text in FAILED_ONCE


async def test_prepare_hands_the_tools_back_when_its_attempt_lacks_the_time(
    harness: Harness,
) -> None:
    """Tools run in ``prepare_job`` only when its attempt has the slowest call's timeout left
    besides the first record's wait and a second; otherwise the workflow runs them."""
    echo = ToolCall(id="e", name="local_echo", parameters={"text": "x", "delay_ms": 0})  # 10 s
    inp = PrepareJobInput(
        request=AgentRequest(query=unique("Echo this"), tool_calls=[echo], model_tier="small"),
        approval_policy=ApprovalPolicy(),
        run_local_tools=True,
    )
    env = ActivityEnvironment()
    for start_to_close_s, runs_here in ((12, False), (30, True)):  # 12 - 2 - 1 < 10 < 30 - 3
        env.info = dataclasses.replace(
            ActivityEnvironment.default_info(),
            started_time=datetime.now(UTC),
            start_to_close_timeout=timedelta(seconds=start_to_close_s),
            is_local=True,
        )
        result = await env.run(harness.activities.stages.prepare_job, inp)
        assert result.cache.hit is None
        assert (result.tool_results is not None) is runs_here, start_to_close_s
