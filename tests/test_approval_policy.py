"""Approval policies on the time-skipping server: per-call decisions, cost threshold, timeouts.

Real activities, Redis and SQLite; the workflow's event stream is read back through the SDK's
``WorkflowStreamClient`` (a query once the job ended).
"""

from __future__ import annotations

import os
import uuid
from datetime import timedelta

import pytest
from temporalio.client import WorkflowUpdateFailedError
from temporalio.contrib.workflow_streams import WorkflowStreamClient
from temporalio.exceptions import ApplicationError
from temporalio.worker import Replayer

from core.events import (
    EVENTS_TOPIC,
    ApprovalDecided,
    ApprovalReminder,
    ApprovalRequested,
    FinalResponse,
    JobEvent,
    ResponseError,
    ResponseStarted,
)
from core.models import (
    AgentRequest,
    ApprovalDecision,
    ApprovalPolicy,
    CallDecision,
    JobStatus,
    Stage,
    ToolCall,
    ToolFailure,
    ToolSuccess,
)
from infra.temporal import AgentflowPlugin
from tests.workflow_support import Harness, save_history, wait_for_stage
from workflows.agent import AgentWorkflow
from workflows.approval_gate import NOT_APPROVED_CALL_ERROR, REJECTED_CALL_ERROR


def unique(text: str) -> str:
    """A query no other test (or earlier run against the same Redis) has cached."""
    return f"{text} [{uuid.uuid4().hex[:8]}]"


CALC = ToolCall(id="calc", name="calculator", parameters={"expression": "6*7"})
SQL = ToolCall(id="sql", name="sql_query", parameters={"sql": "SELECT count(*) AS n FROM products"})
HTTP = ToolCall(id="web", name="http_get", parameters={"url": "http://127.0.0.1:9/x"})
SQL_GATED = ApprovalPolicy(tools=["sql_query"])
SAVE = bool(os.environ.get("AGENTFLOW_SAVE_HISTORIES"))


async def events_of(harness: Harness, workflow_id: str) -> list[JobEvent]:
    """Every event of a finished job, in stream order."""
    stream = WorkflowStreamClient.create(harness.client, workflow_id)
    return [
        item.data
        async for item in stream.subscribe([EVENTS_TOPIC], result_type=JobEvent)  # type: ignore[arg-type]
    ]


def by_id(results: list[ToolSuccess | ToolFailure]) -> dict[str, ToolSuccess | ToolFailure]:
    return {r.call_id: r for r in results}


async def test_per_call_approve_reject_and_edit(harness: Harness, plugin: AgentflowPlugin) -> None:
    handle = await harness.start(
        AgentRequest(query=unique("Count the products"), tool_calls=[CALC, SQL, HTTP]),
        approval_policy=SQL_GATED,
        stream_tokens=True,
    )
    progress = await wait_for_stage(handle, Stage.AWAITING_APPROVAL)
    request = progress.approval_request
    assert request is not None
    assert sorted(request.gated_call_ids) == ["sql", "web"]  # calculator needs no approval
    assert [p.call.id for p in request.calls] == ["calc", "sql", "web"]
    edited_sql = {"sql": "SELECT count(*) AS n FROM products WHERE price_usd > 10"}

    await handle.execute_update(
        AgentWorkflow.decide,
        ApprovalDecision(
            approved=True,
            reviewer="ana",
            comment="no web today",
            calls=[
                CallDecision(call_id="web", action="reject"),
                CallDecision(call_id="sql", action="edit", parameters=edited_sql),
            ],
        ),
    )
    result = await handle.result()

    assert result.status is JobStatus.COMPLETED and result.answer
    results = by_id(result.tool_results)
    assert isinstance(results["calc"], ToolSuccess)  # not gated: ran as planned
    assert isinstance(results["sql"], ToolSuccess)  # ran with the edited statement
    web = results["web"]
    assert isinstance(web, ToolFailure) and web.error_type == REJECTED_CALL_ERROR
    assert "ana" in web.error and "no web today" in web.error
    record = result.approval_record
    assert record is not None and record.outcome == "approved" and record.reviewer == "ana"
    outcomes = {c.call_id: c for c in record.calls}
    assert outcomes["web"].outcome == "rejected"
    assert outcomes["sql"].outcome == "edited"
    assert outcomes["sql"].parameters == edited_sql
    assert outcomes["sql"].original_parameters == SQL.parameters
    assert "calc" not in outcomes  # nobody had to decide it

    stored = harness.store.get_job(handle.id.removeprefix("agent-"))
    assert stored is not None
    stored_result = stored.to_result()
    assert stored_result is not None and stored_result.approval_record == record
    events = await events_of(harness, handle.id)
    decided = [e for e in events if isinstance(e, ApprovalDecided)]
    assert len(decided) == 1 and decided[0].record == record
    # Token signals, per-call decisions and the stream replay deterministically.
    await Replayer(workflows=[], plugins=[plugin]).replay_workflow(await handle.fetch_history())
    if SAVE:
        await save_history(handle, "v2_per_call_streamed")


