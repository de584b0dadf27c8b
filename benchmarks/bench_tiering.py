"""Tiering: simulated cost and tier mix of automatic selection vs always-large and always-small.

Every valid request of ``examples/requests.jsonl`` runs through the real stack (Temporal, one
``python worker.py``, Redis) three times:

* **agentflow auto**: ``model_tier`` as in the file (``auto`` for most lines; a few lines pin a
  tier, and keep it);
* **always large** (the baseline): every request forced to ``model_tier="large"``;
* **always small**: every request forced to ``model_tier="small"``.

Redis is flushed before each variant, so each starts with an empty response cache; the file's
deliberate repeats then hit the cache within a variant (reported as ``response_cache_hits``).
Jobs run 8 at a time. Cost is the sum of every model call of a job (draft, plan, final) as the
worker's catalog prices them; the row values are the per-job costs, each variant is run once
(the cost is deterministic, so repeating it would only repeat the numbers).

Caveats: the provider is the offline simulated one, whose answers are about as long on every
tier, so the cost differences are the catalog's price differences and say nothing about answer
quality. The draft runs on the small tier, and only when the selected tier is above small (the
workflow skips it otherwise), so "always small" jobs have none. A repeat that starts while
its first occurrence is still running misses the cache, so the hit count can vary slightly
between runs. The file's ``http_get`` lines fetch the example site that ``agentflow dev`` serves;
the bench stack does not allowlist it, so those tool calls are refused, in every variant alike.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from benchmarks.context import BenchContext
from benchmarks.report import BenchResult
from benchmarks.stack import BenchStack
from cli.runner import load_requests
from core.models import (
    AgentRequest,
    AgentResult,
    JobStatus,
    ResponseCacheKeyInput,
    Tier,
    TierChoice,
    ToolFailure,
)
from core.settings import PROJECT_ROOT
from infra.cache import response_cache_key

REQUESTS_FILE = PROJECT_ROOT / "examples" / "requests.jsonl"
"""The request mix measured."""
CONCURRENCY = 8
"""Jobs in flight at once within a variant."""
SMOKE_REQUESTS = 6
"""Valid requests used by a smoke run (the first ones of the file)."""
JOB_TIMEOUT_S = 120.0
"""Longest one job may take before the benchmark gives up on it (latency is simulated as 0)."""

BASELINE = "always large"


@dataclass(frozen=True)
class Job:
    """One valid line of the requests file."""

    line: int
    request: AgentRequest
    approve: bool


@dataclass(frozen=True)
class Variant:
    """How the requests are sent: ``tier`` None keeps each request's own ``model_tier``."""

    name: str
    tier: TierChoice | None
    baseline: bool = False


VARIANTS: tuple[Variant, ...] = (
    Variant("agentflow auto", None),
    Variant(BASELINE, "large", baseline=True),
    Variant("always small", "small"),
)


def load_jobs(path: Path) -> tuple[list[Job], list[str]]:
    """The valid requests of ``path`` and, for each skipped line, why it was skipped."""
    jobs: list[Job] = []
    skipped: list[str] = []
    for item in load_requests(path):
        if item.error is not None or item.body is None:
            skipped.append(f"line {item.line}: {item.error or 'no body'}")
            continue
        try:
            request = AgentRequest.model_validate(item.body)
        except ValidationError as exc:
            skipped.append(f"line {item.line}: {exc.error_count()} validation error(s)")
            continue
        jobs.append(Job(item.line, request, approve=item.expect_approval != "reject"))
    return jobs, skipped


@dataclass(frozen=True)
class Outcome:
    """One job's result and when it ran (seconds from the variant's start)."""

    job: Job
    result: AgentResult
    started_s: float
    ended_s: float


