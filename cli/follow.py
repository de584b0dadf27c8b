"""``agentflow submit``: submit one request, and with ``--follow`` print its events live.

``--follow`` reads ``GET /v1/jobs/{id}/events`` (Server-Sent Events, :mod:`api.routes.events`)
and prints each event as it arrives: stage lines with their durations, the draft, one line per
tool result, approval requests with what waits, and the final answer's tokens in place (in a
terminal; by the revision rule of :mod:`core.events`, so a retried generation attempt replaces
the text instead of repeating it). At the end it prints the answer and its usage (tokens, USD,
tier, the simulated label). A dropped connection is resumed with ``Last-Event-ID``, so nothing
is missed or printed twice; :data:`MAX_RECONNECTS` failed attempts in a row give up.

httpx has no SSE parser of its own (``httpx-sse`` is not a dependency);
:class:`SseParser` implements the few rules of the format the stream needs.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any, Final

import httpx
from pydantic import TypeAdapter, ValidationError
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.panel import Panel
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from cli.runner import _error_detail
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
from core.models import AgentResult, JobStatus, PlannedToolCall, ToolSuccess

MAX_RECONNECTS: Final = 5
"""Failed connection attempts in a row before ``--follow`` gives up (an event resets it)."""

RECONNECT_FIRST_S: Final = 0.5
"""Wait before the first reconnection, in seconds; doubled after each failure (at most 8 s)."""

READ_TIMEOUT_S: Final = 60.0
"""Longest silence on the stream before the connection counts as lost, in seconds (the API
sends a keep-alive comment every ``AGENTFLOW_SSE_KEEPALIVE_S``, 15 s by default)."""

MAX_COMMENTS: Final = 8
"""Comment lines an :class:`SseParser` keeps for the next message (the latest ones)."""

_EVENT: Final = TypeAdapter[JobEvent](JobEvent)


# --------------------------------------------------------------------------------- SSE format


@dataclass(frozen=True)
class SseMessage:
    """One dispatched Server-Sent Event.

    Attributes:
        event: the ``event:`` field (``message`` when absent).
        data: the ``data:`` lines joined with newlines.
        id: the ``id:`` field of this message; ``None`` when it had none (the stream's last
            event id then stays what it was).
        comments: the comment lines (``: ...``) received since the previous message (the last
            :data:`MAX_COMMENTS`).
    """

    event: str
    data: str
    id: str | None
    comments: tuple[str, ...] = ()


@dataclass
class SseParser:
    """Turns the lines of a ``text/event-stream`` body into messages (the WHATWG rules).

    Feed it one line at a time, without its line terminator (httpx's ``aiter_lines`` splits on
    CR, LF and CRLF as the format says). A blank line dispatches the message; one
    without data is dropped. Unknown fields are ignored; ``retry:`` is read and ignored.
    """

    _event: str = ""
    _data: list[str] = field(default_factory=list)
    _id: str | None = None
    _comments: list[str] = field(default_factory=list)

    def feed(self, line: str) -> SseMessage | None:
        """Take one line; return the message a blank line completes, else ``None``."""
        if not line:
            return self._dispatch()
        if line.startswith(":"):  # keep the last few: keep-alives alone never dispatch
            self._comments = [*self._comments[-(MAX_COMMENTS - 1) :], line[1:].removeprefix(" ")]
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value
        return None

    def _dispatch(self) -> SseMessage | None:
        message = None
        if self._data:
            message = SseMessage(
                event=self._event or "message",
                data="\n".join(self._data),
                id=self._id,
                comments=tuple(self._comments),
            )
            self._comments = []
        self._event, self._data, self._id = "", [], None
        return message


# ------------------------------------------------------------------------------------ output


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


# ---------------------------------------------------------------------------------- follow


class FollowError(Exception):
    """``--follow`` could not read the job's events (the API refused, or too many failures)."""


async def follow_events(
    client: httpx.AsyncClient,
    job_id: str,
    view: FollowView,
    max_reconnects: int = MAX_RECONNECTS,
) -> FinalResponse | ResponseError:
    """Read the job's event stream until its terminal event, reconnecting when it drops.

    Args:
        client: an httpx client on the API's base URL, with the API key's header.
        job_id: the job.
        view: where the events are printed.
        max_reconnects: failed attempts in a row before giving up.

    Returns:
        The job's terminal event (a synthesized one for a job without a stream).

    Raises:
        FollowError: the API refused the stream (404, 401, ...), or ``max_reconnects``
            attempts in a row failed.
    """
    last_id: str | None = None
    failures = 0
    delay = RECONNECT_FIRST_S
    timeout = httpx.Timeout(10.0, read=READ_TIMEOUT_S)
    while True:
        headers = {"Accept": "text/event-stream"}
        if last_id is not None:
            headers["Last-Event-ID"] = last_id
        try:
            async with client.stream(
                "GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout=timeout
            ) as response:
                if response.status_code != httpx.codes.OK:
                    await response.aread()
                    problem = _error_detail(response)
                    if response.status_code != httpx.codes.SERVICE_UNAVAILABLE:
                        raise FollowError(f"the API refused the event stream: {problem}")
                else:
                    parser = SseParser()
                    async for line in response.aiter_lines():
                        message = parser.feed(line)
                        if message is None:
                            continue
                        if message.id is not None:
                            last_id = message.id or None  # an empty id resets it
                        if any(c.startswith("synthesized") for c in message.comments):
                            view.note(
                                "this job has no event stream; its outcome is from its record"
                            )
                        if message.event == "stream_error":
                            # The API could not go on (api.routes.events.StreamError): the
                            # record may still say how the job ended; else reconnect.
                            view.note(f"the stream stopped: {_stream_error_detail(message.data)}")
                            break
                        try:
                            event = _EVENT.validate_json(message.data)
                        except ValidationError:
                            view.note(f"skipped an event this CLI does not know: {message.event}")
                            continue
                        failures, delay = 0, RECONNECT_FIRST_S  # a real event: progress
                        view.show(event)
                        if isinstance(event, FinalResponse | ResponseError):
                            return event
                    ended = await _ended(client, job_id)
                    if ended is not None:
                        view.show(ended)
                        return ended
                    problem = "the stream ended before the job did"
        except httpx.TransportError as exc:
            problem = f"connection lost ({type(exc).__name__})"
        failures += 1
        if failures > max_reconnects:
            raise FollowError(f"gave up after {max_reconnects} reconnections: {problem}")
        after = f" after event {last_id}" if last_id is not None else ""
        view.note(f"{problem}; reconnecting{after} in {delay:g} s")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 8.0)


