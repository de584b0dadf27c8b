"""Streaming: time to the first useful words over SSE vs polling ``GET /v1/jobs/{id}``.

Every job goes through the REST API, as a client sends it (``POST /v1/jobs``), to one
``python worker.py`` whose simulated provider runs at its tiers' speeds (latency scale 1, the
catalog's tokens/s). Two API processes (``uvicorn api.app:create_app``, authentication off)
share that worker's task queue: one starts jobs with ``AGENTFLOW_STREAM_TOKENS=true`` and one
with ``false`` (the setting travels in each job's input, so one worker serves both). For each
tier (``model_tier`` small, medium, large, and auto, which picks a tier above small for the
question asked, so it runs the small-tier draft) three kinds of job run one after another,
interleaved, ``N`` of each:

* **SSE, tokens on**: a client reads ``GET /v1/jobs/{id}/events`` from the moment the ``POST``
  returned, and notes when the first event, the draft (``initial_response``), the first and the
  last ``token`` event and ``final_response`` arrive;
* **polling, tokens off** (the baseline: what a client had before streaming): a client calls
  ``GET /v1/jobs/{id}`` every 250 ms from the moment the ``POST`` returned, and notes the first
  answer showing the draft (``progress.draft``) and the first showing status COMPLETED with
  ``result.answer``;
* **polling, tokens on**: the same poller on a job that streams its tokens with no SSE reader,
  which separates what publishing tokens costs (Redis stream entries from the generation
  activity, nothing in history) from what an SSE reader costs (nothing in history: the API's
  event hub reads a job with queries), and shows whether streaming slows the answer itself.

Every time is from the moment ``POST /v1/jobs`` returned to the moment the client had the bytes
(the SSE connection is opened after the ``POST``, so its set-up is inside the times). "First
useful text" is the first draft or token for SSE and the first draft or answer for polling;
"whole answer" is ``final_response`` (and the last token) for SSE and COMPLETED for polling.
Each job's history is read after it ended: events, signals, updates, workflow tasks; the event
stream of the polling jobs is replayed afterwards (through the API, which reads a finished job's
stream from its record) to count their stream events.

Then the readers phase: one large-tier job waits at its approval gate with 0, 1, 10, 50 and
200 SSE readers attached; the decision's latency, the job's history events and how many readers
got ``final_response`` are recorded.

Each question is new (a random tag), so no job hits the response cache.

The SSE client is ``httpx-sse`` (:func:`httpx_sse.aconnect_sse`), which replaced this module's
own parser; an event's arrival time is taken as the library hands it over (when its blank line
has been read), as the parser did.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC

import httpx
from httpx_sse import aconnect_sse
from pydantic import TypeAdapter
from temporalio.api.enums.v1 import EventType as HistoryEventType
from temporalio.client import WorkflowHistory

from api.schemas import JobCreate, JobPublic
from benchmarks.context import BenchContext
from benchmarks.report import BenchResult
from benchmarks.stack import BenchStack, BenchStackError
from core.events import (
    FinalResponse,
    InitialResponse,
    JobEvent,
    ResponseError,
    TokenDelta,
    assemble_text,
)
from core.ids import workflow_id_for
from core.models import ContextItemCreate, Importance, JobStatus, TierChoice
from workflows.agent import AgentWorkflow

POLL_INTERVAL_S = 0.25
"""How often the polling client asks ``GET /v1/jobs/{id}``, in seconds."""
MAX_REPEATS = 10
"""Jobs per tier and kind at most (each takes seconds at the tiers' real speeds)."""
MAX_WARMUP = 1
"""Unmeasured rounds per tier at most."""
SMOKE_REPEATS = 1
"""Jobs per tier and kind in a smoke run (no warm-up): it only proves the benchmark runs."""
JOB_TIMEOUT_S = 120.0
"""Longest one job may take before the benchmark gives up on it, in seconds."""

TIERS: tuple[TierChoice, ...] = ("small", "medium", "large", "auto")
"""The ``model_tier`` of each case."""

QUESTION = (
    "Explain the difference between optimistic and pessimistic locking, and evaluate which "
    "one fits an order table with heavy write contention"
)
"""The question every job asks (plus a random tag): auto selection sends it above small."""
CONTEXT = (
    "Optimistic locking reads a version number and fails the write when it changed meanwhile; "
    "retries are the caller's job.",
    "Pessimistic locking takes the row lock first (SELECT ... FOR UPDATE), so writers queue; "
    "throughput drops when 40% of writes touch the same 200 rows.",
)
"""Context items: the simulated answer restates them, so it has a realistic length."""

SSE = "SSE, tokens on"
POLL_OFF = "polling 250 ms, tokens off"
POLL_ON = "polling 250 ms, tokens on"
KINDS: tuple[str, ...] = (SSE, POLL_OFF, POLL_ON)
"""The kinds of job, in the order of the first round (later rounds rotate it)."""

FIRST_TEXT = "first useful text"
WHOLE = "whole answer"

_EVENT = TypeAdapter[JobEvent](JobEvent)


class StreamingBenchError(RuntimeError):
    """A job did not end as the benchmark needs (failed, no answer, timed out); says which."""


# --------------------------------------------------------------------------- measurements


@dataclass(frozen=True)
class SseTimes:
    """What the SSE client saw of one job; times in ms after ``POST /v1/jobs`` returned.

    Attributes:
        first_event_ms: the first event (``response_started``).
        draft_ms: ``initial_response`` (``None``: the job had no draft).
        first_token_ms: the first ``token`` event (``None``: no token streamed).
        last_token_ms: the last ``token`` event.
        final_ms: ``final_response``.
        events: events received, terminal included.
        token_events: ``token`` events received.
        text_matches: the text assembled from the tokens (highest revision) equals the
            final answer.
        token_lag_ms: median over the job's ``token`` events of arrival minus the event's
            ``at`` (the worker's clock when the batch was cut); ``None`` without tokens.
        final_lag_ms: arrival of ``final_response`` minus its ``at`` (workflow time).
    """

    first_event_ms: float
    draft_ms: float | None
    first_token_ms: float | None
    last_token_ms: float | None
    final_ms: float
    events: int
    token_events: int
    text_matches: bool
    token_lag_ms: float | None
    final_lag_ms: float | None

    @property
    def first_text_ms(self) -> float:
        """The draft or the first token, whichever came first (the answer without either)."""
        seen = [t for t in (self.draft_ms, self.first_token_ms) if t is not None]
        return min(seen) if seen else self.final_ms


@dataclass(frozen=True)
class PollTimes:
    """What the polling client saw of one job; times in ms after ``POST /v1/jobs`` returned.

    Attributes:
        draft_ms: the first answer showing a draft (``None``: never, the job had none).
        answer_ms: the first answer with status COMPLETED and ``result.answer``.
        polls: ``GET`` requests made.
    """

    draft_ms: float | None
    answer_ms: float
    polls: int

    @property
    def first_text_ms(self) -> float:
        """The draft, or the answer when no draft was seen before it."""
        return self.answer_ms if self.draft_ms is None else min(self.draft_ms, self.answer_ms)


@dataclass(frozen=True)
class HistoryCounts:
    """What one job left in its Temporal history.

    Attributes:
        events: history events.
        signals: ``WORKFLOW_EXECUTION_SIGNALED`` events (the generation activity's flushes).
        updates: ``WORKFLOW_EXECUTION_UPDATE_ACCEPTED`` events (an SSE reader's long polls).
        workflow_tasks: workflow tasks completed.
        history_bytes: length of the history as JSON (payloads stored outside not counted).
        closed_s: when the workflow closed (its last event), UNIX seconds.
    """

    events: int
    signals: int
    updates: int
    workflow_tasks: int
    history_bytes: int
    closed_s: float

    @classmethod
    def of(cls, history: WorkflowHistory) -> HistoryCounts:
        """Count ``history``'s events by the kinds above."""
        kinds = Counter(e.event_type for e in history.events)
        return cls(
            events=len(history.events),
            signals=kinds[HistoryEventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED],
            updates=kinds[HistoryEventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED],
            workflow_tasks=kinds[HistoryEventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED],
            history_bytes=len(history.to_json().encode()),
            closed_s=history.events[-1].event_time.ToDatetime(tzinfo=UTC).timestamp(),
        )


@dataclass
class Measured:
    """Every measured job of one tier and kind.

    Attributes:
        sse: the SSE client's view of each job (SSE kind only).
        poll: the poller's view of each job (polling kinds only).
        history: each job's history counts.
        stream_events: events in each job's stream (replayed after the end for polling kinds).
        stream_tokens: ``token`` events in each job's stream.
        tiers: the tier that answered each job (auto's choice).
        closed_ms: when each job's workflow closed (its history's last event), ms after
            ``POST /v1/jobs`` returned: the job's own end, free of how a client learns it.
    """

    sse: list[SseTimes] = field(default_factory=list)
    poll: list[PollTimes] = field(default_factory=list)
    history: list[HistoryCounts] = field(default_factory=list)
    stream_events: list[int] = field(default_factory=list)
    stream_tokens: list[int] = field(default_factory=list)
    tiers: list[str] = field(default_factory=list)
    closed_ms: list[float] = field(default_factory=list)


# --------------------------------------------------------------------------- the clients


@dataclass(frozen=True)
class Api:
    """One API process of the benchmark.

    Attributes:
        url: its base URL, ``http://127.0.0.1:<port>``.
        stream_tokens: whether the jobs it starts stream their tokens.
    """

    url: str
    stream_tokens: bool


@asynccontextmanager
async def api_process(
    stack: BenchStack, task_queue: str, *, stream_tokens: bool
) -> AsyncIterator[Api]:
    """Run ``uvicorn api.app:create_app`` for the block, starting jobs on ``task_queue``.

    Authentication is off (every caller is the anonymous admin), quotas are raised so the
    benchmark's jobs never meet them, and search attributes are off (the bench dev server does
    not register them).

    Raises:
        BenchStackError: the API exited or did not answer ``/readyz`` with 200 in time.
    """
    label = "on" if stream_tokens else "off"
    env = {
        "AGENTFLOW_AUTH_DISABLED": "true",
        "AGENTFLOW_STREAM_TOKENS": "true" if stream_tokens else "false",
        "AGENTFLOW_SEARCH_ATTRIBUTES": "off",
        "AGENTFLOW_RATE_LIMIT_PER_MINUTE": "100000",
        "AGENTFLOW_DAILY_BUDGET_USD": "100000",
    }
    async with stack.api(f"tokens-{label}", task_queue, env) as url:
        yield Api(url=url, stream_tokens=stream_tokens)


def job_body(tier: TierChoice) -> JobCreate:
    """The ``POST /v1/jobs`` body: :data:`QUESTION` with a fresh tag, :data:`CONTEXT`, ``tier``."""
    return JobCreate(
        query=f"{QUESTION} (bench {uuid.uuid4().hex[:8]})?",
        model_tier=tier,
        context=[
            ContextItemCreate(content=text, importance=Importance.HIGH, source=f"notes-{i}")
            for i, text in enumerate(CONTEXT, 1)
        ],
    )


@dataclass(frozen=True)
class Submitted:
    """A job the API accepted, and when its ``POST /v1/jobs`` answer arrived.

    Attributes:
        job_id: the job.
        at_s: ``time.perf_counter()`` when the answer arrived (every time is measured from it).
        wall_s: the same moment in UNIX seconds (to compare with server and worker clocks).
    """

    job_id: str
    at_s: float
    wall_s: float

    def ms(self, perf_s: float) -> float:
        """Milliseconds from submission to ``perf_s`` (a ``time.perf_counter()`` reading)."""
        return (perf_s - self.at_s) * 1000

    def wall_ms(self, unix_s: float) -> float:
        """Milliseconds from submission to ``unix_s`` (UNIX seconds on this machine's clock)."""
        return (unix_s - self.wall_s) * 1000


async def submit(http: httpx.AsyncClient, api: Api, tier: TierChoice) -> Submitted:
    """``POST /v1/jobs`` with :func:`job_body`.

    Raises:
        httpx.HTTPStatusError: the API refused the job.
    """
    response = await http.post(
        f"{api.url}/v1/jobs",
        content=job_body(tier).model_dump_json(),
        headers={"Content-Type": "application/json"},
    )
    at_s, wall_s = time.perf_counter(), time.time()
    response.raise_for_status()
    job_id = JobPublic.model_validate_json(response.content).job_id
    return Submitted(job_id=job_id, at_s=at_s, wall_s=wall_s)


async def read_events(
    http: httpx.AsyncClient, api: Api, job_id: str
) -> tuple[list[tuple[JobEvent, float]], bool]:
    """Read the job's SSE stream to its end.

    Returns:
        Each event with ``time.perf_counter()`` when it arrived, and whether a terminal event
        closed the stream.

    Raises:
        httpx.HTTPStatusError: the API refused the stream.
    """
    received: list[tuple[JobEvent, float]] = []
    async with aconnect_sse(http, "GET", f"{api.url}/v1/jobs/{job_id}/events") as source:
        source.response.raise_for_status()
        async for message in source.aiter_sse():
            if not message.data:  # no data, no message (httpx-sse dispatches a keep-alive
                continue  # comment as an empty message once an id was seen)
            event = _EVENT.validate_json(message.data)
            received.append((event, time.perf_counter()))
            if isinstance(event, FinalResponse | ResponseError):
                return received, True
    return received, False


async def follow(http: httpx.AsyncClient, api: Api, job: Submitted) -> SseTimes:
    """Time what the SSE client sees of the job (see :class:`SseTimes`).

    Raises:
        StreamingBenchError: the job ended without ``final_response``.
    """
    received, ended = await read_events(http, api, job.job_id)
    final = received[-1][0] if received else None
    if not ended or not isinstance(final, FinalResponse):
        raise StreamingBenchError(f"job {job.job_id}: the stream ended with {final!r}")

    def lag_ms(event: JobEvent, perf_s: float) -> float | None:
        if event.at is None:
            return None
        return job.ms(perf_s) - job.wall_ms(event.at.timestamp())

    drafts = [job.ms(t) for e, t in received if isinstance(e, InitialResponse)]
    tokens = [(e, t) for e, t in received if isinstance(e, TokenDelta)]
    token_lags = [lag for e, t in tokens if (lag := lag_ms(e, t)) is not None]
    streamed = assemble_text([e for e, _ in tokens])
    return SseTimes(
        first_event_ms=job.ms(received[0][1]),
        draft_ms=drafts[0] if drafts else None,
        first_token_ms=job.ms(tokens[0][1]) if tokens else None,
        last_token_ms=job.ms(tokens[-1][1]) if tokens else None,
        final_ms=job.ms(received[-1][1]),
        events=len(received),
        token_events=len(tokens),
        text_matches=not tokens or streamed == final.answer,
        token_lag_ms=statistics.median(token_lags) if token_lags else None,
        final_lag_ms=lag_ms(final, received[-1][1]),
    )


async def poll(http: httpx.AsyncClient, api: Api, job: Submitted) -> PollTimes:
    """Ask ``GET /v1/jobs/{id}`` every :data:`POLL_INTERVAL_S` until the job completed.

    The first request goes at once; the next ones on a fixed schedule from the submission (a
    slow answer is followed by the next request at once, never by a drift).

    Raises:
        StreamingBenchError: the job ended otherwise than COMPLETED with an answer.
    """
    draft_ms: float | None = None
    polls = 0
    while True:
        response = await http.get(f"{api.url}/v1/jobs/{job.job_id}")
        polls += 1
        seen_ms = job.ms(time.perf_counter())
        response.raise_for_status()
        view = JobPublic.model_validate_json(response.content)
        draft = (view.progress.draft if view.progress else None) or (
            view.result.draft if view.result else None
        )
        if draft_ms is None and draft:
            draft_ms = seen_ms
        if view.status is JobStatus.COMPLETED and view.result is not None and view.result.answer:
            return PollTimes(draft_ms=draft_ms, answer_ms=seen_ms, polls=polls)
        if view.status.is_terminal:
            raise StreamingBenchError(f"job {job.job_id} ended {view.status.value}: {view.error}")
        next_s = job.at_s + polls * POLL_INTERVAL_S
        await asyncio.sleep(max(0.0, next_s - time.perf_counter()))


async def finished(stack: BenchStack, job_id: str) -> tuple[HistoryCounts, str]:
    """Wait for the job's workflow to close; its history counts and the tier that answered."""
    assert stack.client is not None
    handle = stack.client.get_workflow_handle_for(AgentWorkflow.run, workflow_id_for(job_id))
    result = await handle.result()
    history = await stack.history(job_id)
    finals = [u for u in result.usage if u.purpose == "final"]
    tier = finals[-1].tier.value if finals else "none"
    return HistoryCounts.of(history), tier


async def run_one(
    stack: BenchStack,
    http: httpx.AsyncClient,
    apis: dict[bool, Api],
    kind: str,
    tier: TierChoice,
    into: Measured | None,
) -> None:
    """Run one job of ``kind`` on ``tier`` and add what it measured to ``into`` (None: warm-up).

    Raises:
        StreamingBenchError: the job failed or took over :data:`JOB_TIMEOUT_S`.
    """
    api = apis[kind != POLL_OFF]
    job = await submit(http, api, tier)
    job_id = job.job_id
    try:
        async with asyncio.timeout(JOB_TIMEOUT_S):
            if kind == SSE:
                sse = await follow(http, api, job)
                counts, answered_by = await finished(stack, job_id)
                events, tokens = sse.events, sse.token_events
            else:
                polled = await poll(http, api, job)
                counts, answered_by = await finished(stack, job_id)
                # Read after the end: the API reads a closed workflow's stream with a query,
                # which adds nothing to the history counted above.
                replay, _ = await read_events(http, api, job_id)
                events = len(replay)
                tokens = sum(1 for e, _ in replay if isinstance(e, TokenDelta))
    except TimeoutError:
        raise StreamingBenchError(
            f"job {job_id} ({kind}, {tier}) took over {JOB_TIMEOUT_S:g} s"
        ) from None
    if into is None:
        return
    if kind == SSE:
        into.sse.append(sse)
    else:
        into.poll.append(polled)
    into.history.append(counts)
    into.stream_events.append(events)
    into.stream_tokens.append(tokens)
    into.tiers.append(answered_by)
    into.closed_ms.append(job.wall_ms(counts.closed_s))


# --------------------------------------------------------------------------- the report


def _mean(values: Sequence[float]) -> float:
    return round(statistics.fmean(values), 1) if values else 0.0


def _history_extra(m: Measured) -> dict[str, object]:
    """Per-job means of the history and stream counts of ``m`` (row extras)."""
    return {
        "history_events": _mean([h.events for h in m.history]),
        "signals": _mean([h.signals for h in m.history]),
        "updates": _mean([h.updates for h in m.history]),
        "workflow_tasks": _mean([h.workflow_tasks for h in m.history]),
        "history_kb": _mean([h.history_bytes / 1024 for h in m.history]),
        "stream_events": _mean(m.stream_events),
        "token_events": _mean(m.stream_tokens),
        "answered_by": "/".join(sorted(set(m.tiers))),
        "job_closed_ms": round(statistics.median(m.closed_ms), 1) if m.closed_ms else "",
    }


def _add(
    result: BenchResult,
    case: str,
    variant: str,
    values: Sequence[float | None],
    *,
    baseline: bool = False,
    extra: Mapping[str, object] | None = None,
) -> None:
    """Add a row when at least one value was measured (a small tier has no draft)."""
    kept = [v for v in values if v is not None]
    if kept:
        result.add(case, variant, kept, baseline=baseline, **(extra or {}))


def report_tier(result: BenchResult, tier: TierChoice, by_kind: dict[str, Measured]) -> None:
    """Add the rows of one tier: first useful text and whole answer, each against polling."""
    sse, off, on = by_kind[SSE], by_kind[POLL_OFF], by_kind[POLL_ON]
    first = f"{tier}: {FIRST_TEXT}"
    off_first = [p.first_text_ms for p in off.poll]
    _add(result, first, f"{POLL_OFF}: draft or answer", off_first, baseline=True)
    _add(result, first, f"{POLL_OFF}: draft", [p.draft_ms for p in off.poll])
    _add(result, first, f"{POLL_ON}: draft or answer", [p.first_text_ms for p in on.poll])
    _add(result, first, "SSE: first event", [s.first_event_ms for s in sse.sse])
    _add(result, first, "SSE: draft (initial_response)", [s.draft_ms for s in sse.sse])
    _add(result, first, "SSE: first token", [s.first_token_ms for s in sse.sse])
    _add(result, first, "SSE: draft or first token", [s.first_text_ms for s in sse.sse])
    whole = f"{tier}: {WHOLE}"
    off_extra = {"polls_per_job": _mean([p.polls for p in off.poll]), **_history_extra(off)}
    on_extra = {"polls_per_job": _mean([p.polls for p in on.poll]), **_history_extra(on)}
    off_answer = [p.answer_ms for p in off.poll]
    _add(result, whole, f"{POLL_OFF}: COMPLETED", off_answer, baseline=True, extra=off_extra)
    _add(result, whole, f"{POLL_ON}: COMPLETED", [p.answer_ms for p in on.poll], extra=on_extra)
    _add(result, whole, "SSE: last token", [s.last_token_ms for s in sse.sse])
    sse_final = [s.final_ms for s in sse.sse]
    token_lags = [s.token_lag_ms for s in sse.sse if s.token_lag_ms is not None]
    final_lags = [s.final_lag_ms for s in sse.sse if s.final_lag_ms is not None]
    sse_extra = {
        **_history_extra(sse),
        "token_lag_ms": round(statistics.median(token_lags), 1) if token_lags else "",
        "final_lag_ms": round(statistics.median(final_lags), 1) if final_lags else "",
    }
    _add(result, whole, "SSE: final_response", sse_final, extra=sse_extra)


def _ratio(result: BenchResult, case: str, variant: str, base: str) -> float | None:
    try:
        return result.median(case, variant) / result.median(case, base)
    except (KeyError, ZeroDivisionError):
        return None


def headlines(result: BenchResult, measured: dict[str, dict[str, Measured]]) -> None:
    """Ratios: SSE's first text and whole answer vs polling's, and history cost of streaming."""
    for tier in TIERS:
        value = _ratio(
            result, f"{tier}: {FIRST_TEXT}", "SSE: draft or first token",
            f"{POLL_OFF}: draft or answer",
        )  # fmt: skip
        if value is not None:
            result.headline(f"{tier}: SSE first useful text, fraction of polling's (median)", value)
    value = _ratio(result, f"large: {WHOLE}", "SSE: final_response", f"{POLL_OFF}: COMPLETED")
    if value is not None:
        result.headline("large: SSE whole answer, fraction of polling's (median)", value)
    sse = [h.events for m in measured.values() for h in m[SSE].history]
    off = [h.events for m in measured.values() for h in m[POLL_OFF].history]
    if sse and off:
        result.headline(
            "history events per job, SSE + tokens on vs polling + tokens off",
            statistics.fmean(sse) / statistics.fmean(off),
        )


def cost_notes(result: BenchResult, measured: dict[str, dict[str, Measured]]) -> None:
    """Notes on what streaming costs in history: per token event, per SSE reader."""
    for tier, by_kind in measured.items():
        sse, off, on = by_kind[SSE], by_kind[POLL_OFF], by_kind[POLL_ON]
        if not (sse.history and off.history and on.history):
            continue
        ev_off = statistics.fmean(h.events for h in off.history)
        ev_on = statistics.fmean(h.events for h in on.history)
        ev_sse = statistics.fmean(h.events for h in sse.history)
        sig_on = statistics.fmean(h.signals for h in on.history)
        sig_off = statistics.fmean(h.signals for h in off.history)
        tok_on = statistics.fmean(on.stream_tokens)
        upd = statistics.fmean(h.updates for h in sse.history)
        per_token = (ev_on - ev_off) / tok_on if tok_on else float("nan")
        per_signal = (ev_on - ev_off) / (sig_on - sig_off) if sig_on > sig_off else float("nan")
        per_update = (ev_sse - ev_on) / upd if upd else float("nan")
        result.notes.append(
            f"{tier}: history events per job {ev_off:.1f} with tokens off, {ev_on:.1f} with "
            f"tokens on ({tok_on:.1f} token events in {sig_on - sig_off:.1f} extra signals: "
            f"{per_token:.2f} history events per token event, {per_signal:.2f} per signal), "
            f"{ev_sse:.1f} with tokens on and an SSE reader ({upd:.1f} long-poll updates: "
            f"{per_update:.2f} history events per update)."
        )


# --------------------------------------------------------------------------- readers

READER_COUNTS: tuple[int, ...] = (0, 1, 10, 50, 200)
"""SSE readers attached to one gated large-tier job in the readers phase."""
SMOKE_READER_COUNTS: tuple[int, ...] = (0, 10)


async def readers_phase(
    stack: BenchStack, http: httpx.AsyncClient, api: Api, counts: Sequence[int]
) -> list[tuple[int, float, int, int]]:
    """For each count, a large-tier job waiting at its gate with that many readers.

    Returns:
        ``(readers, decision ms, history events, readers that got final_response)`` per count.
    """
    rows: list[tuple[int, float, int, int]] = []
    for count in counts:
        body = job_body("large").model_copy(update={"require_approval": True})
        response = await http.post(
            f"{api.url}/v1/jobs",
            content=body.model_dump_json(),
            headers={"Content-Type": "application/json"},
        )
        response.raise_for_status()
        job_id = JobPublic.model_validate_json(response.content).job_id
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while True:
            job = JobPublic.model_validate_json(
                (await http.get(f"{api.url}/v1/jobs/{job_id}")).content
            )
            if job.status is JobStatus.AWAITING_APPROVAL:
                break
            if time.monotonic() > deadline:
                raise BenchStackError(f"job {job_id} never reached its gate")
            await asyncio.sleep(0.1)
        readers = [asyncio.create_task(read_events(http, api, job_id)) for _ in range(count)]
        await asyncio.sleep(2.0)  # every reader connected and polling (through the hub)
        started = time.perf_counter()
        decision = await http.post(f"{api.url}/v1/jobs/{job_id}/approval", json={"approved": True})
        decision_ms = (time.perf_counter() - started) * 1000
        decision.raise_for_status()
        outcomes = await asyncio.wait_for(asyncio.gather(*readers), JOB_TIMEOUT_S)
        counts_of, _tier = await finished(stack, job_id)
        rows.append((count, decision_ms, counts_of.events, sum(ok for _, ok in outcomes)))
    return rows


# --------------------------------------------------------------------------- the benchmark


async def run(ctx: BenchContext) -> BenchResult:
    """Measure SSE vs polling per tier (see the module docstring)."""
    repeats = SMOKE_REPEATS if ctx.smoke else min(ctx.repeats, MAX_REPEATS)
    warmup = 0 if ctx.smoke else min(ctx.warmup, MAX_WARMUP)
    result = BenchResult(
        name="streaming",
        title="Streaming: time to the first words and the whole answer, SSE vs polling",
        baseline=(
            f"a client polling GET /v1/jobs/{{id}} every {POLL_INTERVAL_S * 1000:g} ms on a job "
            "that does not stream its tokens (AGENTFLOW_STREAM_TOKENS=false), from the moment "
            "POST /v1/jobs returned"
        ),
        params={
            "repeats_per_tier_and_kind": repeats,
            "warmup_rounds_per_tier": warmup,
            "repeats_capped_at": MAX_REPEATS,
            "tiers": list(TIERS),
            "poll_interval_ms": POLL_INTERVAL_S * 1000,
            "simulated_latency_scale": 1.0,
            "workers": 1,
            "api_processes": 2,
            "auth": "disabled",
            "jobs": "one at a time, kinds interleaved",
            "stream_token_batch_ms_tokens_poll_ms": "settings' defaults",
            "reader_counts": list(SMOKE_READER_COUNTS if ctx.smoke else READER_COUNTS),
        },
    )
    stack = await ctx.stack()
    measured: dict[str, dict[str, Measured]] = {}
    async with (
        stack.workers(1, env={"AGENTFLOW_SIMULATED_LATENCY_SCALE": "1"}, label="streaming") as pool,
        api_process(stack, pool.task_queue, stream_tokens=True) as api_on,
        api_process(stack, pool.task_queue, stream_tokens=False) as api_off,
        httpx.AsyncClient(
            timeout=httpx.Timeout(30.0, read=60.0),
            limits=httpx.Limits(max_connections=300, max_keepalive_connections=300),
        ) as http,
    ):
        apis = {True: api_on, False: api_off}
        for tier in TIERS:
            by_kind = {kind: Measured() for kind in KINDS}
            started = time.perf_counter()
            for i in range(warmup + repeats):
                order = KINDS[i % len(KINDS) :] + KINDS[: i % len(KINDS)]
                for kind in order:
                    await run_one(
                        stack, http, apis, kind, tier, by_kind[kind] if i >= warmup else None
                    )
            measured[tier] = by_kind
            report_tier(result, tier, by_kind)
            sse = by_kind[SSE].sse
            ctx.progress(
                f"{tier}: SSE first text {statistics.median(s.first_text_ms for s in sse):.0f} "
                f"ms, polling "
                f"{statistics.median(p.first_text_ms for p in by_kind[POLL_OFF].poll):.0f} ms; "
                f"answer {statistics.median(s.final_ms for s in sse):.0f} vs "
                f"{statistics.median(p.answer_ms for p in by_kind[POLL_OFF].poll):.0f} ms "
                f"({time.perf_counter() - started:.1f} s)"
            )
        counts = SMOKE_READER_COUNTS if ctx.smoke else READER_COUNTS
        reader_rows = await readers_phase(stack, http, api_on, counts)
    for count, decision_ms, events, ended in reader_rows:
        result.add(
            f"large job at its gate, {count} SSE readers",
            "decision (POST approval) ms",
            [decision_ms],
            history_events=events,
            readers_with_final_response=ended,
        )
        ctx.progress(
            f"{count} readers: decision {decision_ms:.0f} ms, {events} history events, "
            f"{ended}/{count} readers got final_response"
        )
    by_readers = {count: events for count, _, events, _ in reader_rows}
    if by_readers.get(0):
        most = max(by_readers)
        result.headline(
            f"history events of a gated large-tier job, {most} readers vs none",
            by_readers[most] / by_readers[0],
        )
    result.notes.append(
        "Readers: "
        + "; ".join(
            f"{count} readers: decision {decision_ms:.0f} ms, {events} history events, "
            f"{ended}/{count} got final_response"
            for count, decision_ms, events, ended in reader_rows
        )
        + ". Before the event hub (each reader a long-poll update): 10 readers made the "
        "decision 503 after ~14 s, and history was 330 / 600 / 1,405 events with 0 / 1 / 10 "
        "readers."
    )
    headlines(result, measured)
    cost_notes(result, measured)
    mismatched = sum(1 for m in measured.values() for s in m[SSE].sse if not s.text_matches)
    result.notes.append(
        "Text check: in "
        + ("every SSE job" if mismatched == 0 else f"all but {mismatched} SSE job(s)")
        + " the text assembled from the token events (highest revision) equals final_response's "
        "answer."
    )
    result.notes.append(
        "Times run from the moment POST /v1/jobs returned to the moment the client had the "
        "bytes; the SSE connection is opened after the POST, so its set-up is counted. A poller "
        f"sees a change on average {POLL_INTERVAL_S * 500:g} ms late plus one GET (a progress "
        "query to the worker), so polling's times are quantized to its interval."
    )
    result.notes.append(
        "The small tier has no draft (the workflow drafts only when the answering tier is above "
        "small), so its first useful text is the first token for SSE and the answer for polling."
    )
    return result
