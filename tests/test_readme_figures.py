"""The README's benchmark figures are the committed results (``benchmarks/figures.py``)."""

from __future__ import annotations

from benchmarks.figures import FIGURES, Figure, mismatches
from benchmarks.report import RESULTS_DIR
from tests.helpers import ROOT


def test_the_readme_states_the_committed_benchmark_figures() -> None:
    problems = mismatches((ROOT / "README.md").read_text(), RESULTS_DIR)
    assert not problems, "README and benchmarks/results disagree:\n" + "\n".join(problems)


def test_a_figure_that_drifted_or_lost_its_headline_is_reported(tmp_path) -> None:
    (tmp_path / "peer.json").write_text(
        '{"headlines": [{"label": "ratio", "value": 0.846, "unit": "x"}]}'
    )
    figure = Figure("peer", "ratio", "at {}x its\nlatency", 2)
    assert mismatches("runs at 0.85x its latency here", tmp_path, (figure,)) == []
    assert mismatches("runs at 0.95x its latency here", tmp_path, (figure,))
    gone = Figure("peer", "renamed", "at {}x", 2)
    assert "no headline" in mismatches("at 0.85x", tmp_path, (gone,))[0]
    assert mismatches("at 0.85x", tmp_path, (Figure("fanout", "x", "{}", 0),))
    (tmp_path / "peer.json").write_text(
        '{"smoke": true, "headlines": [{"label": "ratio", "value": 0.846, "unit": "x"}]}'
    )
    assert "smoke run" in mismatches("runs at 0.85x its latency", tmp_path, (figure,))[0]


def test_every_figure_names_a_committed_headline() -> None:
    assert FIGURES
    problems = [p for p in mismatches("", RESULTS_DIR) if "README should say" not in p]
    assert not problems
