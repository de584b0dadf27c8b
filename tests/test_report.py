"""Tests of the batch summary (cli.report) and of the shipped example requests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cli.report import render_summary, summarize
from cli.runner import expected_statuses, load_requests
from core.models import AgentRequest
from core.settings import PROJECT_ROOT, Settings
from core.tokens import count_tokens
from infra.tools import builtin_registry, ensure_example_database

EXAMPLES = PROJECT_ROOT / "examples" / "requests.jsonl"


def usage(tier: str, prompt: int, completion: int, cost: float) -> dict[str, Any]:
    return {
        "purpose": "final",
        "tier": tier,
        "provider": "simulated",
        "model": f"simulated-{tier}",
        "simulated": True,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "cost_usd": cost,
        "latency_ms": 1.0,
    }


def tool(call_id: str, cache_hit: bool, status: str = "success") -> dict[str, Any]:
    return {"status": status, "call_id": call_id, "name": "calculator", "cache_hit": cache_hit}


def job(
    status: str,
    *,
    duration_ms: float | None = None,
    cache_hit: bool = False,
    simulated: bool = True,
    tools: list[dict[str, Any]] | None = None,
    usages: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "job_id": "j",
        "status": status,
        "duration_ms": duration_ms,
        "response_cache_hit": cache_hit,
        "result": {
            "status": status,
            "simulated": simulated,
            "response_cache_hit": cache_hit,
            "tool_results": tools or [],
            "usage": usages or [],
        },
    }


def test_summarize_counts_rates_and_tiers() -> None:
    jobs = [
        job(
            "COMPLETED",
            tools=[tool("a", False), tool("b", True)],
            usages=[usage("small", 10, 5, 0.001), usage("medium", 100, 50, 0.01)],
        ),
        job("COMPLETED", cache_hit=True),
        job(
            "COMPLETED",
            simulated=False,
            tools=[tool("c", True), tool("d", False, status="error")],
            usages=[usage("large", 1000, 200, 0.5)],
        ),
        job("REJECTED", usages=[usage("small", 20, 10, 0.002)]),
        {"status": "REJECTED_BY_API"},
    ]
    summary = summarize(jobs, wall_s=2.0, latencies_ms=[100.0, 200.0, 300.0, 400.0, None])

    assert summary.requests == 5
    assert summary.status_counts == {"COMPLETED": 3, "REJECTED": 1, "REJECTED_BY_API": 1}
    assert summary.completed == 3
    assert summary.latency_p50_ms == pytest.approx(250.0)
    assert summary.latency_p95_ms == pytest.approx(385.0)
    assert summary.response_cache_hits == 1
    assert summary.response_cache_hit_rate == pytest.approx(1 / 3)
    assert summary.tool_results == 4
    assert summary.tool_cache_hits == 2
    assert summary.tool_cache_hit_rate == pytest.approx(0.5)
    assert summary.simulated_answers == 2
    assert list(summary.tiers) == ["small", "medium", "large"]
    small = summary.tiers["small"]
    assert (small.calls, small.prompt_tokens, small.completion_tokens) == (2, 30, 15)
    assert small.tokens == 45
    assert small.cost_usd == pytest.approx(0.003)
    assert summary.tiers["large"].tokens == 1200
    assert summary.total_tokens == 45 + 150 + 1200
    assert summary.total_cost_usd == pytest.approx(0.513)
    assert summary.throughput_per_s == pytest.approx(2.5)


def test_summarize_uses_job_durations_without_runner_latencies() -> None:
    jobs = [
        job("COMPLETED", duration_ms=10.0),
        job("COMPLETED", duration_ms=30.0),
        job("AWAITING_APPROVAL", duration_ms=None),
        job("FAILED", duration_ms=20.0),
    ]
    summary = summarize(jobs, wall_s=1.0)
    assert summary.latency_p50_ms == pytest.approx(20.0)
    assert summary.latency_p95_ms == pytest.approx(29.0)


def test_summarize_empty_and_single() -> None:
    empty = summarize([], wall_s=0.0)
    assert empty.requests == 0
    assert empty.latency_p50_ms is None
    assert empty.response_cache_hit_rate is None
    assert empty.tool_cache_hit_rate is None
    assert empty.throughput_per_s == 0.0

    one = summarize([job("COMPLETED")], wall_s=1.0, latencies_ms=[42.0])
    assert one.latency_p50_ms == one.latency_p95_ms == 42.0
    assert one.tool_cache_hit_rate is None


def test_summarize_ignores_rejected_planner_proposals() -> None:
    planner_rejection = {
        "status": "error",
        "call_id": "plan",
        "name": "plan",
        "error_type": "ToolCallInvalid",
        "error": "bad proposal",
    }
    summary = summarize([job("COMPLETED", tools=[planner_rejection, tool("a", True)])], 1.0)
    assert summary.tool_results == 1
    assert summary.tool_cache_hit_rate == 1.0


def test_summarize_rejects_misaligned_latencies() -> None:
    with pytest.raises(ValueError):
        summarize([job("COMPLETED")], wall_s=1.0, latencies_ms=[])


def test_render_summary_mentions_the_numbers() -> None:
    from rich.console import Console

    summary = summarize(
        [job("COMPLETED", cache_hit=True), job("COMPLETED", usages=[usage("small", 1, 2, 0.5)])],
        wall_s=1.0,
        latencies_ms=[5.0, 15.0],
    )
    console = Console(record=True, width=120)
    for table in render_summary(summary):
        console.print(table)
    text = console.export_text()
    assert "response-cache hit rate" in text
    assert "50% (1/2 completed)" in text
    assert "$0.5000" in text


# --------------------------------------------------------------------------- examples file


def example_lines() -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in EXAMPLES.read_text().splitlines() if line.strip()]
    for line in lines:
        line.pop("idempotency_key", None)
        line.pop("expect_approval", None)
    return lines


def test_examples_validate_as_requests_and_tool_calls() -> None:
    registry = builtin_registry(Settings())
    lines = example_lines()
    assert len(lines) >= 55
    for number, line in enumerate(lines, start=1):
        request = AgentRequest.model_validate(line)
        for call in request.tool_calls:
            registry.validate(call)
        ids = [call.id for call in request.tool_calls]
        assert len(ids) == len(set(ids)), f"line {number}: duplicate tool call ids"


def test_examples_cover_the_advertised_mix() -> None:
    requests = load_requests(EXAMPLES)
    assert all(r.error is None for r in requests)
    names = [c["name"] for r in requests for c in (r.body or {}).get("tool_calls", [])]
    assert names.count("sql_query") >= 12
    assert "calculator" in names and "python_docs_search" in names and "http_get" in names
    rejects = [r for r in requests if r.expect_approval == "reject"]
    assert len(rejects) >= 1
    assert all(expected_statuses(r, approve=True) == {"REJECTED"} for r in rejects)
    over_budget = [
        r
        for r in requests
        if sum(count_tokens(c["content"]) for c in (r.body or {}).get("context", []))
        > (r.body or {}).get("max_context_tokens", 4000)
    ]
    assert len(over_budget) >= 2, "examples should make context compression visibly work"
    assert any((r.body or {}).get("model_tier", "auto") != "auto" for r in requests)


async def test_every_example_sql_query_runs(tmp_path: Path) -> None:
    db = ensure_example_database(tmp_path / "shop.sqlite")
    registry = builtin_registry(Settings(sql_database_path=db))
    queries = 0
    for line in example_lines():
        for call in AgentRequest.model_validate(line).tool_calls:
            if call.name != "sql_query":
                continue
            tool, params = registry.validate(call)
            value = await tool.fn(params)
            assert isinstance(value, dict) and "rows" in value, call.parameters
            queries += 1
    assert queries >= 12


def test_load_requests_strips_runner_fields_and_reports_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    path.write_text(
        '{"query": "a", "idempotency_key": "k1", "expect_approval": "reject"}\n'
        "\n"
        "not json\n"
        "[1, 2]\n"
        '{"query": "b", "expect_approval": "maybe"}\n'
    )
    first, bad_json, not_object, bad_expect = load_requests(path)
    assert (first.line, first.body, first.idempotency_key) == (1, {"query": "a"}, "k1")
    assert first.expect_approval == "reject"
    assert bad_json.line == 3 and bad_json.body is None and "JSON" in (bad_json.error or "")
    assert not_object.line == 4 and not_object.error == "not a JSON object"
    assert bad_expect.line == 5 and bad_expect.body is None
    assert expected_statuses(first, approve=False) == {"COMPLETED", "AWAITING_APPROVAL"}
