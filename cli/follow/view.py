"""What ``agentflow submit --follow`` prints: one job's events as they arrive.

Stage lines with their durations, the draft, one line per tool result, approval requests with
what waits, and the final answer's tokens in place (in a terminal; by the revision rule of
:mod:`core.events`, so a retried generation attempt replaces the text instead of repeating it).
At the end, the answer and its usage (tokens, USD, tier, the simulated label). Rendering only:
:mod:`cli.follow.stream` reads the events.
"""

from __future__ import annotations

import json
import time
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.panel import Panel
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from core.events import (
    ApprovalDecided,
    ApprovalReminder,
    ApprovalRequested,
    FinalResponse,
    InitialResponse,
    JobEvent,
    ResponseError,
    ResponseStarted,
    StageCompleted,
    StageStarted,
    TokenDelta,
    ToolExecutionComplete,
    ToolExecutionStarted,
    ToolResultEvent,
)
from core.models import PlannedToolCall, ToolSuccess


def _ms(value: float) -> str:
    return f"{value / 1000:.2f} s" if value >= 1000 else f"{value:.0f} ms"


def _short(value: Any, limit: int = 100) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _call(planned: PlannedToolCall) -> str:
    call = planned.call
    return f"{call.id} {call.name}({_short(call.parameters, 80)})"


