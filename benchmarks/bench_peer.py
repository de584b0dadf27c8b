"""Benchmark 7: the same agent on pydantic-ai's Temporal integration and on agentflow.

The agent: one question ("What is 17*23+<nonce>?"), one ``calculator`` tool call, one text
answer. The peer is a regular pydantic-ai ``Agent`` with the ``TemporalDurability`` capability
(its current API; :mod:`benchmarks.peer_agent`), driven by a zero-latency ``FunctionModel``; ours
is an ``AgentWorkflow`` job with that explicit tool call, answered by the simulated provider at
zero latency. Both run on the same private Temporal dev server, one worker process each, and both
evaluate the expression with the same function (agentflow's ``evaluate_expression``).

What is measured is orchestration: wall time from start request to result, one job at a time and
under concurrency, and jobs per second. It is a fair comparison of the cost of *running this agent*
on each, but not of equal work: the peer schedules an activity per model request and per tool call
and nothing else, while agentflow's pipeline also checks the response cache, selects a model tier,
drafts (unless disabled), plans the tools, compresses the context and records the job (SQLite and
Redis). The activity and workflow-task counts per job are reported next to the times, so the cost
per activity can be compared as well as the cost per job; agentflow runs its short stages as local
activities (counted apart: they leave a marker in history, not activity events), and each row
also gives the history's size per job (events, and bytes of ``history.to_json()``).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from importlib import metadata
from typing import Any

from pydantic_ai.durable_exec.temporal import PydanticAIPlugin
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHistory

from benchmarks.context import BenchContext
from benchmarks.peer_agent import PeerAgentWorkflow, prompt_for
from benchmarks.report import BenchResult
from benchmarks.stack import BenchStack, activity_events, history_shape
from core.models import AgentRequest, JobStatus, ToolCall, ToolSuccess

PEER = "pydantic-ai TemporalDurability"
AGENTFLOW_FULL = "agentflow (full pipeline)"
AGENTFLOW_NO_DRAFT = "agentflow (no draft)"
VARIANTS = (PEER, AGENTFLOW_FULL, AGENTFLOW_NO_DRAFT)

LATENCY_CASE = "latency, one job at a time"
CONCURRENCY, SMOKE_CONCURRENCY = 16, 2
THROUGHPUT_JOBS, SMOKE_THROUGHPUT_JOBS = 160, 4
THROUGHPUT_ROUNDS, SMOKE_THROUGHPUT_ROUNDS = 4, 2
"""Throughput blocks per variant, interleaved: one block per variant ran 0.76-1.19x apart in
consecutive runs on this machine, because load drifted between the blocks."""
JOB_TIMEOUT_S = 120.0
"""A job that takes longer than this fails the benchmark instead of hanging it."""

_nonces = itertools.count(1)


@dataclass
class Job:
    """One finished job: its wall time and how to find its history."""

    variant: str
    wall_ms: float
    workflow_id: str
    drafted: bool = False
    """An agentflow job whose result carries a draft (the draft activity ran and finished)."""


@dataclass
class Shape:
    """What one variant's jobs do on Temporal, from their histories."""

    activities_per_job: float
    """Regular activities (scheduled on the task queue)."""
    local_activities_per_job: float
    """Local activities (run inside workflow tasks, recorded as markers)."""
    workflow_tasks_per_job: float
    events_per_job: float
    """History events per job."""
    history_bytes_per_job: float
    """Bytes of ``history.to_json()`` per job (payloads stored outside history not counted)."""
    activity_run_ms: float
    """Median time from an activity's start to its close."""
    schedule_to_start_ms: float
    """Median time from an activity's scheduling to its start (the queueing cost)."""
    workflow_task_ms: float
    """Median per job of the summed start-to-completion times of its workflow tasks."""


def _question() -> tuple[str, int, str]:
    """A fresh expression, its value and a nonce, so no cache on either side can hit."""
    n = next(_nonces)
    return f"17*23+{n}", 17 * 23 + n, uuid.uuid4().hex[:8]


