"""Benchmark: do analytics readers starve job submissions?

One API process (``uvicorn api.app:create_app``, API keys on) over a job database seeded with
:data:`JOBS` terminal job records ending over the last week (realistic recorded results: model
calls, tool results, timings, cache reports, an answer of about 600 characters). The driver
times ``POST /v1/jobs`` one at a time, first alone (the case's baseline) and then while
:data:`CALLERS` concurrent callers in a separate process loop on
``GET /v1/metrics/cost?period=week`` (the issue's load), each caller sending its next request as
soon as the previous one answered. Ratio = POST p50 under load / POST p50 alone, in the same API
process (each case starts its own), so drift between cases does not enter it. Target
:data:`TARGET_RATIO`.

Cases (each with its own API process and settings, Redis emptied between them):

- the default settings (the per-key analytics limit, the cache, the analytics process), callers
  honouring ``Retry-After`` or ignoring it, and with one read key per caller (each owning a
  share of the jobs: 20 computations nobody can share, and 20 limits);
- the admin key (sees all jobs) and a read key (owns :data:`READ_KEY_SHARE` of them) with the
  analytics limit raised, so every call is answered (by the cache, a shared computation or a
  new one), with the cache on (:data:`CACHE_TTL_S`) and off (``AGENTFLOW_ANALYTICS_CACHE_TTL_S=0``:
  every call that does not join one in flight computes again, the worst case for the
  computation itself);
- the cache off with the computation in a thread of the API process instead of the analytics
  process (``AGENTFLOW_ANALYTICS_EXECUTOR=thread``): what the GIL does to the event loop;
- a control: the same callers on ``GET /v1/models``, a trivial authenticated route, to show what
  that many HTTP requests cost the API by themselves.

Submissions run on a task queue no worker polls (``POST /v1/jobs`` returns once the workflow is
started), so only the API, Temporal, Redis and the analytics computation share the machine.

The callers run as ``python -c "...callers_main()"`` (light imports, own process, own event
loop), so their client-side work does not slow the driver's timing of the submissions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from benchmarks.report import BenchResult

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from benchmarks.context import BenchContext
    from benchmarks.stack import BenchStack

JOBS = 5_000
"""Job records in the database (the issue's figure)."""
SMOKE_JOBS = 200
"""Job records in a smoke run."""
CALLERS = 20
"""Concurrent analytics callers (the issue's figure)."""
ANALYTICS_PATH = "/v1/metrics/cost?period=week"
"""What the callers ask for (the issue's route)."""
READ_KEY_SHARE = 0.2
"""Share of the jobs the read key submitted (the admin key sees them all)."""
CACHE_TTL_S = 15.0
"""The analytics cache TTL of the cached cases (the setting's default), in seconds."""
TARGET_RATIO = 1.5
"""The issue's bound: POST p50 under analytics load at most this times the p50 alone."""
SETTLE_S = 1.0
"""How long the callers run before submissions are timed again (steady load), in seconds."""
ROUNDS = 3
"""Alone and loaded blocks per case, alternating (each a third of the submissions)."""
HTTP_TIMEOUT_S = 120.0
"""Timeout of one HTTP call, in seconds (a starved API answers slowly, not never)."""


@dataclass(frozen=True)
class Case:
    """One API configuration and who calls analytics.

    Attributes:
        label: the case's name in the results.
        key: the callers' keys: ``admin``, ``read``, or ``dashboards`` (one read key each, so
            no two callers share a computation).
        env: settings of the API process for the case.
        ignore_retry_after: callers send again at once after a 429.
        process_pool: the computation runs in the analytics process (counted toward the target).
        path: what the callers ask for (the control case asks for something else).
    """

    label: str
    key: str
    env: dict[str, str]
    ignore_retry_after: bool = False
    process_pool: bool = True
    path: str = ANALYTICS_PATH


UNLIMITED = {"AGENTFLOW_ANALYTICS_RATE_LIMIT_PER_MINUTE": "1000000"}
NO_CACHE = {**UNLIMITED, "AGENTFLOW_ANALYTICS_CACHE_TTL_S": "0"}

CASES: tuple[Case, ...] = (
    Case("admin key, default settings", "admin", {}),
    Case("admin key, default settings, Retry-After ignored", "admin", {}, ignore_retry_after=True),
    Case(f"{CALLERS} read keys (one per caller), default settings", "dashboards", {}),
    Case(f"admin key, no limit, cache {CACHE_TTL_S:g} s", "admin", dict(UNLIMITED)),
    Case(f"read key, no limit, cache {CACHE_TTL_S:g} s", "read", dict(UNLIMITED)),
    Case("admin key, no limit, no cache", "admin", dict(NO_CACHE)),
    Case("read key, no limit, no cache", "read", dict(NO_CACHE)),
    Case(
        "admin key, no limit, no cache, thread (not process)",
        "admin",
        {**NO_CACHE, "AGENTFLOW_ANALYTICS_EXECUTOR": "thread"},
        process_pool=False,
    ),
    Case(
        "control: the same callers on GET /v1/models (no analytics)",
        "admin",
        dict(UNLIMITED),
        process_pool=False,
        path="/v1/models",
    ),
)
"""Every case, in the order run."""

SMOKE_CASES = (CASES[1], CASES[2])
"""The cases of a smoke run."""


# --------------------------------------------------------------------------- seeding


def _result_json(job_id: str, rng: random.Random, status: str) -> tuple[Any, float, int, int]:
    """A recorded :class:`core.models.AgentResult` like a real job's; also cost and tokens."""
    from core.models import (
        AgentResult,
        CacheReport,
        JobStatus,
        ModelUsage,
        SelectionScores,
        SelectModelResult,
        Stage,
        StageTiming,
        TaskType,
        Tier,
        ToolFailure,
        ToolSuccess,
    )

    tier = rng.choice([Tier.SMALL, Tier.SMALL, Tier.MEDIUM, Tier.MEDIUM, Tier.LARGE])
    cached = rng.random() < 0.15
    usage: list[ModelUsage] = []
    if not cached:
        price = {Tier.SMALL: 0.0005, Tier.MEDIUM: 0.003, Tier.LARGE: 0.01}[tier]
        if tier is not Tier.SMALL:
            usage.append(
                ModelUsage(
                    purpose="draft",
                    tier=Tier.SMALL,
                    provider="simulated",
                    model="simulated-small",
                    simulated=True,
                    prompt_tokens=300,
                    completion_tokens=120,
                    cost_usd=0.00021,
                    latency_ms=40.0,
                )
            )
        prompt, completion = rng.randint(300, 3000), rng.randint(50, 800)
        usage.append(
            ModelUsage(
                purpose="final",
                tier=tier,
                provider="simulated",
                model=f"simulated-{tier}",
                simulated=True,
                prompt_tokens=prompt,
                completion_tokens=completion,
                cost_usd=(prompt + completion) / 1000 * price,
                latency_ms=rng.uniform(100, 2000),
            )
        )
    tools: list[ToolSuccess | ToolFailure] = []
    for i in range(rng.randint(0, 3)):
        name = rng.choice(["calculator", "search", "sql_query", "http_get"])
        if rng.random() < 0.9:
            tools.append(
                ToolSuccess(
                    call_id=f"c{i}",
                    name=name,
                    value={"rows": [[i, "x" * 20]]},
                    cache_hit=rng.random() < 0.3,
                    latency_ms=rng.uniform(1, 200),
                )
            )
        else:
            tools.append(
                ToolFailure(
                    call_id=f"c{i}",
                    name=name,
                    error_type="ToolError",
                    error="upstream refused",
                    latency_ms=rng.uniform(1, 200),
                )
            )
    selection = None
    if not cached:
        selection = SelectModelResult(
            task_type=TaskType.SIMPLE_FACTUAL,
            scores=SelectionScores(
                complexity=rng.randint(1, 10),
                creativity_required=rng.randint(1, 10),
                reasoning_depth=rng.randint(1, 10),
                factual_knowledge=rng.randint(1, 10),
                response_length=rng.randint(50, 800),
            ),
            tier=tier,
            escalation_tier=tier.next_up(),
            reason=f"learned: simple_factual -> {tier}",
            p_large=rng.random(),
            prompt_tokens=rng.randint(300, 3000),
        )
    result = AgentResult(
        job_id=job_id,
        status=JobStatus(status),
        answer=("An answer of realistic length. " * 20) if status == "COMPLETED" else None,
        response_cache_hit=cached,
        selection=selection,
        tool_results=tools,
        usage=usage,
        timings=[
            StageTiming(stage=Stage.GENERATION, duration_ms=rng.uniform(50, 2000)),
            StageTiming(stage=Stage.COMPRESSION, duration_ms=rng.uniform(1, 20)),
        ],
        cache=CacheReport(
            hits={"response": 1} if cached else {"tool": sum(1 for t in tools if t.cache_hit)},
            misses={} if cached else {"response": 1, "component": 1},
        ),
    )
    tokens = sum(u.prompt_tokens + u.completion_tokens for u in usage)
    return result, sum(u.cost_usd for u in usage), tokens, len(usage)


def seed_jobs(
    engine: Engine, count: int, read_owner: str, other_owners: list[str], now: datetime
) -> float:
    """Record ``count`` terminal jobs ending over the last 6.5 days; returns seconds taken.

    :data:`READ_KEY_SHARE` of them belong to ``read_owner``, the rest in turn to
    ``other_owners``.
    Written through :meth:`infra.jobs.JobStore.record` (as the worker writes them), then each
    job's end time is moved into the week.
    """
    from infra.jobs import JobRecord, JobStore

    started = time.perf_counter()
    rng = random.Random(7)
    store = JobStore(engine)
    ends: dict[str, tuple[datetime, float]] = {}
    for i in range(count):
        job_id = f"bench-{i:05d}"
        status = "COMPLETED" if rng.random() < 0.93 else "FAILED"
        result, _, _, _ = _result_json(job_id, rng, status)
        owner = read_owner if rng.random() < READ_KEY_SHARE else other_owners[i % len(other_owners)]
        duration_ms = rng.lognormvariate(6.5, 0.8)
        ended = now - timedelta(hours=rng.uniform(0.01, 156))
        ends[job_id] = (ended, duration_ms)
        store.record(
            result,
            revision=1,
            created_at=ended - timedelta(milliseconds=duration_ms),
            owner=owner,
            request_hash=f"h{rng.randint(0, count // 3)}",
        )
    table = JobRecord.__table__  # type: ignore[attr-defined]
    with engine.begin() as conn:
        for job_id, (ended, duration_ms) in ends.items():
            conn.execute(
                table.update()
                .where(table.c.job_id == job_id)
                .values(completed_at=ended, duration_ms=duration_ms)
            )
    return time.perf_counter() - started


# --------------------------------------------------------------------------- processes


@dataclass
class Keys:
    """The secrets the benchmark calls with."""

    admin: str
    read: str
    submit: str
    dashboards: list[str]
    """One read key per caller, each owning a share of the other jobs."""

    def for_case(self, case: Case) -> list[str]:
        """The callers' keys: caller ``i`` uses ``keys[i % len(keys)]``."""
        if case.key == "admin":
            return [self.admin]
        if case.key == "read":
            return [self.read]
        return list(self.dashboards)


@asynccontextmanager
async def api_process(
    stack: BenchStack, database_url: str, overrides: dict[str, str], label: str
) -> AsyncIterator[str]:
    """Run ``uvicorn api.app:create_app`` with API keys on for the block; yields its URL.

    Submissions are raised above the per-key rate limit and budget (the benchmark measures their
    latency, not their quotas); search attributes are off (the bench server lacks them).

    Raises:
        BenchStackError: the API exited or did not answer ``/readyz`` in time.
    """
    queue = f"bench-analytics-{uuid.uuid4().hex[:8]}"  # no worker: jobs are only started
    env = {
        "DATABASE_URL": database_url,
        "AGENTFLOW_AUTH_DISABLED": "false",
        "AGENTFLOW_SEARCH_ATTRIBUTES": "off",
        "AGENTFLOW_RATE_LIMIT_PER_MINUTE": "1000000",
        "AGENTFLOW_DAILY_BUDGET_USD": "1000000",
        **overrides,
    }
    async with stack.api(f"analytics-{label}", queue, env) as url:
        yield url


class Callers:
    """The analytics callers' process: ready after its imports, then started, paused, stopped."""

    def __init__(
        self, url: str, keys: list[str], path: str, callers: int, *, ignore_retry_after: bool
    ) -> None:
        config = json.dumps(
            {
                "url": url,
                "keys": keys,
                "path": path,
                "callers": callers,
                "ignore_retry_after": ignore_retry_after,
            }
        )
        self._proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from benchmarks.bench_analytics import callers_main; callers_main()",
                config,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=Path(__file__).resolve().parent.parent,
            text=True,
        )

    def _send(self, command: str) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.write(command + "\n")
        self._proc.stdin.flush()

    async def _line(self) -> str:
        assert self._proc.stdout is not None
        return (await asyncio.to_thread(self._proc.stdout.readline)).strip()

    async def ready(self) -> None:
        """Wait until the process has imported what it needs."""
        line = await self._line()
        if line != "ready":
            raise RuntimeError(f"analytics callers did not start: {line!r}")

    def go(self) -> None:
        """Start (or resume) calling."""
        self._send("go")

    async def pause(self) -> None:
        """Stop sending new calls; returns once every call in flight has been answered."""
        self._send("pause")
        line = await self._line()
        if line != "paused":
            raise RuntimeError(f"analytics callers did not pause: {line!r}")

    async def stop(self) -> dict[str, Any]:
        """Stop calling; returns the callers' report (statuses, latencies, computations seen)."""
        self._send("stop")
        line = await self._line()
        await asyncio.to_thread(self._proc.wait, 30)
        report: dict[str, Any] = json.loads(line)
        return report

    def kill(self) -> None:
        """Stop the process if it still runs."""
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(timeout=10)