async def test_gated_calls_not_listed_take_the_jobs_decision(harness: Harness) -> None:
    handle = await harness.start(
        AgentRequest(query=unique("Count again"), tool_calls=[CALC, SQL]),
        approval_policy=SQL_GATED,
    )
    await wait_for_stage(handle, Stage.AWAITING_APPROVAL)
    await handle.execute_update(
        AgentWorkflow.decide,
        ApprovalDecision(
            approved=True, reviewer="bo", calls=[CallDecision(call_id="calc", action="reject")]
        ),
    )
    result = await handle.result()
    results = by_id(result.tool_results)
    assert isinstance(results["sql"], ToolSuccess)  # gated, not listed: approved with the job
    calc = results["calc"]
    assert isinstance(calc, ToolFailure) and calc.error_type == REJECTED_CALL_ERROR
    assert result.approval_record is not None
    assert {c.call_id: c.outcome for c in result.approval_record.calls} == {
        "calc": "rejected",
        "sql": "approved",
    }


@pytest.mark.parametrize(
    ("decision", "message"),
    [
        (
            ApprovalDecision(
                approved=True, reviewer="x", calls=[CallDecision(call_id="nope", action="reject")]
            ),
            "not a planned call",
        ),
        (
            ApprovalDecision(
                approved=False, reviewer="x", calls=[CallDecision(call_id="sql", action="reject")]
            ),
            "rejected job takes no per-call decisions",
        ),
        (
            ApprovalDecision(
                approved=True,
                reviewer="x",
                calls=[
                    CallDecision(call_id="sql", action="reject"),
                    CallDecision(call_id="sql", action="approve"),
                ],
            ),
            "decided twice",
        ),
        (
            ApprovalDecision(
                approved=True, reviewer="x", calls=[CallDecision(call_id="sql", action="edit")]
            ),
            "needs the call's new parameters",
        ),
    ],
)
async def test_bad_per_call_decisions_are_refused_and_change_nothing(
    harness: Harness, decision: ApprovalDecision, message: str
) -> None:
    handle = await harness.start(
        AgentRequest(query=unique("Count once more"), tool_calls=[SQL]), approval_policy=SQL_GATED
    )
    await wait_for_stage(handle, Stage.AWAITING_APPROVAL)
    with pytest.raises(WorkflowUpdateFailedError) as caught:
        await handle.execute_update(AgentWorkflow.decide, decision)
    cause = caught.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "DecisionInvalid"
    assert message in cause.message
    progress = await handle.query(AgentWorkflow.get_progress)
    assert progress.status is JobStatus.AWAITING_APPROVAL and progress.approval is None
    await handle.execute_update(
        AgentWorkflow.decide, ApprovalDecision(approved=False, reviewer="x")
    )
    assert (await handle.result()).status is JobStatus.REJECTED


async def test_cost_above_the_threshold_waits_and_below_does_not(harness: Harness) -> None:
    query = unique("Compare three sorting algorithms in depth")
    cheap = await harness.run(
        AgentRequest(query=query, model_tier="large"),
        approval_policy=ApprovalPolicy(cost_threshold_usd=1000.0),
    )
    assert cheap.status is JobStatus.COMPLETED and cheap.approval_record is None
    assert cheap.selection is not None and (cheap.selection.estimated_cost_usd or 0) > 0

    handle = await harness.start(
        AgentRequest(query=unique("Compare three sorting algorithms"), model_tier="large"),
        approval_policy=ApprovalPolicy(cost_threshold_usd=0.000001),
    )
    progress = await wait_for_stage(handle, Stage.AWAITING_APPROVAL)
    request = progress.approval_request
    assert request is not None and request.estimated_cost_usd is not None
    assert request.estimated_cost_usd > 0.000001
    assert any("above the approval threshold" in r for r in request.reasons)
    await handle.execute_update(AgentWorkflow.decide, ApprovalDecision(approved=True, reviewer="c"))
    assert (await handle.result()).status is JobStatus.COMPLETED


