"""Tool-call activities: each call behind the Redis tool-result cache, failures as data.

``run_tools`` runs a batch of calls concurrently inside one activity, each with its own timeout,
its own cache entry and its own result; the workflow groups a job's parallel-safe calls into at
most ``TOOL_FANOUT_WIDTH`` batches (see :mod:`workflows.policies` for the measurement behind it).
``run_tool``, the v1 shape's single-call activity, is gone since 0.3.0 (CHANGELOG).

Result size: each tool caps its own output (``http_get`` by bytes, ``sql_query`` by rows, the
others by construction); results are returned inline and the data converter's external storage
keeps large ones out of history.
"""

from __future__ import annotations

import asyncio
import logging
import time

from temporalio import activity

from activities.errors import to_application_error
from activities.heartbeat import heartbeating
from core.errors import ToolCallInvalidError, ToolError, ToolTransientError
from core.metrics import observe_coalesced
from core.models import (
    CacheLevel,
    RunToolsInput,
    RunToolsResult,
    ToolCall,
    ToolFailure,
    ToolResult,
    ToolSuccess,
)
from core.tools import ToolRegistry, tool_cache_key
from infra.cache import RedisCache
from infra.coalesce import Coalescer

log = logging.getLogger(__name__)


class ToolActivities:
    """Tool calls for one worker process.

    Args:
        tools: the tool registry.
        cache: Redis tool-result cache (a down Redis is a miss).
        coalescer: when given, concurrent identical cacheable calls (in any worker) run once;
            the others wait for the result in the cache (``coalesced`` on theirs).
    """

    def __init__(
        self, *, tools: ToolRegistry, cache: RedisCache, coalescer: Coalescer | None = None
    ) -> None:
        self.tools = tools
        self.cache = cache
        self.coalescer = coalescer

    @activity.defn(name="run_tools")
    async def run_tools(self, inp: RunToolsInput) -> RunToolsResult:
        """Run ``inp.calls`` concurrently; one result per call, in order.

        Returns:
            :class:`ToolSuccess` or :class:`ToolFailure` per call. A transient failure (network,
            5xx, the call's own timeout) is a ``ToolFailure`` with ``retryable=True`` unless
            ``raise_transient`` is set.

        Raises:
            ApplicationError: ``ToolTransient`` (retryable) when ``raise_transient`` is set and
                the (single) call failed transiently.
        """
        async with heartbeating(f"{len(inp.calls)} tool call(s)"):
            results = await self.run_calls(inp.calls, inp.raise_transient)
        return RunToolsResult(results=results)

    async def run_calls(
        self, calls: list[ToolCall], raise_transient: bool = False
    ) -> list[ToolResult]:
        """Run ``calls`` concurrently, each behind the tool-result cache; one result per call.

        What ``run_tools`` runs, outside an activity of its own (``prepare_job`` runs a job's
        quick in-memory tools with it). Raises only as ``run_tools`` says.
        """
        return list(await asyncio.gather(*(self._run_one(call, raise_transient) for call in calls)))

    async def _run_one(self, call: ToolCall, raise_transient: bool) -> ToolResult:
        started = time.perf_counter()

        def elapsed_ms() -> float:
            return round((time.perf_counter() - started) * 1000, 3)

        def failure(error_type: str, message: str, retryable: bool = False) -> ToolFailure:
            return ToolFailure(
                call_id=call.id,
                name=call.name,
                error_type=error_type,
                error=message,
                latency_ms=elapsed_ms(),
                retryable=retryable,
            )

        try:
            tool, params = self.tools.validate(call)
        except ToolCallInvalidError as exc:
            return failure(str(exc.type), exc.message)
        meta = tool.metadata
        key = tool_cache_key(tool.name, params, meta.version) if meta.cacheable else None
        if key is not None:
            cached, remaining_s = await self.cache.get_level_ttl(CacheLevel.TOOL, key)
            if isinstance(cached, dict):
                hit = ToolSuccess.model_validate(cached)
                return hit.model_copy(
                    update={
                        "call_id": call.id,
                        "cache_hit": True,
                        "latency_ms": elapsed_ms(),
                        "expires_in_s": remaining_s,
                    }
                )

        async def execute() -> ToolResult:
            try:
                value = await asyncio.wait_for(tool.fn(params), meta.timeout_s)
            except TimeoutError:
                timeout = ToolTransientError(
                    f"{tool.name} gave no result within {meta.timeout_s:g} s"
                )
                if raise_transient:
                    raise to_application_error(timeout) from None
                return failure(str(timeout.type), timeout.message, retryable=True)
            except ToolError as exc:
                if exc.retryable and raise_transient:
                    raise to_application_error(exc) from exc
                return failure(str(exc.type), exc.message, retryable=exc.retryable)
            except Exception as exc:  # a tool bug is reported on the job, never fatal to it
                log.exception("tool %s raised unexpectedly", tool.name)
                return failure(type(exc).__name__, str(exc) or type(exc).__name__)
            success = ToolSuccess(
                call_id=call.id,
                name=call.name,
                value=value,
                expires_in_s=meta.cache_ttl_s if meta.cacheable else None,
            )
            if key is not None:
                await self.cache.set_level(
                    CacheLevel.TOOL, key, success.model_dump(mode="json"), ttl_s=meta.cache_ttl_s
                )
            return success

        if key is None or self.coalescer is None:
            result = await execute()
        else:
            shared_key = key

            async def load() -> ToolResult | None:
                shared = await self.cache.get_json(shared_key)
                return ToolSuccess.model_validate(shared) if isinstance(shared, dict) else None

            outcome = await self.coalescer.run(key, execute, load)
            result = outcome.value
            if outcome.role == "waiter":
                observe_coalesced(CacheLevel.TOOL)
                result = result.model_copy(update={"call_id": call.id, "coalesced": True})
        return result.model_copy(update={"latency_ms": elapsed_ms()})
