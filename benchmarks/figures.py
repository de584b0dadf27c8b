"""The README's benchmark figures, each tied to the committed result it quotes.

Every headline number in the README's "Benchmarks" section names one headline of one
``benchmarks/results/<name>.json`` (its ``label``) and the words around it. :func:`mismatches`
renders each figure from the committed value and looks for it in the README, so a re-run that
moves a number, a README edit that drifts from the results, or a renamed headline fails
``tests/test_readme_figures.py`` (and with it CI). After ``python -m benchmarks``, update the
README's sentences to the new values; this table changes only when a figure is added or dropped.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Figure:
    """One README figure.

    Args:
        benchmark: the results file's stem (``peer`` -> ``benchmarks/results/peer.json``).
        label: the headline's ``label`` in that file.
        text: the README's words with ``{}`` where the value goes, e.g. ``"takes {}x a plain"``.
        digits: decimals the README shows (the value is rounded half-even, as ``format`` does).
        scale: multiplies the value first (1 unless the README shows another unit).
    """

    benchmark: str
    label: str
    text: str
    digits: int
    scale: float = 1.0

    def render(self, value: float) -> str:
        """``text`` with ``value`` (scaled and rounded) in place of ``{}``."""
        return self.text.format(f"{value * self.scale:.{self.digits}f}")


FIGURES: tuple[Figure, ...] = (
    Figure(
        "overhead",
        "agentflow / asyncio pipeline latency (median)",
        "zero-latency model and an instant tool takes {}x",
        1,
    ),
    Figure("overhead", "history events per agentflow job", "{} history events per job", 0),
    Figure(
        "peer",
        "history events per job, pydantic-ai TemporalDurability",
        "(3 activities, {} history events)",
        0,
    ),
    Figure(
        "peer",
        "latency, agentflow (full pipeline) / pydantic-ai (median)",
        "at {}x its latency one job at a time",
        2,
    ),
    Figure(
        "peer",
        "latency, agentflow (no draft) / pydantic-ai (median)",
        "one job at a time ({}x without a draft)",
        2,
    ),
    Figure(
        "peer",
        "throughput at concurrency 16, agentflow (full pipeline) / pydantic-ai",
        "and {}x its jobs/s at 16 in flight",
        2,
    ),
    Figure(
        "peer",
        "throughput at concurrency 16, agentflow (no draft) / pydantic-ai",
        "({}x jobs/s without a draft)",
        2,
    ),
    Figure(
        "peer",
        "local activities per job, agentflow (no draft)",
        "ours runs 1 regular and {} local activities",
        0,
    ),
    Figure("fanout", "agentflow wall / L at N=64 (limit 1)", "finish in {}x one call's time", 1),
    Figure("fanout", "agentflow / asyncio.gather at N=64", "{}x\n`asyncio.gather`", 2),
    Figure("fanout", "speed-up over sequential at N=64", "{}x faster than one after another", 0),
    Figure(
        "caching",
        "tool cache hit / miss, http_get (run_tools code)",
        "under 1 ms, {}x of the miss",
        3,
    ),
    Figure(
        "caching",
        "tool cache hit / miss, run_tools activity in a job",
        "({}x of the activity's time inside a job)",
        2,
    ),
    Figure("caching", "response cache hit / miss, whole job", "makes a job {}x as long", 2),
    Figure("throughput", "jobs/s, 1 worker, concurrency=64", "{} jobs/s at 64 in flight", 1),
    Figure("throughput", "jobs/s, 2 workers, concurrency=64", "{} with two workers", 1),
    Figure("throughput", "worker RSS idle", "A worker idles at {} MiB RSS", 0),
    Figure("throughput", "worker RSS peak under load", "peaks at {} MiB", 0),
    Figure(
        "tiering",
        "agentflow auto total cost, fraction of always-large",
        "costs {}x of always-large",
        2,
    ),
    Figure(
        "tiering",
        "always-small total cost, fraction of always-large",
        "always-small: {}x",
        2,
    ),
    Figure("routing", "held-out: learned accuracy", "the learned router is {} % accurate", 0),
    Figure("routing", "held-out: cue table accuracy", "(cue\ntable {} %)", 0),
    Figure("routing", "examples: learned accuracy", "{} % on the\nshipped examples", 0),
    Figure(
        "compression",
        "compress_context time / plain truncation time at 128000 tokens in",
        "at about {}x truncation's time",
        0,
    ),
)
"""The figures of the README's "Benchmarks" section, in reading order."""


def _words(text: str) -> str:
    """``text`` with every run of whitespace made one space (README lines wrap anywhere)."""
    return re.sub(r"\s+", " ", text).strip()


def headline_value(results_dir: Path, benchmark: str, label: str) -> float:
    """The committed value of headline ``label`` in ``results_dir/<benchmark>.json``.

    Raises:
        KeyError: the file has no headline with that label (it was renamed or dropped).
        FileNotFoundError: there is no such results file.
        ValueError: the file holds a smoke run (tiny counts), not results to quote.
    """
    data = json.loads((results_dir / f"{benchmark}.json").read_text())
    if data.get("smoke"):
        raise ValueError(f"{benchmark}.json is a smoke run, not a full one")
    for headline in data["headlines"]:
        if headline["label"] == label:
            return float(headline["value"])
    raise KeyError(f"{benchmark}.json has no headline {label!r}")


def mismatches(readme: str, results_dir: Path, figures: tuple[Figure, ...] = FIGURES) -> list[str]:
    """Each figure the README does not state as the committed results give it.

    Returns:
        One message per figure whose rendered text is not in ``readme`` (whitespace-insensitive)
        or whose headline is missing from the results; empty when they all agree.
    """
    text = _words(readme)
    problems: list[str] = []
    for figure in figures:
        try:
            value = headline_value(results_dir, figure.benchmark, figure.label)
        except (KeyError, FileNotFoundError, ValueError) as exc:
            problems.append(f"{figure.benchmark}: {exc}")
            continue
        expected = _words(figure.render(value))
        if expected not in text:
            problems.append(
                f"{figure.benchmark} / {figure.label} = {value:g}: README should say {expected!r}"
            )
    return problems
