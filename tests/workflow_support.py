"""Building blocks for workflow tests: a real worker over real activities on a uuid task queue."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from pydantic import BaseModel, Field
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle
from temporalio.worker import Worker

from activities.wiring import AgentActivities
from core.catalog import ModelCatalog
from core.errors import ToolTransientError
from core.models import (
    CURRENT_SHAPE,
    AgentProgress,
    AgentRequest,
    AgentResult,
    AgentWorkflowInput,
    Stage,
)
from core.settings import Settings
from core.tools import Tool, ToolMetadata, ToolRegistry
from infra.cache import RedisCache
from infra.db import make_engine
from infra.jobs import JobStore
from infra.migrations import create_tables
from infra.providers import ProviderRegistry, SimulatedProvider
from infra.quotas import Quotas
from infra.tools import builtin_registry
from worker import build_activities
from workflows.agent import AgentWorkflow

HISTORIES = Path(__file__).parent / "histories"


class SlowParams(BaseModel):
    """Parameters of the test-only ``slow_echo`` tool."""

    text: str
    delay_ms: int = Field(default=300, ge=0, le=5000)


async def slow_echo(params: SlowParams) -> dict[str, str]:
    """Sleep ``delay_ms`` then echo: a tool whose duration is known, to observe overlap."""
    await asyncio.sleep(params.delay_ms / 1000)
    return {"echo": params.text}


class FlakyParams(BaseModel):
    """Parameters of the test-only ``always_down`` tool."""

    target: str = "upstream"


async def always_down(params: FlakyParams) -> dict[str, str]:
    """A tool whose upstream is always down (transient failure every attempt)."""
    raise ToolTransientError(f"{params.target} is unreachable")


FAILED_ONCE: set[str] = set()
"""Keys ``flaky_once`` has already failed for (in this process)."""


async def flaky_once(params: SlowParams) -> dict[str, str]:
    """Fail transiently the first time a ``text`` is seen in this process, then echo it."""
    if params.text not in FAILED_ONCE:
        FAILED_ONCE.add(params.text)
        raise ToolTransientError(f"{params.text}: first call fails")
    return {"echo": params.text}


class BigParams(BaseModel):
    """Parameters of the test-only ``big_report`` tool."""

    size_kib: int = Field(default=64, ge=1, le=1024)
    tag: str = ""


async def big_report(params: BigParams) -> dict[str, str]:
    """A result of about ``size_kib`` KiB, to exercise external payload storage."""
    line = f"Quarterly revenue grew in every region{params.tag}. "
    return {"report": line * (params.size_kib * 1024 // len(line))}


def test_registry(settings: Settings) -> ToolRegistry:
    """The built-in tools plus five test tools with known behaviour (``local_echo`` and
    ``local_flaky_once`` run locally, like the calculator)."""
    registry = builtin_registry(settings)
    registry.register(
        Tool("slow_echo", "Echo after a delay.", SlowParams, slow_echo, ToolMetadata(timeout_s=10))
    )
    registry.register(
        Tool(
            "always_down",
            "Fails transiently.",
            FlakyParams,
            always_down,
            ToolMetadata(cacheable=False, timeout_s=5),
        )
    )
    registry.register(
        Tool("big_report", "A large result.", BigParams, big_report, ToolMetadata(timeout_s=10))
    )
    registry.register(
        Tool(
            "local_echo",
            "Echo after a delay, inside the workflow task.",
            SlowParams,
            slow_echo,
            ToolMetadata(cacheable=False, timeout_s=10, runs_locally=True),
        )
    )
    registry.register(
        Tool(
            "local_flaky_once",
            "Fails transiently once per text, inside the workflow task.",
            SlowParams,
            flaky_once,
            ToolMetadata(cacheable=False, timeout_s=5, runs_locally=True),
        )
    )
    return registry


@dataclass
class Harness:
    """A running worker plus handles on what it writes (store, cache)."""

    client: Client
    task_queue: str
    store: JobStore
    cache: RedisCache
    activities: AgentActivities

    async def start(
        self, request: AgentRequest, *, job_id: str | None = None, **overrides: object
    ) -> WorkflowHandle[AgentWorkflow, AgentResult]:
        """Start ``AgentWorkflow`` for ``request`` as the API does (nothing written first)."""
        job_id = job_id or uuid.uuid4().hex
        workflow_id = f"agent-{job_id}"
        fields: dict[str, object] = {"shape": CURRENT_SHAPE, **overrides}
        inp = AgentWorkflowInput(job_id=job_id, request=request, **fields)  # type: ignore[arg-type]
        return await self.client.start_workflow(
            AgentWorkflow.run, inp, id=workflow_id, task_queue=self.task_queue
        )

    async def run(self, request: AgentRequest, **overrides: object) -> AgentResult:
        """Start and wait for the result."""
        handle = await self.start(request, **overrides)
        return await handle.result()


@asynccontextmanager
async def agent_worker(
    client: Client,
    *,
    redis_url: str,
    database_url: str,
    settings: Settings,
    catalog: ModelCatalog | None = None,
    providers: ProviderRegistry | None = None,
    registry: ToolRegistry | None = None,
    task_queue: str | None = None,
    planner_timeout_s: float = 8.0,
    quotas: Quotas | None = None,
    llm_router_timeout_s: float | None = None,
    coalesce: bool = False,
    semantic: bool = False,
) -> AsyncIterator[Harness]:
    """A real worker with real activities (Redis, SQLite/PostgreSQL, tools, providers).

    The activities are wired by ``worker.build_activities``, as ``python worker.py`` wires
    them, from ``settings`` with these test choices: the Redis and database given here, the
    simulated models without latency (unless ``providers`` says otherwise), the built-in tools
    plus the test tools of :func:`test_registry`, and ``planner_timeout_s``.
    ``llm_router_timeout_s`` selects the LLM router with that timeout. ``coalesce`` wires
    request coalescing and ``semantic`` the semantic level (both off by default: tests that run
    identical calls side by side observe each call, and tests that repeat a question in other
    words expect a fresh answer).

    Workflows, the data converter and the sandbox come from ``client``'s ``AgentflowPlugin``
    (``worker.worker_plugin`` or the session's); the activities are this worker's own, so
    several workers with different models can poll through one client.
    """
    update: dict[str, object] = {
        "redis_url": redis_url,
        "database_url": database_url,
        "planner_timeout_s": planner_timeout_s,
        "semantic_cache": semantic,
        "coalesce_lease_s": 5.0,
    }
    if llm_router_timeout_s is not None:
        update |= {"router": "llm", "router_llm_timeout_s": llm_router_timeout_s}
    wiring = settings.model_copy(update=update)
    engine = make_engine(database_url)
    create_tables(engine)
    store = JobStore(engine)
    activities, cache, providers = build_activities(
        wiring,
        store,
        quotas,
        catalog=catalog or ModelCatalog.default(),
        providers=providers or ProviderRegistry({"simulated": SimulatedProvider(latency_scale=0)}),
        tools=registry or test_registry(settings),
        coalesce=coalesce,
    )
    task_queue = task_queue or f"test-{uuid.uuid4()}"
    worker = Worker(
        client,
        task_queue=task_queue,
        activities=activities.all(),
        graceful_shutdown_timeout=timedelta(seconds=2),
    )
    try:
        async with worker:
            yield Harness(client, task_queue, store, cache, activities)
    finally:
        await cache.aclose()
        await providers.aclose()
        engine.dispose()


async def wait_for_stage(
    handle: WorkflowHandle[AgentWorkflow, AgentResult], stage: Stage, timeout_s: float = 10.0
) -> AgentProgress:
    """Poll the ``get_progress`` query until the job reaches ``stage``; its progress then."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        progress = await handle.query(AgentWorkflow.get_progress)
        if progress.stage is stage:
            return progress
        await asyncio.sleep(0.05)
    raise AssertionError(f"workflow never reached {stage}")


async def activity_spans(
    handle: WorkflowHandle[AgentWorkflow, AgentResult], activity_name: str
) -> list[tuple[float, float]]:
    """(started, completed) event times in seconds for each attempt-final run of an activity.

    Read from the workflow history, so the comparison is of server-recorded activity times,
    not of the test's wall clock.
    """
    history = await handle.fetch_history()
    scheduled: dict[int, str] = {}
    started: dict[int, float] = {}
    spans: list[tuple[float, float]] = []
    for event in history.events:
        ts = event.event_time.ToDatetime().timestamp()
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            attrs = event.activity_task_scheduled_event_attributes
            scheduled[event.event_id] = attrs.activity_type.name
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            attrs_s = event.activity_task_started_event_attributes
            if scheduled.get(attrs_s.scheduled_event_id) == activity_name:
                started[attrs_s.scheduled_event_id] = ts
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            attrs_c = event.activity_task_completed_event_attributes
            if attrs_c.scheduled_event_id in started:
                spans.append((started[attrs_c.scheduled_event_id], ts))
    return spans


async def save_history(handle: WorkflowHandle[AgentWorkflow, AgentResult], name: str) -> None:
    """Write the run's history to ``tests/histories/<name>.json`` (for replay tests)."""
    history = await handle.fetch_history()
    HISTORIES.mkdir(exist_ok=True)
    (HISTORIES / f"{name}.json").write_text(json.dumps(json.loads(history.to_json()), indent=1))
