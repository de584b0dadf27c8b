"""Child processes of the dev stack: start each in its own session, watch them, stop them all.

Each child runs in its own session (``start_new_session=True``), so a Ctrl-C in the terminal
reaches only the supervising process, which then stops the children itself in reverse order
(terminate, wait, kill after a timeout). Their output goes to log files; when one dies early, the
tail of its log is shown.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from rich.console import Console

SHUTDOWN_GRACE_S = 5
"""Seconds the API waits for open connections (event streams) when it stops, then closes them."""
STOP_TIMEOUT_S = 15.0
"""How long a child gets to exit after SIGTERM before it is killed, in seconds."""
LOG_TAIL_LINES = 30
"""Lines of a dead child's log shown in the error."""


class DevStackError(Exception):
    """The dev stack cannot start or keep running; the message says why and what to do."""


class ChildExitedError(DevStackError):
    """A child process exited while it should have been running.

    Attributes:
        name: the child's name (``temporal``, ``redis``, ``worker``, ``api``).
        returncode: its exit status (negative: killed by that signal).
        log_tail: the last lines of its log file.
    """

    def __init__(self, name: str, returncode: int, log_path: Path, log_tail: str) -> None:
        """Describe the exit of child ``name``."""
        super().__init__(
            f"{name} exited with status {returncode}; last lines of {log_path}:\n{log_tail}"
        )
        self.name = name
        self.returncode = returncode
        self.log_tail = log_tail


@dataclass
class ChildProcess:
    """A child started by the dev stack, with its output going to ``log_path``."""

    name: str
    args: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes]
    log_file: IO[bytes]

    @classmethod
    def start(
        cls, name: str, args: list[str], log_path: Path, *, env: dict[str, str], cwd: Path
    ) -> ChildProcess:
        """Start ``args`` in its own session with stdout and stderr going to ``log_path``.

        Raises:
            DevStackError: the program could not be started (missing, not executable).
        """
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_file = log_path.open("wb")
        try:
            proc = subprocess.Popen(
                args,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            log_file.close()
            raise DevStackError(f"cannot start {name} ({args[0]}): {exc}") from exc
        return cls(name=name, args=args, log_path=log_path, proc=proc, log_file=log_file)

    def check(self) -> None:
        """Raise :class:`ChildExitedError` when the child has exited."""
        code = self.proc.poll()
        if code is not None:
            raise ChildExitedError(self.name, code, self.log_path, self.tail())

    def tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of the child's log."""
        self.log_file.flush()
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            return f"(cannot read the log: {exc})"
        return "\n".join(text.splitlines()[-lines:]) or "(the log is empty)"

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """Terminate the child, wait up to ``timeout_s`` seconds, then kill it.

        Returns:
            Its exit status (``None`` if it could not be reaped even after SIGKILL).
        """
        try:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    try:
                        self.proc.wait(timeout=5)
                    except subprocess.TimeoutExpired:
                        return None
            return self.proc.returncode
        finally:
            self.log_file.close()


@dataclass
class Supervisor:
    """The children one dev stack started, logging to ``<log_dir>/<name>.log``.

    Attributes:
        log_dir: folder of the children's log files.
        cwd: working directory of every child.
        console: where progress and stopping are reported.
        children: the running children, in start order.
    """

    log_dir: Path
    cwd: Path
    console: Console = field(default_factory=Console)
    children: list[ChildProcess] = field(default_factory=list)

    def step(self, message: str) -> float:
        """Print a step that begins; returns its start time for :meth:`done`."""
        self.console.print(f"[bold]•[/] {message}")
        return time.perf_counter()

    def done(self, message: str, started: float | None = None) -> None:
        """Print a step that succeeded, with its duration when ``started`` is given."""
        took = f" ({time.perf_counter() - started:.1f} s)" if started is not None else ""
        self.console.print(f"  [green]✓[/] {message}{took}")

    def warn(self, message: str) -> None:
        """Print something worth knowing that does not stop the stack."""
        self.console.print(f"  [yellow]![/] {message}")

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> ChildProcess:
        """Start child ``name`` (``env`` default: this process's environment).

        Raises:
            DevStackError: the program could not be started.
        """
        child = ChildProcess.start(
            name,
            args,
            self.log_dir / f"{name}.log",
            env=env if env is not None else dict(os.environ),
            cwd=self.cwd,
        )
        self.children.append(child)
        return child

    def wait_until(
        self,
        ready: Callable[[], bool],
        watch: list[ChildProcess],
        timeout_s: float,
        message: str | Callable[[], str],
    ) -> None:
        """Poll ``ready`` every 0.25 s until it is true, failing early when a watched child exits.

        Raises:
            ChildExitedError: a watched child exited.
            DevStackError: ``timeout_s`` seconds passed (saying ``message``, or what it returns).
        """
        deadline = time.monotonic() + timeout_s
        while True:
            for child in watch:
                child.check()
            if ready():
                return
            if time.monotonic() > deadline:
                text = message if isinstance(message, str) else message()
                raise DevStackError(f"{text} after {timeout_s:g} s")
            time.sleep(0.25)

    def check(self) -> None:
        """Raise :class:`ChildExitedError` when any child has exited."""
        for child in self.children:
            child.check()

    def wait_forever(self, interval_s: float = 0.5) -> None:
        """Block until interrupted, checking every ``interval_s`` seconds that children live.

        Raises:
            ChildExitedError: a child exited.
        """
        while True:
            self.check()
            time.sleep(interval_s)

    def stop(self) -> None:
        """Stop every child, the last started first.

        Further Ctrl-Cs are ignored meanwhile (when called from the main thread), so an impatient
        second Ctrl-C cannot leave children behind; each child is killed after
        :data:`STOP_TIMEOUT_S` anyway.
        """
        with interrupts_ignored():
            while self.children:
                child = self.children.pop()
                self.console.print(f"  stopping {child.name} (pid {child.proc.pid})")
                code = child.stop()
                if code is None:
                    self.console.print(f"  [red]![/] {child.name} did not exit after SIGKILL")


@contextmanager
def interrupts_ignored() -> Iterator[None]:
    """Ignore SIGINT and SIGTERM inside the block (only possible in the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