async def run_variant(
    stack: BenchStack, task_queue: str, jobs: list[Job], tier: TierChoice | None
) -> list[Outcome]:
    """Run every job (at most :data:`CONCURRENCY` at once), outcomes in job order."""
    gate = asyncio.Semaphore(CONCURRENCY)
    origin = time.perf_counter()

    async def one(job: Job) -> Outcome:
        request = job.request
        if tier is not None:
            request = request.model_copy(update={"model_tier": tier})
        async with gate:
            started = time.perf_counter() - origin
            result, _ = await asyncio.wait_for(
                stack.run_job(request, task_queue, approve=job.approve), JOB_TIMEOUT_S
            )
            return Outcome(job, result, started, time.perf_counter() - origin)

    return list(await asyncio.gather(*(one(job) for job in jobs)))


def repeat_of(jobs: list[Job], tier: TierChoice | None) -> dict[int, int]:
    """Line of each request -> line of its first occurrence, for requests the cache can serve.

    Keys follow the response cache's own key (normalized query, context, tool calls, tier), so
    only exact repeats up to normalization count.
    """
    first: dict[str, int] = {}
    repeats: dict[int, int] = {}
    for job in jobs:
        r = job.request
        key = response_cache_key(
            ResponseCacheKeyInput(
                query=r.query,
                context=r.context,
                tool_calls=r.tool_calls,
                model_tier=tier or r.model_tier,
            )
        )
        if key in first:
            repeats[job.line] = first[key]
        else:
            first[key] = job.line
    return repeats


def cache_misses(outcomes: list[Outcome], repeats: dict[int, int]) -> list[str]:
    """Repeats that missed the response cache, and whether their first occurrence was running."""
    by_line = {o.job.line: o for o in outcomes}
    missed: list[str] = []
    for o in outcomes:
        first_line = repeats.get(o.job.line)
        if first_line is None or o.result.response_cache_hit or first_line not in by_line:
            continue
        first = by_line[first_line]
        why = (
            f"line {first_line} was still running, ended {first.ended_s - o.started_s:.1f} s "
            "after it started"
            if first.ended_s > o.started_s
            else f"line {first_line} had ended"
        )
        missed.append(f"line {o.job.line}: {why}")
    return missed


def final_tier(result: AgentResult) -> Tier | None:
    """The tier that wrote the final answer (after any escalation); None without a final call."""
    finals = [u for u in result.usage if u.purpose == "final"]
    return finals[-1].tier if finals else None


def route_label(outcome: Outcome) -> str:
    """``"line 3 (complex_reasoning)"``, with ``, pinned`` when the file pins the tier."""
    selection = outcome.result.selection
    task = selection.task_type.value if selection is not None else "no selection"
    pinned = ", pinned" if outcome.job.request.model_tier != "auto" else ""
    p_large = (
        f", P(large) {selection.p_large:.2f}"
        if selection is not None and selection.p_large is not None and not pinned
        else ""
    )
    return f"line {outcome.job.line} ({task}{pinned}{p_large})"


def tier_mix(results: list[AgentResult]) -> str:
    """``"small 6 / medium 45 / large 9"``: final answers written by each tier."""
    counts = Counter(t for r in results if (t := final_tier(r)) is not None)
    return " / ".join(f"{tier.value} {counts.get(tier, 0)}" for tier in Tier)


def tokens_of(result: AgentResult) -> int:
    """Prompt plus completion tokens of every model call of one job."""
    return sum(u.prompt_tokens + u.completion_tokens for u in result.usage)


def cost_of(results: list[AgentResult], purpose: str) -> float:
    """Summed cost in USD of the calls made for ``purpose`` (draft, plan, final)."""
    return sum(u.cost_usd for r in results for u in r.usage if u.purpose == purpose)


def observed_prices(results: list[AgentResult]) -> dict[str, float]:
    """USD per 1k tokens per tier, as the worker's catalog charged them."""
    prices: dict[str, float] = {}
    for r in results:
        for u in r.usage:
            tokens = u.prompt_tokens + u.completion_tokens
            if tokens and u.tier.value not in prices:
                prices[u.tier.value] = round(u.cost_usd / tokens * 1000, 6)
    return {t.value: prices[t.value] for t in Tier if t.value in prices}


