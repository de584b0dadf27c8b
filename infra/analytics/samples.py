"""One job as analytics reads it: :class:`JobSample`, from a record or from selected columns.

The parts of a recorded AgentResult analytics reads are typed dicts: decoding into dicts is
about twice as fast as into models, which matters at
:data:`infra.analytics.window.MAX_JOBS` results per request.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final, NamedTuple

from pydantic import TypeAdapter, ValidationError
from typing_extensions import TypedDict

from core.models import CacheLevel, CacheReport, JobStatus, Stage
from infra.jobs import JobRecord


class _Usage(TypedDict, total=False):
    purpose: str
    tier: str | None
    cost_usd: float
    prompt_tokens: int
    completion_tokens: int


class _Tool(TypedDict, total=False):
    status: str
    call_id: str
    name: str
    cache_hit: bool
    latency_ms: float


class _Selection(TypedDict, total=False):
    tier: str | None
    reason: str
    p_large: float | None
    prompt_tokens: int | None


class _Timing(TypedDict, total=False):
    stage: str
    duration_ms: float


class _Digest(TypedDict, total=False):
    usage: list[_Usage]
    tool_results: list[_Tool]
    selection: _Selection | None
    escalated_to: str | None
    timings: list[_Timing]
    cache: CacheReport | None


_DIGEST: Final = TypeAdapter(_Digest)


_STATUSES: Final = {s.value: s for s in JobStatus}


_WAIT_STAGE: Final = Stage.AWAITING_APPROVAL.value


class CallCost(NamedTuple):
    """One model call: tier, purpose (``plan``, ``route``, ``draft``, ``final``), USD, tokens."""

    tier: str | None
    purpose: str
    cost_usd: float
    tokens: int


class ToolUse(NamedTuple):
    """One tool result: tool name, success, whether the cache answered, latency in ms."""

    name: str
    ok: bool
    cache_hit: bool
    latency_ms: float


class JobSample(NamedTuple):
    """What analytics needs of one job record (build with :meth:`from_record` or the loader).

    A named tuple (cheap to build by the tens of thousands; ``_replace`` makes a changed copy).

    Attributes:
        job_id: the job's id.
        status: its :class:`JobStatus`.
        tier: the tier that answered (``escalated_to`` when it escalated), ``None`` when no
            model answered.
        owner: key id of the submitting key.
        request_hash: SHA-256 of the canonical request (identical requests share it).
        created_at / completed_at: aware UTC datetimes (``completed_at`` ``None`` while open).
        duration_ms: ``completed_at - created_at`` in ms, once terminal.
        cost_usd: model cost of the job in USD; tokens: prompt plus completion tokens.
        response_cache_hit: the answer came from the response cache.
        approval_wait_ms: time spent at the approval gate, in ms.
        calls: the job's model calls; tools: its tool results (planner rejections left out).
        cache: the job's cache report (``None`` for jobs recorded before reports).
        selected_tier: the tier selection chose (before any escalation).
        escalated: the job escalated to a larger tier after its tier failed.
        p_large: the learned router's P(needs large), when it routed.
        pinned: the request pinned its tier (the router did not choose).
        fit_tokens: prompt plus completion tokens the tier's context window had to hold.
        detailed: the result JSON was read (``False``: only the record's columns).
    """

    job_id: str
    status: JobStatus
    tier: str | None
    owner: str | None
    request_hash: str | None
    created_at: datetime
    completed_at: datetime | None
    duration_ms: float | None
    cost_usd: float
    tokens: int
    response_cache_hit: bool
    approval_wait_ms: float = 0.0
    calls: tuple[CallCost, ...] = ()
    tools: tuple[ToolUse, ...] = ()
    cache: CacheReport | None = None
    selected_tier: str | None = None
    escalated: bool = False
    p_large: float | None = None
    pinned: bool = False
    fit_tokens: int | None = None
    detailed: bool = False

    @property
    def response_ms(self) -> float | None:
        """Response time in ms (duration less the approval wait); ``None`` while open."""
        if self.duration_ms is None or not self.status.is_terminal:
            return None
        return max(0.0, self.duration_ms - self.approval_wait_ms)

    def lookups(self) -> dict[str, tuple[int, int]]:
        """``{level: (hits, misses)}`` for the levels this job looked up.

        From the cache report when recorded; otherwise the fallback of the module docstring.
        """
        if self.cache is not None:
            levels = set(self.cache.hits) | set(self.cache.misses)
            return {
                level: (self.cache.hits.get(level, 0), self.cache.misses.get(level, 0))
                for level in levels
            }
        found = {CacheLevel.RESPONSE.value: (1, 0) if self.response_cache_hit else (0, 1)}
        tool_hits = sum(1 for t in self.tools if t.ok and t.cache_hit)
        tool_misses = sum(1 for t in self.tools if t.ok and not t.cache_hit)
        if tool_hits or tool_misses:
            found[CacheLevel.TOOL.value] = (tool_hits, tool_misses)
        return found

    @classmethod
    def from_record(cls, record: JobRecord) -> JobSample:
        """The sample of a :class:`infra.jobs.JobRecord`."""
        return cls.from_columns(*(getattr(record, name) for name in COLUMNS))

    @classmethod
    def from_columns(
        cls,
        job_id: str,
        status: str,
        tier: str | None,
        owner: str | None,
        request_hash: str | None,
        created_at: datetime,
        completed_at: datetime | None,
        duration_ms: float | None,
        cost_usd: float | None,
        prompt_tokens: int | None,
        completion_tokens: int | None,
        response_cache_hit: bool | None,
        result_json: str | None,
    ) -> JobSample:
        """The sample of a ``jobs`` row from its :data:`COLUMNS` values, in that order.

        A result JSON that does not decode (a contract older than this code reads) is skipped:
        the sample then holds the record's columns only (``detailed`` false).
        """
        columns = (
            job_id,
            _STATUSES[status],
            tier,
            owner,
            request_hash,
            created_at,
            completed_at,
            duration_ms,
            cost_usd or 0.0,
            (prompt_tokens or 0) + (completion_tokens or 0),
            bool(response_cache_hit),
        )
        if not result_json:
            return cls(*columns)
        try:
            digest = _DIGEST.validate_json(result_json)
        except ValidationError:
            return cls(*columns)
        selection = digest.get("selection") or _Selection()
        return cls(
            *columns,
            approval_wait_ms=sum(
                t.get("duration_ms", 0.0)
                for t in digest.get("timings", ())
                if t.get("stage") == _WAIT_STAGE
            ),
            calls=tuple(
                CallCost(
                    u.get("tier"),
                    u.get("purpose", ""),
                    u.get("cost_usd", 0.0),
                    u.get("prompt_tokens", 0) + u.get("completion_tokens", 0),
                )
                for u in digest.get("usage", ())
            ),
            # The workflow reports planner rejections as failures of a pseudo call "plan".
            tools=tuple(
                ToolUse(
                    t.get("name", ""),
                    t.get("status", "success") == "success",
                    t.get("cache_hit", False),
                    t.get("latency_ms", 0.0),
                )
                for t in digest.get("tool_results", ())
                if t.get("call_id") != "plan"
            ),
            cache=digest.get("cache"),
            selected_tier=selection.get("tier"),
            escalated=digest.get("escalated_to") is not None,
            p_large=selection.get("p_large"),
            # Both routers write this phrase when the request pinned the tier.
            pinned="pinned to" in selection.get("reason", ""),
            fit_tokens=selection.get("prompt_tokens"),
            detailed=True,
        )


COLUMNS: Final = (
    "job_id",
    "status",
    "tier",
    "owner",
    "request_hash",
    "created_at",
    "completed_at",
    "duration_ms",
    "cost_usd",
    "prompt_tokens",
    "completion_tokens",
    "response_cache_hit",
    "result_json",
)
"""The ``jobs`` columns analytics reads (never the request JSON), in
:meth:`JobSample.from_columns` order."""
