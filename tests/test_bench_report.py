"""The benchmark result model: statistics, ratios to the baseline, markdown and JSON output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.report import BenchResult, Stats, render_markdown, write_result


def test_stats_median_p95_min_max() -> None:
    s = Stats.of([float(v) for v in range(1, 101)])
    assert (s.n, s.median, s.min, s.max) == (100, 50.5, 1.0, 100.0)
    assert s.p95 == 95.0  # nearest rank
    assert Stats.of([7.0]).p95 == 7.0
    with pytest.raises(ValueError, match="no measurements"):
        Stats.of([])


def test_ratios_are_per_case_against_that_case_baseline() -> None:
    r = BenchResult(name="x", title="X", baseline="plain")
    r.add("N=1", "plain", [10.0, 10.0], baseline=True)
    r.add("N=1", "ours", [15.0, 15.0])
    r.add("N=4", "plain", [40.0], baseline=True)
    r.add("N=4", "ours", [20.0])
    r.finish()
    ratios = {(row.case, row.variant): row.ratio for row in r.rows}
    assert ratios == {
        ("N=1", "plain"): 1.0,
        ("N=1", "ours"): 1.5,
        ("N=4", "plain"): 1.0,
        ("N=4", "ours"): 0.5,
    }
    assert r.median("N=4", "ours") == 20.0
    with pytest.raises(KeyError):
        r.median("N=9", "ours")


def test_written_files_hold_the_table(tmp_path: Path) -> None:
    r = BenchResult(name="demo", title="Demo", baseline="plain", params={"n": 2})
    r.add("only", "plain", [2.0], baseline=True, jobs_per_s=3.25)
    r.add("only", "ours", [3.0], jobs_per_s=2.5)
    r.headline("ours / plain", 1.5)
    r.finish()
    json_path, md_path = write_result(r, tmp_path)
    loaded = BenchResult.model_validate(json.loads(json_path.read_text()))
    assert loaded.rows[1].ratio == 1.5 and loaded.params == {"n": 2}
    md = md_path.read_text()
    assert md == render_markdown(r)
    assert "| only | ours | 3 | 3 | 3 | 3 | 1 | 1.5x | 2.50 |" in md
    assert "| only | plain | 2 | 2 | 2 | 2 | 1 | baseline | 3.25 |" in md
    assert "**ours / plain:** 1.50 x" in md