async def run(ctx: BenchContext) -> BenchResult:
    jobs, skipped = load_jobs(REQUESTS_FILE)
    if ctx.smoke:
        jobs = jobs[:SMOKE_REQUESTS]
    if not jobs:
        raise RuntimeError(f"no valid requests in {REQUESTS_FILE}")
    file_name = REQUESTS_FILE.relative_to(PROJECT_ROOT).as_posix()
    case = f"{file_name}, {len(jobs)} jobs"
    result = BenchResult(
        name="tiering",
        title="Tiering: simulated cost and tier mix, automatic selection vs fixed tiers",
        baseline=(
            "always large: every request of the file forced to model_tier=large "
            "(the cost of never trusting a smaller model)"
        ),
        unit="USD",
        params={
            "requests_file": file_name,
            "valid_requests": len(jobs),
            "skipped_lines": len(skipped),
            "concurrency": CONCURRENCY,
            "workers": 1,
            "draft": True,
            "runs_per_variant": 1,
            "simulated_latency_scale": 0,
        },
    )
    stack = await ctx.stack()
    by_variant: dict[str, list[AgentResult]] = {}
    by_outcomes: dict[str, list[Outcome]] = {}
    async with stack.workers(1) as pool:
        for variant in VARIANTS:
            await stack.flush_redis()
            ctx.progress(f"{variant.name}: {len(jobs)} jobs, {CONCURRENCY} at a time")
            started = time.perf_counter()
            outcomes = await run_variant(stack, pool.task_queue, jobs, variant.tier)
            wall_s = time.perf_counter() - started
            results = [o.result for o in outcomes]
            repeats = repeat_of(jobs, variant.tier)
            missed = cache_misses(outcomes, repeats)
            if missed:
                result.notes.append(
                    f"{variant.name}: {len(missed)} repeat(s) missed the response cache: "
                    + "; ".join(missed)
                    + "."
                )
            by_variant[variant.name] = results
            by_outcomes[variant.name] = outcomes
            statuses = Counter(r.status for r in results)
            unexpected = [
                f"line {job.line}: {r.status.value}"
                + (f" ({r.error_type}: {r.error})" if r.error else "")
                for job, r in zip(jobs, results, strict=True)
                if r.status != (JobStatus.COMPLETED if job.approve else JobStatus.REJECTED)
            ]
            total = sum(r.total_cost_usd for r in results)
            mix = tier_mix(results)
            result.add(
                case,
                variant.name,
                [r.total_cost_usd for r in results],
                baseline=variant.baseline,
                total_cost_usd=round(total, 6),
                final_tiers=mix,
                escalations=sum(1 for r in results if r.escalated_to is not None),
                completed=statuses.get(JobStatus.COMPLETED, 0),
                rejected=statuses.get(JobStatus.REJECTED, 0),
                other_status=len(results)
                - statuses.get(JobStatus.COMPLETED, 0)
                - statuses.get(JobStatus.REJECTED, 0),
                response_cache_hits=sum(1 for r in results if r.response_cache_hit),
                repeats=len(repeats),
                tool_failures=sum(
                    1 for r in results for t in r.tool_results if isinstance(t, ToolFailure)
                ),
                mean_tokens_per_job=round(statistics.fmean(tokens_of(r) for r in results), 1),
                draft_cost_usd=round(cost_of(results, "draft"), 6),
                final_cost_usd=round(cost_of(results, "final"), 6),
                wall_s=round(wall_s, 2),
            )
            ctx.progress(f"{variant.name}: {total:.4f} USD; final answers {mix}; {wall_s:.1f} s")
            if unexpected:
                result.notes.append(
                    f"{variant.name}: {len(unexpected)} job(s) did not end as the file expects: "
                    + "; ".join(unexpected[:5])
                    + (" ..." if len(unexpected) > 5 else "")
                )

    totals = {name: sum(r.total_cost_usd for r in rs) for name, rs in by_variant.items()}
    large_total = totals[BASELINE]
    if large_total > 0:
        result.headline(
            "agentflow auto total cost, fraction of always-large",
            totals["agentflow auto"] / large_total,
        )
        result.headline(
            "always-small total cost, fraction of always-large",
            totals["always small"] / large_total,
        )
    everything = [r for rs in by_variant.values() for r in rs]
    result.params["price_per_1k_tokens_usd"] = observed_prices(everything)
    simulated = all(u.simulated for r in everything for u in r.usage)

    auto = by_variant["agentflow auto"]
    pinned = sum(1 for job in jobs if job.request.model_tier != "auto")
    result.notes.append(
        f"Automatic selection wrote its final answers as {tier_mix(auto)} "
        f"({sum(1 for r in auto if r.response_cache_hit)} more were response-cache hits with no "
        f"model call, {sum(1 for r in auto if r.status == JobStatus.REJECTED)} rejected before "
        f"generation); {pinned} of the {len(jobs)} requests pin a tier in the file and keep it "
        "in this variant."
    )
    auto_large = [o for o in by_outcomes["agentflow auto"] if final_tier(o.result) is Tier.LARGE]
    auto_total = totals["agentflow auto"]
    if auto_large and auto_total > 0:
        large_cost = sum(o.result.total_cost_usd for o in auto_large)
        routed = "; ".join(route_label(o) for o in auto_large)
        result.notes.append(
            f"Under automatic selection the {len(auto_large)} large-tier answers cost "
            f"{100 * large_cost / auto_total:.0f}% of the variant's total: {routed}."
        )
    routers = Counter(r.selection.router or "cue" for r in auto if r.selection is not None)
    result.notes.append(
        "Routers that chose the tiers under automatic selection (AGENTFLOW_ROUTER; see "
        "benchmarks/results/routing.md for accuracy against labels): "
        + ", ".join(f"{name} {count}" for name, count in sorted(routers.items()))
        + "."
    )
    result.notes.append(
        "Cost is what the worker's catalog charges for every model call of a job (the "
        "small-tier draft when the selected tier is above small, a model plan if any, the "
        "final answer), from the calls' token "
        "counts; values are per-job costs, so median/p95 describe one job while the ratio "
        "column compares median per-job cost. The headlines compare total cost."
    )
    result.notes.append(
        "The simulated provider does not measure answer quality, so always-small being "
        "cheapest says nothing about whether its answers would be good enough; the point of "
        "selection is to spend large-tier cost only where the query's scores ask for it. Its "
        "answers are also about as long on every tier, so the cost gaps are the catalog's "
        "price gaps; a real large model that writes longer answers would widen them."
    )
    result.notes.append(
        "Each variant ran once: with the provider simulated the cost is deterministic, so "
        "repeats would only repeat it. Redis was flushed before each variant; the file's "
        "deliberate repeats hit the response cache within a variant, except a repeat that starts "
        "while its first occurrence is still running (listed above when it happened), which "
        "makes the hit count, and so the cost, depend slightly on timing."
    )
    http_lines = [
        job.line for job in jobs if any(c.name == "http_get" for c in job.request.tool_calls)
    ]
    if http_lines:
        result.notes.append(
            f"Lines {', '.join(map(str, http_lines))} fetch the dev stack's example site with "
            "http_get; the bench stack does not serve or allowlist it, so those calls are "
            "refused (counted in tool_failures) and the answers are built without them. With "
            "the site allowlisted the tool results, prompt tokens and timing would differ."
        )
    if skipped:
        result.notes.append(
            f"Skipped {len(skipped)} invalid line(s) of the file: " + "; ".join(skipped)
        )
    else:
        result.notes.append("No line of the file was invalid; none was skipped.")
    if not simulated:
        result.notes.append(
            "Some calls went to a real (non-simulated) provider: the catalog is not the default."
        )
    return result