class Runner:
    """Starts one job of a variant and checks that it did the work it should have."""

    def __init__(
        self, stack: BenchStack, peer_client: Client, peer_queue: str, agentflow_queue: str
    ) -> None:
        self.stack = stack
        self.peer_client = peer_client
        self.peer_queue = peer_queue
        self.agentflow_queue = agentflow_queue

    async def job(self, variant: str) -> Job:
        """Run one job of ``variant`` to its end.

        Raises:
            RuntimeError: the job failed, hit a cache, or answered wrongly.
        """
        coro = self._peer() if variant == PEER else self._agentflow(variant == AGENTFLOW_FULL)
        return await asyncio.wait_for(coro, JOB_TIMEOUT_S)

    async def _peer(self) -> Job:
        expression, value, nonce = _question()
        workflow_id = f"peer-{uuid.uuid4().hex}"
        started = time.perf_counter()
        handle = await self.peer_client.start_workflow(
            PeerAgentWorkflow.run,
            prompt_for(expression, nonce),
            id=workflow_id,
            task_queue=self.peer_queue,
            execution_timeout=timedelta(seconds=JOB_TIMEOUT_S),
        )
        answer = await handle.result()
        wall_ms = (time.perf_counter() - started) * 1000
        if str(value) not in answer:
            raise RuntimeError(f"peer answered {answer!r} to {expression} (expected {value})")
        return Job(PEER, wall_ms, workflow_id)

    async def _agentflow(self, draft: bool) -> Job:
        expression, value, nonce = _question()
        request = AgentRequest(
            query=prompt_for(expression, nonce),
            tool_calls=[
                ToolCall(id="c1", name="calculator", parameters={"expression": expression})
            ],
        )
        job_id = uuid.uuid4().hex
        result, wall_ms = await self.stack.run_job(
            request, self.agentflow_queue, draft=draft, job_id=job_id
        )
        variant = AGENTFLOW_FULL if draft else AGENTFLOW_NO_DRAFT
        if result.status != JobStatus.COMPLETED or result.response_cache_hit:
            raise RuntimeError(
                f"{variant} job ended {result.status} (cache hit: {result.response_cache_hit}, "
                f"error: {result.error})"
            )
        tools = result.tool_results
        if len(tools) != 1 or not isinstance(tools[0], ToolSuccess) or tools[0].cache_hit:
            raise RuntimeError(f"{variant} job's tool results are not one fresh success: {tools}")
        if not isinstance(tools[0].value, dict) or tools[0].value.get("value") != value:
            raise RuntimeError(f"{variant} calculator gave {tools[0].value} (expected {value})")
        return Job(variant, wall_ms, f"agent-{job_id}", drafted=result.draft is not None)

    async def history(self, job: Job) -> WorkflowHistory:
        """The event history of a finished job."""
        client = self.peer_client if job.variant == PEER else self.stack.client
        assert client is not None
        return await client.get_workflow_handle(job.workflow_id).fetch_history()


async def _shape(runner: Runner, jobs: Sequence[Job]) -> Shape:
    """Activities and workflow tasks per job and activity timings, from the jobs' histories."""
    activities: list[int] = []
    local: list[int] = []
    events: list[int] = []
    sizes: list[int] = []
    tasks: list[int] = []
    run_ms: list[float] = []
    queue_ms: list[float] = []
    task_ms: list[float] = []
    for job in jobs:
        history = await runner.history(job)
        task_ms.append(_workflow_task_ms(history))
        spans = activity_events(history)
        shape = history_shape(history)
        activities.append(shape.activities)
        local.append(shape.local_activities)
        events.append(shape.events)
        sizes.append(shape.history_bytes)
        tasks.append(shape.workflow_tasks)
        for span in spans:
            if span["started"] is not None and span["closed"] is not None:
                run_ms.append((span["closed"] - span["started"]) * 1000)
            if span["started"] is not None:
                queue_ms.append((span["started"] - span["scheduled"]) * 1000)
    return Shape(
        activities_per_job=statistics.fmean(activities),
        local_activities_per_job=statistics.fmean(local),
        workflow_tasks_per_job=statistics.fmean(tasks),
        events_per_job=statistics.fmean(events),
        history_bytes_per_job=statistics.fmean(sizes),
        activity_run_ms=statistics.median(run_ms) if run_ms else 0.0,
        schedule_to_start_ms=statistics.median(queue_ms) if queue_ms else 0.0,
        workflow_task_ms=statistics.median(task_ms),
    )


def _workflow_task_ms(history: WorkflowHistory) -> float:
    """Total time the worker spent in ``history``'s workflow tasks (start to completion), ms."""
    started: dict[int, float] = {}
    total = 0.0
    for event in history.events:
        t = event.event_time.ToDatetime().timestamp()
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED:
            started[event.event_id] = t
        elif event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
            begin = started.get(event.workflow_task_completed_event_attributes.started_event_id)
            if begin is not None:
                total += t - begin
    return total * 1000


def _shape_extra(shape: Shape, median_ms: float) -> dict[str, Any]:
    every = shape.activities_per_job + shape.local_activities_per_job
    return {
        "activities_per_job": round(shape.activities_per_job, 2),
        "local_activities_per_job": round(shape.local_activities_per_job, 2),
        "ms_per_activity": round(median_ms / every, 2),
        "workflow_tasks_per_job": round(shape.workflow_tasks_per_job, 2),
        "history_events_per_job": round(shape.events_per_job, 1),
        "history_bytes_per_job": round(shape.history_bytes_per_job),
        "workflow_task_ms": round(shape.workflow_task_ms, 2),
        "activity_run_ms": round(shape.activity_run_ms, 2),
        "schedule_to_start_ms": round(shape.schedule_to_start_ms, 2),
    }


