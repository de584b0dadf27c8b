"""``BatchWorkflow`` on a real (time-skipping) Temporal server with the real worker's activities.

The window never holds more than ``max_concurrency`` jobs, items sharing a sequence key run in
input order, a job that keeps failing goes to the dead letter after ``max_attempts`` while the
others complete, and a batch that continues as new loses and repeats no item.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from datetime import timedelta

from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHandle

from core.ids import batch_workflow_id, workflow_id_for
from core.models import (
    CURRENT_SHAPE,
    AgentRequest,
    AgentWorkflowInput,
    BatchCounts,
    BatchWorkflowInput,
    ContextItem,
    Importance,
    ToolCall,
)
from infra.batches import BatchRecord, BatchStore, ItemStatus, NewItem
from tests.workflow_support import Harness
from workflows.batch import BatchWorkflow


def _request(text: str, *, over_budget: bool = False, slow_ms: int = 0) -> str:
    context = (
        [ContextItem(content="critical fact. " * 400, importance=Importance.CRITICAL)]
        if over_budget
        else []
    )
    request = AgentRequest(
        query=f"{text} ({uuid.uuid4().hex[:8]})",
        context=context,
        max_context_tokens=100 if over_budget else 8000,
        model_tier="small",
        # A tool that takes wall time (not skipped), so the window is full across several steps.
        tool_calls=[
            ToolCall(id="slow", name="slow_echo", parameters={"text": text, "delay_ms": slow_ms})
        ]
        if slow_ms
        else [],
    )
    return request.model_dump_json()


async def _run_batch(
    harness: Harness, items: list[NewItem], **limits: object
) -> tuple[str, WorkflowHandle[BatchWorkflow, BatchCounts], BatchCounts]:
    store = BatchStore(harness.store.engine)
    batch_id = uuid.uuid4().hex[:16]
    store.create(BatchRecord(batch_id=batch_id), items)
    inp = BatchWorkflowInput(
        batch_id=batch_id,
        template=AgentWorkflowInput(
            job_id="template", request=AgentRequest(query="template"), shape=CURRENT_SHAPE
        ),
        **limits,  # type: ignore[arg-type]
    )
    handle = await harness.client.start_workflow(
        BatchWorkflow.run, inp, id=batch_workflow_id(batch_id), task_queue=harness.task_queue
    )
    counts = await asyncio.wait_for(handle.result(), 120)
    return batch_id, handle, counts


async def _windows(harness: Harness, job_ids: list[str]) -> list[tuple[float, float]]:
    """Each job's (start, close) in server time, in seconds."""
    spans = []
    for job_id in job_ids:
        desc = await harness.client.get_workflow_handle(workflow_id_for(job_id)).describe()
        assert desc.close_time is not None
        spans.append((desc.start_time.timestamp(), desc.close_time.timestamp()))
    return spans


def _most_at_once(spans: list[tuple[float, float]]) -> int:
    edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    running = most = 0
    for _, step in edges:
        running += step
        most = max(most, running)
    return most


async def test_a_batch_completes_within_its_window_and_in_sequence_order(
    harness: Harness,
) -> None:
    items = [
        NewItem(
            _request(f"Question {i}", slow_ms=400),
            item_key=f"k{i}",
            sequence_key="s" if i < 4 else None,
        )
        for i in range(10)
    ]
    batch_id, _, counts = await _run_batch(harness, items, max_concurrency=3, max_attempts=2)
    assert counts.completed == 10 and counts.done
    stored = BatchStore(harness.store.engine).items(batch_id)
    assert all(i.status == ItemStatus.COMPLETED.value and i.attempts == 1 for i in stored)
    spans = await _windows(harness, [i.job_id for i in stored if i.job_id])
    assert _most_at_once(spans) <= 3
    # Items 0-3 share a sequence key: each starts after the one before it has closed.
    for (_, closed), (started, _) in itertools.pairwise(spans[:4]):
        assert started >= closed


async def test_a_job_that_keeps_failing_goes_to_the_dead_letter(harness: Harness) -> None:
    items = [NewItem(_request(f"Fine {i}")) for i in range(3)]
    items.append(NewItem(_request("Too long", over_budget=True), item_key="bad"))
    batch_id, _, counts = await _run_batch(harness, items, max_concurrency=4, max_attempts=2)
    assert (counts.completed, counts.dead_letter, counts.pending, counts.running) == (3, 1, 0, 0)
    [bad] = [i for i in BatchStore(harness.store.engine).items(batch_id) if i.item_key == "bad"]
    assert bad.status == ItemStatus.DEAD_LETTER.value and bad.attempts == 2
    assert bad.last_error and "100" in bad.last_error  # the budget the critical items exceed


async def test_continue_as_new_loses_and_repeats_no_item(harness: Harness) -> None:
    items = [NewItem(_request(f"One by one {i}")) for i in range(14)]
    batch_id, handle, counts = await _run_batch(
        harness,
        items,
        max_concurrency=1,
        max_attempts=1,
        steps_per_run=10,
        poll_min=timedelta(milliseconds=50),
    )
    assert counts.completed == 14
    stored = BatchStore(harness.store.engine).items(batch_id)
    assert [i.attempts for i in stored] == [1] * 14  # no item ran twice
    jobs = [json.loads(r.request_json)["query"] for r in stored]
    assert len(set(jobs)) == 14
    first_run = harness.client.get_workflow_handle(handle.id, run_id=handle.result_run_id)
    events = [e.event_type async for e in first_run.fetch_history_events()]
    assert events[-1] == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW


async def test_a_job_a_human_did_not_approve_is_rejected_not_retried(harness: Harness) -> None:
    waits = AgentRequest(query=f"Needs a human ({uuid.uuid4().hex[:8]})", require_approval=True)
    items = [NewItem(_request("Fine")), NewItem(waits.model_dump_json(), item_key="gated")]
    store = BatchStore(harness.store.engine)
    batch_id = uuid.uuid4().hex[:16]
    store.create(BatchRecord(batch_id=batch_id), items)
    inp = BatchWorkflowInput(
        batch_id=batch_id,
        max_concurrency=2,
        max_attempts=3,
        template=AgentWorkflowInput(
            job_id="template",
            request=AgentRequest(query="template"),
            shape=CURRENT_SHAPE,
            approval_timeout=timedelta(minutes=5),  # skipped by the time-skipping server
        ),
    )
    counts = await asyncio.wait_for(
        harness.client.execute_workflow(
            BatchWorkflow.run, inp, id=batch_workflow_id(batch_id), task_queue=harness.task_queue
        ),
        120,
    )
    assert (counts.completed, counts.rejected, counts.pending) == (1, 1, 0)
    [gated] = [i for i in store.items(batch_id) if i.item_key == "gated"]
    assert gated.status == ItemStatus.REJECTED.value and gated.attempts == 1


async def test_an_item_that_is_not_a_request_goes_to_the_dead_letter_at_once(
    harness: Harness,
) -> None:
    """A stored item no attempt could start (a hostile probe's case: the step used to fail on it
    and retry forever, holding a slot, and the batch never ended)."""
    items = [NewItem(_request("Fine")), NewItem("not json", item_key="bad")]
    batch_id, _, counts = await _run_batch(harness, items, max_concurrency=2, max_attempts=3)
    assert (counts.completed, counts.dead_letter, counts.running) == (1, 1, 0)
    [bad] = [i for i in BatchStore(harness.store.engine).items(batch_id) if i.item_key == "bad"]
    assert bad.status == ItemStatus.DEAD_LETTER.value and bad.attempts == 1
    assert bad.last_error and "not a valid agent request" in bad.last_error
