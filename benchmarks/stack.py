"""The servers and workers a benchmark run needs, started fresh and stopped at the end.

:class:`BenchStack` starts its own Temporal dev server (in memory, free ports, the low-latency
poll setting and the agent search attributes ``agentflow dev`` also uses) and its own
``redis-server`` on a free port, so caches start empty and nothing a developer runs on 7233 or
6379 is touched or measured. Workers are ``python worker.py`` processes, exactly as deployed,
started per benchmark with the settings it needs (:meth:`BenchStack.workers`), each pool on its
own task queue.

The benchmark driver (this process) talks to Temporal directly with a client; the REST API is
not in the measured path. That client carries :class:`infra.temporal.AgentflowPlugin` with the
stack's SQLite job database as payload storage, exactly as the workers are configured, so it can
read results and inputs that the data converter stored outside history.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from rich.console import Console
from sqlalchemy import Engine
from temporalio.api.enums.v1 import EventType, TaskQueueType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client, WorkflowHandle, WorkflowHistory

from cli.devstack import (
    ChildProcess,
    find_redis_server,
    find_temporal,
    free_port,
    redis_answers,
    search_attribute_args,
    temporal_answers,
)
from core.ids import DECIDE_UPDATE, PROGRESS_QUERY, workflow_id_for
from core.models import (
    CURRENT_SHAPE,
    AgentProgress,
    AgentRequest,
    AgentResult,
    AgentWorkflowInput,
    ApprovalDecision,
    DecisionResult,
    JobStatus,
)
from core.settings import PROJECT_ROOT, Settings
from core.telemetry import configure_tracing
from infra.db import make_engine
from infra.migrations import create_tables
from infra.tools import builtin_registry, ensure_example_database
from worker import worker_plugin
from workflows.agent import AgentWorkflow

START_TIMEOUT_S = 60.0
"""How long a server or worker may take to come up, in seconds."""

APPROVAL_POLL_S = 0.01
"""How often the driver asks a job that needs approval whether it waits at its gate, in seconds."""

LOCAL_ACTIVITY_MARKER = "core_local_activity"
"""Marker name under which a local activity's result is recorded in history."""


class BenchStackError(RuntimeError):
    """A server or worker of the benchmark stack did not start; the message says which."""


@dataclass
class WorkerPool:
    """Worker processes polling one task queue."""

    task_queue: str
    children: list[ChildProcess] = field(default_factory=list)

    @property
    def pids(self) -> list[int]:
        """Process ids of the workers."""
        return [c.proc.pid for c in self.children]


