"""The short stages of a job, run as local activities inside the workflow task.

Each method is a thin wrapper: it turns a contract into a call on a cache, the job store or one of
the stage modules (:mod:`activities.planner`, :mod:`activities.selection`,
:mod:`activities.compression`), and domain errors into ``ApplicationError`` at the boundary.

CPU stays off the worker's event loop, where one slow call would stall every other job on the
worker: ``select_model`` and ``compress_context`` are synchronous activities that the worker runs
in its thread pool; ``plan_tools`` is async for the model planner's HTTP call and runs the rules
planner in a thread; ``record_job`` writes the database from a thread. Inputs are bounded by the
request limits (query 20,000 characters, 200 context items, 64 tool calls, tool results capped by
each tool).

The activity names are deployed names: jobs of the v1 shape still call them as regular
activities, with the same input and output contracts.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time

from redis.exceptions import RedisError
from temporalio import activity

from activities.compression import compress_context
from activities.errors import to_application_error
from activities.llm_router import LlmRouter
from activities.model_planner import plan_with_model
from activities.planner import plan_tools_by_rules
from activities.routing import (
    LearnedRouter,
    Router,
    build_router,
    fit_context_window,
    prompt_tokens_estimate,
    select_with,
)
from core.catalog import ModelCatalog
from core.errors import AgentflowError, BlobNotFoundError
from core.models import (
    BudgetReservation,
    CachedResponse,
    CheckResponseCacheResult,
    CompressContextInput,
    CompressContextResult,
    ContextItem,
    Importance,
    JobStatus,
    ModelUsage,
    PlannedToolCall,
    PlanToolsInput,
    PlanToolsResult,
    PrepareJobInput,
    PrepareJobResult,
    RecordJobInput,
    ResponseCacheKeyInput,
    SelectModelInput,
    SelectModelResult,
    Stage,
    Tier,
    ToolCall,
    ToolFailure,
    ToolResult,
)
from core.tools import ToolCallInvalidError, ToolRegistry, canonical_parameters
from infra.cache import RedisCache, response_cache_key
from infra.jobs import JobStore
from infra.payloads import read_legacy_blob
from infra.providers import ProviderRegistry
from infra.quotas import Quotas
from infra.usage import usage_of

log = logging.getLogger(__name__)

CHARS_PER_TOKEN = 4
"""Characters per token for the context's cost estimate (no tokenizer pass over the context)."""


def _context_tokens_estimate(
    items: list[ContextItem], max_context_tokens: int, *, tools_planned: bool = False
) -> int:
    """Prompt tokens the context will take after compression, at most the budget.

    ASCII text counts :data:`CHARS_PER_TOKEN` characters per token and every other character
    one token (CJK text is about one token per character), without tokenizing on the event
    loop. Planned tool results are compressed into the same budget and their size is unknown
    before they run, so with tools planned the estimate is the whole budget.
    """
    if tools_planned:
        return max_context_tokens
    tokens = 0
    for item in items:
        ascii_chars = len(item.content.encode("ascii", "ignore"))
        tokens += ascii_chars // CHARS_PER_TOKEN + (len(item.content) - ascii_chars)
    return min(tokens, max_context_tokens)