def callers_main() -> None:
    """Entry point of the callers' process (``sys.argv[1]``: its JSON configuration).

    Prints ``ready``, then obeys ``go``, ``pause`` (answered with ``paused`` once no call is in
    flight) and ``stop`` on stdin. At ``stop`` it prints one JSON line: ``statuses`` (count per
    HTTP status), ``latencies_ms`` of the 200s, and ``window_ends`` (distinct ``window.end``
    values seen: one per computation the API ran for the callers).
    """
    config = json.loads(sys.argv[1])
    print("ready", flush=True)
    print(json.dumps(asyncio.run(_call_until_stopped(config))), flush=True)


async def _call_until_stopped(config: dict[str, Any]) -> dict[str, Any]:
    running = asyncio.Event()
    stopping = asyncio.Event()
    idle = asyncio.Event()
    idle.set()
    in_flight = 0
    statuses: Counter[int] = Counter()
    latencies: list[float] = []
    window_ends: set[str] = set()
    url = config["url"] + config["path"]

    async def caller(http: httpx.AsyncClient, key: str) -> None:
        nonlocal in_flight
        headers = {"Authorization": f"Bearer {key}"}
        while True:
            await running.wait()
            if stopping.is_set():
                return
            in_flight += 1
            idle.clear()
            t0 = time.perf_counter()
            try:
                response = await http.get(url, headers=headers)
            except httpx.HTTPError:
                statuses[0] += 1
                continue
            finally:
                in_flight -= 1
                if in_flight == 0:
                    idle.set()
            statuses[response.status_code] += 1
            if response.status_code == httpx.codes.OK:
                latencies.append((time.perf_counter() - t0) * 1000)
                body = response.json()
                if isinstance(body, dict) and "window" in body:
                    window_ends.add(body["window"]["end"])
            elif (
                response.status_code == httpx.codes.TOO_MANY_REQUESTS
                and not config["ignore_retry_after"]
            ):
                wait = float(response.headers.get("Retry-After", "1"))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), wait)

    async def control() -> None:
        while True:
            command = (await asyncio.to_thread(sys.stdin.readline)).strip()
            if command == "go":
                running.set()
            elif command == "pause":
                running.clear()
                await idle.wait()
                print("paused", flush=True)
            else:  # "stop", or the driver went away
                stopping.set()
                running.set()
                return

    limits = httpx.Limits(max_connections=config["callers"])
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_S, limits=limits) as http:
        keys = config["keys"]
        tasks = [
            asyncio.create_task(caller(http, keys[i % len(keys)])) for i in range(config["callers"])
        ]
        await control()
        await asyncio.gather(*tasks)
    return {
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "latencies_ms": latencies,
        "window_ends": len(window_ends),
    }


