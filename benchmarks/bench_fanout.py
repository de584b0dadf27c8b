"""Benchmark 2: N parallel-safe tool calls of latency L each, fanned out as activities.

The tool is agentflow's real ``http_get`` against a real local HTTP server that answers after
L ms (:mod:`benchmarks.delay_server`); every URL carries a nonce, so the tool cache never hits.
For N = 1, 4, 16, 64 we time the tools stage:

* ``sequential`` (baseline): the same tool code (the ``run_tools`` activity, one call per
  invocation) called one after another in this process — what a loop over tool calls does;
* ``asyncio.gather``: the same one-call invocations gathered in this process — the
  no-durability ideal;
* ``agentflow``: one job with N calls, from the first ``run_tools`` activity scheduled to the
  last one closed, read from the workflow history. The workflow groups the calls into at most
  ``TOOL_FANOUT_WIDTH`` (8) ``run_tools`` activities that run concurrently, each running its
  calls concurrently.

``wall / L`` is the stage's time in units of one call: the physical limit is 1. ``http_get``
requires approval, so each job first waits at its gate for the driver's ``decide`` update; the
stage is timed from history after that, so the approval round trip is not in it.
"""

from __future__ import annotations

import asyncio
import time
import uuid

from benchmarks.context import BenchContext
from benchmarks.delay_server import DelayServer
from benchmarks.pipeline import pipeline_activities
from benchmarks.report import BenchResult, plot
from benchmarks.stack import activity_events
from core.models import AgentRequest, JobStatus, RunToolsInput, ToolCall, ToolSuccess
from workflows.policies import TOOL_FANOUT_WIDTH


def _calls(server: DelayServer, n: int, latency_ms: float) -> list[ToolCall]:
    return [
        ToolCall(
            id=f"get{i}",
            name="http_get",
            parameters={"url": server.url(latency_ms, uuid.uuid4().hex)},
        )
        for i in range(n)
    ]


async def run(ctx: BenchContext) -> BenchResult:
    """Time the tools stage for each N in three variants."""
    stack = await ctx.stack()
    latency_ms = 50.0 if ctx.smoke else 100.0
    sizes = [1, 4] if ctx.smoke else [1, 4, 16, 64]
    repeats = ctx.repeats if ctx.smoke else min(ctx.repeats, 5)
    result = BenchResult(
        name="fanout",
        title=f"Tool fan-out: N http_get calls of L = {latency_ms:g} ms each",
        baseline="the same run_tools code, one call at a time, one after another in one process",
        params={
            "latency_ms": latency_ms,
            "sizes": sizes,
            "repeats": repeats,
            "warmup": 1,
            "tool_fanout_width": TOOL_FANOUT_WIDTH,
        },
    )
    curves: dict[str, tuple[list[float], list[float]]] = {
        "sequential": ([], []),
        "asyncio.gather": ([], []),
        "agentflow": ([], []),
    }
    with DelayServer() as server:
        acts = pipeline_activities(
            stack.redis_url, stack.database_url, stack.workdir, overrides=dict(server.allowlist)
        )
        async with stack.workers(1, env=server.allowlist_env) as pool:
            for n in sizes:
                ctx.progress(f"N = {n}")
                samples: dict[str, list[float]] = {k: [] for k in curves}
                for rep in range(1 + repeats):  # the first is a warm-up
                    job = uuid.uuid4().hex
                    t0 = time.perf_counter()
                    for call in _calls(server, n, latency_ms):
                        await acts.run_tools(RunToolsInput(job_id=job, calls=[call]))
                    seq_ms = (time.perf_counter() - t0) * 1000

                    t0 = time.perf_counter()
                    outs = await asyncio.gather(
                        *(
                            acts.run_tools(RunToolsInput(job_id=job, calls=[c]))
                            for c in _calls(server, n, latency_ms)
                        )
                    )
                    gather_ms = (time.perf_counter() - t0) * 1000
                    if not all(isinstance(o.results[0], ToolSuccess) for o in outs):
                        raise RuntimeError(f"an in-process call failed: {outs}")

                    req = AgentRequest(
                        query=f"Fetch these {n} pages ({uuid.uuid4().hex[:6]})",
                        tool_calls=_calls(server, n, latency_ms),
                    )
                    res, _ = await stack.run_job(req, pool.task_queue, draft=False)
                    if res.status != JobStatus.COMPLETED or not all(
                        isinstance(t, ToolSuccess) and not t.cache_hit for t in res.tool_results
                    ):
                        raise RuntimeError(
                            f"agentflow fan-out job failed: {res.status} {res.error}"
                        )
                    spans = activity_events(await stack.history(res.job_id), "run_tools")
                    batches = min(n, TOOL_FANOUT_WIDTH)
                    if len(spans) != batches:
                        raise RuntimeError(
                            f"expected {batches} run_tools activities, found {len(spans)}"
                        )
                    flow_ms = (
                        max(s["closed"] for s in spans) - min(s["scheduled"] for s in spans)
                    ) * 1000
                    if rep == 0:
                        continue
                    samples["sequential"].append(seq_ms)
                    samples["asyncio.gather"].append(gather_ms)
                    samples["agentflow"].append(flow_ms)
                case = f"N={n}"
                for variant, values in samples.items():
                    row = result.add(case, variant, values, baseline=variant == "sequential")
                    row.extra["wall_over_L"] = round(row.stats.median / latency_ms, 2)
                    row.extra["activities"] = (
                        min(n, TOOL_FANOUT_WIDTH) if variant == "agentflow" else 0
                    )
                    curves[variant][0].append(n)
                    curves[variant][1].append(row.extra["wall_over_L"])
    await acts.aclose()
    top = f"N={sizes[-1]}"
    result.headline(
        f"agentflow wall / L at N={sizes[-1]} (limit 1)",
        result.median(top, "agentflow") / latency_ms,
    )
    result.headline(
        f"speed-up over sequential at N={sizes[-1]}",
        result.median(top, "sequential") / result.median(top, "agentflow"),
    )
    result.headline(
        f"agentflow / asyncio.gather at N={sizes[-1]}",
        result.median(top, "agentflow") / result.median(top, "asyncio.gather"),
    )
    result.plots.append(
        plot(
            ctx.out_dir,
            "fanout",
            title=f"Tool fan-out, L = {latency_ms:g} ms per call",
            xlabel="parallel tool calls N",
            ylabel="stage wall time / L",
            series=curves,
            logx=True,
            logy=True,
        )
    )
    result.notes += [
        "agentflow's time is the tools stage read from history event times (first run_tools "
        "scheduled to last closed), so the job's other stages (and the approval that http_get "
        "requires) are not counted; the draft is off.",
        f"The workflow groups a job's parallel-safe calls into at most {TOOL_FANOUT_WIDTH} "
        "run_tools activities (calls dealt round-robin), each running its calls concurrently; "
        "the activities column is how many one job ran. The in-process variants call the same "
        "run_tools code with one call per invocation (inside a test activity context, as "
        "run_tools heartbeats).",
        "The worker runs with the SDK's default slots (worker.py); http_get opens one HTTP "
        "connection per call.",
    ]
    return result