class StageActivities:
    """Cache lookup, tool planning, model selection, compression and the job record.

    Args:
        catalog: tier -> model spec.
        providers: model providers (for the model planner).
        tools: the tool registry.
        cache: Redis cache (a down Redis is a miss).
        store: job records.
        response_cache_ttl_s: TTL of cached final answers, in seconds.
        planner_timeout_s: how long the model planner may take before the rules plan instead,
            in seconds.
    """

    def __init__(
        self,
        *,
        catalog: ModelCatalog,
        providers: ProviderRegistry,
        tools: ToolRegistry,
        cache: RedisCache,
        store: JobStore,
        response_cache_ttl_s: int = 3600,
        planner_timeout_s: float = 8.0,
        quotas: Quotas | None = None,
        router: Router | None = None,
        llm_router_timeout_s: float | None = None,
    ) -> None:
        self.quotas = quotas
        self.router = router if router is not None else build_router("learned")
        self.llm_router_timeout_s = llm_router_timeout_s
        self.catalog = catalog
        self.providers = providers
        self.tools = tools
        self.cache = cache
        self.store = store
        self.response_cache_ttl_s = response_cache_ttl_s
        self.planner_timeout_s = planner_timeout_s

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

    # ------------------------------------------------------------------ prepare

    @activity.defn(name="prepare_job")
    async def prepare_job(self, inp: PrepareJobInput) -> PrepareJobResult:
        """The front of a job in one local activity: cache lookup, then plan, then tier.

        One local activity instead of three saves two round trips between the workflow and the
        activity worker inside the job's first workflow task. Selection runs after planning so
        it sees the planned tools.

        Returns:
            The cache lookup; on a miss also the tool plan and the model selection, and each
            part's wall time in ms.
        """
        req = inp.request
        durations: dict[str, float] = {}
        started = time.perf_counter()

        def lap(stage: Stage) -> None:
            nonlocal started
            now = time.perf_counter()
            durations[stage.value] = round((now - started) * 1000, 3)
            started = now

        key_input = ResponseCacheKeyInput(
            query=req.query,
            context=req.context,
            tool_calls=req.tool_calls,
            model_tier=req.model_tier,
            owner=inp.owner,
        )
        if req.require_approval:
            # A human gate is never answered from the cache (nor is its answer stored).
            cache = CheckResponseCacheResult(key=response_cache_key(key_input))
        else:
            cache = await self.check_response_cache(key_input)
        lap(Stage.RESPONSE_CACHE)
        if cache.hit is not None:
            return PrepareJobResult(cache=cache, duration_ms=durations)
        plan = await self.plan_tools(PlanToolsInput(query=req.query, tool_calls=req.tool_calls))
        lap(Stage.TOOL_PLAN)
        selection = await self.route(
            SelectModelInput(
                query=req.query,
                tool_call_names=[p.call.name for p in plan.planned],
                context_items=len(req.context),
                pinned_tier=None if req.model_tier == "auto" else Tier(req.model_tier),
                context_tokens=_context_tokens_estimate(
                    req.context, req.max_context_tokens, tools_planned=bool(plan.planned)
                ),
                tools_answer=self.tools.all_answer_query(p.call.name for p in plan.planned),
            )
        )
        lap(Stage.MODEL_SELECTION)
        return PrepareJobResult(cache=cache, plan=plan, selection=selection, duration_ms=durations)

    # ------------------------------------------------------------------ planning

    @activity.defn(name="plan_tools")
    async def plan_tools(self, inp: PlanToolsInput) -> PlanToolsResult:
        """Validate the request's tool calls and add the planner's proposals.

        The model planner (used when the small tier is a real model) gets
        ``planner_timeout_s``; on any failure or timeout the rules plan instead, and ``planner``
        says so. Explicit calls that do not validate are reported in ``rejected`` (the API refuses
        them earlier; this guards workflows started directly). Planner proposals that duplicate
        an explicit call (same tool, same canonical parameters) are skipped.
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
        planner = "rules"
        if spec.provider != "simulated":
            provider = self.providers.for_spec(spec)
            started = time.perf_counter()
            try:
                calls, completion = await asyncio.wait_for(
                    plan_with_model(provider, spec, query, self.tools), self.planner_timeout_s
                )
            except TimeoutError:
                why = f"no answer within {self.planner_timeout_s:g} s"
            except Exception as exc:  # any failure of the model planner falls back to the rules
                why = type(exc).__name__ if not isinstance(exc, AgentflowError) else exc.message
            else:
                return calls, "model", usage_of("plan", spec, provider.name, completion, started)
            log.warning("model planner failed, using the rules: %s", why)
            planner = f"rules (model failed: {why})"
        return await asyncio.to_thread(plan_tools_by_rules, query, self.tools), planner, None

    # ------------------------------------------------------------------ selection

    @activity.defn(name="select_model")
    def select_model(self, inp: SelectModelInput) -> SelectModelResult:
        """Pick a tier with this worker's router (see :mod:`activities.routing`).

        The router's choice is fitted to the catalog's context windows. Also returns each
        tier's attempt timeout from this worker's catalog (seconds), so the workflow can give
        generation a start-to-close that fits the tier, and the expected remaining cost (USD).
        """
        return self._with_costs(select_with(self.router, inp, self.catalog), inp)

    async def route(self, inp: SelectModelInput) -> SelectModelResult:
        """:meth:`select_model`, or the LLM router when it is configured and can run.

        The LLM router runs when ``llm_router_timeout_s`` is set (``AGENTFLOW_ROUTER=llm``)
        and the small tier is a real model; with the simulated provider the learned router
        decides and the reason says why. The synchronous routers run in a thread (the cue
        scorer and the tokenizer are CPU work).
        """
        router = self.router
        if self.llm_router_timeout_s is None or not isinstance(router, LearnedRouter):
            return await asyncio.to_thread(self.select_model, inp)
        spec = self.catalog.for_tier(Tier.SMALL)
        if spec.provider == "simulated":
            result = await asyncio.to_thread(self.select_model, inp)
            return result.model_copy(
                update={"reason": f"llm router needs a real small model, {result.reason}"}
            )
        llm = LlmRouter(
            self.providers.for_spec(spec), spec, router, timeout_s=self.llm_router_timeout_s
        )
        chosen = fit_context_window(await llm.aroute(inp), inp, self.catalog)
        return self._with_costs(chosen, inp)

    def _with_costs(self, selection: SelectModelResult, inp: SelectModelInput) -> SelectModelResult:
        timeouts = {spec.tier: spec.attempt_timeout_s for spec in self.catalog.models}
        estimate = self.catalog.estimate_remaining_cost_usd(
            selection.tier,
            prompt_tokens=prompt_tokens_estimate(inp),
            completion_tokens=selection.scores.response_length,
        )
        return selection.model_copy(
            update={"attempt_timeouts_s": timeouts, "estimated_cost_usd": estimate}
        )

    # ------------------------------------------------------------------ compression

    @activity.defn(name="compress_context")
    def compress_context(self, inp: CompressContextInput) -> CompressContextResult:
        """Fit the context items and tool results into ``max_tokens`` by importance.

        Successful tool results join as ``high`` items, failed ones as ``low`` notes. Jobs of the
        v1 shape may pass context items and tool results by blob reference; they are read back
        first (``allow_blob_refs``), and refused otherwise.

        Raises:
            ApplicationError: ``ContextBudgetExceeded`` (non-retryable) when critical items alone
                exceed the budget; ``BlobNotFound`` (non-retryable) for a dangling or refused
                reference; ``StoreUnavailable`` (retryable) when a blob cannot be read.
        """
        try:
            items = [self._resolve(item, inp.allow_blob_refs) for item in inp.items]
            items += [self._tool_result_item(r, inp.allow_blob_refs) for r in inp.tool_results]
            return compress_context(inp.query, items, inp.max_tokens)
        except AgentflowError as exc:
            raise to_application_error(exc) from exc

    def _resolve(self, item: ContextItem, allow_refs: bool) -> ContextItem:
        if item.blob is None:
            return item
        if not allow_refs:
            raise BlobNotFoundError("context items cannot reference stored blobs")
        content = read_legacy_blob(self.store.engine, item.blob.blob_id)
        return item.model_copy(update={"content": content, "blob": None})

    def _tool_result_item(self, result: ToolResult, allow_refs: bool) -> ContextItem:
        source = f"tool:{result.name}#{result.call_id}"
        if isinstance(result, ToolFailure):
            return ContextItem(
                content=f"The {result.name} tool failed: {result.error}",
                importance=Importance.LOW,
                source=source,
            )
        if result.value_ref is not None:
            if not allow_refs:
                raise BlobNotFoundError("tool results cannot reference stored blobs")
            text = read_legacy_blob(self.store.engine, result.value_ref.blob_id)
        else:
            text = json.dumps(result.value, ensure_ascii=False)
        return ContextItem(content=text, importance=Importance.HIGH, source=source)

    # ------------------------------------------------------------------ record

    async def _settle(self, reservation: BudgetReservation, actual_usd: float) -> None:
        """Replace the job's budget reservation with its real cost (once per job).

        Redis down: the estimate stays charged (an over-count, never an under-count); logged.
        """
        if self.quotas is None:
            return
        try:
            await self.quotas.settle(reservation, actual_usd)
        except (RedisError, OSError) as exc:
            activity.logger.warning(
                "budget of job %s not settled (Redis unreachable: %s); its estimate of %.4f USD "
                "stays charged",
                reservation.job_id,
                type(exc).__name__,
                reservation.estimate_usd,
            )

    @activity.defn(name="record_job")
    async def record_job(self, inp: RecordJobInput) -> None:
        """Write the job's projection; when it completed with a fresh answer, cache the answer.

        Answers of jobs that went through the approval gate are not cached: a repeat must ask
        again.

        Raises:
            ApplicationError: ``StoreUnavailable`` (retryable) while the database is down or
                locked; ``StoreRejected`` (non-retryable) when it refuses the write. A Redis
                failure only skips the cache write.
        """
        result = inp.result
        if inp.budget is not None and result.status.is_terminal:
            # Before the write: a write the database refuses must not leave the estimate
            # charged, and a retried write settles nothing twice.
            await self._settle(inp.budget, result.total_cost_usd)
        try:
            await asyncio.to_thread(
                functools.partial(
                    self.store.record,
                    result,
                    revision=inp.revision,
                    request=inp.request,
                    created_at=inp.created_at,
                    idempotency_key=inp.idempotency_key,
                    request_hash=inp.request_hash,
                    owner=inp.owner,
                )
            )
        except AgentflowError as exc:
            raise to_application_error(exc) from exc
        if (
            result.status is JobStatus.COMPLETED
            and inp.response_cache_key
            and result.answer is not None
            and not result.response_cache_hit
            and result.selection is not None
            # An answer that went through the approval gate (decided or timed out) is never
            # served without it.
            and result.approval is None
            and result.approval_record is None
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
