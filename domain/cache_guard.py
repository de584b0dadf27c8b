"""The cache guard: what the response and component levels may serve and store.

Pure functions over the contracts, used by the ``prepare_job`` and ``record_job`` activities:
component-level keys, decoding a cached answer, whether the approval policy lets a cached answer
be served (README, "Caches": a cached answer never bypasses a human gate), and whether a job's
answer may be cached and for how long.
"""

from __future__ import annotations

import hashlib
import logging

from pydantic import JsonValue

from core.models import (
    AgentResult,
    ApprovalPolicy,
    CachedResponse,
    CacheLevel,
    CacheReport,
    JobStatus,
    ToolFailure,
    ToolSuccess,
)
from core.tools import ToolRegistry

log = logging.getLogger(__name__)

COMPONENT_VERSION = "c1"
"""Part of every component-level key: bump it when compression code changes what
it returns for the same input."""


def component_key(kind: str, payload: str) -> str:
    """Key of a component-level entry: ``<level prefix><kind>:<sha256 hex>``.

    Args:
        kind: ``compression`` (model selection is no longer cached, see
            :data:`activities.compression.COMPONENT_MIN_CHARS`).
        payload: the canonical input; hashed with ``kind`` and :data:`COMPONENT_VERSION`.
    """
    digest = hashlib.sha256(f"{COMPONENT_VERSION}|{kind}|{payload}".encode()).hexdigest()
    return f"{CacheLevel.COMPONENT.prefix}{kind}:{digest}"


def cached_response(raw: JsonValue | None) -> CachedResponse | None:
    """A response entry, or ``None`` for a miss or an entry of another shape."""
    if not isinstance(raw, dict):
        return None
    try:
        return CachedResponse.model_validate(raw)
    except ValueError:
        log.warning("undecodable response-cache entry; treated as a miss")
        return None


def count_lookup(report: CacheReport, level: CacheLevel, hit: bool) -> None:
    """Count one lookup of ``level`` in ``report`` (a hit or a miss)."""
    counts = report.hits if hit else report.misses
    counts[level.value] = counts.get(level.value, 0) + 1


def gated_by_policy(tools: list[str], policy: ApprovalPolicy, registry: ToolRegistry) -> str | None:
    """Why a cached answer built on ``tools`` may not be served under ``policy``, else ``None``.

    The rule (README, "Caches"): a cached answer never bypasses a human gate. A tool that needs
    approval now (its metadata or ``policy.tools``) gates every answer built on its results,
    whatever the policy was when the answer was cached. The cost threshold does not apply: a
    hit calls no model and costs nothing. Requests that ask for approval never reach the cache.
    """
    for name in tools:
        tool = registry.get(name)
        if name in policy.tools or (tool is not None and tool.metadata.requires_approval):
            return f"the approval policy gates tool {name}, which the cached answer used"
    return None


def answer_ttl_s(
    result: AgentResult, tools: ToolRegistry, response_cache_ttl_s: int
) -> tuple[int | None, str | None]:
    """How long ``result``'s answer may be cached, in seconds, or why it may not be.

    What is cached (README, "Caches"): a completed answer that did not come from the cache, met
    no approval gate, used no tool that failed, did not escalate after a failure, and used only
    cacheable tools, for ``response_cache_ttl_s`` or the shortest TTL of the tools it used (a
    result from the tool level only for its remaining life), whichever is shorter.

    Returns:
        ``(ttl_s, None)`` when it may be cached; ``(None, reason)`` when not (``reason`` is
        ``None`` for results that have no fresh answer at all).
    """
    if result.status is not JobStatus.COMPLETED or result.answer is None:
        return None, None
    if result.response_cache_hit:
        return None, "served from the cache"
    if result.approval is not None or result.approval_record is not None:
        return None, "the job met the approval gate: a repeat must ask again"
    failed = sorted({r.name for r in result.tool_results if isinstance(r, ToolFailure)})
    if failed:
        return None, f"degraded answer: tool {', '.join(failed)} failed"
    if result.escalated_to is not None:
        return None, f"degraded answer: escalated to {result.escalated_to} after a failure"
    ttl = response_cache_ttl_s
    for r in result.tool_results:
        tool = tools.get(r.name)
        if tool is None or not tool.metadata.cacheable:
            return None, f"tool {r.name}'s results are not cacheable"
        ttl = min(ttl, tool.metadata.cache_ttl_s)
        if isinstance(r, ToolSuccess) and r.expires_in_s is not None:
            # A result that came from the tool level has aged: only its remaining life.
            ttl = min(ttl, int(r.expires_in_s))
    if ttl <= 0:
        return None, "a tool result it used expires now"
    return ttl, None


def report_with_tool_lookups(result: AgentResult, tools: ToolRegistry) -> CacheReport:
    """A copy of ``result``'s cache report with the tool level's lookups and the coalesced count.

    Every call of a cacheable tool (the planner's own ``plan`` entry aside) counts as one
    lookup of the tool level; ``coalesced`` counts the tool calls and generations an identical
    call in flight answered.
    """
    report = (result.cache or CacheReport()).model_copy(deep=True)
    for r in result.tool_results:
        tool = tools.get(r.name)
        if r.call_id != "plan" and tool is not None and tool.metadata.cacheable:
            count_lookup(report, CacheLevel.TOOL, r.cache_hit)
    report.coalesced = sum(
        1 for r in result.tool_results if isinstance(r, ToolSuccess) and r.coalesced
    ) + sum(1 for u in result.usage if u.coalesced)
    return report


def cached_answer(result: AgentResult, query: str | None) -> CachedResponse:
    """The response-cache entry of a completed ``result`` (asked as ``query``).

    The entry keeps the final call's tier and model (the selection's tier when no final call is
    recorded), the tools the answer used, and what producing it cost: USD, tokens and the
    stages' milliseconds, so a later hit can re-check the approval policy and report savings.

    Raises:
        ValueError: ``result`` has neither a selection nor a final model call (no job that
            completed with an answer).
    """
    final = next((u for u in reversed(result.usage) if u.purpose == "final"), None)
    tier = final.tier if final else (result.selection.tier if result.selection else None)
    if tier is None:
        raise ValueError("a cached answer needs the job's selection or final model call")
    return CachedResponse(
        answer=result.answer or "",
        tier=tier,
        model=final.model if final else "",
        simulated=result.simulated,
        job_id=result.job_id,
        query=query or "",
        tools=sorted({r.name for r in result.tool_results}),
        cost_usd=round(result.total_cost_usd, 8),
        tokens=sum(u.prompt_tokens + u.completion_tokens for u in result.usage),
        duration_ms=sum(t.duration_ms for t in result.timings),
    )
