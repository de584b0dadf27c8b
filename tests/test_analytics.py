"""Analytics (infra/analytics/, /v1/metrics) against hand-computed values over seeded jobs.

Jobs are written with the real :meth:`infra.jobs.JobStore.record` into a real SQLite file (and
PostgreSQL for the loader), then their end time is set to when the scenario says they ended.
Every expected number below is worked out by hand from the table in :data:`DAY_JOBS`.
The HTTP tests run the real app under uvicorn with API keys on; the metrics routes need only
the database (no Temporal server is started).
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import sqlalchemy
from sqlalchemy import Engine

from api.app import create_app
from core.auth import Scope
from core.catalog import ModelCatalog
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
from core.settings import Settings
from core.stats import percentile
from infra.analytics.advice import CACHE_HIT_RATE_FLOOR, summarize
from infra.analytics.limiter import AnalyticsRateLimitedError, AnalyticsRateLimiter
from infra.analytics.models import (
    CachePeriodReport,
    CostAnalysis,
    PerformanceSummary,
    Period,
    Report,
    TimeSeries,
)
from infra.analytics.runner import AnalyticsRunner
from infra.analytics.samples import CallCost, JobSample
from infra.analytics.stats import cache_period_stats
from infra.analytics.strategies import analyze_costs, downsize_candidates, duplicates
from infra.analytics.timeseries import time_series
from infra.analytics.window import AnalyticsWindow, load_window
from infra.db import make_engine
from infra.jobs import JobRecord, JobStore
from infra.keys import KeyStore
from infra.migrations import create_tables
from tests.helpers import ROOT, free_port, redis_server, serve_asgi
from tests.stack import Stack, StackSpec

NOW = datetime(2025, 6, 2, 12, 0, tzinfo=UTC)
CATALOG = ModelCatalog.default()  # small 0.0005, medium 0.003, large 0.01 USD per 1k tokens


# --------------------------------------------------------------------------- builders


@dataclass
class Job:
    """One seeded job: what it recorded and when it ended."""

    job_id: str
    ended_h: float
    """Hours before NOW at which it ended."""
    duration_ms: float
    tier: Tier | None = None
    """Selected tier (None: answered from the response cache, no selection)."""
    calls: list[tuple[Tier, str, float, int]] = field(default_factory=list)
    """(tier, purpose, cost_usd, tokens)."""
    tools: list[tuple[str, bool, bool, float]] = field(default_factory=list)
    """(name, ok, cache_hit, latency_ms)."""
    hits: dict[str, int] = field(default_factory=dict)
    misses: dict[str, int] = field(default_factory=dict)
    legacy: bool = False
    """Recorded before cache reports (cache=None)."""
    p_large: float | None = None
    escalated_to: Tier | None = None
    pinned: bool = False
    status: JobStatus = JobStatus.COMPLETED
    wait_ms: float = 0.0
    saved: tuple[int, float, float] = (0, 0.0, 0.0)
    degraded: bool = False
    request_hash: str | None = None
    ended_s: float = 0.0
    """Extra seconds before ``ended_h`` (to make jobs overlap)."""
    fit_tokens: int | None = None

    @property
    def completed_at(self) -> datetime:
        return NOW - timedelta(hours=self.ended_h, seconds=self.ended_s)

    @property
    def created_at(self) -> datetime:
        return self.completed_at - timedelta(milliseconds=self.duration_ms)

    def result(self) -> AgentResult:
        selection = None
        if self.tier is not None:
            selection = SelectModelResult(
                task_type=TaskType.SIMPLE_FACTUAL,
                scores=SelectionScores(
                    complexity=2,
                    creativity_required=1,
                    reasoning_depth=2,
                    factual_knowledge=3,
                    response_length=200,
                ),
                tier=self.tier,
                escalation_tier=self.tier.next_up(),
                reason=f"pinned to {self.tier} by the request"
                if self.pinned
                else f"learned: simple_factual -> {self.tier}",
                p_large=self.p_large,
                prompt_tokens=self.fit_tokens,
            )
        usage = [
            ModelUsage(
                purpose=purpose,
                tier=tier,
                provider="simulated",
                model=f"simulated-{tier}",
                simulated=True,
                prompt_tokens=tokens * 3 // 4,
                completion_tokens=tokens // 4,
                cost_usd=cost,
                latency_ms=10.0,
            )
            for tier, purpose, cost, tokens in self.calls
        ]
        tools: list[ToolSuccess | ToolFailure] = [
            ToolSuccess(call_id=f"c{i}", name=name, value=1, cache_hit=hit, latency_ms=ms)
            if ok
            else ToolFailure(
                call_id=f"c{i}", name=name, error_type="ToolError", error="boom", latency_ms=ms
            )
            for i, (name, ok, hit, ms) in enumerate(self.tools)
        ]
        cache = None
        if not self.legacy:
            cache = CacheReport(
                hits=self.hits,
                misses=self.misses,
                degraded=self.degraded,
                saved_tokens=self.saved[0],
                saved_cost_usd=self.saved[1],
                saved_ms=self.saved[2],
            )
        timings = [StageTiming(stage=Stage.GENERATION, duration_ms=50.0)]
        if self.wait_ms:
            timings.append(StageTiming(stage=Stage.AWAITING_APPROVAL, duration_ms=self.wait_ms))
        return AgentResult(
            job_id=self.job_id,
            status=self.status,
            answer="answer" if self.status is JobStatus.COMPLETED else None,
            response_cache_hit=self.tier is None,
            selection=selection,
            escalated_to=self.escalated_to,
            tool_results=tools,
            usage=usage,
            timings=timings,
            cache=cache,
        )


def seed(engine: Engine, jobs: list[Job], owner: str | None) -> None:
    """Record ``jobs`` through the job store, then set when each ended."""
    store = JobStore(engine)
    for job in jobs:
        store.record(
            job.result(),
            revision=1,
            created_at=job.created_at,
            owner=owner,
            request_hash=job.request_hash,
        )
    table = JobRecord.__table__  # type: ignore[attr-defined]
    with engine.begin() as conn:
        for job in jobs:
            if not job.status.is_terminal:
                continue
            conn.execute(
                table.update()
                .where(table.c.job_id == job.job_id)
                .values(completed_at=job.completed_at, duration_ms=job.duration_ms)
            )


S, M, L = Tier.SMALL, Tier.MEDIUM, Tier.LARGE


def day_jobs(prefix: str) -> list[Job]:
    """Ten terminal jobs over the last day (the hand computations below use these numbers)."""
    p = prefix
    return [
        Job(f"{p}0", 0.5, 100, hits={"response": 1}, saved=(500, 0.005, 900.0)),
        Job(f"{p}1", 2.5, 200, S, [(S, "final", 0.0005, 1000)], p_large=0.05,
            misses={"response": 1, "component": 1}),
        Job(f"{p}2", 2.6, 300, M, [(S, "draft", 0.0001, 200), (M, "final", 0.003, 1000)],
            [("calculator", True, True, 4.0)], p_large=0.2,
            hits={"tool": 1, "component": 1}, misses={"response": 1}),
        Job(f"{p}3", 6.5, 400, M, [(S, "draft", 0.0001, 200), (M, "final", 0.006, 2000)],
            [("search", True, False, 120.0)], p_large=0.3,
            misses={"response": 1, "tool": 1, "component": 1}, request_hash="h-repeat"),
        # Recorded before cache reports: one response miss, one tool hit (its cache_hit).
        # It waited an hour for approval: its response time is 500 ms.
        Job(f"{p}4", 8.5, 3_600_500, M, [(S, "draft", 0.0001, 200), (M, "final", 0.003, 1000)],
            [("search", True, True, 2.0)], p_large=0.25, legacy=True, wait_ms=3_600_000),
        Job(f"{p}5", 10.5, 600, L, [(S, "draft", 0.0001, 200), (L, "final", 0.02, 2000)],
            [("search", True, False, 100.0)], p_large=0.4,
            misses={"response": 1, "tool": 1, "component": 1}),
        Job(f"{p}6", 12.5, 700, L, [(S, "draft", 0.0001, 200), (L, "final", 0.01, 1000)],
            [("calculator", True, True, 3.0)], p_large=0.45,
            hits={"tool": 1, "component": 1}, misses={"response": 1}),
        Job(f"{p}7", 14.5, 800, L, [(S, "draft", 0.0001, 200), (L, "final", 0.03, 3000)],
            p_large=0.9, misses={"response": 1, "component": 1}, request_hash="h-repeat"),
        # Escalated from medium to large; it started while p9 (same request) was running.
        Job(f"{p}8", 18.5, 900, M, [(M, "final", 0.003, 1000), (L, "final", 0.02, 2000)],
            [("sql_query", False, False, 50.0)], p_large=0.3, escalated_to=L,
            hits={"component": 1}, misses={"response": 1, "tool": 1},
            request_hash="h-twin", ended_s=2),
        Job(f"{p}9", 18.5, 5000, L, [(L, "final", 0.01, 1000)], p_large=0.1, pinned=True,
            misses={"response": 1, "component": 1}, status=JobStatus.FAILED,
            request_hash="h-twin"),
    ]  # fmt: skip


def outside_jobs(prefix: str) -> list[Job]:
    """Jobs the day's analytics must not count: ended 2 days ago, and still running."""
    return [
        Job(f"{prefix}old", 48, 1000, L, [(L, "final", 0.05, 5000)], p_large=0.9,
            misses={"response": 1}),
        Job(f"{prefix}run", 1, 1000, S, [(S, "draft", 0.0001, 200)], p_large=0.1,
            status=JobStatus.RUNNING),
    ]  # fmt: skip


