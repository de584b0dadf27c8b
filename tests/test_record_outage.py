"""A database outage longer than the local record's budget (time-skipping server, PostgreSQL).

The workflow writes its job record with a local ``record_job`` bounded by ``LOCAL_RECORD_BUDGET``;
when that gives up on a retryable error it falls back to a regular ``record_job`` that retries
until the database is back (``RECORD_RETRY``). So a long outage costs retry timers in history,
not a workflow task held open, and no outcome is lost.

The outage is real: the job database refuses every new connection (``ALLOW_CONNECTIONS false``)
from before the job starts until 60 s of workflow time have passed. The time-skipping server
skips the regular activity's retry backoffs (1, 2, 4, ... 60 s), so the test takes a few seconds;
it does not see local activities, so time is only let run once the local record has given up.
With ``--workflow-environment local`` the same test runs against a dev server with a real 60 s
outage (about 70 s).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy.engine import make_url
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from core.errors import StoreUnavailableError
from core.models import AgentRequest, AgentResult, JobStatus, Stage
from core.settings import Settings
from infra.db import make_engine
from infra.jobs import JobStore
from tests.workflow_support import agent_worker
from workflows import policies
from workflows.agent import AgentWorkflow

OUTAGE = timedelta(seconds=60)
"""How much workflow time passes, from the job's start, before the database comes back."""

LOCAL_GIVE_UP_WITHIN = timedelta(seconds=15)
"""The local record must hand over to the regular activity this soon after the job starts:
its budget (8 s schedule-to-close) plus the stages before it and some slack."""

MAX_WORKFLOW_TASKS = 10
"""A normal run completes 3-4 workflow tasks. A local activity retrying through the outage would
keep its workflow task open and heartbeat it every 8 s (80% of the 10 s task timeout): at least
7 more completions over 60 s."""

REAL_SLACK_S = 30.0
"""Real-time allowance on top of the outage for every wait, so a broken run fails, not hangs."""

RECOVERY_S = (
    policies.RECORD_RETRY.maximum_interval or timedelta(minutes=1)
).total_seconds() + REAL_SLACK_S
"""Real-time wait for the result once the database is back: the next retry comes within the
retry policy's maximum interval (skipped on the time-skipping server)."""

assert policies.LOCAL_RECORD_BUDGET < LOCAL_GIVE_UP_WITHIN < OUTAGE


# --------------------------------------------------------------------------- database outage


@contextmanager
def scratch_database(postgres_url: str) -> Iterator[tuple[str, str, sqlalchemy.Engine]]:
    """A fresh PostgreSQL database: (its name, its URL, an AUTOCOMMIT engine on ``postgres_url``).

    Dropped on exit, whatever state the test left it in.
    """
    name = f"agentflow_outage_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    url = make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    try:
        yield name, url, admin
    finally:
        set_connections(admin, name, allowed=False)  # nobody can come back between the two
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


def set_connections(admin: sqlalchemy.Engine, name: str, *, allowed: bool) -> None:
    """Let connections into ``name`` again, or refuse new ones and end the open ones."""
    flag = "true" if allowed else "false"
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS {flag}'))
        if not allowed:
            conn.execute(
                sqlalchemy.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :name"
                ),
                {"name": name},
            )


def ping(url: str) -> None:
    """Open a new connection to ``url`` (as the worker would) and run ``SELECT 1``."""
    engine = make_engine(url)
    try:
        JobStore(engine).ping()
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- history


def event_time(event: Any) -> datetime:
    return event.event_time.ToDatetime(tzinfo=UTC)


def events_of(history: Any, event_type: int) -> list[Any]:
    return [e for e in history.events if e.event_type == event_type]


def record_job_runs(history: Any) -> list[tuple[Any, Any | None, Any | None]]:
    """Each regular ``record_job`` activity: its scheduled, started and completed events.

    A retried activity's started event is written when it closes, with its last attempt.
    """
    runs: dict[int, list[Any]] = {}
    for e in history.events:
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            if e.activity_task_scheduled_event_attributes.activity_type.name == "record_job":
                runs[e.event_id] = [e, None, None]
        elif e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            scheduled_id = e.activity_task_started_event_attributes.scheduled_event_id
            if scheduled_id in runs:
                runs[scheduled_id][1] = e
        elif e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            scheduled_id = e.activity_task_completed_event_attributes.scheduled_event_id
            if scheduled_id in runs:
                runs[scheduled_id][2] = e
    return [(scheduled, started, completed) for scheduled, started, completed in runs.values()]


async def closed_because(handle: WorkflowHandle[Any, AgentResult]) -> str | None:
    """``None`` while the workflow runs; else its status and, if it failed, why."""
    description = await handle.describe()
    if description.status is WorkflowExecutionStatus.RUNNING:
        return None
    history = await handle.fetch_history()
    failed = events_of(history, EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED)
    why = failed[0].workflow_execution_failed_event_attributes.failure.message if failed else ""
    status = description.status.name if description.status else "?"
    return f"{status} {why}".strip()


