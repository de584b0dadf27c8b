"""``agentflow run``: submit a JSONL file of requests through the REST API and wait for them.

Each line of the file is a ``JobCreate`` body (:class:`core.models.AgentRequest`) with two
optional extra top-level fields the runner removes before submitting:

* ``idempotency_key``: sent as the ``Idempotency-Key`` header;
* ``expect_approval``: ``"approve"`` (the default) or ``"reject"``: how the runner answers the
  job's approval when approvals are on, and so which final status counts as expected.

Requests run concurrently, at most ``concurrency`` in flight; each is polled with
``GET /v1/jobs/{id}`` (backing off from 50 ms to 500 ms) until it ends. The API refusing a line
(4xx) or failing (5xx, connection errors) is reported for that line and counted, never raised.

A failed poll is retried by a declared ``tenacity`` policy (:meth:`_Runner._poll`: up to
:data:`_MAX_CONSECUTIVE_POLL_ERRORS` attempts in a row, continuing the poll's back-off), which
replaced a hand-written error counter in the poll loop. The poll loop itself stays by hand: it
waits for a state, not for a failure to pass, and answers the job's approval on the way.

One module on purpose (about 470 lines): one command's submit-poll-approve loop and its summary;
the follow view and the SSE client are in :mod:`cli.follow`.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
from pydantic import BaseModel
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from cli.report import API_ERROR, REJECTED_BY_API, TIMED_OUT, render_summary, summarize
from core.models import JobStatus

INVALID_LINE = "INVALID_LINE"
"""Pseudo-status of a line that is not a JSON object (nothing was submitted)."""

_POLL_FIRST_S = 0.05
_POLL_MAX_S = 0.5
_POLL_BACKOFF = 1.3
_MAX_CONSECUTIVE_POLL_ERRORS = 5
_HTTP_TIMEOUT_S = 30.0
_TERMINAL_STATUSES = frozenset(s.value for s in JobStatus if s.is_terminal)


class PollFailed(Exception):
    """One ``GET /v1/jobs/{id}`` failed (a transport error, or not 2xx); retryable."""


class RunRequest(BaseModel):
    """One line of the requests file.

    Attributes:
        line: 1-based line number in the file.
        body: the ``JobCreate`` body (extra runner fields removed); ``None`` when the line is
            not a JSON object.
        idempotency_key: sent as the ``Idempotency-Key`` header when set.
        expect_approval: how to answer the job's approval (``approve`` when unset).
        error: why the line could not be read, when it could not.
    """

    line: int
    body: dict[str, Any] | None = None
    idempotency_key: str | None = None
    expect_approval: Literal["approve", "reject"] | None = None
    error: str | None = None


class RequestOutcome(BaseModel):
    """What happened to one request; one line of the ``--out`` file.

    Attributes:
        line: 1-based line number in the requests file.
        job_id: the job's id, when the API created one.
        status: the final job status, or a pseudo-status (``REJECTED_BY_API``, ``API_ERROR``,
            ``TIMED_OUT``, ``INVALID_LINE``).
        expected: whether ``status`` is what this request should end with.
        latency_ms: milliseconds from submission to the terminal status; ``None`` when the job
            did not end (left awaiting approval, timed out) or was never created.
        error: the API's or the runner's explanation when something went wrong.
        job: the last job JSON read from the API.
    """

    line: int
    job_id: str | None = None
    status: str
    expected: bool
    latency_ms: float | None = None
    error: str | None = None
    job: dict[str, Any] | None = None


@dataclass(frozen=True)
class RunOptions:
    """How to run a batch.

    Attributes:
        api_url: base URL of the agentflow API, e.g. ``http://127.0.0.1:8000``.
        concurrency: most requests in flight at once (submitted and not yet ended).
        approve: answer approvals (per each line's ``expect_approval``); when False, jobs
            waiting for approval are left waiting and reported as AWAITING_APPROVAL.
        api_key: the API key sent as ``Authorization: Bearer`` (it needs the ``submit``,
            ``read`` and, to answer approvals, ``approve`` scopes; it is the reviewer of the
            approvals it sends); ``None`` for an API with authentication off.
        timeout_s: per-request limit in seconds from submission to terminal status.
    """

    api_url: str = "http://127.0.0.1:8000"
    concurrency: int = 8
    approve: bool = True
    api_key: str | None = field(default=None, repr=False)
    timeout_s: float = 600.0


class BatchResult(BaseModel):
    """Every request's outcome, in file order, and the batch's wall time in seconds."""

    outcomes: list[RequestOutcome]
    wall_s: float

    @property
    def all_expected(self) -> bool:
        """Whether every request ended as expected (False for an empty batch)."""
        return bool(self.outcomes) and all(o.expected for o in self.outcomes)


def load_requests(path: Path) -> list[RunRequest]:
    """Read a JSONL requests file; blank lines are skipped.

    Args:
        path: the file, one JSON object per line.

    Returns:
        One :class:`RunRequest` per non-blank line; lines that are not JSON objects (or carry a
        bad ``idempotency_key``/``expect_approval``) come back with ``error`` set.

    Raises:
        OSError: the file cannot be read.
    """
    requests: list[RunRequest] = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            requests.append(RunRequest(line=number, error=f"not valid JSON: {exc}"))
            continue
        if not isinstance(data, dict):
            requests.append(RunRequest(line=number, error="not a JSON object"))
            continue
        key = data.pop("idempotency_key", None)
        expect = data.pop("expect_approval", None)
        if key is not None and not isinstance(key, str):
            requests.append(RunRequest(line=number, error="idempotency_key must be a string"))
        elif expect not in (None, "approve", "reject"):
            requests.append(
                RunRequest(line=number, error="expect_approval must be 'approve' or 'reject'")
            )
        else:
            requests.append(
                RunRequest(line=number, body=data, idempotency_key=key, expect_approval=expect)
            )
    return requests


def expected_statuses(request: RunRequest, approve: bool) -> set[str]:
    """The final statuses that count as success for ``request``.

    COMPLETED, except that a job answered with a rejection must end REJECTED, and that with
    approvals off a job may also stop at AWAITING_APPROVAL.
    """
    if not approve:
        return {JobStatus.COMPLETED.value, JobStatus.AWAITING_APPROVAL.value}
    if request.expect_approval == "reject":
        return {JobStatus.REJECTED.value}
    return {JobStatus.COMPLETED.value}


def error_detail(response: httpx.Response) -> str:
    """A short explanation from an API error response (its ``detail`` when JSON)."""
    try:
        detail: Any = response.json().get("detail", response.text)
    except (ValueError, AttributeError):
        detail = response.text
    if not isinstance(detail, str):
        detail = json.dumps(detail, ensure_ascii=False)
    return f"HTTP {response.status_code}: {detail[:500]}"


class _Runner:
    """Runs one batch against the API; one instance per batch."""

    def __init__(self, client: httpx.AsyncClient, options: RunOptions, progress: Progress) -> None:
        self.client = client
        self.options = options
        self.progress = progress
        self.task = progress.add_task("running", total=None)
        self.semaphore = asyncio.Semaphore(options.concurrency)
        self.done: dict[str, int] = {}

    def _finish(self, request: RunRequest, outcome: RequestOutcome) -> RequestOutcome:
        self.done[outcome.status] = self.done.get(outcome.status, 0) + 1
        counts = "  ".join(f"{s} {n}" for s, n in sorted(self.done.items()))
        self.progress.update(self.task, advance=1, description=counts)
        if not outcome.expected:
            self.progress.console.print(
                f"[yellow]line {request.line}[/]: {outcome.status}"
                + (f" ({outcome.error})" if outcome.error else "")
            )
        return outcome

    async def run_one(self, request: RunRequest) -> RequestOutcome:
        """Submit ``request``, answer its approval if asked, and wait until it ends."""
        if request.body is None:
            outcome = RequestOutcome(
                line=request.line, status=INVALID_LINE, expected=False, error=request.error
            )
            return self._finish(request, outcome)
        async with self.semaphore:
            outcome = await self._submit_and_wait(request, request.body)
        return self._finish(request, outcome)

    async def _submit_and_wait(self, request: RunRequest, body: dict[str, Any]) -> RequestOutcome:
        expected = expected_statuses(request, self.options.approve)
        headers = {"Idempotency-Key": request.idempotency_key} if request.idempotency_key else {}
        started = time.perf_counter()
        try:
            response = await self.client.post("/v1/jobs", json=body, headers=headers)
        except httpx.HTTPError as exc:
            return RequestOutcome(
                line=request.line, status=API_ERROR, expected=False, error=f"submit failed: {exc!r}"
            )
        if response.is_client_error:
            return RequestOutcome(
                line=request.line,
                status=REJECTED_BY_API,
                expected=False,
                error=error_detail(response),
            )
        if not response.is_success:
            return RequestOutcome(
                line=request.line, status=API_ERROR, expected=False, error=error_detail(response)
            )
        job: dict[str, Any] = response.json()
        job_id = str(job["job_id"])

        deadline = started + self.options.timeout_s
        interval = _POLL_FIRST_S
        approval_sent = False
        while True:
            status = str(job.get("status"))
            if status in _TERMINAL_STATUSES:
                latency_ms = (time.perf_counter() - started) * 1000
                return RequestOutcome(
                    line=request.line,
                    job_id=job_id,
                    status=status,
                    expected=status in expected,
                    latency_ms=latency_ms,
                    error=job.get("error"),
                    job=job,
                )
            if status == JobStatus.AWAITING_APPROVAL:
                if not self.options.approve:
                    return RequestOutcome(
                        line=request.line,
                        job_id=job_id,
                        status=status,
                        expected=status in expected,
                        job=job,
                    )
                if not approval_sent:
                    approval_sent = await self._approve(request, job_id)
            if time.perf_counter() > deadline:
                return RequestOutcome(
                    line=request.line,
                    job_id=job_id,
                    status=TIMED_OUT,
                    expected=False,
                    error=f"still {status} after {self.options.timeout_s:g} s",
                    job=job,
                )
            await asyncio.sleep(interval)
            interval = min(interval * _POLL_BACKOFF, _POLL_MAX_S)
            try:
                job = await self._poll(job_id, interval)
            except PollFailed as exc:
                return RequestOutcome(
                    line=request.line,
                    job_id=job_id,
                    status=API_ERROR,
                    expected=False,
                    error=str(exc),
                    job=job,
                )

    async def _poll(self, job_id: str, interval_s: float) -> dict[str, Any]:
        """The job's JSON from ``GET /v1/jobs/{id}``, retrying failed polls.

        Args:
            job_id: the job.
            interval_s: the poll's current interval in seconds: the first wait after a failure
                (then growing by ``_POLL_BACKOFF`` up to ``_POLL_MAX_S``, as the poll does).

        Raises:
            PollFailed: :data:`_MAX_CONSECUTIVE_POLL_ERRORS` polls in a row failed (the last).
        """
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(PollFailed),
            stop=stop_after_attempt(_MAX_CONSECUTIVE_POLL_ERRORS),
            wait=wait_exponential(multiplier=interval_s, exp_base=_POLL_BACKOFF, max=_POLL_MAX_S),
            reraise=True,
        )
        return await retrying(self._get_job, job_id)

    async def _get_job(self, job_id: str) -> dict[str, Any]:
        try:
            poll = await self.client.get(f"/v1/jobs/{job_id}")
        except httpx.HTTPError as exc:
            raise PollFailed(f"polling failed: {exc!r}") from exc
        if not poll.is_success:
            raise PollFailed(f"polling failed: {error_detail(poll)}")
        job: dict[str, Any] = poll.json()
        return job

    async def _approve(self, request: RunRequest, job_id: str) -> bool:
        """POST the approval decision; True once the API accepted it.

        A 409 means the workflow is not (or no longer) waiting; the caller polls again and
        retries if it still shows AWAITING_APPROVAL.
        """
        decision = {
            "approved": request.expect_approval != "reject",
            "comment": f"agentflow run, line {request.line}",
        }
        try:
            response = await self.client.post(f"/v1/jobs/{job_id}/approval", json=decision)
        except httpx.HTTPError as exc:
            self.progress.console.print(f"line {request.line}: approval failed: {exc!r}")
            return False
        if response.is_success:
            return True
        if response.status_code != httpx.codes.CONFLICT:
            self.progress.console.print(
                f"line {request.line}: approval refused: {error_detail(response)}"
            )
        return False


async def run_batch(
    requests: list[RunRequest], options: RunOptions, console: Console | None = None
) -> BatchResult:
    """Run every request against the API with a progress bar.

    Args:
        requests: the parsed lines (see :func:`load_requests`).
        options: API URL, concurrency, approval behaviour and timeout.
        console: where the progress bar and per-line problems go (a new console when None).

    Returns:
        Each request's outcome in file order, and the wall time in seconds.
    """
    console = console or Console()
    started = time.perf_counter()
    progress = Progress(
        SpinnerColumn(),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        console=console,
    )
    limits = httpx.Limits(max_connections=max(10, options.concurrency * 2))
    async with (
        httpx.AsyncClient(
            base_url=options.api_url,
            timeout=_HTTP_TIMEOUT_S,
            limits=limits,
            headers={"Authorization": f"Bearer {options.api_key}"} if options.api_key else {},
        ) as client,
    ):
        with progress:
            runner = _Runner(client, options, progress)
            progress.update(runner.task, total=len(requests))
            outcomes = await asyncio.gather(*(runner.run_one(r) for r in requests))
    return BatchResult(outcomes=list(outcomes), wall_s=time.perf_counter() - started)


def write_outcomes(path: Path, outcomes: list[RequestOutcome]) -> None:
    """Write one JSON line per outcome to ``path`` (replacing the file)."""
    with path.open("w", encoding="utf-8") as out:
        for outcome in outcomes:
            out.write(outcome.model_dump_json() + "\n")


def api_reachable(api_url: str, timeout_s: float = 5.0) -> str | None:
    """Check that the API answers ``GET /healthz``.

    Returns:
        ``None`` when it does, else a sentence saying what went wrong.
    """
    try:
        response = httpx.get(f"{api_url.rstrip('/')}/healthz", timeout=timeout_s)
    except httpx.HTTPError as exc:
        return f"cannot reach the API at {api_url}: {exc!r} (is `agentflow dev` running?)"
    if not response.is_success:
        return f"the API at {api_url} answered /healthz with HTTP {response.status_code}"
    return None


def run_file(path: Path, options: RunOptions, out: Path | None, console: Console) -> int:
    """Run a requests file end to end: submit, wait, write ``out``, print the summary.

    Args:
        path: the JSONL requests file.
        options: how to run it.
        out: where to write one JSON line per request (skipped when None).
        console: where progress and the summary are printed.

    Returns:
        The exit code: 0 when every request ended as expected, 1 otherwise.
    """
    try:
        requests = load_requests(path)
    except OSError as exc:
        console.print(f"[red]cannot read {path}: {exc}[/]")
        return 1
    if not requests:
        console.print(f"[red]{path} has no requests[/]")
        return 1
    problem = api_reachable(options.api_url)
    if problem:
        console.print(f"[red]{problem}[/]")
        return 1
    console.print(
        f"Running {len(requests)} requests from {path} against {options.api_url} "
        f"(concurrency {options.concurrency}, approvals {'on' if options.approve else 'off'})"
    )
    batch = asyncio.run(run_batch(requests, options, console))
    if out is not None:
        write_outcomes(out, batch.outcomes)
        console.print(f"Wrote {len(batch.outcomes)} results to {out}")
    # The runner's status wins over the job's own (a job still RUNNING counts as TIMED_OUT).
    jobs = [{**(o.job or {}), "status": o.status} for o in batch.outcomes]
    summary = summarize(jobs, batch.wall_s, [o.latency_ms for o in batch.outcomes])
    for table in render_summary(summary):
        console.print(table)
    unexpected = [o for o in batch.outcomes if not o.expected]
    if unexpected:
        lines = ", ".join(str(o.line) for o in unexpected)
        console.print(f"[red]{len(unexpected)} request(s) did not end as expected: line {lines}[/]")
        return 1
    console.print("[green]All requests ended as expected.[/]")
    return 0