def sample(
    response_ms: float = 100.0,
    *,
    tier: str | None = "small",
    cache: CacheReport | None = None,
    escalated: bool = False,
    job_id: str | None = None,
) -> JobSample:
    """A terminal job sample built directly (for the pure rule tests)."""
    ended = NOW - timedelta(minutes=1)
    return JobSample(
        job_id=job_id or uuid.uuid4().hex,
        status=JobStatus.COMPLETED,
        tier=tier,
        owner="k",
        request_hash=None,
        created_at=ended - timedelta(milliseconds=response_ms),
        completed_at=ended,
        duration_ms=response_ms,
        cost_usd=0.0,
        tokens=0,
        response_cache_hit=False,
        cache=cache if cache is not None else CacheReport(),
        selected_tier=tier if tier in ("small", "medium", "large") else None,
        escalated=escalated,
        detailed=True,
    )


def window(samples: list[JobSample], period: Period = Period.DAY) -> AnalyticsWindow:
    return AnalyticsWindow(period, NOW - period.length, NOW, samples, len(samples))


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'jobs.db'}")
    create_tables(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def seeded(sqlite_engine: Engine) -> Engine:
    seed(sqlite_engine, day_jobs("a") + outside_jobs("a"), owner="alice")
    seed(sqlite_engine, [Job("b0", 1.5, 50, S, [(S, "final", 0.0009, 1800)], p_large=0.1)], "bob")
    return sqlite_engine


# --------------------------------------------------------------------------- percentiles


def test_percentile_is_linear_interpolation_between_closest_ranks() -> None:
    values = [400.0, 100.0, 300.0, 200.0]
    assert percentile(values, 50) == pytest.approx(250.0)  # rank 1.5
    assert percentile(values, 95) == pytest.approx(385.0)  # rank 2.85: 300 + 0.85 * 100
    assert percentile(values, 99) == pytest.approx(397.0)  # rank 2.97
    assert percentile(values, 0) == 100.0
    assert percentile(values, 100) == 400.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None
    with pytest.raises(ValueError, match="outside"):
        percentile(values, 100.5)
    rng = random.Random(11)
    data = [rng.lognormvariate(6, 1) for _ in range(257)]
    for q in (1, 50, 90, 95, 99, 99.9):
        assert percentile(data, q) == pytest.approx(float(np.percentile(data, q)), rel=1e-12)


# --------------------------------------------------------------------------- summary


def test_summary_of_a_seeded_day_matches_hand_computation(seeded: Engine) -> None:
    loaded = load_window(seeded, Period.DAY, owner="alice", now=NOW)
    assert sorted(s.job_id for s in loaded.samples) == [f"a{i}" for i in range(10)]
    assert not loaded.sampled
    summary = summarize(loaded)

    assert summary.window.jobs == 10
    assert summary.window.start == NOW - timedelta(days=1)
    rt = summary.response_time
    # Response times 100..900 ms (a4's hour of approval wait left out) and 5000 ms.
    assert rt.count == 10
    assert rt.mean_ms == pytest.approx(950.0)
    assert rt.p50_ms == pytest.approx(550.0)  # rank 4.5
    assert rt.p95_ms == pytest.approx(3155.0)  # rank 8.55: 900 + 0.55 * 4100
    assert rt.p99_ms == pytest.approx(4631.0)  # rank 8.91: 900 + 0.91 * 4100
    assert rt.max_ms == 5000.0

    assert summary.tokens.total == 16_200
    assert summary.tokens.mean == pytest.approx(1620.0)
    assert summary.cost.total_usd == pytest.approx(0.1061)
    assert summary.cost.mean_usd == pytest.approx(0.01061)

    tiers = {k: (v.jobs, v.share) for k, v in summary.tiers.items()}
    assert tiers == {
        "small": (1, pytest.approx(0.1)),
        "medium": (3, pytest.approx(0.3)),
        "large": (5, pytest.approx(0.5)),
        "none": (1, pytest.approx(0.1)),
    }
    assert summary.statuses == {"COMPLETED": 9, "FAILED": 1}
    assert (summary.escalations.routed_jobs, summary.escalations.escalated_jobs) == (9, 1)

    cache = summary.cache
    levels = {k: (v.hits, v.misses) for k, v in cache.levels.items()}
    # a4 (no report) adds a response miss and a tool hit.
    assert levels == {"response": (1, 9), "semantic": (0, 0), "tool": (3, 3), "component": (3, 5)}
    assert cache.levels["response"].hit_rate == pytest.approx(0.1)
    assert cache.levels["semantic"].hit_rate is None
    assert cache.levels["component"].hit_rate == pytest.approx(3 / 8)
    assert (cache.hits, cache.lookups) == (7, 24)
    assert (cache.jobs, cache.reported_jobs) == (10, 9)
    assert cache.levels["response"].saved_cost_usd == pytest.approx(0.005)
    assert (cache.saved_tokens, cache.saved_cost_usd, cache.saved_ms) == (
        500,
        pytest.approx(0.005),
        pytest.approx(900.0),
    )

    # p95 3155 > 2000; large 50 % > 40 %; response hits 10 % < 30 % over 10 lookups (tool and
    # component have under 10 lookups). 1 of 9 routed jobs escalated (11 % > 10 %), but 9
    # routed jobs are too few for the rule.
    rules = [(s.rule, s.subject) for s in summary.suggestions]
    assert rules == [
        ("p95_latency_high", None),
        ("large_tier_share_high", None),
        ("cache_hit_rate_low", "response"),
    ]
    p95 = summary.suggestions[0]
    assert (p95.observed, p95.threshold, p95.unit) == (pytest.approx(3155.0), 2000.0, "ms")
    assert p95.figures["p50_ms"] == pytest.approx(550.0)
    assert summary.suggestions[2].figures == {"hits": 1, "misses": 9, "hit_rate": 0.1}


def test_windows_are_bounded_by_period_and_owner(seeded: Engine) -> None:
    hour = load_window(seeded, Period.HOUR, owner="alice", now=NOW)
    assert [s.job_id for s in hour.samples] == ["a0"]  # a-run is still running
    week = load_window(seeded, Period.WEEK, owner="alice", now=NOW)
    assert len(week.samples) == 11  # a-old ended 2 days ago
    everyone = load_window(seeded, Period.DAY, now=NOW)
    assert len(everyone.samples) == 11  # bob's job too
    assert [s.job_id for s in load_window(seeded, Period.DAY, owner="bob", now=NOW).samples] == [
        "b0"
    ]
    # Newest first; a bound below the period's jobs samples the latest and counts them all.
    bounded = load_window(seeded, Period.DAY, owner="alice", now=NOW, max_jobs=4)
    assert [s.job_id for s in bounded.samples] == ["a0", "a1", "a2", "a3"]
    assert (bounded.sampled, bounded.jobs_in_period) == (True, 10)
    assert bounded.covered_start == NOW - timedelta(hours=6.5)
    assert bounded.info().jobs == 4


def test_an_empty_period_gives_zeros_and_no_advice(sqlite_engine: Engine) -> None:
    empty = load_window(sqlite_engine, Period.WEEK, now=NOW)
    summary = summarize(empty)
    assert summary.window.jobs == 0
    assert summary.response_time.count == 0
    assert summary.response_time.p95_ms is None and summary.response_time.mean_ms is None
    assert (summary.tokens.total, summary.tokens.mean) == (0, None)
    assert (summary.cost.total_usd, summary.cost.mean_usd) == (0, None)
    assert all(v.share is None for v in summary.tiers.values())
    assert summary.cache.hit_rate is None
    assert summary.suggestions == []
    costs = analyze_costs(empty, CATALOG)
    assert (costs.total_cost_usd, costs.monthly_cost_usd, costs.strategies) == (0, 0, [])
    series = time_series(empty)
    assert len(series.buckets) == 7 and all(b.jobs == 0 for b in series.buckets)


# --------------------------------------------------------------------------- suggestion rules


def test_p95_rule_fires_only_above_two_seconds_with_ten_jobs() -> None:
    # Ten jobs: the p95 rank is 8.55, so it lies between the two largest values.
    at_limit = [sample(0) for _ in range(8)] + [sample(2000), sample(2000)]
    above = [sample(0) for _ in range(8)] + [sample(2000), sample(2001)]
    assert summarize(window(at_limit)).response_time.p95_ms == 2000.0
    assert not _rules(at_limit)
    assert summarize(window(above)).response_time.p95_ms == pytest.approx(2000.55)
    assert _rules(above) == ["p95_latency_high"]
    assert not _rules(above[1:])  # nine jobs: too few for a rule


def test_large_share_rule_fires_only_above_forty_percent() -> None:
    four = [sample(tier="large") for _ in range(4)] + [sample(tier="small") for _ in range(6)]
    five = [sample(tier="large") for _ in range(5)] + [sample(tier="small") for _ in range(5)]
    assert not _rules(four)
    assert _rules(five) == ["large_tier_share_high"]


def test_cache_rule_fires_per_level_under_thirty_percent_with_ten_lookups() -> None:
    def jobs(hits: int, misses: int) -> list[JobSample]:
        # One tool lookup per job; the response level answers half its lookups (never fires).
        outcomes = [True] * hits + [False] * misses
        return [
            sample(
                cache=CacheReport(
                    hits={"tool": int(hit), "response": i % 2},
                    misses={"tool": int(not hit), "response": 1 - i % 2},
                )
            )
            for i, hit in enumerate(outcomes)
        ]

    assert CACHE_HIT_RATE_FLOOR == 0.3
    assert not _rules(jobs(3, 7))  # exactly 30 %
    fired = summarize(window(jobs(2, 8))).suggestions
    assert [(s.rule, s.subject) for s in fired] == [("cache_hit_rate_low", "tool")]
    assert fired[0].figures == {"hits": 2, "misses": 8, "hit_rate": pytest.approx(0.2)}
    assert not _rules([*jobs(2, 7), sample(cache=CacheReport(hits={"response": 1}))])


def test_escalation_and_degraded_rules() -> None:
    one = [sample(escalated=i < 1) for i in range(10)]
    two = [sample(escalated=i < 2) for i in range(10)]
    assert not _rules(one)  # exactly 10 %
    assert _rules(two) == ["escalation_rate_high"]
    assert not _rules(two[:9])  # 2 of 9 routed jobs, but under ten
    degraded = [sample(cache=CacheReport(misses={"response": 1}, degraded=True))]
    fired = summarize(window(degraded)).suggestions
    assert [s.rule for s in fired] == ["cache_degraded"]
    assert fired[0].figures == {"degraded_jobs": 1, "jobs": 1}


def _rules(samples: list[JobSample]) -> list[str]:
    return [s.rule for s in summarize(window(samples)).suggestions]


# --------------------------------------------------------------------------- costs


def test_cost_drivers_and_strategies_match_hand_computation(seeded: Engine) -> None:
    costs = analyze_costs(load_window(seeded, Period.DAY, owner="alice", now=NOW), CATALOG)
    assert costs.total_cost_usd == pytest.approx(0.1061)
    assert costs.month_factor == pytest.approx(30.0)
    assert costs.monthly_cost_usd == pytest.approx(3.183)

    by_tier = {t.tier: (t.calls, t.tokens, t.cost_usd) for t in costs.drivers.by_tier}
    assert by_tier == {
        "large": (5, 9000, pytest.approx(0.09)),
        "medium": (4, 5000, pytest.approx(0.015)),
        "small": (7, 2200, pytest.approx(0.0011)),
    }
    assert [t.tier for t in costs.drivers.by_tier] == ["large", "medium", "small"]
    assert costs.drivers.by_tier[0].share == pytest.approx(0.09 / 0.1061)
    purposes = {p.purpose: p.cost_usd for p in costs.drivers.by_purpose}
    assert purposes == {"final": pytest.approx(0.1055), "draft": pytest.approx(0.0006)}

    tools = [
        (t.tool, t.calls, t.failures, t.cache_hits, t.cache_hit_rate, t.mean_latency_ms, t.jobs)
        for t in costs.drivers.by_tool
    ]
    assert tools == [
        ("search", 3, 0, 1, pytest.approx(1 / 3), pytest.approx(74.0), 3),
        ("sql_query", 1, 1, 0, None, 50.0, 1),
        ("calculator", 2, 0, 2, 1.0, 3.5, 2),
    ]
    assert [t.job_cost_usd for t in costs.drivers.by_tool] == [
        pytest.approx(0.0293),
        pytest.approx(0.023),
        pytest.approx(0.0132),
    ]

    misses = costs.drivers.cache_misses
    assert (misses.response_hits, misses.response_misses) == (1, 9)
    assert misses.miss_job_cost_usd == pytest.approx(0.1061)
    assert misses.saved_cost_usd == pytest.approx(0.005)
    # a3 repeats a7, which had completed before a3 started; a8 started while a9 ran.
    assert (misses.repeat_jobs, misses.repeat_cost_usd) == (1, pytest.approx(0.0061))
    assert (misses.concurrent_jobs, misses.concurrent_cost_usd) == (1, pytest.approx(0.023))

    strategies = {s.strategy: s for s in costs.strategies}
    assert [s.strategy for s in costs.strategies] == [
        "batch_similar_requests",  # 0.69
        "route_away_from_large",  # 0.63
        "improve_caching",  # 0.183
    ]
    # Candidates: a5 (P 0.4) and a6 (P 0.45); a7 is sure (0.9), a8 escalated, a9 pinned.
    # Their large spend 0.03 USD at the medium price is 0.009: (0.015 - 0.0045) x 2/day x 30.
    down = strategies["route_away_from_large"]
    assert down.estimated_monthly_savings_usd == pytest.approx(0.63)
    assert down.inputs["candidate_jobs"] == 2
    assert down.inputs["candidate_large_cost_usd"] == pytest.approx(0.03)
    assert down.inputs["repriced_medium_cost_usd"] == pytest.approx(0.009)
    assert down.formula == (
        "(0.015 - 0.0045) USD/job x 2 jobs/day x 30 days = 0.63 USD/month "
        "(medium = large x 0.003 / 0.01 USD per 1k tokens)"
    )
    caching = strategies["improve_caching"]
    assert caching.estimated_monthly_savings_usd == pytest.approx(0.0061 * 30)
    assert caching.formula == "0.0061 USD paid by 1 repeats in 1 d x 30 / 1 = 0.183 USD/month"
    batching = strategies["batch_similar_requests"]
    assert batching.estimated_monthly_savings_usd == pytest.approx(0.023 * 30)
    assert batching.inputs == {
        "concurrent_jobs": 1,
        "concurrent_cost_usd": pytest.approx(0.023),
        "period_days": 1.0,
    }


def test_strategies_apply_only_when_their_conditions_hold(seeded: Engine) -> None:
    day = load_window(seeded, Period.DAY, owner="alice", now=NOW)
    # Without its two uncertain large jobs nothing is left to move to medium.
    no_candidates = [s for s in day.samples if s.job_id not in ("a5", "a6")]
    names = [s.strategy for s in analyze_costs(window(no_candidates), CATALOG).strategies]
    assert "route_away_from_large" not in names
    # A prompt too large for the medium tier's context window stays on large.
    a5 = next(s for s in day.samples if s.job_id == "a5")
    assert downsize_candidates([a5], CATALOG) == [a5]
    assert CATALOG.for_tier(M).context_window < 40_000
    assert downsize_candidates([a5._replace(fit_tokens=40_000)], CATALOG) == []
    # Large tier at 30 % of spend exactly: the seed's rule wants more.
    cheap = (CallCost("small", "final", 0.4375, 1),)
    small = [a5._replace(job_id=f"s{i}", calls=cheap) for i in range(2)]
    thirty = [
        a5._replace(calls=(CallCost("large", "final", 0.375, 1),)),
        *small,
    ]
    shares = {t.tier: t.share for t in analyze_costs(window(thirty), CATALOG).drivers.by_tier}
    assert shares["large"] == 0.3
    assert analyze_costs(window(thirty), CATALOG).strategies == []
    above = [a5._replace(calls=(CallCost("large", "final", 0.5, 1),)), *small]
    moved = analyze_costs(window(above), CATALOG).strategies
    assert [s.strategy for s in moved] == ["route_away_from_large"]
    assert moved[0].estimated_monthly_savings_usd == pytest.approx((0.5 - 0.15) * 30)
    # The response cache answering half the lookups: improving it is not suggested.
    half = [*day.samples, *[sample(cache=CacheReport(hits={"response": 1})) for _ in range(8)]]
    names = [s.strategy for s in analyze_costs(window(half), CATALOG).strategies]
    assert "improve_caching" not in names and "batch_similar_requests" in names


def test_duplicates_are_per_key_and_split_by_timing() -> None:
    t0 = NOW - timedelta(hours=1)

    def job(job_id: str, start_s: float, end_s: float, owner: str = "k", **kw: Any) -> JobSample:
        return sample(job_id=job_id)._replace(
            owner=owner,
            request_hash="same",
            cost_usd=0.01,
            created_at=t0 + timedelta(seconds=start_s),
            completed_at=t0 + timedelta(seconds=end_s),
            **kw,
        )

    first = job("first", 0, 10)
    during = job("during", 5, 12)  # first still running
    after = job("after", 20, 25)  # first had completed
    other_key = job("other", 30, 31, owner="someone else")
    hit = job("hit", 40, 41, response_cache_hit=True)
    after_failure = job("after-failure", 20, 21, status=JobStatus.FAILED)
    repeats, concurrent = duplicates([hit, after, other_key, during, first, after_failure])
    assert [s.job_id for s in repeats] == ["after", "after-failure"]
    assert [s.job_id for s in concurrent] == ["during"]
    # A failed earlier run leaves nothing to cache: the next one is not a repeat.
    failed_first = job("failed-first", 0, 10, status=JobStatus.FAILED)
    repeats, concurrent = duplicates([failed_first, job("later", 20, 22)])
    assert (repeats, concurrent) == ([], [])


# --------------------------------------------------------------------------- time series


def test_time_series_buckets_match_hand_computation(seeded: Engine) -> None:
    series = time_series(load_window(seeded, Period.DAY, owner="alice", now=NOW))
    assert series.bucket_s == 3600 and len(series.buckets) == 24
    assert series.buckets[0].start == NOW - timedelta(days=1)
    assert series.buckets[-1].end == NOW
    busy = {i: b for i, b in enumerate(series.buckets) if b.jobs}
    # Ended 0.5 h ago -> bucket 23; 2.5 and 2.6 h -> 21; ... 18.5 h (and 2 s) -> 5.
    assert {i: b.jobs for i, b in busy.items()} == {
        23: 1, 21: 2, 17: 1, 15: 1, 13: 1, 11: 1, 9: 1, 5: 2,
    }  # fmt: skip
    both = series.buckets[21]  # a1 (200 ms, small) and a2 (300 ms, medium)
    assert (both.p50_ms, both.p95_ms, both.p99_ms) == (
        pytest.approx(250.0),
        pytest.approx(295.0),
        pytest.approx(299.0),
    )
    assert both.cost_usd == pytest.approx(0.0036)
    assert both.cost_usd_by_tier == {
        "small": pytest.approx(0.0006),
        "medium": pytest.approx(0.003),
        "large": 0.0,
    }
    assert both.tier_jobs == {"small": 1, "medium": 1, "large": 0, "none": 0}
    assert both.cache_hit_rate == {
        "response": 0.0,
        "semantic": None,
        "tool": 1.0,
        "component": 0.5,
    }
    assert series.buckets[5].p50_ms == pytest.approx(2950.0)  # a8 900 ms, a9 5000 ms
    assert series.buckets[0].p50_ms is None and series.buckets[0].cost_usd == 0
    assert sum(b.cost_usd for b in series.buckets) == pytest.approx(0.1061)
    week = time_series(load_window(seeded, Period.WEEK, owner="alice", now=NOW))
    assert len(week.buckets) == 7 and week.bucket_s == 86_400
    assert [b.jobs for b in week.buckets] == [0, 0, 0, 0, 0, 1, 10]


def test_cache_period_stats_takes_job_records(seeded: Engine) -> None:
    store = JobStore(seeded)
    records = store.list_jobs(limit=100, owner="alice")
    stats = cache_period_stats(records)  # every terminal job of alice, a-old included
    assert stats.jobs == 11
    assert (stats.levels["response"].hits, stats.levels["response"].misses) == (1, 10)
    assert stats.levels["response"].saved_tokens == 500


# --------------------------------------------------------------------------- PostgreSQL


@pytest.mark.postgres
def test_loader_and_summary_on_postgresql(postgres_url: str) -> None:
    schema = f"test_analytics_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f'CREATE SCHEMA "{schema}"'))
    engine = make_engine(postgres_url, connect_args={"options": f"-csearch_path={schema}"})
    try:
        create_tables(engine)
        seed(engine, day_jobs("a") + outside_jobs("a"), owner="alice")
        loaded = load_window(engine, Period.DAY, owner="alice", now=NOW)
        summary = summarize(loaded)
        assert summary.window.jobs == 10
        assert summary.response_time.p95_ms == pytest.approx(3155.0)
        assert summary.cost.total_usd == pytest.approx(0.1061)
        assert [s.rule for s in summary.suggestions][:2] == [
            "p95_latency_high",
            "large_tier_share_high",
        ]
        bounded = load_window(engine, Period.DAY, owner="alice", now=NOW, max_jobs=4)
        assert (len(bounded.samples), bounded.jobs_in_period) == (4, 10)
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


# --------------------------------------------------------------------------- HTTP


@dataclass
class Api:
    url: str
    admin: str
    alice: str
    bob: str
    submitter: str
    engine: Engine


@pytest.fixture(scope="module")
def stack_spec() -> StackSpec:
    """The API alone with keys on: no Temporal server is needed (these routes read the job
    records only)."""
    return StackSpec(settings={"api_key_pepper": "metrics-pepper"}, worker=False, temporal=False)


@pytest.fixture(scope="module")
def api(stack: Stack) -> Api:
    """The module's API over its seeded SQLite file."""
    engine = stack.engine
    admin = stack.key("root", Scope.ADMIN)
    alice = stack.key("alice", Scope.READ)
    bob = stack.key("bob", Scope.READ, Scope.SUBMIT)
    submitter = stack.key("robot", Scope.SUBMIT)
    # Relative to the wall clock: the API's window ends now.
    now = datetime.now(UTC)
    shift = now - NOW
    jobs = day_jobs("h") + outside_jobs("h")
    for job in jobs:
        job.ended_h -= shift / timedelta(hours=1)
    seed(engine, jobs, owner=alice.key_id)
    ownerless = Job("hb", 1.5 - shift / timedelta(hours=1), 50, S, [(S, "final", 0.0009, 1800)])
    seed(engine, [ownerless], owner=None)
    return Api(stack.url, admin.secret, alice.secret, bob.secret, submitter.secret, engine)


def get(api: Api, path: str, key: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.get(f"{api.url}{path}", headers=headers, timeout=10)


def test_metrics_routes_need_a_read_key(api: Api) -> None:
    assert get(api, "/v1/metrics/summary", None).status_code == 401
    assert get(api, "/v1/metrics/cost", "af_not_a_key").status_code == 401
    assert get(api, "/v1/metrics/timeseries", api.submitter).status_code == 403


@pytest.mark.parametrize("path", ["summary", "cost", "timeseries"])
def test_a_bad_period_is_a_422_naming_it(api: Api, path: str) -> None:
    r = get(api, f"/v1/metrics/{path}?period=month", api.admin)
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["query", "period"]
    assert "month" not in r.text  # the refused value is never echoed


def test_each_key_sees_its_own_jobs_and_admin_sees_all(api: Api) -> None:
    alice = get(api, "/v1/metrics/summary?period=day", api.alice).json()
    assert alice["scope"] == "own"
    assert alice["window"]["jobs"] == 10
    assert alice["response_time"]["p95_ms"] == pytest.approx(3155.0)
    assert alice["cost"]["total_usd"] == pytest.approx(0.1061)
    assert [s["rule"] for s in alice["suggestions"]] == [
        "p95_latency_high",
        "large_tier_share_high",
        "cache_hit_rate_low",
    ]
    admin = get(api, "/v1/metrics/summary?period=day", api.admin).json()
    assert (admin["scope"], admin["window"]["jobs"]) == ("all", 11)  # the ownerless job too
    assert admin["cost"]["total_usd"] == pytest.approx(0.1061 + 0.0009)

    # Bob submitted nothing: zeros and nulls, no advice, never a 500.
    bob = get(api, "/v1/metrics/summary?period=week", api.bob)
    assert bob.status_code == 200, bob.text
    empty = bob.json()
    assert (empty["scope"], empty["window"]["jobs"], empty["suggestions"]) == ("own", 0, [])
    assert empty["response_time"]["p50_ms"] is None
    cost = get(api, "/v1/metrics/cost", api.bob).json()
    assert (cost["window"]["period"], cost["total_cost_usd"], cost["strategies"]) == (
        "week",
        0,
        [],
    )
    series = get(api, "/v1/metrics/timeseries?period=hour", api.bob).json()
    assert len(series["buckets"]) == 12 and series["bucket_s"] == 300
    assert all(b["jobs"] == 0 and b["p95_ms"] is None for b in series["buckets"])


def test_cost_and_timeseries_over_http(api: Api) -> None:
    cost = get(api, "/v1/metrics/cost?period=day", api.alice).json()
    assert [s["strategy"] for s in cost["strategies"]] == [
        "batch_similar_requests",
        "route_away_from_large",
        "improve_caching",
    ]
    assert cost["strategies"][1]["estimated_monthly_savings_usd"] == pytest.approx(0.63)
    series = get(api, "/v1/metrics/timeseries?period=day", api.alice).json()
    assert len(series["buckets"]) == 24
    assert sum(b["jobs"] for b in series["buckets"]) == 10
    assert sum(b["cost_usd"] for b in series["buckets"]) == pytest.approx(0.1061)


# --------------------------------------------------------------------------- serving
#
# The routes compute off the event loop (a separate process by default), share one computation
# among concurrent identical requests, cache answers per (owner, report, period) for the TTL,
# and limit each key's analytics calls per minute. Observables: ``window.end`` (taken when a
# computation starts, so equal ends mean one computation), the ``X-Analytics-Source`` header,
# and the runner's ``computations`` counter.


def recent_day_jobs(prefix: str) -> list[Job]:
    """:func:`day_jobs` and :func:`outside_jobs` moved so that their day ends now."""
    shift = datetime.now(UTC) - NOW
    jobs = day_jobs(prefix) + outside_jobs(prefix)
    for job in jobs:
        job.ended_h -= shift / timedelta(hours=1)
    return jobs


def copy_job(engine: Engine, template: str, count: int, prefix: str) -> None:
    """Insert ``count`` copies of job ``template`` (ids ``<prefix><n>``) in one statement."""
    table = JobRecord.__table__  # type: ignore[attr-defined]
    names = [c.name for c in table.columns]
    values = [
        ":prefix || n.i" if name == "job_id" else "NULL" if name == "idempotency_key" else name
        for name in names
    ]
    statement = (
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :count) "
        f"INSERT INTO jobs ({', '.join(names)}) "
        f"SELECT {', '.join(values)} FROM n, jobs WHERE jobs.job_id = :template"
    )
    with engine.begin() as conn:
        conn.execute(
            sqlalchemy.text(statement), {"count": count, "prefix": prefix, "template": template}
        )


@dataclass
class Served:
    url: str
    admin: str
    alice: str
    bob: str


@contextmanager
def serve_metrics(
    redis_url: str, tmp: Path, *, copies: int = 0, **analytics: Any
) -> Iterator[Served]:
    """The real app (keys on) over a SQLite file with alice's day of jobs (plus ``copies``)."""
    settings = Settings(
        redis_url=redis_url,
        database_url=f"sqlite:///{tmp / 'jobs.db'}",
        temporal_address="127.0.0.1:1",
        api_key_pepper="metrics-pepper",
        **analytics,
    )
    engine = make_engine(settings.database_url)
    create_tables(engine)
    keys = KeyStore(engine, pepper="metrics-pepper")
    admin = keys.create("root", [Scope.ADMIN])
    alice = keys.create("alice", [Scope.READ])
    bob = keys.create("bob", [Scope.READ])
    seed(engine, recent_day_jobs("s"), owner=alice.key_id)
    if copies:
        copy_job(engine, "s5", copies, "copy-")
    engine.dispose()
    with serve_asgi(create_app(settings)) as url:
        yield Served(url, admin.secret, alice.secret, bob.secret)


def call(served: Served, path: str, key: str) -> httpx.Response:
    return httpx.get(f"{served.url}{path}", headers={"Authorization": f"Bearer {key}"}, timeout=60)


def test_analytics_calls_are_limited_per_key_with_a_429_naming_the_limit(
    redis_url: str, tmp_path: Path
) -> None:
    with serve_metrics(
        redis_url, tmp_path, analytics_rate_limit_per_minute=3, analytics_cache_ttl_s=300
    ) as served:
        for path in ("/v1/metrics/summary", "/v1/metrics/cost", "/v1/cache/stats"):
            assert call(served, path, served.alice).status_code == 200
        # The fourth analytics call of the minute, whichever route: refused, nothing computed.
        for path in ("/v1/metrics/summary", "/v1/metrics/timeseries", "/v1/cache/stats"):
            refused = call(served, path, served.alice)
            assert refused.status_code == 429, refused.text
            assert 1 <= int(refused.headers["Retry-After"]) <= 60
            detail = refused.json()["detail"]
            assert "analytics rate limit of 3 requests per minute" in detail
            assert "AGENTFLOW_ANALYTICS_RATE_LIMIT_PER_MINUTE" in detail
        # Per key: bob and the admin still have their own three.
        assert call(served, "/v1/metrics/summary", served.bob).status_code == 200
        assert call(served, "/v1/metrics/summary", served.admin).status_code == 200


def test_a_second_call_within_the_ttl_is_not_computed_again(redis_url: str, tmp_path: Path) -> None:
    with serve_metrics(redis_url, tmp_path, analytics_cache_ttl_s=300) as served:
        first = call(served, "/v1/metrics/cost?period=day", served.alice)
        second = call(served, "/v1/metrics/cost?period=day", served.alice)
        assert first.headers["X-Analytics-Source"] == "computed"
        assert second.headers["X-Analytics-Source"] == "cached"
        assert second.json() == first.json()  # window.end included: the same computation
        assert second.headers["Cache-Control"] == "private, max-age=300"
        assert 0 <= int(second.headers["Age"]) <= 300
        # Another period or report is another computation.
        week = call(served, "/v1/metrics/cost?period=week", served.alice)
        assert week.headers["X-Analytics-Source"] == "computed"
        assert week.json()["window"]["end"] != first.json()["window"]["end"]
        summary = call(served, "/v1/metrics/summary?period=day", served.alice)
        assert summary.headers["X-Analytics-Source"] == "computed"
        assert summary.json()["window"]["jobs"] == 10


def test_without_a_ttl_every_call_computes(redis_url: str, tmp_path: Path) -> None:
    with serve_metrics(redis_url, tmp_path, analytics_cache_ttl_s=0) as served:
        answers = [call(served, "/v1/metrics/summary", served.alice) for _ in range(2)]
        assert [a.headers["X-Analytics-Source"] for a in answers] == ["computed", "computed"]
        assert answers[0].json()["window"]["end"] != answers[1].json()["window"]["end"]
        assert answers[1].headers["Cache-Control"] == "no-store"


def test_the_cache_never_serves_one_keys_figures_to_another(redis_url: str, tmp_path: Path) -> None:
    with serve_metrics(redis_url, tmp_path, analytics_cache_ttl_s=300) as served:
        alice = call(served, "/v1/metrics/summary", served.alice)
        assert (alice.json()["scope"], alice.json()["window"]["jobs"]) == ("own", 10)
        # Same report and period, within the TTL: bob and the admin get their own figures.
        bob = call(served, "/v1/metrics/summary", served.bob)
        assert bob.headers["X-Analytics-Source"] == "computed"
        assert (bob.json()["scope"], bob.json()["window"]["jobs"]) == ("own", 0)
        assert bob.json()["cost"]["total_usd"] == 0
        admin = call(served, "/v1/metrics/summary", served.admin)
        assert admin.headers["X-Analytics-Source"] == "computed"
        assert (admin.json()["scope"], admin.json()["window"]["jobs"]) == ("all", 10)
        again = call(served, "/v1/metrics/summary", served.alice)
        assert again.headers["X-Analytics-Source"] == "cached"
        assert again.json() == alice.json()
        bob_stats = call(served, "/v1/cache/stats", served.bob).json()
        alice_stats = call(served, "/v1/cache/stats", served.alice).json()
        assert (bob_stats["jobs_considered"], alice_stats["jobs_considered"]) == (0, 10)


@pytest.fixture(scope="module")
def big(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """An app over 12,000 of alice's jobs and no cache: each cost report takes a while."""
    with serve_metrics(
        redis_url,
        tmp_path_factory.mktemp("big"),
        copies=BIG_COPIES,
        analytics_cache_ttl_s=0,
        analytics_rate_limit_per_minute=1_000,
        analytics_nice=0,  # the default 10 only slows this test on a busy machine
    ) as served:
        yield served


BIG_COPIES = 12_000


async def test_concurrent_identical_calls_share_one_computation(big: Served) -> None:
    headers = {"Authorization": f"Bearer {big.alice}"}
    async with httpx.AsyncClient(base_url=big.url, headers=headers, timeout=60) as http:
        answers = await asyncio.gather(
            *(http.get("/v1/metrics/cost?period=week") for _ in range(20))
        )
    assert [a.status_code for a in answers] == [200] * 20
    sources = Counter(a.headers["X-Analytics-Source"] for a in answers)
    assert sources == {"computed": 1, "shared": 19}
    assert len({a.json()["window"]["end"] for a in answers}) == 1
    assert answers[0].json()["window"]["jobs"] == BIG_COPIES + 11


async def test_the_event_loop_answers_while_analytics_compute(big: Served) -> None:
    headers = {"Authorization": f"Bearer {big.alice}"}
    async with httpx.AsyncClient(base_url=big.url, headers=headers, timeout=60) as http:
        report = asyncio.create_task(http.get("/v1/metrics/cost?period=week"))
        await asyncio.sleep(0.1)  # the report is being computed now
        answered_meanwhile = 0
        while not report.done():
            health = await http.get("/healthz")
            assert health.status_code == 200
            if not report.done():
                answered_meanwhile += 1
            await asyncio.sleep(0.05)
        assert (await report).status_code == 200
    # Computed on the loop, nothing else would have been answered until the report was.
    assert answered_meanwhile >= 3


# --------------------------------------------------------------------------- the runner


@pytest.fixture
def recent(sqlite_engine: Engine) -> Engine:
    """Alice's day of jobs ending now (the runner's windows end at the wall clock), and bob's."""
    seed(sqlite_engine, recent_day_jobs("a"), owner="alice")
    seed(sqlite_engine, [Job("b0", 1.5, 50, S, [(S, "final", 0.0009, 1800)])], "bob")
    table = JobRecord.__table__  # type: ignore[attr-defined]
    with sqlite_engine.begin() as conn:
        conn.execute(
            table.update()
            .where(table.c.job_id == "b0")
            .values(completed_at=datetime.now(UTC) - timedelta(hours=1))
        )
    return sqlite_engine


async def test_the_runner_caches_for_its_ttl_and_counts_computations(recent: Engine) -> None:
    now = [1000.0]
    runner = AnalyticsRunner(
        recent,
        str(recent.url),
        CATALOG,
        cache_ttl_s=10,
        executor="thread",
        clock=lambda: now[0],
    )
    try:
        first = await runner.get(Report.SUMMARY, Period.WEEK, "alice")
        now[0] += 9.9
        second = await runner.get(Report.SUMMARY, Period.WEEK, "alice")
        assert (first.source, second.source, runner.computations) == ("computed", "cached", 1)
        assert second.value is first.value
        assert first.expect(PerformanceSummary).window.jobs == 11
        with pytest.raises(TypeError, match="CostAnalysis"):
            first.expect(CostAnalysis)
        other = await runner.get(Report.SUMMARY, Period.WEEK, "bob")
        assert (other.expect(PerformanceSummary).window.jobs, runner.computations) == (1, 2)
        now[0] += 0.2  # 10.1 s after the first computation started: stale
        third = await runner.get(Report.SUMMARY, Period.WEEK, "alice")
        assert (third.source, runner.computations) == ("computed", 3)
    finally:
        await runner.aclose()


async def test_the_runner_matches_the_pure_functions(recent: Engine) -> None:
    runner = AnalyticsRunner(recent, str(recent.url), CATALOG, executor="process", nice=0)
    try:
        assert runner.executor == "process"
        cost = (await runner.get(Report.COST, Period.DAY, "alice")).expect(CostAnalysis)
        series = (await runner.get(Report.TIMESERIES, Period.DAY, None)).expect(TimeSeries)
        stats = (await runner.get(Report.CACHE, Period.DAY, "alice")).expect(CachePeriodReport)
    finally:
        await runner.aclose()
    window = load_window(recent, Period.DAY, owner="alice", now=cost.window.end)
    assert cost == analyze_costs(window, CATALOG)
    assert cost.total_cost_usd == pytest.approx(0.1061)
    assert series == time_series(load_window(recent, Period.DAY, now=series.window.end))
    assert sum(b.jobs for b in series.buckets) == 11
    assert stats.stats == cache_period_stats(
        load_window(recent, Period.DAY, owner="alice", now=stats.window.end).samples
    )


def test_an_in_memory_database_is_computed_in_a_thread() -> None:
    engine = make_engine("sqlite://")
    runner = AnalyticsRunner(engine, "sqlite://", CATALOG, executor="process")
    assert runner.executor == "thread"


async def test_the_limit_is_not_enforced_while_redis_is_down() -> None:
    limiter = AnalyticsRateLimiter(f"redis://127.0.0.1:{free_port()}/0", 1, timeout_s=0.2)
    try:
        for _ in range(3):
            await limiter.hit("k")  # fails open: logged, not raised
    finally:
        await limiter.aclose()


async def test_a_refused_key_is_refused_from_memory_until_its_window_frees() -> None:
    skew = [0.0]  # the limiter's clock runs ahead of the wall clock by this, in seconds
    with redis_server() as url:
        limiter = AnalyticsRateLimiter(url, 1, timeout_s=0.2, clock=lambda: time.time() + skew[0])
        await limiter.hit("k")
        with pytest.raises(AnalyticsRateLimitedError) as refused:
            await limiter.hit("k")
        assert refused.value.limit == 1 and 1 <= refused.value.retry_after_s <= 60
    # Redis is gone: an unknown key passes (fail open), the refused one is still refused.
    try:
        await limiter.hit("other")
        with pytest.raises(AnalyticsRateLimitedError):
            await limiter.hit("k")
        skew[0] = 61  # its window has freed a slot: Redis is asked again (and is down)
        await limiter.hit("k")
    finally:
        await limiter.aclose()


_ORPHAN_SCRIPT = """
import multiprocessing, os, sys, time
from concurrent.futures import ProcessPoolExecutor
from infra.analytics.runner import _start_analytics_process

if __name__ == "__main__":
    pool = ProcessPoolExecutor(
        1, mp_context=multiprocessing.get_context("spawn"),
        initializer=_start_analytics_process, initargs=(0,),
    )
    print(pool.submit(os.getpid).result(), flush=True)
    time.sleep(60)
"""


@pytest.mark.subprocess
def test_the_analytics_process_exits_when_its_api_process_is_killed(tmp_path: Path) -> None:
    """An API process that is SIGKILLed never shuts its analytics pool down; the pool's process
    notices its parent is gone and exits instead of waiting for work forever."""
    import signal
    import subprocess
    import sys

    script = tmp_path / "api_like.py"
    script.write_text(_ORPHAN_SCRIPT)
    parent = subprocess.Popen(
        [sys.executable, str(script)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert _alive(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _alive(child):
            assert time.monotonic() < deadline, "the analytics process outlived its parent"
            time.sleep(0.1)
    finally:
        if parent.poll() is None:
            parent.kill()


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
