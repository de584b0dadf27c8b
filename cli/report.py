"""Summaries of a batch run: pure functions over the final job JSONs, plus a rich rendering.

Everything here is computed from what ``GET /v1/jobs/{id}`` returned for each request (a
:class:`api.schemas.JobPublic` as JSON), so the numbers can be unit-tested on hand-built dicts.
Requests the API refused have no job; the runner passes a stub ``{"status": "REJECTED_BY_API"}``
for them, which counts towards the status table and nothing else.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, Field
from rich.table import Table

from core.models import JobStatus
from core.stats import percentile

REJECTED_BY_API = "REJECTED_BY_API"
"""Pseudo-status of a request the API answered with a 4xx (no job was created)."""
API_ERROR = "API_ERROR"
"""Pseudo-status of a request lost to a 5xx answer or a connection error."""
TIMED_OUT = "TIMED_OUT"
"""Pseudo-status of a job that was still open when the runner's timeout ran out."""


class TierUsage(BaseModel):
    """Model usage summed over every call on one tier.

    Attributes:
        calls: number of model calls (drafts and final answers).
        prompt_tokens: prompt tokens over those calls.
        completion_tokens: completion tokens over those calls.
        cost_usd: cost of those calls in USD.
    """

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    @property
    def tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens


class Summary(BaseModel):
    """The numbers ``agentflow run`` prints at the end of a batch.

    Attributes:
        requests: number of requests (lines) in the batch.
        status_counts: requests per final status (job statuses plus the runner's pseudo-statuses
            :data:`REJECTED_BY_API`, :data:`API_ERROR` and :data:`TIMED_OUT`).
        completed: jobs that ended COMPLETED.
        latency_p50_ms: median latency from submit to terminal status in milliseconds, over the
            jobs that reached one; ``None`` when none did.
        latency_p95_ms: 95th percentile of the same latencies in milliseconds.
        response_cache_hits: completed jobs answered from the response cache.
        response_cache_hit_rate: ``response_cache_hits / completed`` (0 to 1); ``None`` when no
            job completed.
        tool_results: tool results over all jobs.
        tool_cache_hits: tool results served from the tool-result cache.
        tool_cache_hit_rate: ``tool_cache_hits / tool_results`` (0 to 1); ``None`` when no tool
            ran.
        tiers: model usage per tier name (``small``, ``medium``, ``large``).
        simulated_answers: completed jobs whose answer came from the simulated provider.
        wall_s: wall time of the whole batch in seconds.
    """

    requests: int
    status_counts: dict[str, int]
    completed: int
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    response_cache_hits: int
    response_cache_hit_rate: float | None
    tool_results: int
    tool_cache_hits: int
    tool_cache_hit_rate: float | None
    tiers: dict[str, TierUsage] = Field(default_factory=dict)
    simulated_answers: int
    wall_s: float

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens over every tier."""
        return sum(t.tokens for t in self.tiers.values())

    @property
    def total_cost_usd(self) -> float:
        """Cost of every model call in USD."""
        return sum(t.cost_usd for t in self.tiers.values())

    @property
    def throughput_per_s(self) -> float:
        """Requests per second of wall time (0 when no time passed)."""
        return self.requests / self.wall_s if self.wall_s > 0 else 0.0


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _result(job: dict[str, Any]) -> dict[str, Any]:
    result = job.get("result")
    return result if isinstance(result, dict) else {}


def summarize(
    jobs: list[dict[str, Any]],
    wall_s: float,
    latencies_ms: Sequence[float | None] | None = None,
) -> Summary:
    """Summarize a batch from its final job JSONs.

    Args:
        jobs: one dict per request: a job as ``GET /v1/jobs/{id}`` returns it, or a stub
            ``{"status": <pseudo-status>}`` for a request that produced no job.
        wall_s: wall time of the whole batch in seconds.
        latencies_ms: the runner's latency per job (submit to terminal status) in milliseconds,
            aligned with ``jobs``; ``None`` entries (jobs that never ended) are left out. When
            not given, each terminal job's own ``duration_ms`` is used.

    Returns:
        The :class:`Summary`.

    Raises:
        ValueError: ``latencies_ms`` is given and its length differs from ``jobs``'.
    """
    if latencies_ms is not None and len(latencies_ms) != len(jobs):
        raise ValueError(f"{len(latencies_ms)} latencies for {len(jobs)} jobs")
    statuses = [str(job.get("status", "UNKNOWN")) for job in jobs]
    status_counts = dict(Counter(statuses).most_common())

    if latencies_ms is None:
        latencies = [
            float(job["duration_ms"])
            for job, status in zip(jobs, statuses, strict=True)
            if _is_terminal(status) and isinstance(job.get("duration_ms"), int | float)
        ]
    else:
        latencies = [float(v) for v in latencies_ms if v is not None]

    completed = [job for job, s in zip(jobs, statuses, strict=True) if s == JobStatus.COMPLETED]
    response_hits = sum(
        1
        for job in completed
        if job.get("response_cache_hit") or _result(job).get("response_cache_hit")
    )
    simulated = sum(1 for job in completed if _result(job).get("simulated"))

    tool_results = 0
    tool_hits = 0
    tiers: dict[str, TierUsage] = {}
    for job in jobs:
        result = _result(job)
        for tool_result in result.get("tool_results") or []:
            if tool_result.get("call_id") == "plan":
                continue  # a rejected planner proposal, not a tool run
            tool_results += 1
            tool_hits += bool(tool_result.get("cache_hit"))
        for usage in result.get("usage") or []:
            tier = tiers.setdefault(str(usage.get("tier", "unknown")), TierUsage())
            tier.calls += 1
            tier.prompt_tokens += int(usage.get("prompt_tokens") or 0)
            tier.completion_tokens += int(usage.get("completion_tokens") or 0)
            tier.cost_usd += float(usage.get("cost_usd") or 0.0)

    return Summary(
        requests=len(jobs),
        status_counts=status_counts,
        completed=len(completed),
        latency_p50_ms=percentile(latencies, 50),
        latency_p95_ms=percentile(latencies, 95),
        response_cache_hits=response_hits,
        response_cache_hit_rate=_ratio(response_hits, len(completed)),
        tool_results=tool_results,
        tool_cache_hits=tool_hits,
        tool_cache_hit_rate=_ratio(tool_hits, tool_results),
        tiers=dict(sorted(tiers.items(), key=lambda kv: _tier_order(kv[0]))),
        simulated_answers=simulated,
        wall_s=wall_s,
    )


def _is_terminal(status: str) -> bool:
    try:
        return JobStatus(status).is_terminal
    except ValueError:
        return False


def _tier_order(name: str) -> int:
    order = ("small", "medium", "large")
    return order.index(name) if name in order else len(order)


def _pct(rate: float | None) -> str:
    return "n/a" if rate is None else f"{rate:.0%}"


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f} ms"


def render_summary(summary: Summary) -> list[Table]:
    """Rich tables for a summary: statuses, then metrics, then usage per tier.

    Args:
        summary: what :func:`summarize` returned.

    Returns:
        Three tables, to be printed in order.
    """
    statuses = Table(title="Jobs by status", title_justify="left")
    statuses.add_column("status")
    statuses.add_column("requests", justify="right")
    for status, count in summary.status_counts.items():
        style = "green" if status == JobStatus.COMPLETED else "yellow"
        statuses.add_row(f"[{style}]{status}[/]", str(count))
    statuses.add_row("[bold]total[/]", f"[bold]{summary.requests}[/]")

    metrics = Table(title="Run summary", title_justify="left")
    metrics.add_column("metric")
    metrics.add_column("value", justify="right")
    metrics.add_row("wall time", f"{summary.wall_s:.1f} s")
    metrics.add_row("throughput", f"{summary.throughput_per_s:.2f} requests/s")
    metrics.add_row("latency p50", _ms(summary.latency_p50_ms))
    metrics.add_row("latency p95", _ms(summary.latency_p95_ms))
    metrics.add_row(
        "response-cache hit rate",
        f"{_pct(summary.response_cache_hit_rate)} "
        f"({summary.response_cache_hits}/{summary.completed} completed)",
    )
    metrics.add_row(
        "tool-cache hit rate",
        f"{_pct(summary.tool_cache_hit_rate)} "
        f"({summary.tool_cache_hits}/{summary.tool_results} tool results)",
    )
    metrics.add_row("simulated answers", f"{summary.simulated_answers}/{summary.completed}")

    tiers = Table(title="Model usage by tier", title_justify="left")
    tiers.add_column("tier")
    tiers.add_column("calls", justify="right")
    tiers.add_column("prompt tokens", justify="right")
    tiers.add_column("completion tokens", justify="right")
    tiers.add_column("tokens", justify="right")
    tiers.add_column("cost (USD)", justify="right")
    for name, usage in summary.tiers.items():
        tiers.add_row(
            name,
            str(usage.calls),
            f"{usage.prompt_tokens:,}",
            f"{usage.completion_tokens:,}",
            f"{usage.tokens:,}",
            f"${usage.cost_usd:.4f}",
        )
    tiers.add_row(
        "[bold]total[/]",
        str(sum(u.calls for u in summary.tiers.values())),
        "",
        "",
        f"[bold]{summary.total_tokens:,}[/]",
        f"[bold]${summary.total_cost_usd:.4f}[/]",
    )
    return [statuses, metrics, tiers]
