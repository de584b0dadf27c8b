"""The activities of :class:`workflows.agent.AgentWorkflow`, grouped in one class.

The worker builds :class:`AgentActivities` once with its clients (model providers, tool registry,
Redis cache, job store) and registers its bound methods. Each method is one stage of the job and
has a stable activity name: a deployed name never changes, since histories refer to it.

Everything that touches the world happens here: Redis (both caches), the database (job records and
large payloads), model endpoints and tools. Domain errors are translated into ``ApplicationError``
at this boundary (:func:`activities.errors.to_application_error`), so the workflow branches on
stable type names and Temporal's retry policy sees what is worth retrying.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from pydantic import JsonValue
from temporalio import activity

from activities.cache import RedisCache, response_cache_key
from activities.compression import compress_context
from activities.errors import to_application_error
from activities.model_planner import PlanParseError, plan_with_model
from activities.planner import plan_tools_by_rules
from activities.providers import Completion, ProviderRegistry, build_messages
from activities.selection import select_model
from activities.store import JobStore
from core.catalog import ModelCatalog, ModelSpec
from core.errors import AgentflowError, ModelError, ToolError
from core.models import (
    CachedResponse,
    CheckResponseCacheResult,
    CompressContextInput,
    CompressContextResult,
    ContextItem,
    GenerateInput,
    GenerateResult,
    Importance,
    JobStatus,
    ModelUsage,
    PlannedToolCall,
    PlanToolsInput,
    PlanToolsResult,
    RecordJobInput,
    ResponseCacheKeyInput,
    RunToolInput,
    SelectModelInput,
    SelectModelResult,
    Tier,
    ToolCall,
    ToolFailure,
    ToolResult,
    ToolSuccess,
)
from core.tools import ToolCallInvalidError, ToolRegistry, canonical_parameters, tool_cache_key

log = logging.getLogger(__name__)


class AgentActivities:
    """Stage implementations for one worker process.

    Args:
        catalog: tier -> model spec (costs in USD per 1k tokens).
        providers: model providers by kind.
        tools: the tool registry.
        cache: Redis cache for responses and tool results (a down Redis is a miss).
        store: job records and large payloads.
        payload_threshold_bytes: tool results whose JSON is larger go to the blob store.
        response_cache_ttl_s: TTL of cached final answers, in seconds.
    """

    def __init__(
        self,
        *,
        catalog: ModelCatalog,
        providers: ProviderRegistry,
        tools: ToolRegistry,
        cache: RedisCache,
        store: JobStore,
        payload_threshold_bytes: int = 32 * 1024,
        response_cache_ttl_s: int = 3600,
    ) -> None:
        self.catalog = catalog
        self.providers = providers
        self.tools = tools
        self.cache = cache
        self.store = store
        self.payload_threshold_bytes = payload_threshold_bytes
        self.response_cache_ttl_s = response_cache_ttl_s

    def all(self) -> list[Any]:
        """The bound activity methods, for ``Worker(activities=...)``."""
        return [
            self.check_response_cache,
            self.select_model,
            self.generate_answer,
            self.plan_tools,
            self.run_tool,
            self.compress_context,
            self.record_job,
        ]

    # ------------------------------------------------------------------ response cache

    @activity.defn(name="check_response_cache")
    async def check_response_cache(self, inp: ResponseCacheKeyInput) -> CheckResponseCacheResult:
        """Look the request up in the response cache.

        Returns:
            The cache key (used later to store the answer) and the cached answer on a hit. An
            unreachable Redis is reported in ``error`` and treated as a miss, never as a failure.
        """
        key = response_cache_key(inp)
        raw = await self.cache.get_json(key)
        hit = CachedResponse.model_validate(raw) if isinstance(raw, dict) else None
        error = None if raw is not None or self.cache.last_error is None else self.cache.last_error
        return CheckResponseCacheResult(key=key, hit=hit, error=error)

    # ------------------------------------------------------------------ model selection

    @activity.defn(name="select_model")
    async def select_model(self, inp: SelectModelInput) -> SelectModelResult:
        """Classify the task, score it and pick a tier (see :mod:`activities.selection`)."""
        return select_model(inp)

    # ------------------------------------------------------------------ generation

    @activity.defn(name="generate_answer")
    async def generate_answer(self, inp: GenerateInput) -> GenerateResult:
        """Ask the tier's model for a draft or a final answer.

        Returns:
            The text and its usage: prompt and completion tokens, cost in USD from the catalog,
            latency in ms.

        Raises:
            ApplicationError: typed ``ModelRateLimited`` (retryable, with the endpoint's
                Retry-After as the next retry delay), ``ModelUnavailable`` (retryable),
                ``ModelRequestRejected`` or ``ModelOutputInvalid`` (non-retryable).
        """
        spec = self.catalog.for_tier(inp.tier)
        provider = self.providers.for_spec(spec)
        max_tokens = min(inp.max_tokens or spec.max_tokens, spec.max_tokens)
        messages = build_messages(inp.query, inp.context, inp.purpose)
        started = time.perf_counter()
        try:
            completion = await provider.complete(spec, messages, max_tokens)
        except ModelError as exc:
            raise to_application_error(exc) from exc
        usage = _usage(inp.purpose, spec, provider.name, completion, started)
        return GenerateResult(text=completion.text, usage=usage)

    # ------------------------------------------------------------------ tools

    @activity.defn(name="plan_tools")
    async def plan_tools(self, inp: PlanToolsInput) -> PlanToolsResult:
        """Validate the request's tool calls and add the planner's proposals.

        Explicit calls that do not validate are reported in ``rejected`` (the API refuses them
        earlier; this guards workflows started directly). Planner proposals that duplicate an
        explicit call (same tool, same canonical parameters) are skipped.
        """
        planned: list[PlannedToolCall] = []
        rejected: list[str] = []
        seen: set[tuple[str, str]] = set()

        def add(call: ToolCall, origin: str) -> None:
            try:
                tool, params = self.tools.validate(call)
            except ToolCallInvalidError as exc:
                rejected.append(f"{origin} call {call.id}: {exc.message}")
                return
            identity = (tool.name, canonical_parameters(params))
            if identity in seen:
                return
            seen.add(identity)
            meta = tool.metadata
            planned.append(
                PlannedToolCall(
                    call=call,
                    parallel_safe=meta.parallel_safe,
                    requires_approval=meta.requires_approval,
                    timeout_s=meta.timeout_s,
                    origin="request" if origin == "request" else "planner",
                )
            )

        for call in inp.tool_calls:
            add(call, "request")
        proposals, planner, usage = await self._propose(inp.query)
        for call in proposals:
            add(call, "planner")
        return PlanToolsResult(planned=planned, rejected=rejected, planner=planner, usage=usage)

    async def _propose(self, query: str) -> tuple[list[ToolCall], str, ModelUsage | None]:
        """The model's proposals when the small tier is a real model, else the rules'."""
        spec = self.catalog.for_tier(Tier.SMALL)
        if spec.provider == "simulated":
            return plan_tools_by_rules(query, self.tools), "rules", None
        provider = self.providers.for_spec(spec)
        started = time.perf_counter()
        try:
            calls, completion = await plan_with_model(provider, spec, query, self.tools)
        except (ModelError, PlanParseError) as exc:
            log.warning("model planner failed, using the rules: %s", exc)
            return plan_tools_by_rules(query, self.tools), f"rules (model failed: {exc})", None
        return calls, "model", _usage("plan", spec, provider.name, completion, started)

    @activity.defn(name="run_tool")
    async def run_tool(self, inp: RunToolInput) -> ToolResult:
        """Run one tool call behind the Redis tool-result cache.

        Returns:
            :class:`ToolSuccess` (value inline, or ``value_ref`` to the blob store when its JSON
            is over the payload threshold) or :class:`ToolFailure` for a refused input or a
            failed tool. ``latency_ms`` covers the cache lookup and the call.

        Raises:
            ApplicationError: ``ToolTransient`` for failures worth retrying (network, 5xx);
                after the last attempt the workflow records them as a failure.
        """
        call = inp.call
        started = time.perf_counter()

        def elapsed_ms() -> float:
            return round((time.perf_counter() - started) * 1000, 3)

        try:
            tool, params = self.tools.validate(call)
        except ToolCallInvalidError as exc:
            return ToolFailure(
                call_id=call.id,
                name=call.name,
                error_type="ToolCallInvalid",
                error=exc.message,
                latency_ms=elapsed_ms(),
            )
        key = tool_cache_key(tool.name, params) if tool.metadata.cacheable else None
        if key is not None:
            cached = await self.cache.get_json(key)
            if isinstance(cached, dict):
                hit = ToolSuccess.model_validate(cached)
                return hit.model_copy(
                    update={"call_id": call.id, "cache_hit": True, "latency_ms": elapsed_ms()}
                )
        try:
            value = await tool.fn(params)
        except ToolError as exc:
            if exc.retryable:
                raise to_application_error(exc) from exc
            return ToolFailure(
                call_id=call.id,
                name=call.name,
                error_type=str(exc.type),
                error=exc.message,
                latency_ms=elapsed_ms(),
            )
        except Exception as exc:  # a tool bug is reported on the job, never fatal to it
            log.exception("tool %s raised unexpectedly", tool.name)
            return ToolFailure(
                call_id=call.id,
                name=call.name,
                error_type=type(exc).__name__,
                error=str(exc) or type(exc).__name__,
                latency_ms=elapsed_ms(),
            )
        result = await self._offload_if_large(call, value)
        if key is not None:
            await self.cache.set_json(
                key, result.model_dump(mode="json"), ttl_s=tool.metadata.cache_ttl_s
            )
        return result.model_copy(update={"latency_ms": elapsed_ms()})

    async def _offload_if_large(self, call: ToolCall, value: JsonValue) -> ToolSuccess:
        encoded = json.dumps(value, ensure_ascii=False)
        if len(encoded.encode()) <= self.payload_threshold_bytes:
            return ToolSuccess(call_id=call.id, name=call.name, value=value)
        ref = await self._store_call(self.store.put_blob, encoded)
        return ToolSuccess(call_id=call.id, name=call.name, value=None, value_ref=ref)

    # ------------------------------------------------------------------ compression

    @activity.defn(name="compress_context")
    async def compress_context(self, inp: CompressContextInput) -> CompressContextResult:
        """Fit the context items and tool results into ``max_tokens`` by importance.

        Items passed by reference are read back from the blob store first. Successful tool
        results join as ``high`` items, failed ones as ``low`` notes.

        Raises:
            ApplicationError: ``ContextBudgetExceeded`` (non-retryable) when critical items alone
                exceed the budget; ``BlobNotFound`` (non-retryable) for a dangling reference.
        """
        items = [await self._resolve(item) for item in inp.items]
        for result in inp.tool_results:
            items.append(await self._tool_result_item(result))
        try:
            return await asyncio.to_thread(compress_context, inp.query, items, inp.max_tokens)
        except AgentflowError as exc:
            raise to_application_error(exc) from exc

    async def _resolve(self, item: ContextItem) -> ContextItem:
        if item.blob is None:
            return item
        content = await self._store_call(self.store.get_blob, item.blob.blob_id)
        return item.model_copy(update={"content": content, "blob": None})

    async def _tool_result_item(self, result: ToolResult) -> ContextItem:
        source = f"tool:{result.name}#{result.call_id}"
        if isinstance(result, ToolFailure):
            return ContextItem(
                content=f"The {result.name} tool failed: {result.error}",
                importance=Importance.LOW,
                source=source,
            )
        if result.value_ref is not None:
            text = await self._store_call(self.store.get_blob, result.value_ref.blob_id)
        else:
            text = json.dumps(result.value, ensure_ascii=False)
        return ContextItem(content=text, importance=Importance.HIGH, source=source)

    # ------------------------------------------------------------------ record

    @activity.defn(name="record_job")
    async def record_job(self, inp: RecordJobInput) -> None:
        """Persist the job's state; when it completed with a fresh answer, cache the answer.

        Raises:
            ApplicationError: ``StoreUnavailable`` (retryable) while the database is down; the
                workflow retries until it is back, so no outcome is lost. A Redis failure only
                skips the cache write.
        """
        result = inp.result
        await self._store_call(self.store.record_result, result)
        if (
            result.status is JobStatus.COMPLETED
            and inp.response_cache_key
            and result.answer is not None
            and not result.response_cache_hit
            and result.selection is not None
        ):
            final = next((u for u in reversed(result.usage) if u.purpose == "final"), None)
            cached = CachedResponse(
                answer=result.answer,
                tier=final.tier if final else result.selection.tier,
                model=final.model if final else "",
                simulated=result.simulated,
                job_id=result.job_id,
            )
            await self.cache.set_json(
                inp.response_cache_key, cached.model_dump(mode="json"), self.response_cache_ttl_s
            )

    async def _store_call(self, fn: Any, *args: Any) -> Any:
        """Run a blocking store method in a thread, translating domain errors for Temporal."""
        try:
            return await asyncio.to_thread(fn, *args)
        except AgentflowError as exc:
            raise to_application_error(exc) from exc


def _usage(
    purpose: str, spec: ModelSpec, provider: str, completion: Completion, started: float
) -> ModelUsage:
    """Accounting for one model call; ``started`` is its ``time.perf_counter()`` start."""
    return ModelUsage(
        purpose=purpose,
        tier=spec.tier,
        provider=provider,
        model=completion.model or spec.model_id,
        simulated=completion.simulated,
        prompt_tokens=completion.prompt_tokens,
        completion_tokens=completion.completion_tokens,
        cost_usd=spec.cost_usd(completion.prompt_tokens, completion.completion_tokens),
        latency_ms=round((time.perf_counter() - started) * 1000, 3),
    )


__all__ = ["AgentActivities"]
