"""The baseline most benchmarks compare against: agentflow's stages as a plain asyncio pipeline.

Same activity code, same Redis, same database, same order and concurrency as
:class:`workflows.agent.AgentWorkflow`: response cache, tool plan, model selection, the draft
beside the next stages (only when the selected tier is above small, as the workflow decides),
the tools as ``run_tools`` batches (parallel-safe calls grouped into at most
``TOOL_FANOUT_WIDTH`` concurrent batches, the others one by one), compression, the final answer,
and the job record (a first projection written beside the stages at the start, the final one
after it, as the workflow projects). But called directly in one process: no Temporal, no
durability, no retries, no history. What a hand-rolled service would do.

How each kind of activity is called, mirroring the worker:

* async activities that heartbeat (``generate_answer``, ``run_tools``) need an activity context
  (they read ``activity.info()``); they run inside one from ``temporalio.testing``'s
  :class:`~temporalio.testing.ActivityEnvironment`, with the workflow's heartbeat timeout so
  they start their heartbeat task as on a worker (the heartbeats go nowhere);
* the other async stages (the response-cache lookup, ``plan_tools``, ``record_job``) are
  awaited directly;
* the synchronous stages (``select_model``, ``compress_context``) run with
  ``asyncio.to_thread``, as the worker runs them in its thread pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine
from temporalio.testing import ActivityEnvironment

from activities.wiring import AgentActivities
from core.errors import ErrorType
from core.models import (
    AgentRequest,
    AgentResult,
    AgentWorkflowInput,
    CompressContextInput,
    GenerateInput,
    GenerateResult,
    JobStatus,
    PlannedToolCall,
    PrepareJobInput,
    RecordJobInput,
    RunToolsInput,
    RunToolsResult,
    Tier,
    ToolFailure,
    ToolResult,
)
from core.settings import Settings
from infra.cache import RedisCache
from infra.db import make_engine
from infra.jobs import JobStore
from infra.migrations import create_tables
from infra.providers import ProviderRegistry
from worker import build_activities
from workflows.policies import TOOL_FANOUT_WIDTH

T = TypeVar("T")
Inp = TypeVar("Inp")

HEARTBEAT_TIMEOUT = AgentWorkflowInput.model_fields["heartbeat_timeout"].default
"""The heartbeat timeout the workflow gives model and tool activities by default."""


@dataclass
class PipelineActivities:
    """The activities wired as a worker wires them, plus what must be closed afterwards."""

    activities: AgentActivities
    cache: RedisCache
    providers: ProviderRegistry
    engine: Engine
    _env: ActivityEnvironment = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self._env = ActivityEnvironment()
        timeout: timedelta = HEARTBEAT_TIMEOUT
        self._env.info = dataclasses.replace(self._env.info, heartbeat_timeout=timeout)

    def in_activity(self, fn: Callable[[Inp], Awaitable[T]], inp: Inp) -> Awaitable[T]:
        """Call the async activity ``fn`` inside an activity context."""
        return self._env.run(fn, inp)

    async def run_tools(self, inp: RunToolsInput) -> RunToolsResult:
        """The ``run_tools`` activity code, in this process."""
        return await self.in_activity(self.activities.tools.run_tools, inp)

    async def generate_answer(self, inp: GenerateInput) -> GenerateResult:
        """The ``generate_answer`` activity code, in this process."""
        return await self.in_activity(self.activities.model.generate_answer, inp)

    async def aclose(self) -> None:
        """Close the Redis and provider clients and the database engine."""
        await self.cache.aclose()
        await self.providers.aclose()
        self.engine.dispose()


def pipeline_activities(
    redis_url: str,
    database_url: str,
    workdir: Path,
    *,
    latency_scale: float = 0.0,
    overrides: dict[str, Any] | None = None,
) -> PipelineActivities:
    """The activities wired as a worker would wire them, for in-process calls.

    ``overrides`` are further settings (e.g. a ``DelayServer``'s ``allowlist``).
    """
    settings = Settings(
        redis_url=redis_url,
        database_url=database_url,
        sql_database_path=workdir / "shop.sqlite",
        data_dir=workdir,
        simulated_latency_scale=latency_scale,
        **(overrides or {}),
    )
    engine = make_engine(database_url)
    create_tables(engine)
    activities, cache, providers = build_activities(settings, JobStore(engine))
    return PipelineActivities(activities, cache, providers, engine)


async def _tool_stage(
    acts: PipelineActivities, job_id: str, planned: list[PlannedToolCall]
) -> list[ToolResult]:
    """The workflow's tools stage: the same batches, no retries; results in plan order."""
    results: dict[str, ToolResult] = {}

    async def batch(calls: list[PlannedToolCall]) -> None:
        out = await acts.run_tools(RunToolsInput(job_id=job_id, calls=[p.call for p in calls]))
        for r in out.results:
            results[r.call_id] = r

    parallel = [p for p in planned if p.parallel_safe]
    width = min(len(parallel), TOOL_FANOUT_WIDTH)
    await asyncio.gather(*(batch(parallel[i::width]) for i in range(width)))
    for p in planned:
        if not p.parallel_safe:
            await batch([p])
    return [results[p.call.id] for p in planned if p.call.id in results]


async def run_pipeline(
    acts: PipelineActivities, job_id: str, req: AgentRequest, *, draft: bool = True
) -> AgentResult:
    """Run one request through the stages in the workflow's order, without Temporal.

    Args:
        acts: the wired activities.
        job_id: the job's id (its record's key).
        req: the request; approvals are not modelled (no gate, as if approved at once).
        draft: run the small-tier draft when the selected tier is above small (the workflow's
            ``draft_enabled``).

    Returns:
        The job's result (COMPLETED), recorded in the database like a workflow's.
    """
    stages = acts.activities.stages
    first = RecordJobInput(
        result=AgentResult(job_id=job_id, status=JobStatus.RUNNING), revision=1, request=req
    )
    projection = asyncio.create_task(stages.record_job(first))  # beside the stages, as in the wf
    prepared = await stages.prepare_job(PrepareJobInput(request=req))
    check = prepared.cache

    async def finish(result: AgentResult) -> AgentResult:
        await projection
        await stages.record_job(
            RecordJobInput(result=result, response_cache_key=check.key, revision=2)
        )
        return result

    if check.hit is not None:
        return await finish(
            AgentResult(
                job_id=job_id,
                status=JobStatus.COMPLETED,
                answer=check.hit.answer,
                simulated=check.hit.simulated,
                response_cache_hit=True,
            )
        )
    plan, selection = prepared.plan, prepared.selection
    assert plan is not None and selection is not None, "prepare_job plans on a cache miss"
    draft_task: asyncio.Task[GenerateResult] | None = None
    if draft and selection.tier is not Tier.SMALL:
        draft_task = asyncio.create_task(
            acts.generate_answer(
                GenerateInput(
                    job_id=job_id,
                    purpose="draft",
                    tier=Tier.SMALL,
                    query=req.query,
                    max_tokens=256,
                )
            )
        )
    rejected: list[ToolResult] = [
        ToolFailure(
            call_id="plan", name="plan", error_type=ErrorType.TOOL_CALL_INVALID.value, error=reason
        )
        for reason in plan.rejected
    ]
    results = rejected + await _tool_stage(acts, job_id, plan.planned)
    compressed = await stages.compress_context(
        CompressContextInput(
            query=req.query,
            items=req.context,
            tool_results=results,
            max_tokens=req.max_context_tokens,
            allow_blob_refs=False,
        ),
    )
    final = await acts.generate_answer(
        GenerateInput(
            job_id=job_id,
            purpose="final",
            tier=selection.tier,
            query=req.query,
            context=compressed.items,
        )
    )
    # As the workflow does: a draft still running when the final answer is ready is cancelled.
    drafted: GenerateResult | None = None
    if draft_task is not None:
        if draft_task.done():
            drafted = draft_task.result()
        else:
            draft_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await draft_task
    usage = ([plan.usage] if plan.usage else []) + ([drafted.usage] if drafted else [])
    return await finish(
        AgentResult(
            job_id=job_id,
            status=JobStatus.COMPLETED,
            answer=final.text,
            simulated=final.usage.simulated,
            selection=selection,
            draft=drafted.text if drafted else None,
            tool_results=results,
            compression=compressed.summary,
            usage=[*usage, final.usage],
        )
    )