@dataclass
class BenchStack:
    """A private Temporal dev server + Redis + SQLite for one benchmark run.

    Use ``async with BenchStack() as stack``; leaving the block stops everything it started.
    """

    console: Console = field(default_factory=Console)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="agentflow-bench-")))
    temporal_address: str = ""
    redis_url: str = ""
    database_url: str = ""
    client: Client | None = None
    engine: Engine | None = None
    """The job database (SQLite in ``workdir``); the driver's client stores payloads through it."""
    _servers: list[ChildProcess] = field(default_factory=list)
    _approval_tools: frozenset[str] = field(
        default_factory=lambda: frozenset(
            t.name for t in builtin_registry(Settings()) if t.metadata.requires_approval
        )
    )
    """Tools whose calls make a job wait for approval (from their metadata)."""

    async def __aenter__(self) -> BenchStack:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.stop(keep_files=exc_info[0] is not None)

    # ------------------------------------------------------------------ servers

    async def start(self) -> None:
        """Start Temporal and Redis and connect the driver's client.

        Raises:
            BenchStackError: a server did not answer within :data:`START_TIMEOUT_S`.
        """
        started = time.perf_counter()
        port, ui_port = free_port(), free_port()
        self.temporal_address = f"127.0.0.1:{port}"
        temporal = self._spawn(
            "temporal",
            [
                find_temporal(), "server", "start-dev", "--ip", "127.0.0.1",
                "--port", str(port), "--ui-port", str(ui_port), "--log-level", "error",
                "--dynamic-config-value", "history.transferProcessorMaxPollRPS=1000",
                *search_attribute_args(),
            ],
        )  # fmt: skip
        redis_port = free_port()
        self.redis_url = f"redis://127.0.0.1:{redis_port}/0"
        redis_child = self._spawn(
            "redis",
            [
                find_redis_server(), "--port", str(redis_port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no",
                "--maxmemory", "256mb", "--maxmemory-policy", "allkeys-lru",
            ],
        )  # fmt: skip
        await self._wait(
            lambda: temporal_answers(self.temporal_address, 2.0), [temporal], "Temporal"
        )
        await self._wait(
            lambda: _true_async(redis_answers(self.redis_url) is None), [redis_child], "Redis"
        )
        self.database_url = f"sqlite:///{self.workdir / 'agentflow.db'}"
        ensure_example_database(self.workdir / "shop.sqlite")
        # The plugin puts OpenTelemetry's interceptor on this client: install agentflow's
        # replay-safe global tracer provider first, as every agentflow process does.
        configure_tracing("agentflow-bench")
        self.engine = make_engine(self.database_url)
        create_tables(self.engine)
        # Same converter and payload storage as the workers (same DATABASE_URL, same threshold
        # from the environment), so results stored outside history can be read back.
        plugin = worker_plugin(Settings(database_url=self.database_url), self.engine)
        self.client = await Client.connect(self.temporal_address, plugins=[plugin])
        self.console.print(
            f"[dim]stack: Temporal {self.temporal_address}, Redis {self.redis_url}, "
            f"up in {time.perf_counter() - started:.1f} s[/]"
        )

    def stop(self, *, keep_files: bool = False) -> None:
        """Stop every process this stack started (reverse order) and delete its temp folder.

        Args:
            keep_files: keep the folder (logs, SQLite files) for a post-mortem.
        """
        for child in reversed(self._servers):
            child.stop(timeout_s=10)
        self._servers.clear()
        if self.engine is not None:
            self.engine.dispose()
            self.engine = None
        if keep_files:
            self.console.print(f"[dim]stack files kept in {self.workdir}[/]")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def worker_env(
        self, task_queue: str, overrides: Mapping[str, str] | None = None
    ) -> dict[str, str]:
        """The environment of a worker process on ``task_queue``."""
        env = dict(os.environ)
        env.update(
            {
                "TEMPORAL_ADDRESS": self.temporal_address,
                "REDIS_URL": self.redis_url,
                "DATABASE_URL": self.database_url,
                "AGENTFLOW_TASK_QUEUE": task_queue,
                "AGENTFLOW_SQL_DATABASE_PATH": str(self.workdir / "shop.sqlite"),
                "AGENTFLOW_DATA_DIR": str(self.workdir),
                "AGENTFLOW_SIMULATED_LATENCY_SCALE": "0",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.pop("AGENTFLOW_OTEL_CONSOLE", None)
        env.update(overrides or {})
        return env

    @asynccontextmanager
    async def api(
        self, name: str, task_queue: str, env: Mapping[str, str] | None = None
    ) -> AsyncIterator[str]:
        """Run ``uvicorn api.app:create_app`` for the block, starting jobs on ``task_queue``.

        Args:
            name: used in the process's name and log file.
            task_queue: where the API starts jobs.
            env: settings overrides (auth, quotas, database), as for :meth:`worker_env`.

        Yields:
            The API's base URL, once ``/readyz`` answered 200.

        Raises:
            BenchStackError: the API exited or was not ready within :data:`START_TIMEOUT_S`.
        """
        import httpx

        port = free_port()
        slug = "".join(c if c.isalnum() else "-" for c in name)[:40]
        child = ChildProcess.start(
            f"api-{slug}",
            [
                sys.executable, "-m", "uvicorn", "api.app:create_app", "--factory",
                "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
                "--no-access-log",
            ],
            self.workdir / "logs" / f"api-{slug}-{port}.log",
            env=self.worker_env(task_queue, env),
            cwd=PROJECT_ROOT,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            last = "no answer yet"
            async with httpx.AsyncClient(timeout=5.0) as http:
                while True:
                    if child.proc.poll() is not None:
                        raise BenchStackError(
                            f"{child.name} exited with {child.proc.returncode}:\n{child.tail()}"
                        )
                    try:
                        response = await http.get(f"{url}/readyz")
                        if response.status_code == httpx.codes.OK:
                            break
                        last = f"HTTP {response.status_code}: {response.text[:300]}"
                    except httpx.HTTPError as exc:
                        last = repr(exc)
                    if time.monotonic() > deadline:
                        raise BenchStackError(
                            f"{child.name} not ready within {START_TIMEOUT_S:g} s: {last}"
                        )
                    await asyncio.sleep(0.2)
            yield url
        finally:
            child.stop(timeout_s=15)

    @asynccontextmanager
    async def workers(
        self,
        count: int = 1,
        *,
        env: Mapping[str, str] | None = None,
        args: list[str] | None = None,
        label: str = "agentflow",
    ) -> AsyncIterator[WorkerPool]:
        """Run ``count`` worker processes on a fresh task queue for the block.

        Args:
            count: number of processes.
            env: settings overrides, e.g. ``{"AGENTFLOW_SIMULATED_LATENCY_SCALE": "1"}``.
            args: the command (default ``python worker.py``); ``{task_queue}`` and
                ``{address}`` in it are filled in.
            label: name used in log files.

        Raises:
            BenchStackError: a worker exited or did not poll within :data:`START_TIMEOUT_S`.
        """
        queue = f"bench-{label}-{uuid.uuid4().hex[:8]}"
        pool = WorkerPool(task_queue=queue)
        command = args or [sys.executable, "worker.py"]
        command = [a.format(task_queue=queue, address=self.temporal_address) for a in command]
        try:
            for i in range(count):
                pool.children.append(
                    ChildProcess.start(
                        f"{label}-worker-{i}",
                        command,
                        self.workdir / "logs" / f"{queue}-{i}.log",
                        env=self.worker_env(queue, env),
                        cwd=PROJECT_ROOT,
                    )
                )
            await self._wait(lambda: self._all_poll(pool), pool.children, f"{count} worker(s)")
            yield pool
        finally:
            for child in pool.children:
                child.stop(timeout_s=15)

    async def _all_poll(self, pool: WorkerPool) -> bool:
        assert self.client is not None
        polling: set[str] = set()
        for kind in (
            TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
            TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
        ):
            response = await self.client.workflow_service.describe_task_queue(
                DescribeTaskQueueRequest(
                    namespace="default",
                    task_queue=TaskQueue(name=pool.task_queue),
                    task_queue_type=kind,
                ),
                timeout=timedelta(seconds=3),
            )
            ids = {p.identity.split("@", 1)[0] for p in response.pollers}
            polling = ids if not polling else polling & ids
        return all(str(pid) in polling for pid in pool.pids)

    async def flush_redis(self) -> None:
        """Empty the benchmark Redis (both caches), so the next job starts cold."""
        client = aioredis.Redis.from_url(self.redis_url)
        try:
            await client.flushdb()
        finally:
            await client.aclose()

    # ------------------------------------------------------------------ jobs

    async def run_job(
        self,
        request: AgentRequest,
        task_queue: str,
        *,
        approve: bool = True,
        draft: bool = True,
        job_id: str | None = None,
    ) -> tuple[AgentResult, float]:
        """Run one agent job to its end through Temporal.

        A job that needs approval (``require_approval``, or an explicit call of a tool whose
        metadata requires it) gets its decision through the workflow's ``decide`` update as soon
        as it waits at its gate (polled with the ``get_progress`` query every
        :data:`APPROVAL_POLL_S`): an approval, or a rejection with ``approve=False``. The gate
        refuses decisions before the job reaches it, so the decision cannot travel with the start.
        (Only explicit calls are checked: the rules planner, which plans with the simulated
        catalog, never proposes a tool that requires approval.)

        Returns:
            The result and the wall time from start request to result, in ms (approval round
            trips included).
        """
        assert self.client is not None
        job_id = job_id or uuid.uuid4().hex
        inp = AgentWorkflowInput(
            job_id=job_id, request=request, draft_enabled=draft, shape=CURRENT_SHAPE
        )
        needs_approval = request.require_approval or any(
            c.name in self._approval_tools for c in request.tool_calls
        )
        started = time.perf_counter()
        handle = await self.client.start_workflow(
            AgentWorkflow.run, inp, id=workflow_id_for(job_id), task_queue=task_queue
        )
        outcome = asyncio.ensure_future(handle.result())
        try:
            if needs_approval:
                decision = ApprovalDecision(approved=approve, reviewer="bench")
                await _decide_at_gate(handle, decision, outcome)
            result = await outcome
        finally:
            if not outcome.done():
                outcome.cancel()
        return result, (time.perf_counter() - started) * 1000

    async def history(self, job_id: str) -> WorkflowHistory:
        """The event history of a finished job."""
        assert self.client is not None
        return await self.client.get_workflow_handle(workflow_id_for(job_id)).fetch_history()

    # ------------------------------------------------------------------ helpers

    def _spawn(self, name: str, args: list[str]) -> ChildProcess:
        child = ChildProcess.start(
            name,
            args,
            self.workdir / "logs" / f"{name}.log",
            env=dict(os.environ),
            cwd=PROJECT_ROOT,
        )
        self._servers.append(child)
        return child

    async def _wait(self, ready: Any, watch: list[ChildProcess], what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            for child in watch:
                if child.proc.poll() is not None:
                    raise BenchStackError(
                        f"{child.name} exited with {child.proc.returncode}:\n{child.tail()}"
                    )
            try:
                if await ready():
                    return
            except Exception:  # not up yet
                pass
            if time.monotonic() > deadline:
                raise BenchStackError(f"{what} did not come up within {START_TIMEOUT_S:g} s")
            await asyncio.sleep(0.2)


async def _true_async(value: bool) -> bool:
    return value


async def _decide_at_gate(
    handle: WorkflowHandle[Any, AgentResult],
    decision: ApprovalDecision,
    outcome: asyncio.Future[AgentResult],
) -> None:
    """Send ``decision`` through ``decide`` once the job waits at its gate.

    Returns without deciding when the job ends first (it never reached a gate).
    """
    while not outcome.done():
        try:
            progress = await handle.query(PROGRESS_QUERY, result_type=AgentProgress)
        except Exception:  # first workflow task not completed yet: ask again
            progress = None
        if progress is not None:
            if progress.status is JobStatus.AWAITING_APPROVAL:
                await handle.execute_update(DECIDE_UPDATE, decision, result_type=DecisionResult)
                return
            if progress.status.is_terminal:
                return
        await asyncio.wait([outcome], timeout=APPROVAL_POLL_S)


def activity_events(
    history: WorkflowHistory, activity_type: str | None = None
) -> list[dict[str, Any]]:
    """Scheduled/started/completed times (seconds, monotonic within the history) per activity.

    Returns:
        One dict per scheduled activity: ``type``, ``scheduled``, ``started``, ``closed``
        (event times as UNIX seconds; ``None`` when the event is missing).
    """
    by_scheduled: dict[int, dict[str, Any]] = {}
    started_to_scheduled: dict[int, int] = {}
    for event in history.events:
        t = event.event_time.ToDatetime().timestamp()
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            name = event.activity_task_scheduled_event_attributes.activity_type.name
            by_scheduled[event.event_id] = {
                "type": name,
                "scheduled": t,
                "started": None,
                "closed": None,
            }
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            sched = event.activity_task_started_event_attributes.scheduled_event_id
            started_to_scheduled[event.event_id] = sched
            by_scheduled[sched]["started"] = t
        elif event.event_type in (
            EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED,
            EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED,
            EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT,
        ):
            attrs = (
                event.activity_task_completed_event_attributes
                if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED
                else event.activity_task_failed_event_attributes
                if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED
                else event.activity_task_timed_out_event_attributes
            )
            by_scheduled[attrs.scheduled_event_id]["closed"] = t
    spans = list(by_scheduled.values())
    return [s for s in spans if activity_type is None or s["type"] == activity_type]


def workflow_task_count(history: WorkflowHistory) -> int:
    """Number of workflow tasks completed in ``history``."""
    return sum(
        1 for e in history.events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
    )


def _local_activity_data(event: HistoryEvent) -> dict[str, Any] | None:
    """The marker data of a local activity's ``MARKER_RECORDED`` event, else ``None``."""
    if event.event_type != EventType.EVENT_TYPE_MARKER_RECORDED:
        return None
    attrs = event.marker_recorded_event_attributes
    if attrs.marker_name != LOCAL_ACTIVITY_MARKER:
        return None
    data = attrs.details.get("data")
    if data is None or not data.payloads:
        return None
    parsed = json.loads(data.payloads[0].data)
    return parsed if isinstance(parsed, dict) else None


def local_activity_events(
    history: WorkflowHistory, activity_type: str | None = None
) -> list[dict[str, Any]]:
    """The local activities of ``history``: one per ``MARKER_RECORDED`` local-activity marker.

    Local activities run inside a workflow task and leave no ``ACTIVITY_TASK_*`` events; their
    result is recorded as a marker when the workflow task completes.

    Returns:
        One dict per local activity: ``type``, ``attempt`` and ``recorded`` (the marker's event
        time as UNIX seconds).
    """
    out: list[dict[str, Any]] = []
    for event in history.events:
        data = _local_activity_data(event)
        if data is None:
            continue
        name = str(data.get("activity_type", ""))
        if activity_type is None or name == activity_type:
            out.append(
                {
                    "type": name,
                    "attempt": data.get("attempt"),
                    "recorded": event.event_time.ToDatetime().timestamp(),
                }
            )
    return out


@dataclass(frozen=True)
class HistoryShape:
    """What one job left in Temporal: activities by kind, workflow tasks, history size."""

    activities: int
    """Regular activities (``ACTIVITY_TASK_SCHEDULED`` events)."""
    local_activities: int
    """Local activities (local-activity ``MARKER_RECORDED`` events)."""
    workflow_tasks: int
    events: int
    """Events in the history."""
    history_bytes: int
    """Length of ``history.to_json()`` in bytes (payloads stored outside history not counted)."""
    kinds: dict[str, int]
    """Activity type -> count, regular and local together (local ones suffixed `` (local)``)."""

    @property
    def all_activities(self) -> int:
        """Regular plus local activities."""
        return self.activities + self.local_activities


def history_shape(history: WorkflowHistory) -> HistoryShape:
    """Count ``history``'s regular and local activities, workflow tasks, events and bytes."""
    regular = activity_events(history)
    local = local_activity_events(history)
    kinds: dict[str, int] = {}
    for span in regular:
        kinds[span["type"]] = kinds.get(span["type"], 0) + 1
    for marker in local:
        name = f"{marker['type']} (local)"
        kinds[name] = kinds.get(name, 0) + 1
    return HistoryShape(
        activities=len(regular),
        local_activities=len(local),
        workflow_tasks=workflow_task_count(history),
        events=len(history.events),
        history_bytes=len(history.to_json().encode()),
        kinds=kinds,
    )
