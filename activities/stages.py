"""The short stages of a job, run as local activities inside the workflow task.

Each method is a thin wrapper: it turns a contract into a call on a cache, the job store or one of
the domain modules (:mod:`domain.prepare`, :mod:`domain.cache_guard`, :mod:`domain.planner`,
:mod:`domain.routing`, :mod:`domain.compression`), and domain errors into ``ApplicationError``
at the boundary.

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
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from pydantic import BaseModel
from redis.exceptions import RedisError
from temporalio import activity

from activities.errors import to_application_error
from core.catalog import ModelCatalog
from core.errors import AgentflowError, BlobNotFoundError
from core.metrics import observe_job
from core.models import (
    AgentResult,
    ApprovalPolicy,
    BudgetReservation,
    CachedResponse,
    CacheLevel,
    CacheReport,
    CheckResponseCacheResult,
    CompressContextInput,
    CompressContextResult,
    ContextItem,
    Importance,
    ModelUsage,
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
from core.providers import usage_of
from core.tools import ToolRegistry
from domain.cache_guard import (
    answer_ttl_s,
    cached_answer,
    cached_response,
    catalog_digest,
    component_key,
    count_lookup,
    gated_by_policy,
    report_with_tool_lookups,
)
from domain.compression import compress_context
from domain.llm_router import LlmRouter
from domain.model_planner import plan_with_model
from domain.planner import plan_tools_by_rules
from domain.prepare import assemble_plan, response_key_input, selection_input
from domain.routing import (
    LearnedRouter,
    Router,
    build_router,
    fit_context_window,
    prompt_tokens_estimate,
    select_with,
)
from infra.cache import (
    RedisCache,
    inputs_digest,
    response_cache_key,
)
from infra.jobs import JobStore
from infra.payloads import read_legacy_blob
from infra.providers import ProviderRegistry
from infra.quotas import Quotas

if TYPE_CHECKING:
    from infra.semantic import SemanticCache

log = logging.getLogger(__name__)

_M = TypeVar("_M", bound=BaseModel)

SEMANTIC_ADD_TIMEOUT_S = 1.0
"""Most seconds filing an answer on the semantic level may take inside ``record_job``."""


def semantic_namespace(inp: ResponseCacheKeyInput) -> str:
    """The semantic level's namespace of a request: its owner and :func:`inputs_digest`.

    Only queries from the same key, with the same context, tool calls, tier choice and models
    can share an answer; the query itself is compared by meaning.
    """
    return f"{inp.owner or '-'}:{inputs_digest(inp)}"


class StageActivities:
    """Cache lookup, tool planning, model selection, compression and the job record.

    Args:
        catalog: tier -> model spec.
        providers: model providers (for the model planner).
        tools: the tool registry.
        cache: Redis cache (a down Redis is a miss).
        store: job records.
        response_cache_ttl_s: TTL of cached final answers, in seconds (an answer built on tool
            results lives at most as long as the shortest TTL of those tools).
        planner_timeout_s: how long the model planner may take before the rules plan instead,
            in seconds.
        quotas: where job budgets are settled as jobs end.
        router: who picks the tier.
        llm_router_timeout_s: set to let the small tier classify prompts (the LLM router).
        semantic: the semantic response level (``None``: off).
        semantic_ttl_s: TTL of a semantic entry, in seconds.
        component_cache_ttl_s: TTL of cached selection and compression outputs, in seconds.
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
        semantic: SemanticCache | None = None,
        semantic_ttl_s: int = 3600,
        component_cache_ttl_s: int = 3600,
    ) -> None:
        self.semantic = semantic
        self.semantic_ttl_s = semantic_ttl_s
        self.component_cache_ttl_s = component_cache_ttl_s
        self.model_identity = catalog.fingerprint()
        self.catalog_digest = catalog_digest(catalog)
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
        """Look the request up in the response level (exact match only).

        Returns:
            The cache key (used later to store the answer) and the cached answer on a hit. An
            unreachable Redis is reported in ``error`` and treated as a miss, never as a failure.
        """
        if not inp.model_identity:
            inp = inp.model_copy(update={"model_identity": self.model_identity})
        key = response_cache_key(inp)
        raw = await self.cache.get_level(CacheLevel.RESPONSE, key)
        hit = cached_response(raw)
        error = None if raw is not None or self.cache.last_error is None else self.cache.last_error
        return CheckResponseCacheResult(
            key=key, hit=hit, error=error, level=CacheLevel.RESPONSE if hit else None
        )

    async def _front_cache(
        self, inp: ResponseCacheKeyInput, policy: ApprovalPolicy | None
    ) -> CheckResponseCacheResult:
        """The response level, then the semantic level.

        A hit the approval policy gates now is not served (see :func:`gated_by_policy`); the
        report says why.
        """
        report = CacheReport()
        checked = await self.check_response_cache(inp)
        count_lookup(report, CacheLevel.RESPONSE, checked.hit is not None)
        hit, level, similarity = checked.hit, checked.level, None
        if hit is not None and (why := self._gated(hit, policy)) is not None:
            report.bypassed = why
            hit, level = None, None
        namespace = semantic_namespace(inp)
        if hit is None and self.semantic is not None:
            found = await self.semantic.lookup(namespace, inp.query)
            if found.degraded:
                report.degraded = True
                report.degraded_reason = found.reason
            entry = None
            if found.hit is not None:
                entry = cached_response(await self.cache.get_json(found.hit.response_key))
            await self.cache.record_lookup(CacheLevel.SEMANTIC, entry is not None)
            count_lookup(report, CacheLevel.SEMANTIC, entry is not None)
            if entry is not None and (why := self._gated(entry, policy)) is not None:
                report.bypassed = why
                entry = None
            if entry is not None and found.hit is not None:
                hit, level, similarity = entry, CacheLevel.SEMANTIC, found.hit.similarity
        if hit is not None:
            report.saved_tokens = hit.tokens
            report.saved_cost_usd = hit.cost_usd
            report.saved_ms = hit.duration_ms
            report.semantic_similarity = similarity
            report.not_stored_reason = "served from the cache"
        self._note_degradation(report)
        return checked.model_copy(
            update={
                "hit": hit,
                "level": level,
                "similarity": similarity,
                "report": report,
                "semantic_namespace": namespace,
            }
        )

    def _gated(self, hit: CachedResponse, policy: ApprovalPolicy | None) -> str | None:
        """Why ``hit`` may not be served under ``policy`` (``None``: it may)."""
        if policy is None:
            return None
        return gated_by_policy(hit.tools, policy, self.tools)

    def _note_degradation(self, report: CacheReport) -> None:
        reason = self.cache.degraded_reason
        if reason is not None:
            report.degraded = True
            report.degraded_reason = reason

    # ------------------------------------------------------------------ component level

    async def _component(
        self, kind: str, payload: str, compute: Callable[[], Awaitable[_M]], model: type[_M]
    ) -> tuple[_M, bool]:
        """``compute()``'s result, from the component level when an identical input was seen.

        ``payload`` is the canonical input (it is hashed with ``kind`` and the component
        version into the key). Returns the result and whether it was a hit.
        """
        key = component_key(kind, payload)
        raw = await self.cache.get_level(CacheLevel.COMPONENT, key)
        if isinstance(raw, dict):
            try:
                return model.model_validate(raw), True
            except ValueError:
                log.warning("undecodable %s component entry; recomputed", kind)
        value = await compute()
        await self.cache.set_level(
            CacheLevel.COMPONENT, key, value.model_dump(mode="json"), self.component_cache_ttl_s
        )
        return value, False

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

        key_input = response_key_input(req, inp.owner, self.model_identity)
        if req.require_approval:
            # A human gate is never answered from the cache (nor is its answer stored).
            report = CacheReport(bypassed="the request asked for approval")
            self._note_degradation(report)
            cache = CheckResponseCacheResult(key=response_cache_key(key_input), report=report)
        else:
            cache = await self._front_cache(key_input, inp.approval_policy)
        lap(Stage.RESPONSE_CACHE)
        if cache.hit is not None:
            return PrepareJobResult(cache=cache, duration_ms=durations)
        plan = await self.plan_tools(PlanToolsInput(query=req.query, tool_calls=req.tool_calls))
        lap(Stage.TOOL_PLAN)
        # The context estimate tokenizes (up to the budget): off the event loop.
        select_input = await asyncio.to_thread(selection_input, req, plan, self.tools)
        selection, selection_hit = await self._route_cached(select_input)
        if cache.report is not None and selection_hit is not None:
            count_lookup(cache.report, CacheLevel.COMPONENT, selection_hit)
        lap(Stage.MODEL_SELECTION)
        return PrepareJobResult(cache=cache, plan=plan, selection=selection, duration_ms=durations)

    async def _route_cached(self, inp: SelectModelInput) -> tuple[SelectModelResult, bool | None]:
        """:meth:`route` behind the component level.

        Selection is a pure function of its input, the router (kind, version, thresholds) and
        the catalog, all in the key. The LLM router calls a model whose verdict may vary, so its
        selections are not cached (``None``: not looked up).
        """
        identity = getattr(self.router, "identity", None)
        if self.llm_router_timeout_s is not None or not callable(identity):
            return await self.route(inp), None
        payload = f"{identity()}|{self.catalog_digest}|{inp.model_dump_json()}"
        return await self._component(
            "selection", payload, lambda: self.route(inp), SelectModelResult
        )

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
        proposals, planner, usage = await self._propose(inp.query)
        planned, rejected = assemble_plan(inp.tool_calls, proposals, self.tools)
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
        """Pick a tier with this worker's router (see :mod:`domain.routing`).

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
    async def compress_context(self, inp: CompressContextInput) -> CompressContextResult:
        """Fit the context items and tool results into ``max_tokens`` by importance.

        Successful tool results join as ``high`` items, failed ones as ``low`` notes. Jobs of the
        v1 shape may pass context items and tool results by blob reference; they are read back
        first (``allow_blob_refs``), and refused otherwise.

        Raises:
            ApplicationError: ``ContextBudgetExceeded`` (non-retryable) when critical items alone
                exceed the budget; ``BlobNotFound`` (non-retryable) for a dangling or refused
                reference; ``StoreUnavailable`` (retryable) when a blob cannot be read.

        The result comes from the component level when the same query, items and budget were
        compressed before (``cache_hit``); the CPU work runs in a thread, off the event loop.
        """

        def items_of() -> tuple[list[ContextItem], str]:
            items = [self._resolve(item, inp.allow_blob_refs) for item in inp.items]
            items += [self._tool_result_item(r, inp.allow_blob_refs) for r in inp.tool_results]
            canonical = json.dumps(
                [inp.query, inp.max_tokens]
                + [[i.content, i.importance.value, i.source] for i in items],
                separators=(",", ":"),
                ensure_ascii=False,
            )
            return items, canonical

        try:
            items, canonical = await asyncio.to_thread(items_of)

            async def compute() -> CompressContextResult:
                return await asyncio.to_thread(compress_context, inp.query, items, inp.max_tokens)

            result, hit = await self._component(
                "compression", canonical, compute, CompressContextResult
            )
        except AgentflowError as exc:
            raise to_application_error(exc) from exc
        return result.model_copy(update={"cache_hit": hit})

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

        What is cached and for how long (README, "Caches"): a completed answer that did not
        come from the cache, met no approval gate, used no tool that failed, did not escalate
        after a failure, and used only cacheable tools, for the response TTL or the shortest TTL
        of the tools it used, whichever is shorter. The job's :class:`CacheReport` (with the
        tool level's hits and misses, and why an answer was not stored) is recorded with it.

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
        if result.status.is_terminal:
            result = await self._cache_answer(inp, result)
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
                    events_json=inp.events_json,
                )
            )
        except AgentflowError as exc:
            raise to_application_error(exc) from exc
        observe_job(result)  # after the write: a retried write is counted once

    async def _add_semantic(self, namespace: str, query: str, response_key: str, ttl: int) -> None:
        """File ``query`` under ``namespace`` on the semantic level, pointing at its answer."""
        assert self.semantic is not None
        semantic_ttl = min(ttl, self.semantic_ttl_s)
        if await self.semantic.add(namespace, query, response_key, semantic_ttl):
            # Under the semantic level's byte limit: the stream's size now, about one vector
            # plus a query and a key per entry (the stream trims itself to its entry limit).
            stream = self.semantic.stream_key(namespace)
            try:
                entries = int(await self.cache.client.xlen(stream))
            except (RedisError, OSError):
                return
            per_entry = 4 * self.semantic.embedder.dim + len(query.encode()) + len(response_key)
            await self.cache.track_level(
                CacheLevel.SEMANTIC, stream, entries * (per_entry + 64), semantic_ttl
            )

    def answer_ttl_s(self, result: AgentResult) -> tuple[int | None, str | None]:
        """How long ``result``'s answer may be cached, in seconds, or why it may not be.

        :func:`domain.cache_guard.answer_ttl_s` with this worker's tools and response TTL.
        """
        return answer_ttl_s(result, self.tools, self.response_cache_ttl_s)

    async def _cache_answer(self, inp: RecordJobInput, result: AgentResult) -> AgentResult:
        """Store a terminal result's answer when it may be cached.

        Returns:
            The result with its complete cache report.
        """
        report = report_with_tool_lookups(result, self.tools)
        ttl, reason = self.answer_ttl_s(result)
        if ttl is not None and inp.response_cache_key and result.selection is not None:
            cached = cached_answer(result, inp.query)
            report.stored = await self.cache.set_level(
                CacheLevel.RESPONSE, inp.response_cache_key, cached.model_dump(mode="json"), ttl
            )
            if not report.stored:
                reason = self.cache.degraded_reason or "the response level refused the entry"
            elif self.semantic is not None and inp.query and inp.semantic_namespace:
                # Bounded: a slow embeddings endpoint must not hold the record (a local
                # activity with a 5 s budget); the answer is on the response level already.
                try:
                    await asyncio.wait_for(
                        self._add_semantic(
                            inp.semantic_namespace, inp.query, inp.response_cache_key, ttl
                        ),
                        SEMANTIC_ADD_TIMEOUT_S,
                    )
                except TimeoutError:
                    log.warning("semantic entry of job %s not added in time", result.job_id)
        if reason is not None and report.not_stored_reason is None:
            report.not_stored_reason = reason
        self._note_degradation(report)
        return result.model_copy(update={"cache": report})