async def test_timeout_expire_records_every_gated_call(harness: Harness) -> None:
    handle = await harness.start(
        AgentRequest(query=unique("Nobody answers"), tool_calls=[CALC, SQL]),
        approval_policy=ApprovalPolicy(tools=["sql_query"], timeout_action="expire"),
        approval_timeout=timedelta(hours=2),
    )
    result = await handle.result()  # the time-skipping server jumps over the 2 h timer
    assert result.status is JobStatus.EXPIRED and result.answer is None
    assert not any(isinstance(r, ToolSuccess) for r in result.tool_results)
    record = result.approval_record
    assert record is not None and record.outcome == "expired" and record.reviewer is None
    assert [(c.call_id, c.outcome) for c in record.calls] == [("sql", "not_approved")]
    events = await events_of(harness, handle.id)
    assert isinstance(events[-1], ResponseError) and events[-1].status is JobStatus.EXPIRED


async def test_timeout_proceed_runs_without_the_unapproved_calls(harness: Harness) -> None:
    query = unique("Go on without me")
    handle = await harness.start(
        AgentRequest(query=query, tool_calls=[CALC, SQL]),
        approval_policy=ApprovalPolicy(tools=["sql_query"], timeout_action="proceed"),
        approval_timeout=timedelta(hours=2),
    )
    result = await handle.result()
    assert result.status is JobStatus.COMPLETED and result.answer
    results = by_id(result.tool_results)
    assert isinstance(results["calc"], ToolSuccess)
    sql = results["sql"]
    assert isinstance(sql, ToolFailure) and sql.error_type == NOT_APPROVED_CALL_ERROR
    assert result.approval_record is not None and result.approval_record.outcome == "proceeded"
    events = await events_of(harness, handle.id)
    assert isinstance(events[-1], FinalResponse) and events[-1].answer == result.answer

    # The same request again is not answered from the cache: it meets the gate again.
    again = await harness.run(
        AgentRequest(query=query, tool_calls=[CALC, SQL]),
        approval_policy=ApprovalPolicy(tools=["sql_query"], timeout_action="proceed"),
        approval_timeout=timedelta(hours=2),
    )
    assert not again.response_cache_hit
    assert again.approval_record is not None and again.approval_record.outcome == "proceeded"


async def test_timeout_proceed_still_expires_a_job_that_waited_for_itself(
    harness: Harness,
) -> None:
    result = await harness.run(
        AgentRequest(query=unique("Asked to wait"), tool_calls=[CALC], require_approval=True),
        approval_policy=ApprovalPolicy(timeout_action="proceed"),
        approval_timeout=timedelta(hours=2),
    )
    assert result.status is JobStatus.EXPIRED and result.answer is None
    assert result.approval_record is not None and result.approval_record.outcome == "expired"


async def test_reminders_while_waiting_then_expiry(harness: Harness) -> None:
    handle = await harness.start(
        AgentRequest(query=unique("Remind me"), require_approval=True),
        approval_policy=ApprovalPolicy(reminder_interval=timedelta(hours=1)),
        approval_timeout=timedelta(hours=5),
    )
    result = await handle.result()
    assert result.status is JobStatus.EXPIRED
    events = await events_of(harness, handle.id)
    reminders = [e for e in events if isinstance(e, ApprovalReminder)]
    # One per full hour of waiting before the 5 h timeout (at 1, 2, 3 and 4 h).
    assert [round(r.waiting_s) for r in reminders] == [3600, 7200, 10800, 14400]
    requested = next(e for e in events if isinstance(e, ApprovalRequested))
    assert all(r.expires_at == requested.request.expires_at for r in reminders)
    assert isinstance(events[0], ResponseStarted)
    if SAVE:
        await save_history(handle, "v2_reminders")


async def test_approval_request_shows_the_draft_tier_and_cost(harness: Harness) -> None:
    handle = await harness.start(
        AgentRequest(query=unique("Explain the GIL"), require_approval=True, model_tier="large")
    )
    await wait_for_stage(handle, Stage.AWAITING_APPROVAL)
    for _ in range(100):  # the draft runs beside the gate
        progress = await handle.query(AgentWorkflow.get_progress)
        if progress.approval_request is not None and progress.approval_request.draft:
            break
    request = progress.approval_request
    assert request is not None and request.draft and request.draft == progress.draft
    assert request.tier is not None and request.tier.value == "large"
    assert request.reasons == ["the request asked for approval"]
    await handle.execute_update(AgentWorkflow.decide, ApprovalDecision(approved=True, reviewer="d"))
    await handle.result()
