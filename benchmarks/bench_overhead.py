"""Benchmark 1: what durability costs per job and per activity.

One agent job (a question, one context item, one calculator call) with the simulated provider at
zero latency, so only orchestration is left: agentflow (client -> Temporal dev server -> worker
process; the short stages as local activities inside workflow tasks, tools and model calls as
regular activities; history written) against the same stages as a plain asyncio pipeline in one
process (:mod:`benchmarks.pipeline`), same Redis and database. Every job has a unique query and
expression, so neither the response cache nor the tool cache hits. The two variants alternate
job by job, so drift on the machine hits both alike.

Besides the latencies, each agentflow row reports what one job leaves in Temporal (the last
measured job's history): regular activities, local activities, workflow tasks, history events
and the size of the history as JSON, so the shape can be compared across versions of the core.
"""

from __future__ import annotations

import time
import uuid

from benchmarks.context import BenchContext
from benchmarks.pipeline import pipeline_activities, run_pipeline
from benchmarks.report import BenchResult
from benchmarks.stack import activity_events, history_shape
from core.models import AgentRequest, ContextItem, Importance, JobStatus, ToolCall


def job_request(i: int) -> AgentRequest:
    """A fresh one-tool job (unique text, so no cache hits)."""
    a, b = 17 + i, 23 + 2 * i
    return AgentRequest(
        query=f"What is {a} * {b}, and what does that mean for order {uuid.uuid4().hex[:8]}?",
        context=[
            ContextItem(
                content=f"Order notes: the customer asked for {a} boxes of {b} items each.",
                importance=Importance.HIGH,
                source="notes",
            )
        ],
        tool_calls=[ToolCall(id="calc", name="calculator", parameters={"expression": f"{a}*{b}"})],
    )


async def run(ctx: BenchContext) -> BenchResult:
    """Measure agentflow vs the asyncio pipeline, alternating, after a warm-up."""
    stack = await ctx.stack()
    result = BenchResult(
        name="overhead",
        title="Orchestration overhead: one job, zero-latency model, instant tool",
        baseline="the same stages as a plain asyncio pipeline in one process (no Temporal)",
        params={"repeats": ctx.repeats, "warmup": ctx.warmup, "simulated_latency_scale": 0},
    )
    acts = pipeline_activities(stack.redis_url, stack.database_url, stack.workdir)
    ours: list[float] = []
    plain: list[float] = []
    async with stack.workers(1) as pool:
        for i in range(ctx.warmup + ctx.repeats):
            req = job_request(i)
            res, ms = await stack.run_job(req, pool.task_queue)
            if res.status != JobStatus.COMPLETED:
                raise RuntimeError(f"agentflow job ended {res.status}: {res.error}")
            t0 = time.perf_counter()
            base = await run_pipeline(acts, uuid.uuid4().hex, job_request(i))
            base_ms = (time.perf_counter() - t0) * 1000
            if base.status != JobStatus.COMPLETED:
                raise RuntimeError("pipeline job did not complete")
            if i >= ctx.warmup:
                ours.append(ms)
                plain.append(base_ms)
        history = await stack.history(res.job_id)
    shape = history_shape(history)
    spans = activity_events(history)
    activities = shape.all_activities
    kinds = ", ".join(f"{name} x{n}" for name, n in shape.kinds.items())
    wf_tasks = shape.workflow_tasks
    in_activity = [(s["closed"] - s["started"]) * 1000 for s in spans]
    sched_to_start = [(s["started"] - s["scheduled"]) * 1000 for s in spans]
    case = "one job (calculator + context)"
    result.add(
        case,
        "asyncio pipeline",
        plain,
        baseline=True,
        activities=0,
        local_activities=0,
        workflow_tasks=0,
        history_events=0,
        history_bytes=0,
    )
    result.add(
        case,
        "agentflow",
        ours,
        activities=shape.activities,
        local_activities=shape.local_activities,
        workflow_tasks=wf_tasks,
        history_events=shape.events,
        history_bytes=shape.history_bytes,
    )
    await acts.aclose()
    per_activity = (
        result.median(case, "agentflow") - result.median(case, "asyncio pipeline")
    ) / activities
    result.headline(
        "agentflow / asyncio pipeline latency (median)",
        result.median(case, "agentflow") / result.median(case, "asyncio pipeline"),
    )
    result.headline("overhead per activity", per_activity, "ms")
    result.headline("agentflow job latency (median)", result.median(case, "agentflow"), "ms")
    result.headline("history events per agentflow job", shape.events, "")
    result.headline("history size per agentflow job (JSON)", shape.history_bytes, "bytes")
    tool_calls = len(res.tool_results)
    draft_ran = res.draft is not None
    result.notes += [
        f"One agentflow job = {shape.activities} regular activities and "
        f"{shape.local_activities} local activities ({kinds}) in {wf_tasks} workflow tasks; its "
        f"history has {shape.events} events, {shape.history_bytes:,} bytes as JSON "
        "(history_events, history_bytes: the last measured job; payloads over the external "
        "storage threshold would be stored in the job database, not counted).",
        f"The job ran {tool_calls} tool call(s), grouped into run_tools batches (at most "
        "8 per job); the rules planner adds its own calculator call for the question's "
        "arithmetic ('17 * 23' is not the explicit call's '17*23'). "
        + (
            "The draft ran (selected tier above small)."
            if draft_ran
            else "No draft ran: the workflow drafts only when the selected tier is above small."
        ),
        "Overhead per activity = (agentflow median - pipeline median) / (regular + local "
        "activities per job); it includes the workflow tasks between them, payload encoding and "
        "history writes. Local activities run inside workflow tasks and record a marker instead "
        "of their own schedule/start/complete events.",
        f"In the last job, time inside regular activities summed to {sum(in_activity):.1f} ms; "
        f"their schedule-to-start summed to {sum(sched_to_start):.1f} ms.",
        "Dev server in memory with history.transferProcessorMaxPollRPS=1000 (as agentflow dev "
        "starts it); worker in its own process, driver in this one.",
    ]
    return result