# --------------------------------------------------------------------------- measuring


async def time_submissions(url: str, key: str, count: int) -> list[float]:
    """``POST /v1/jobs`` ``count`` times one after another; each latency in ms.

    Raises:
        RuntimeError: a submission was not accepted (202).
    """
    headers = {"Authorization": f"Bearer {key}"}
    latencies: list[float] = []
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_S) as http:
        for _ in range(count):
            body = {"query": f"What is 17 * 23 for order {uuid.uuid4().hex[:8]}?"}
            t0 = time.perf_counter()
            response = await http.post(f"{url}/v1/jobs", json=body, headers=headers)
            latencies.append((time.perf_counter() - t0) * 1000)
            if response.status_code != httpx.codes.ACCEPTED:
                raise RuntimeError(
                    f"POST /v1/jobs answered {response.status_code}: {response.text}"
                )
    return latencies


@dataclass
class CaseRun:
    """What one case measured."""

    alone_ms: list[float]
    loaded_ms: list[float]
    callers: dict[str, Any] = field(default_factory=dict)
    loaded_s: float = 0.0


async def run_case(
    ctx: BenchContext, stack: BenchStack, database_url: str, keys: Keys, case: Case
) -> CaseRun:
    """Start the case's API, time submissions alone, then under the analytics callers."""
    submissions = ctx.repeats * 3
    caller_keys = keys.for_case(case)
    async with api_process(stack, database_url, case.env, case.label) as url:
        # Warm-up: the submission path and one analytics answer (which starts the analytics
        # process), neither measured.
        await time_submissions(url, keys.submit, max(ctx.warmup, 1))
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_S) as http:
            warm = await http.get(
                url + ANALYTICS_PATH, headers={"Authorization": f"Bearer {caller_keys[0]}"}
            )
            if warm.status_code != httpx.codes.OK:
                raise RuntimeError(f"analytics answered {warm.status_code}: {warm.text}")
        callers = Callers(
            url, caller_keys, case.path, CALLERS, ignore_retry_after=case.ignore_retry_after
        )
        alone: list[float] = []
        loaded: list[float] = []
        loaded_s = 0.0
        per_round = max(1, submissions // ROUNDS)
        try:
            await callers.ready()
            # Alone and loaded blocks alternate, so drift on the machine hits both alike.
            for _ in range(ROUNDS):
                alone += await time_submissions(url, keys.submit, per_round)
                callers.go()
                began = time.perf_counter()
                await asyncio.sleep(SETTLE_S)
                loaded += await time_submissions(url, keys.submit, per_round)
                loaded_s += time.perf_counter() - began
                await callers.pause()
            report = await callers.stop()
        finally:
            callers.kill()
    ctx.progress(
        f"{case.label}: POST p50 {statistics.median(alone):.1f} ms alone, "
        f"{statistics.median(loaded):.1f} ms with {CALLERS} callers; "
        f"analytics statuses {report['statuses']}"
    )
    return CaseRun(alone, loaded, report, loaded_s)


async def run(ctx: BenchContext) -> BenchResult:
    """Seed the job database, then run every case (two in a smoke run)."""
    from core.auth import Scope
    from infra.db import make_engine
    from infra.keys import KeyStore
    from infra.migrations import create_tables

    stack = await ctx.stack()
    jobs = SMOKE_JOBS if ctx.smoke else JOBS
    cases = SMOKE_CASES if ctx.smoke else CASES
    only = os.environ.get("AGENTFLOW_BENCH_ANALYTICS_ONLY")
    if only:  # a substring of the labels to run, for working on one case
        cases = tuple(c for c in cases if only in c.label)
    database_url = f"sqlite:///{stack.workdir / 'analytics-bench.db'}"
    engine = make_engine(database_url)
    try:
        create_tables(engine)
        store = KeyStore(engine)
        admin = store.create("bench-admin", [Scope.ADMIN])
        read = store.create("bench-reader", [Scope.READ])
        submit = store.create("bench-submitter", [Scope.SUBMIT])
        dashboards = [store.create(f"bench-dashboard-{i}", [Scope.READ]) for i in range(CALLERS)]
        keys = Keys(admin.secret, read.secret, submit.secret, [d.secret for d in dashboards])
        owners = [d.key_id for d in dashboards]
        seed_s = seed_jobs(engine, jobs, read.key_id, owners, datetime.now(UTC))
    finally:
        engine.dispose()
    ctx.progress(f"seeded {jobs} job records in {seed_s:.1f} s")

    result = BenchResult(
        name="analytics",
        title=f"Job submissions while {CALLERS} callers read analytics",
        baseline="POST /v1/jobs p50 in the same API process with no analytics callers",
        params={
            "job_records": jobs,
            "callers": CALLERS,
            "analytics_path": ANALYTICS_PATH,
            "submissions_per_phase": ctx.repeats * 3,
            "read_key_share": READ_KEY_SHARE,
            "target_ratio": TARGET_RATIO,
            "load_average_1min": round(os.getloadavg()[0], 2),
        },
    )
    ratios: dict[str, float] = {}
    for case in cases:
        await stack.flush_redis()  # no case inherits another's rate-limit counts
        measured = await run_case(ctx, stack, database_url, keys, case)
        report = measured.callers
        lat = report["latencies_ms"]
        answered = sum(report["statuses"].values())
        result.add(case.label, "POST /v1/jobs alone", measured.alone_ms, baseline=True)
        result.add(
            case.label,
            f"POST /v1/jobs + {CALLERS} analytics callers",
            measured.loaded_ms,
            analytics_calls_per_s=round(answered / max(measured.loaded_s, 1e-9), 1),
            analytics_statuses=report["statuses"],
            analytics_p50_ms=round(statistics.median(lat), 1) if lat else None,
            computations=report["window_ends"],
        )
        ratios[case.label] = statistics.median(measured.loaded_ms) / statistics.median(
            measured.alone_ms
        )
    defaults = [ratios[c.label] for c in cases if not c.env]
    if defaults:
        result.headline(
            f"POST p50 ratio with {CALLERS} callers, default settings, worst "
            f"(target <= {TARGET_RATIO:g})",
            max(defaults),
        )
    unlimited = [ratios[c.label] for c in cases if c.env and c.process_pool]
    if unlimited:
        result.headline("POST p50 ratio, rate limit raised, worst", max(unlimited))
    for case in cases:
        result.headline(f"POST p50 ratio: {case.label}", ratios[case.label])
    result.notes += [
        f"{jobs:,} terminal job records ending over the last 6.5 days; the read key owns about "
        f"{READ_KEY_SHARE:.0%} of them, {CALLERS} dashboard read keys the rest in equal "
        "shares, and the admin key sees all. Each case starts its own API process; its ratio "
        f"compares submissions in that process without and with callers, in {ROUNDS} "
        "alternating rounds.",
        f"Callers: {CALLERS} concurrent loops in their own process on {ANALYTICS_PATH}, each "
        "sending its next call when the previous answered (after a 429 they wait Retry-After, "
        "except where the case says they ignore it). computations = distinct window.end values "
        "the callers saw: one per computation the API ran for them.",
        "Default settings: 30 analytics calls per key per minute, answers cached 15 s, computed "
        "in one analytics process at niceness 10. 'no limit' raises the analytics limit so every "
        "call is answered; 'no cache' sets the TTL to 0 (only concurrent calls share a "
        "computation); 'thread' computes in a thread of the API process instead.",
        "The control case sends the same callers to GET /v1/models, a trivial authenticated "
        "route: what that many HTTP requests a second cost the API by themselves. Without the "
        "rate limit, analytics cost about what it does: the per-key limit is what bounds them.",
        "Before this change (analytics computed per request in a thread of the API process, no "
        "cache, no limit; this benchmark on commit 8519f1b, 2026-12-07): POST p50 10.7 -> "
        "3,909 ms (365x) with the admin key, 19.7 -> 1,075 ms (54.6x) with the read key, while "
        "the callers got 2.3 and 10.9 answers/s.",
        "Machine: one Temporal dev server, Redis, the API, its analytics process and the callers "
        "on the same cores; no worker (submissions only start workflows).",
    ]
    return result
