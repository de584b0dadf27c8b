"""A worker killed mid-generation: the call is retried elsewhere within its heartbeat timeout.

Real processes on a real dev server: ``python worker.py`` twice, the first one SIGKILLed while
the job's final answer is being generated. v1 gave generation a 65 s start-to-close and no
heartbeat, so the job waited out those 65 s before a second worker could retry the call.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType, TimeoutType
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from core.models import CURRENT_SHAPE, AgentRequest, AgentWorkflowInput, JobStatus, Stage
from core.settings import Settings
from infra.db import make_engine
from infra.migrations import create_tables
from tests.helpers import worker_process
from worker import worker_plugin
from workflows.agent import AgentWorkflow

pytestmark = [pytest.mark.devserver, pytest.mark.subprocess]

ROOT = Path(__file__).resolve().parent.parent
HEARTBEAT_TIMEOUT = timedelta(seconds=2)


async def wait_for_stage(handle: object, stage: Stage, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            progress = await handle.query(AgentWorkflow.get_progress)  # type: ignore[attr-defined]
        except Exception:  # the worker is still starting; the query waits for none
            progress = None
        if progress is not None and progress.stage is stage:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"the job never reached {stage}")


async def test_generation_moves_to_a_new_worker_within_the_heartbeat_timeout(
    dev_env: WorkflowEnvironment, redis_url: str, settings: Settings, tmp_path: Path
) -> None:
    database_url = f"sqlite:///{tmp_path / 'jobs.db'}"
    queue = f"crash-{uuid.uuid4()}"
    target = dev_env.client.service_client.config.target_host
    env = {
        **os.environ,
        "TEMPORAL_ADDRESS": target,
        "AGENTFLOW_TASK_QUEUE": queue,
        "REDIS_URL": redis_url,
        "DATABASE_URL": database_url,
        "AGENTFLOW_SQL_DATABASE_PATH": str(settings.sql_database_path),
        # The simulated medium tier then takes a few seconds per answer.
        "AGENTFLOW_SIMULATED_LATENCY_SCALE": "4",
        # The workflow task waits 2 s on the dead worker's sticky queue, not the default 10 s.
        "AGENTFLOW_STICKY_QUEUE_TIMEOUT_S": "2",
        # The retry waits out the killed attempt's coalescing lease (3 s here, 10 s by default).
        "AGENTFLOW_COALESCE_LEASE_S": "3",
        "PYTHONUNBUFFERED": "1",
    }
    worker_settings = Settings(database_url=database_url)
    engine = make_engine(database_url)
    create_tables(engine)
    client = await Client.connect(target, plugins=[worker_plugin(worker_settings, engine)])
    job_id = uuid.uuid4().hex
    request = AgentRequest(
        query=f"Write two sentences about rivers [{job_id[:6]}]", model_tier="medium"
    )
    log = tmp_path / "workers.log"

    with worker_process(env, log) as first:
        handle = await client.start_workflow(
            AgentWorkflow.run,
            AgentWorkflowInput(
                job_id=job_id,
                request=request,
                heartbeat_timeout=HEARTBEAT_TIMEOUT,
                shape=CURRENT_SHAPE,
            ),
            id=f"agent-{job_id}",
            task_queue=queue,
        )
        await wait_for_stage(handle, Stage.GENERATION, timeout_s=60)
        await asyncio.sleep(0.5)  # the final answer is being generated now
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        killed_at = time.monotonic()

    # The replacement worker's simulated model answers at once: what is tested is that it gets
    # the call after the heartbeat timeout, not how long it then takes.
    with worker_process({**env, "AGENTFLOW_SIMULATED_LATENCY_SCALE": "0"}, log):
        result = await asyncio.wait_for(handle.result(), timeout=90)
    recovered_s = time.monotonic() - killed_at
    engine.dispose()

    assert result.status is JobStatus.COMPLETED and result.answer
    history = await handle.fetch_history()
    scheduled = {
        e.event_id: e.activity_task_scheduled_event_attributes
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    }
    final_starts = [
        e.activity_task_started_event_attributes
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
        and scheduled[
            e.activity_task_started_event_attributes.scheduled_event_id
        ].activity_type.name
        == "generate_answer"
        and e.activity_task_started_event_attributes.attempt > 1
    ]
    assert final_starts, "the killed call was retried"
    last_failure = final_starts[-1].last_failure
    assert last_failure.timeout_failure_info.timeout_type == TimeoutType.TIMEOUT_TYPE_HEARTBEAT
    # Heartbeat timeout (2 s) + retry + a few seconds of generation + the workflow task's
    # sticky-queue timeout on the dead worker (2 s here) + the killed attempt's coalescing lease
    # (3 s here): far below v1's 65 s start-to-close, and about 8 s on this machine.
    assert recovered_s < 25, f"recovery took {recovered_s:.1f}s"