async def _concurrently(
    job: Callable[[], Awaitable[Job]], count: int, concurrency: int
) -> tuple[list[Job], float]:
    """Run ``count`` jobs, at most ``concurrency`` at a time.

    Returns:
        The jobs and the elapsed wall time in seconds.
    """
    gate = asyncio.Semaphore(concurrency)

    async def one() -> Job:
        async with gate:
            return await job()

    started = time.perf_counter()
    jobs = await asyncio.gather(*(one() for _ in range(count)))
    return list(jobs), time.perf_counter() - started


async def run(ctx: BenchContext) -> BenchResult:
    """Measure the peer and agentflow: sequential latency, then throughput at concurrency."""
    concurrency = SMOKE_CONCURRENCY if ctx.smoke else CONCURRENCY
    throughput_jobs = SMOKE_THROUGHPUT_JOBS if ctx.smoke else THROUGHPUT_JOBS
    stack = await ctx.stack()
    result = BenchResult(
        name="peer",
        title="A peer: pydantic-ai's Temporal integration vs agentflow, same one-tool agent",
        baseline=(
            "the same one-tool-then-answer agent as a pydantic-ai Agent with the "
            "TemporalDurability capability (FunctionModel, zero latency), own worker process"
        ),
        unit="ms",
        params={
            "repeats": ctx.repeats,
            "warmup": ctx.warmup,
            "concurrency": concurrency,
            "throughput_jobs": throughput_jobs,
            "throughput_rounds": SMOKE_THROUGHPUT_ROUNDS if ctx.smoke else THROUGHPUT_ROUNDS,
            "worker_processes_per_framework": 1,
            "expression": "17*23+<nonce>",
            "pydantic_ai_slim": metadata.version("pydantic-ai-slim"),
        },
    )
    peer_client = await Client.connect(stack.temporal_address, plugins=[PydanticAIPlugin()])
    peer_args = [
        sys.executable, "-m", "benchmarks.peer_worker",
        "--address", "{address}", "--task-queue", "{task_queue}",
    ]  # fmt: skip
    async with (
        stack.workers(1, args=peer_args, label="peer") as peer_pool,
        stack.workers(1, label="agentflow") as agentflow_pool,
    ):
        runner = Runner(stack, peer_client, peer_pool.task_queue, agentflow_pool.task_queue)

        # Latency: variants interleaved (rotating order) so drifting load on a shared machine
        # hits all of them alike.
        ctx.progress(
            f"latency: {ctx.warmup} warm-up + {ctx.repeats} measured jobs per variant, interleaved"
        )
        measured: dict[str, list[Job]] = {v: [] for v in VARIANTS}
        for i in range(ctx.warmup + ctx.repeats):
            shift = i % len(VARIANTS)
            for variant in VARIANTS[shift:] + VARIANTS[:shift]:
                job = await runner.job(variant)
                if i >= ctx.warmup:
                    measured[variant].append(job)
        shapes = {v: await _shape(runner, measured[v]) for v in VARIANTS}
        latency_median: dict[str, float] = {}
        for variant in VARIANTS:
            values = [j.wall_ms for j in measured[variant]]
            latency_median[variant] = statistics.median(values)
            result.add(
                LATENCY_CASE,
                variant,
                values,
                baseline=variant == PEER,
                **_shape_extra(shapes[variant], latency_median[variant]),
            )
            ctx.progress(
                f"{variant}: median {latency_median[variant]:.1f} ms, "
                f"{shapes[variant].activities_per_job:g} activities + "
                f"{shapes[variant].local_activities_per_job:g} local activities/job"
            )

        # Throughput: `rounds` blocks per variant, each with `concurrency` jobs in flight, the
        # variants' blocks in rotating order (as for latency), so drifting load on a shared
        # machine hits every variant alike; jobs/s = a variant's jobs / its blocks' time.
        case = f"throughput, concurrency {concurrency}"
        rounds = SMOKE_THROUGHPUT_ROUNDS if ctx.smoke else THROUGHPUT_ROUNDS
        per_block = max(1, throughput_jobs // rounds)
        done: dict[str, list[Job]] = {v: [] for v in VARIANTS}
        busy_s: dict[str, float] = dict.fromkeys(VARIANTS, 0.0)
        for i in range(rounds):
            shift = i % len(VARIANTS)
            for variant in VARIANTS[shift:] + VARIANTS[:shift]:
                jobs, elapsed = await _concurrently(
                    functools.partial(runner.job, variant), per_block, concurrency
                )
                done[variant] += jobs
                busy_s[variant] += elapsed
        jobs_per_s: dict[str, float] = {}
        for variant in VARIANTS:
            jobs = done[variant]
            jobs_per_s[variant] = len(jobs) / busy_s[variant]
            shape = await _shape(runner, jobs)
            values = [j.wall_ms for j in jobs]
            result.add(
                case,
                variant,
                values,
                baseline=variant == PEER,
                jobs_per_s=round(jobs_per_s[variant], 2),
                **_shape_extra(shape, statistics.median(values)),
            )
            ctx.progress(
                f"{variant}: {jobs_per_s[variant]:.1f} jobs/s at concurrency {concurrency}"
            )

    result.headline(
        "latency, agentflow (full pipeline) / pydantic-ai (median)",
        latency_median[AGENTFLOW_FULL] / latency_median[PEER],
    )
    result.headline(
        "latency, agentflow (no draft) / pydantic-ai (median)",
        latency_median[AGENTFLOW_NO_DRAFT] / latency_median[PEER],
    )
    result.headline(
        f"throughput at concurrency {concurrency}, agentflow (full pipeline) / pydantic-ai",
        jobs_per_s[AGENTFLOW_FULL] / jobs_per_s[PEER],
    )
    result.headline(
        f"throughput at concurrency {concurrency}, agentflow (no draft) / pydantic-ai",
        jobs_per_s[AGENTFLOW_NO_DRAFT] / jobs_per_s[PEER],
    )
    for variant in VARIANTS:
        result.headline(f"activities per job, {variant}", shapes[variant].activities_per_job, "")
        if variant != PEER:
            result.headline(
                f"local activities per job, {variant}",
                shapes[variant].local_activities_per_job,
                "",
            )
    for variant in VARIANTS:
        result.headline(f"history events per job, {variant}", shapes[variant].events_per_job, "")
    result.notes += [
        "Every job asks a fresh expression (`17*23+<nonce>`) with a nonce in the query, so "
        "neither agentflow's response cache nor its tool-result cache can hit; each agentflow "
        "result is checked to be a cache miss with one fresh calculator success, and each peer "
        "answer is checked to contain the right value.",
        "Both models answer at zero latency (FunctionModel; agentflow's simulated provider with "
        "AGENTFLOW_SIMULATED_LATENCY_SCALE=0), and both tools call agentflow's "
        "`evaluate_expression`: the times are orchestration, not model or tool work.",
        "Not equal work: the peer runs one activity per model request and per tool call; "
        "agentflow runs quick in-memory tools (the calculator here) as a local activity inside "
        "the workflow task, and also checks the response cache, selects a tier, drafts (unless "
        "disabled), plans the tools, compresses the context and records the job in SQLite and "
        "Redis. "
        "`activities_per_job` (regular activities), `local_activities_per_job` (agentflow's "
        "short stages run as local activities inside workflow tasks: recorded as "
        "MARKER_RECORDED events, not ACTIVITY_TASK_* events) and `workflow_tasks_per_job` come "
        "from the jobs' histories; `ms_per_activity` is the median job time divided by the "
        "regular plus local activities per job.",
        "`history_events_per_job` and `history_bytes_per_job` (bytes of the history as JSON; "
        "agentflow's payloads over its external-storage threshold would live in its job "
        "database instead) say how much each job writes to Temporal.",
        "agentflow drafts only when the selected tier is above small: "
        f"{sum(j.drafted for j in measured[AGENTFLOW_FULL])} of the "
        f"{len(measured[AGENTFLOW_FULL])} measured 'full pipeline' jobs drafted (when none "
        "does, 'full pipeline' and 'no draft' run the same activities).",
        "`activity_run_ms` is the median start-to-close time of the jobs' regular activities, "
        "`schedule_to_start_ms` the median time they waited for a worker slot, and "
        "`workflow_task_ms` the median per job of the time its workflow tasks took (workflow "
        "code in the sandbox plus the round trip), all from server event times.",
        "Both workers: one process, the SDK's default slots, default workflow sandbox. "
        "agentflow's worker runs as deployed (`python worker.py`; tracing off, the default); the "
        "peer follows pydantic-ai's documented pattern, where the workflow "
        "sandbox re-imports the workflow module, and so rebuilds the agent, on every run.",
        "Latency jobs run one at a time with the three variants interleaved in rotating order; "
        f"throughput runs {throughput_jobs} jobs per variant, {concurrency} in flight, in "
        f"{rounds} blocks per variant whose order rotates; `jobs_per_s` = jobs / the wall time "
        "of the variant's blocks.",
    ]
    return result