class FollowView:
    """Prints a job's events as they arrive (see the module docstring).

    Finished things are printed as lines; below them a ``rich.live.Live`` region shows the stage
    in progress (with a spinner) and the final answer's text as its tokens arrive. Only a
    terminal shows that region; elsewhere (a pipe, a test) the lines and, at the end, the answer
    from ``final_response`` are all that is printed. Call :meth:`close` when done.
    """

    def __init__(self, console: Console, started: float | None = None) -> None:
        """Print to ``console``; times are seconds since ``started`` (``time.monotonic()``)."""
        self.console = console
        self.started = time.monotonic() if started is None else started
        self.first_event_s: float | None = None
        self._revision = -1
        self._parts: list[str] = []
        self._stage: str | None = None
        self._live: Live | None = None

    def _line(self, text: str) -> None:
        elapsed = time.monotonic() - self.started
        self.console.print(f"[dim]{elapsed:6.2f}s[/] {text}", highlight=False)

    def note(self, text: str) -> None:
        """Print a line of the CLI's own (a reconnection, a warning)."""
        self._line(f"[yellow]{escape(text)}[/]")

    def close(self) -> None:
        """Remove the live region (the stage in progress and the streaming text)."""
        if self._live is not None:
            self._live.stop()
            self._live = None

    def _refresh(self) -> None:
        parts: list[RenderableType] = []
        if self._stage is not None:
            parts.append(Spinner("dots", text=Text(f"{self._stage}…", style="dim")))
        if self._parts:
            parts.append(Text("".join(self._parts)))
        if self._live is None:
            self._live = Live(console=self.console, transient=True, refresh_per_second=10)
            self._live.start()
        self._live.update(Group(*parts))

    def show(self, event: JobEvent) -> None:
        """Print one event."""
        if self.first_event_s is None:
            self.first_event_s = time.monotonic() - self.started
        if isinstance(event, TokenDelta):
            self._token(event)
        elif isinstance(event, ResponseStarted):
            self._line(f"[bold]▶ job {event.job_id} started[/]")
        elif isinstance(event, StageStarted):
            self._stage = event.stage.value
            self._refresh()
        elif isinstance(event, StageCompleted):
            if self._stage == event.stage.value:
                self._stage = None
                self._refresh()
            self._line(f"[green]✓[/] {event.stage.value} [dim]({_ms(event.duration_ms)})[/]")
        elif isinstance(event, InitialResponse):
            label = f"draft, {event.tier.value} tier" + (", simulated" if event.simulated else "")
            self.console.print(
                Panel(Text(event.text), title=label, border_style="dim", expand=False)
            )
        elif isinstance(event, ToolExecutionStarted):
            calls = ", ".join(_call(c) for c in event.calls) or "none"
            self._line(f"⚙ running {len(event.calls)} tool call(s): {escape(calls)}")
        elif isinstance(event, ToolResultEvent):
            self._tool_result(event)
        elif isinstance(event, ToolExecutionComplete):
            self._line(
                f"⚙ tools done: {event.succeeded} ok, {event.failed} failed "
                f"[dim]({_ms(event.duration_ms)})[/]"
            )
        elif isinstance(event, ApprovalRequested):
            self._approval_requested(event)
        elif isinstance(event, ApprovalReminder):
            self._line(
                f"[yellow]⏸ still waiting for approval ({event.waiting_s:.0f} s); "
                f"expires {event.expires_at:%Y-%m-%d %H:%M:%S} UTC[/]"
            )
        elif isinstance(event, ApprovalDecided):
            self._approval_decided(event)
        elif isinstance(event, FinalResponse):
            self.close()
            self._final(event)
        elif isinstance(event, ResponseError):
            self.close()
            self._line(
                f"[red]✗ job ended {event.status.value}[/]"
                + (f": {escape(event.error)}" if event.error else "")
                + (f" [dim]({escape(event.error_type)})[/]" if event.error_type else "")
            )

    def _token(self, event: TokenDelta) -> None:
        if event.revision < self._revision:
            return  # text of an attempt that was superseded
        if event.revision > self._revision:
            if self._parts:
                self._line(
                    f"[yellow]↻ generation restarted (revision {event.revision}); "
                    "the text so far is replaced[/]"
                )
            self._revision, self._parts = event.revision, []
        self._parts.append(event.text)
        self._refresh()

    def _tool_result(self, event: ToolResultEvent) -> None:
        result = event.result
        cached = ", cached" if result.cache_hit else ""
        timing = f"[dim]({_ms(result.latency_ms)}{cached})[/]"
        if isinstance(result, ToolSuccess):
            value = escape(_short(result.value))
            self._line(f"  [green]✓[/] {result.call_id} {result.name} → {value} {timing}")
        else:
            problem = escape(f"{result.error_type}: {_short(result.error)}")
            self._line(f"  [red]✗[/] {result.call_id} {result.name}: {problem} {timing}")

    def _approval_requested(self, event: ApprovalRequested) -> None:
        request = event.request
        self._line(f"[bold yellow]⏸ waiting for approval:[/] {escape('; '.join(request.reasons))}")
        gated = set(request.gated_call_ids)
        for planned in request.calls:
            mark = "needs a decision" if planned.call.id in gated else "runs when approved"
            self._line(f"    • {escape(_call(planned))} [dim]({mark})[/]")
        cost = (
            f"${request.estimated_cost_usd:.4f}" if request.estimated_cost_usd is not None else "?"
        )
        tier = request.tier.value if request.tier else "?"
        expires = f"{request.expires_at:%Y-%m-%d %H:%M:%S} UTC"
        self._line(
            f"    tier {tier}, estimated cost {cost}; times out {expires} "
            f"(then: {request.timeout_action})"
        )
        if request.draft:
            self._line(f"    draft: {escape(_short(request.draft, 200))}")
        self._line(f"    decide with POST /v1/jobs/{event.job_id}/approval")

    def _approval_decided(self, event: ApprovalDecided) -> None:
        record = event.record
        who = f" by {record.reviewer}" if record.reviewer else ""
        calls = ", ".join(f"{c.call_id} {c.outcome}" for c in record.calls)
        comment = f' "{record.comment}"' if record.comment else ""
        self._line(
            f"[bold]approval: {record.outcome}{escape(who)}[/]{escape(comment)}"
            + (f" [dim]({escape(calls)})[/]" if calls else "")
        )

    def _final(self, event: FinalResponse) -> None:
        tier = event.tier.value if event.tier else "?"
        label = f"answer, {tier} tier"
        if event.escalated_to:
            label += f" (escalated to {event.escalated_to.value})"
        if event.simulated:
            label += ", SIMULATED model"
        if event.response_cache_hit:
            label += ", from the response cache"
        self._line("[bold green]■ completed[/]")
        self.console.print(
            Panel(Text(event.answer), title=label, border_style="green", expand=False)
        )
        table = Table(title="usage", title_justify="left")
        for column in ("call", "tier", "model", "prompt tokens", "completion tokens", "USD"):
            table.add_column(column, justify="right" if "tokens" in column else "left")
        for u in event.usage:
            model = u.model + (" (simulated)" if u.simulated else "")
            table.add_row(
                u.purpose,
                u.tier.value,
                model,
                str(u.prompt_tokens),
                str(u.completion_tokens),
                f"{u.cost_usd:.6f}",
            )
        table.add_row(
            "total",
            "",
            "",
            str(sum(u.prompt_tokens for u in event.usage)),
            str(sum(u.completion_tokens for u in event.usage)),
            f"{event.total_cost_usd:.6f}",
            style="bold",
        )
        self.console.print(table)


__all__ = ["FollowView"]
