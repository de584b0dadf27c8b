"""Benchmark 4: sustained jobs per second, and what a worker process costs in memory.

Full agent jobs (one calculator call and a context item, the whole pipeline with the draft
enabled: the job of the overhead benchmark) with the simulated provider at zero latency, so
orchestration is the whole cost. For concurrency 1, 8 and 64 (jobs in flight from the driver)
with one and with two ``python worker.py`` processes on one task queue, after a warm-up batch, we
time a batch of jobs: jobs/s is batch size / wall time; the row values are the per-job latencies.
Worker RSS is sampled every 100 ms (idle before the batch, peak during it), and the CPU seconds
the Temporal server and the workers used during the batch show where the time goes. The baseline
of each concurrency is one worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import psutil

from benchmarks.bench_overhead import job_request
from benchmarks.context import BenchContext
from benchmarks.report import BenchResult, plot
from benchmarks.stack import BenchStack, HistoryShape, history_shape
from core.models import JobStatus

MIB = 2**20


def _cpu_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def _rss(procs: list[psutil.Process]) -> list[float]:
    out = []
    for proc in procs:
        try:
            out.append(proc.memory_info().rss / MIB)
        except psutil.Error:
            out.append(0.0)
    return out


async def _batch(
    stack: BenchStack, queue: str, jobs: int, concurrency: int, offset: int
) -> tuple[list[float], float, str]:
    """Run ``jobs`` jobs with at most ``concurrency`` in flight.

    Returns:
        Per-job ms, the batch's wall time in s, and the id of one of its jobs.
    """
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    job_ids: list[str] = []

    async def one(i: int) -> None:
        async with gate:
            res, ms = await stack.run_job(job_request(offset + i), queue)
        if res.status != JobStatus.COMPLETED:
            raise RuntimeError(f"job {res.job_id} ended {res.status}: {res.error}")
        latencies.append(ms)
        job_ids.append(res.job_id)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(jobs)))
    return latencies, time.perf_counter() - t0, job_ids[-1]


async def _sample(procs: list[psutil.Process], peak: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        for i, value in enumerate(_rss(procs)):
            peak[i] = max(peak[i], value)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.1)


async def run(ctx: BenchContext) -> BenchResult:
    """Jobs/s and RSS for each (concurrency, workers) pair."""
    stack = await ctx.stack()
    concurrencies = [1, 2] if ctx.smoke else [1, 8, 64]
    worker_counts = [1, 2]

    def jobs_for(c: int) -> int:
        return 3 if ctx.smoke else {1: 30, 8: 160, 64: 320}.get(c, 100)

    result = BenchResult(
        name="throughput",
        title="Throughput: jobs/s at each concurrency, with one and two worker processes",
        baseline="one worker process at the same concurrency",
        params={
            "concurrencies": concurrencies,
            "workers": worker_counts,
            "jobs": {c: jobs_for(c) for c in concurrencies},
            "simulated_latency_scale": 0,
        },
    )
    server = psutil.Process(stack._servers[0].proc.pid)
    curves: dict[str, tuple[list[float], list[float]]] = {}
    offset = 0
    shape: HistoryShape | None = None
    for count in worker_counts:
        label = f"{count} worker" + ("s" if count > 1 else "")
        curves[label] = ([], [])
        async with stack.workers(count) as pool:
            procs = [psutil.Process(pid) for pid in pool.pids]
            *_, warm_job = await _batch(
                stack, pool.task_queue, 4 if ctx.smoke else 20, 4, offset
            )  # warm-up
            if shape is None:
                shape = history_shape(await stack.history(warm_job))
            offset += 100
            await asyncio.sleep(0.5)
            idle = _rss(procs)
            for c in concurrencies:
                ctx.progress(f"{label}, concurrency {c}: {jobs_for(c)} jobs")
                peak = list(idle)
                stop = asyncio.Event()
                sampler = asyncio.create_task(_sample(procs, peak, stop))
                cpu_server, cpu_workers = _cpu_seconds([server]), _cpu_seconds(procs)
                latencies, wall_s, _ = await _batch(stack, pool.task_queue, jobs_for(c), c, offset)
                cpu_server = _cpu_seconds([server]) - cpu_server
                cpu_workers = _cpu_seconds(procs) - cpu_workers
                stop.set()
                await sampler
                offset += jobs_for(c)
                rate = len(latencies) / wall_s
                result.add(
                    f"concurrency={c}",
                    label,
                    latencies,
                    baseline=count == 1,
                    jobs_per_s=round(rate, 2),
                    rss_idle_mib=round(max(idle), 1),
                    rss_peak_mib=round(max(peak), 1),
                    server_cpu_s_per_job=round(cpu_server / len(latencies), 4),
                    worker_cpu_s_per_job=round(cpu_workers / len(latencies), 4),
                )
                curves[label][0].append(c)
                curves[label][1].append(rate)

    def rate_of(case: str, variant: str) -> float:
        return next(
            float(r.extra["jobs_per_s"])
            for r in result.rows
            if r.case == case and r.variant == variant
        )

    top, low = f"concurrency={concurrencies[-1]}", f"concurrency={concurrencies[0]}"
    result.headline(f"jobs/s, 1 worker, {top}", rate_of(top, "1 worker"), "jobs/s")
    result.headline(f"jobs/s, 2 workers, {top}", rate_of(top, "2 workers"), "jobs/s")
    result.headline(
        f"2 workers / 1 worker throughput at {top}",
        rate_of(top, "2 workers") / rate_of(top, "1 worker"),
    )
    result.headline(
        f"1 worker: {top} / {low} throughput",
        rate_of(top, "1 worker") / rate_of(low, "1 worker"),
    )
    one_worker = [r for r in result.rows if r.variant == "1 worker"]
    result.headline("worker RSS idle", float(one_worker[0].extra["rss_idle_mib"]), "MiB")
    result.headline(
        "worker RSS peak under load", max(float(r.extra["rss_peak_mib"]) for r in one_worker), "MiB"
    )
    result.plots.append(
        plot(
            ctx.out_dir,
            "throughput",
            title="Sustained throughput, zero-latency model",
            xlabel="jobs in flight",
            ylabel="jobs/s",
            series=curves,
            logx=True,
        )
    )
    cores = psutil.cpu_count() or 0
    assert shape is not None
    result.notes += [
        f"Everything shares this machine's {cores} logical cores: the Temporal dev server "
        "(in-memory SQLite), the workers, Redis and this driver. server_cpu_s_per_job and "
        "worker_cpu_s_per_job say which of them a job's CPU goes to.",
        f"Each job: {shape.activities} regular activities and {shape.local_activities} local "
        f"activities in {shape.workflow_tasks} workflow tasks, {shape.events} history events "
        f"({shape.history_bytes:,} bytes as JSON), from one warm-up job's history; a job that "
        "waits on a real model would hold a slot far longer, so with real latencies throughput "
        "is bounded by the models, not by this.",
        "RSS columns are per worker process (the largest of the pool).",
    ]
    return result
