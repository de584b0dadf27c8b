"""``python -m benchmarks [NAME ...]``: run the benchmark suite and write its results.

With no names every benchmark runs, in the order of :data:`BENCHMARKS`. ``--smoke`` runs each
with tiny counts (what CI does, so the suite cannot rot); smoke results go to a temporary folder
unless ``--out`` says otherwise, so they never overwrite a real run's numbers.
"""

from __future__ import annotations

import asyncio
import importlib
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from benchmarks.context import BenchContext
from benchmarks.report import RESULTS_DIR, BenchResult, render_markdown, stamp, write_result

BENCHMARKS: dict[str, str] = {
    "overhead": "Orchestration overhead vs a plain asyncio pipeline",
    "fanout": "Parallel tool fan-out vs one after another",
    "caching": "Tool-result and response cache: hit vs miss",
    "throughput": "Jobs/s at concurrency 1/8/64 with 1 and 2 workers; worker RSS",
    "tiering": "Cost and tier mix: automatic selection vs always-large/always-small",
    "compression": "Context compression vs plain truncation",
    "peer": "pydantic-ai's Temporal integration vs agentflow, same agent",
    "streaming": "Time to first event/draft/token/answer: SSE vs polling every 250 ms",
    "routing": "Learned router vs cue table vs fixed tiers on held-out labelled prompts",
    "semantic": "Semantic cache: hit and wrong-hit rates, lookup latency vs an exact GET",
    "cache_levels": "Hit latency per cache level vs a plain GET, and the work a hit replaces",
    "analytics": "POST /v1/jobs latency alone vs with 20 concurrent analytics callers",
}
"""Benchmark name -> what it compares; each is the module ``benchmarks.bench_<name>``."""

app = typer.Typer(add_completion=False, help=__doc__)
console = Console()


def _summary(out_dir: Path) -> Path:
    """Write ``README.md`` in ``out_dir`` from every ``<name>.json`` there, headlines first."""
    results = [
        BenchResult.model_validate_json((out_dir / f"{name}.json").read_text())
        for name in BENCHMARKS
        if (out_dir / f"{name}.json").is_file()
    ]
    lines = ["# agentflow benchmark results", ""]
    lines.append("Produced by `python -m benchmarks`; each section is also in `<name>.md`/`.json`.")
    lines.append("")
    for result in results:
        for h in result.headlines:
            unit = "" if h.unit == "" else f" {h.unit}"
            lines.append(f"- {result.name}: {h.label}: **{h.value:g}{unit}**")
    lines.append("")
    for result in results:
        lines.append(render_markdown(result))
    path = out_dir / "README.md"
    path.write_text("\n".join(lines))
    return path


@app.command()
def main(
    names: Annotated[
        list[str] | None, typer.Argument(help=f"Benchmarks to run: {', '.join(BENCHMARKS)}.")
    ] = None,
    smoke: Annotated[bool, typer.Option(help="Tiny counts: checks that the suite runs.")] = False,
    repeats: Annotated[int, typer.Option(min=1, help="Measured repetitions per case.")] = 20,
    warmup: Annotated[int, typer.Option(min=0, help="Unmeasured repetitions per case.")] = 3,
    out: Annotated[Path | None, typer.Option(help="Output folder (default: results/).")] = None,
) -> None:
    """Run the named benchmarks (all by default) and write JSON, markdown and plots."""
    chosen = names or list(BENCHMARKS)
    unknown = [n for n in chosen if n not in BENCHMARKS]
    if unknown:
        raise typer.BadParameter(
            f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}"
        )
    if out is None:
        out = Path(tempfile.mkdtemp(prefix="agentflow-bench-smoke-")) if smoke else RESULTS_DIR
    ctx = BenchContext(
        smoke=smoke,
        repeats=2 if smoke else repeats,
        warmup=1 if smoke else warmup,
        out_dir=out,
        console=console,
    )
    results: list[BenchResult] = []
    failed: list[str] = []

    async def run_all() -> None:
        try:
            for name in chosen:
                console.rule(f"[bold]{name}[/]: {BENCHMARKS[name]}")
                began, t0 = datetime.now(UTC), time.perf_counter()
                module = importlib.import_module(f"benchmarks.bench_{name}")
                try:
                    result: BenchResult = await module.run(ctx)
                except Exception as exc:  # report, go on with the others, fail at the end
                    console.print_exception(max_frames=8)
                    console.print(f"[red]✗ {name} failed: {exc!r}[/]")
                    failed.append(name)
                    continue
                result.smoke = smoke
                result.finish()
                stamp(result, began)
                json_path, _ = write_result(result, out)
                results.append(result)
                for h in result.headlines:
                    console.print(f"  [green]✓[/] {h.label}: [bold]{h.value:g}[/] {h.unit}")
                console.print(f"  wrote {json_path} ({time.perf_counter() - t0:.1f} s)")
        finally:
            ctx.close(keep_files=bool(failed))

    asyncio.run(run_all())
    if results:
        console.print(f"summary: {_summary(out)}")
    if failed:
        console.print(f"[red]failed: {', '.join(failed)}[/]")
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