async def poll(check: Callable[[], Awaitable[str | None]], timeout_s: float, what: str) -> str:
    """Await ``check`` until it returns a string (returned), failing after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = await check()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout_s:.0f}s")
        await asyncio.sleep(0.05)


# --------------------------------------------------------------------------- the test


@pytest.mark.postgres
@pytest.mark.timeout(REAL_SLACK_S + OUTAGE.total_seconds() + REAL_SLACK_S + RECOVERY_S + 30)
async def test_record_survives_a_60_s_database_outage(
    env: WorkflowEnvironment,
    client: Client,
    redis_url: str,
    settings: Settings,
    postgres_url: str,
) -> None:
    request = AgentRequest(
        query=f"Why do durable workflows matter? [{uuid.uuid4().hex[:8]}]", model_tier="small"
    )
    with scratch_database(postgres_url) as (name, url, admin):
        async with agent_worker(
            client, redis_url=redis_url, database_url=url, settings=settings
        ) as h:  # creates the tables while the database is still up
            set_connections(admin, name, allowed=False)
            with pytest.raises(StoreUnavailableError) as refused:
                await asyncio.wait_for(asyncio.to_thread(ping, url), 10)
            assert refused.value.retryable

            handle = await h.start(request)
            history = await handle.fetch_history()
            started = event_time(history.events[0])

            # 1. The local record gives up and hands over to a regular activity, and the job,
            # answered, waits at its RECORD stage with nothing else in flight. Time skipping
            # stays locked until then (the test server does not see local activities), so this
            # runs in real time: a local record that retried forever (or past the deadline)
            # never schedules the activity and fails here, and a fallback that is not taken at
            # all (the workflow ending during the outage) is named as such.
            async def parked_on_record() -> str | None:
                if record_job_runs(await handle.fetch_history()):
                    progress = await handle.query(AgentWorkflow.get_progress)
                    return "parked" if progress.stage is Stage.RECORD else None
                closed = await closed_because(handle)
                if closed is not None:
                    raise AssertionError(
                        f"the workflow closed during the outage ({closed}) before any regular "
                        "record_job was scheduled: the local record's failure did not fall "
                        "back to the retrying activity"
                    )
                return None

            await poll(
                parked_on_record,
                REAL_SLACK_S,
                "the local record_job never gave up and fell back to a regular activity",
            )

            # 2. Let workflow time run (awaiting the result lets the time-skipping server skip
            # the activity's retry backoffs) until OUTAGE has passed since the job started.
            result_task = asyncio.create_task(handle.result())

            async def outage_long_enough() -> str | None:
                if result_task.done():
                    closed = await closed_because(handle)
                    raise AssertionError(f"the job ended during the outage: {closed}")
                now = await env.get_current_time()
                return "elapsed" if now - started >= OUTAGE else None

            try:
                await poll(
                    outage_long_enough,
                    OUTAGE.total_seconds() + REAL_SLACK_S,
                    f"{OUTAGE.total_seconds():.0f}s of workflow time did not pass",
                )
                # 3. The database comes back; the record's next retry succeeds.
                outage_ended = await env.get_current_time()
                set_connections(admin, name, allowed=True)
                await asyncio.wait_for(asyncio.to_thread(ping, url), 10)
                result = await asyncio.wait_for(result_task, RECOVERY_S)
            finally:
                if not result_task.done():
                    result_task.cancel()
                    await asyncio.gather(result_task, return_exceptions=True)
            record = await asyncio.to_thread(h.store.get_job, handle.id.removeprefix("agent-"))

    assert result.status is JobStatus.COMPLETED and result.answer
    # No outcome lost: the terminal projection, and the request from the RUNNING one.
    assert record is not None
    assert record.status == JobStatus.COMPLETED
    assert record.query == request.query and record.request_json is not None
    recorded = record.to_result()
    assert recorded is not None and recorded.answer == result.answer

    history = await handle.fetch_history()
    runs = record_job_runs(history)
    first_scheduled = event_time(runs[0][0])
    assert first_scheduled - started <= LOCAL_GIVE_UP_WITHIN, (
        f"the local record handed over {first_scheduled - started} after the start"
    )
    # The regular record failed during the outage and was retried until it succeeded.
    assert all(done is not None for _, _, done in runs), "a regular record_job did not complete"
    _, last_start, last_done = runs[-1]
    assert last_start is not None and last_done is not None
    attempts = last_start.activity_task_started_event_attributes.attempt
    assert attempts > 1, "the regular record_job succeeded at once: was there an outage?"
    # Completed once the database was back. (Not its started event: on the time-skipping server
    # an attempt can be handed out at a virtual instant just before the outage ends, then run.)
    assert event_time(last_done) >= outage_ended
    # The outage was waited out in retry timers, not in one long workflow task.
    task_events = len(events_of(history, EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED))
    assert task_events <= MAX_WORKFLOW_TASKS, f"{task_events} workflow tasks"
    assert not events_of(history, EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT)
    assert not events_of(history, EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED)
    # The job could only complete once its record was written, after the outage.
    (completed,) = events_of(history, EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED)
    assert event_time(completed) - started >= OUTAGE
    assert event_time(completed) >= outage_ended