def _stream_error_detail(data: str) -> str:
    """The reason and sentence of a ``stream_error`` event's data (raw text when not JSON)."""
    try:
        body = json.loads(data)
    except ValueError:
        return data[:200]
    if not isinstance(body, dict):
        return data[:200]
    return f"{body.get('detail', '')} ({body.get('reason', 'unknown')})"


async def _ended(client: httpx.AsyncClient, job_id: str) -> FinalResponse | ResponseError | None:
    """The job's outcome from ``GET /v1/jobs/{id}`` when it ended; ``None`` while it runs.

    A stream can end without a terminal event when the workflow closed without publishing one
    (terminated from the Web UI); the job's record still says how it ended.
    """
    try:
        response = await client.get(f"/v1/jobs/{job_id}")
    except httpx.HTTPError:
        return None
    if not response.is_success:
        return None
    job = response.json()
    status = JobStatus(job["status"])
    if not status.is_terminal:
        return None
    result = AgentResult.model_validate(job["result"]) if job.get("result") else None
    if status is JobStatus.COMPLETED and result is not None:
        return FinalResponse(
            job_id=job_id,
            answer=result.answer or "",
            simulated=result.simulated,
            response_cache_hit=result.response_cache_hit,
            tier=result.escalated_to or (result.selection.tier if result.selection else None),
            escalated_to=result.escalated_to,
            usage=result.usage,
            total_cost_usd=result.total_cost_usd,
        )
    return ResponseError(job_id=job_id, status=status, error=job.get("error"))


@dataclass(frozen=True)
class SubmitOptions:
    """What ``agentflow submit`` sends and how it waits.

    Attributes:
        api_url: base URL of the API.
        api_key: sent as ``Authorization: Bearer`` (needs ``submit``, and ``read`` to follow).
        follow: print the job's events until it ends.
    """

    api_url: str = "http://127.0.0.1:8000"
    api_key: str | None = field(default=None, repr=False)
    follow: bool = False


def parse_tool_option(text: str, index: int) -> dict[str, Any]:
    """One ``--tool NAME:JSON`` option as a ``tool_calls`` entry with id ``t<index>``.

    Args:
        text: ``NAME:JSON``, e.g. ``calculator:{"expression": "2 + 2"}``; ``NAME`` alone means
            no parameters.
        index: 1-based position among the ``--tool`` options.

    Raises:
        ValueError: no name, or JSON that is not an object.
    """
    name, _, raw = text.partition(":")
    name = name.strip()
    if not name:
        raise ValueError(f"--tool {text!r}: expected NAME:JSON")
    try:
        parameters = json.loads(raw) if raw.strip() else {}
    except json.JSONDecodeError as exc:
        raise ValueError(f"--tool {name}: the parameters are not JSON ({exc})") from None
    if not isinstance(parameters, dict):
        raise ValueError(f"--tool {name}: the parameters must be a JSON object")
    return {"id": f"t{index}", "name": name, "parameters": parameters}


async def submit(body: dict[str, Any], options: SubmitOptions, console: Console) -> int:
    """Submit ``body`` (a ``JobCreate``) and, with ``follow``, print its events until it ends.

    Returns:
        The exit code: without ``follow``, 0 when the API accepted the job; with it, 0 when the
        job COMPLETED, 1 otherwise (refused, failed, rejected, expired, canceled, lost).
    """
    headers = {"Authorization": f"Bearer {options.api_key}"} if options.api_key else {}
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=options.api_url, headers=headers, timeout=30) as client:
        try:
            response = await client.post("/v1/jobs", json=body)
        except httpx.HTTPError as exc:
            console.print(f"[red]cannot reach the API at {options.api_url}: {exc!r}[/]")
            return 1
        if not response.is_success:
            console.print(f"[red]the API refused the job: {escape(_error_detail(response))}[/]")
            return 1
        job = response.json()
        job_id = str(job["job_id"])
        console.print(f"job [bold]{job_id}[/] {job['status']}", highlight=False)
        if not options.follow:
            console.print(
                f"[dim]follow it: GET {options.api_url}/v1/jobs/{job_id}/events "
                f"(or GET /v1/jobs/{job_id})[/]",
                highlight=False,
            )
            return 0
        view = FollowView(console, started)
        try:
            end = await follow_events(client, job_id, view)
        except FollowError as exc:
            view.close()
            view.note(str(exc))
            return 1
        finally:
            view.close()
        if view.first_event_s is not None:
            console.print(f"[dim]first event {view.first_event_s:.2f} s after submit[/]")
        completed = isinstance(end, FinalResponse) and end.status is JobStatus.COMPLETED
        return 0 if completed else 1


__all__ = [
    "FollowError",
    "FollowView",
    "SseMessage",
    "SseParser",
    "SubmitOptions",
    "follow_events",
    "parse_tool_option",
    "submit",
]
