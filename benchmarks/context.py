"""What every benchmark receives: run size, output folder, console and the (lazy) stack."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from benchmarks.stack import BenchStack


@dataclass
class BenchContext:
    """Shared by the benchmarks of one ``python -m benchmarks`` run.

    Attributes:
        smoke: tiny counts, only to prove the benchmark still runs (CI).
        repeats: measured repetitions per case (after ``warmup`` unmeasured ones).
        warmup: unmeasured repetitions per case.
        out_dir: where results, tables and plots go.
        console: where progress goes.
    """

    smoke: bool = False
    repeats: int = 20
    warmup: int = 3
    out_dir: Path = Path("benchmarks/results")
    console: Console = field(default_factory=Console)
    _stack: BenchStack | None = None

    async def stack(self) -> BenchStack:
        """The run's Temporal + Redis stack, started on first use."""
        if self._stack is None:
            self._stack = BenchStack(console=self.console)
            await self._stack.start()
        return self._stack

    def close(self, *, keep_files: bool = False) -> None:
        """Stop the stack if one was started (``keep_files``: keep its logs for a post-mortem)."""
        if self._stack is not None:
            self._stack.stop(keep_files=keep_files)
            self._stack = None

    def progress(self, message: str) -> None:
        """Print one progress line."""
        self.console.print(f"  [dim]·[/] {message}")
