"""The short stages of a job, run as local activities inside the workflow task.

Each method is a thin wrapper: it turns a contract into a call on a cache, the job store or one of
the domain modules (:mod:`domain.prepare`, :mod:`domain.cache_guard`, :mod:`domain.planner`,
:mod:`domain.routing`, :mod:`domain.compression`), and domain errors into ``ApplicationError``
at the boundary.

CPU stays off the worker's event loop, where one slow call would stall every other job on the
worker: ``compress_context`` is a synchronous activity that the worker runs in its thread pool,
``prepare_job`` runs selection in a thread, ``plan_tools`` is async for the model planner's HTTP
call and runs the rules planner in a thread, and ``record_job`` writes the database from a
thread. Inputs are bounded by the request limits (query 20,000 characters, 200 context items, 64
tool calls, tool results capped by each tool).

The activity names are deployed names and never change. ``plan_tools`` and ``select_model``,
registered as activities by the v1 shape, are plain methods since 0.3.0 (CHANGELOG), called by
``prepare_job``. The answer caches' Redis side
(lookup, component level, storing answers) is :class:`infra.cache.answers.AnswerCache`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from redis.exceptions import RedisError
from temporalio import activity

from activities.compression import ContextCompressor
from activities.errors import to_application_error
from activities.tool_calls import ToolActivities
from core.catalog import ModelCatalog
from core.errors import AgentflowError
from core.metrics import observe_job
from core.models import (
    AgentResult,
    BudgetReservation,
    CompressContextInput,
    CompressContextResult,
    ModelUsage,
    PlanToolsInput,
    PlanToolsResult,
    PrepareJobInput,
    PrepareJobResult,
    RecordJobInput,
    SelectModelInput,
    SelectModelResult,
    Stage,
    Tier,
    ToolCall,
)
from core.providers import usage_of
from core.tools import ToolRegistry
from domain.approvals import approval_reasons
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
)
from infra.cache.answers import AnswerCache
from infra.jobs import JobStore
from infra.providers import ProviderRegistry
from infra.quotas import Quotas

if TYPE_CHECKING:
    from infra.semantic import SemanticCache

log = logging.getLogger(__name__)

FIRST_RECORD_WAIT_S = 2.0
"""How long ``prepare_job`` waits, once its own work is done, for the job's first record to be
written (seconds) before reporting it unwritten, so the workflow writes it through its own path."""


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
        component_cache_ttl_s: TTL of cached compression outputs, in seconds.
        tool_runner: runs a job's quick in-memory tools inside ``prepare_job`` when it may
            (``None``: never; the workflow runs them).
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
        tool_runner: ToolActivities | None = None,
    ) -> None:
        self.model_identity = catalog.fingerprint()
        self.answers = AnswerCache(
            cache,
            tools,
            model_identity=self.model_identity,
            response_ttl_s=response_cache_ttl_s,
            semantic=semantic,
            semantic_ttl_s=semantic_ttl_s,
            component_ttl_s=component_cache_ttl_s,
        )
        self.compressor = ContextCompressor(self.answers, store.engine)
        self.tool_runner = tool_runner
        self.quotas = quotas
        self.router = router if router is not None else build_router("learned")
        self.llm_router_timeout_s = llm_router_timeout_s
        self.catalog = catalog
        self.providers = providers
        self.tools = tools
        self.store = store
        self.response_cache_ttl_s = response_cache_ttl_s
        self.planner_timeout_s = planner_timeout_s

    # ------------------------------------------------------------------ prepare

    @activity.defn(name="prepare_job")
    async def prepare_job(self, inp: PrepareJobInput) -> PrepareJobResult:
        """The front of a job in one local activity: cache lookup, plan, tier, first record.

        One local activity instead of four (five with the tools) saves round trips between the
        workflow and the activity worker inside the job's first workflow task. With
        ``inp.run_local_tools`` it also runs the plan's tools when :meth:`_tools_budget_s`
        allows (quick in-memory tools of a job that will not wait). Selection runs after planning so
        it sees the planned tools. The first record (``inp.record``) is written in a thread
        while the rest runs; a write that fails is reported (``recorded=False``), never raised,
        so the lookup is not repeated for it: the workflow writes the record itself then.

        Returns:
            The cache lookup; on a miss also the tool plan and the model selection (and the
            tools' results when it ran them), and each part's wall time in ms; whether the first
            record was written.
        """
        if inp.record is None:
            return await self._prepare(inp)
        write = asyncio.create_task(self._write_first_record(inp.record))
        try:
            prepared = await self._prepare(inp)
        except BaseException:
            write.cancel()  # the retry writes it again (a write of the same revision is a no-op)
            raise
        try:
            # A slow database does not hold the job's front: past this, the workflow writes the
            # record itself (a second write of the same revision changes nothing).
            prepared.recorded = await asyncio.wait_for(write, FIRST_RECORD_WAIT_S)
        except TimeoutError:
            # The thread may still finish its write; the workflow's write of the same record
            # then changes nothing (the store ignores a repeated revision).
            log.warning(
                "job %s: first record not written within %g s; the workflow writes it",
                inp.record.result.job_id,
                FIRST_RECORD_WAIT_S,
            )
        return prepared

    async def _write_first_record(self, inp: RecordJobInput) -> bool:
        """Write the job's first record; ``False`` when it was not written (logged).

        Any failure is reported, not raised: the workflow then writes the record through its
        own path (a local activity, then a regular one that retries), as it did before.
        """
        try:
            await self._write_record(inp, inp.result)
        except Exception as exc:  # every failure hands the write back to the workflow
            why = exc.type.value if isinstance(exc, AgentflowError) else type(exc).__name__
            log.warning(
                "job %s: first record not written (%s); the workflow writes it again",
                inp.result.job_id,
                why,
            )
            return False
        return True

    async def _prepare(self, inp: PrepareJobInput) -> PrepareJobResult:
        """Cache lookup, then (on a miss) plan and selection; see :meth:`prepare_job`."""
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
            cache = self.answers.bypass(key_input, "the request asked for approval")
        else:
            cache = await self.answers.lookup(key_input, inp.approval_policy)
        lap(Stage.RESPONSE_CACHE)
        if cache.hit is not None:
            return PrepareJobResult(cache=cache, duration_ms=durations)
        plan = await self.plan_tools(PlanToolsInput(query=req.query, tool_calls=req.tool_calls))
        lap(Stage.TOOL_PLAN)
        # The context estimate tokenizes (up to the budget): off the event loop.
        select_input = await asyncio.to_thread(selection_input, req, plan, self.tools)
        # Not behind the component level: see activities.compression.COMPONENT_MIN_CHARS.
        selection = await self.route(select_input)
        lap(Stage.MODEL_SELECTION)
        tool_results = None
        budget_s = self._tools_budget_s(inp, plan, selection) if inp.run_local_tools else None
        if budget_s is not None:
            assert self.tool_runner is not None
            try:
                tool_results = await asyncio.wait_for(
                    self.tool_runner.run_calls([p.call for p in plan.planned]), budget_s
                )
            except Exception as exc:  # never fails the job's front, nor runs out its time
                # The workflow runs them itself then, where a failed batch is a failure per
                # call (a corrupt entry on the tool level, say) and a slow one has its own time.
                log.warning(
                    "prepare_job did not run the tools (%s); the workflow runs them",
                    type(exc).__name__ if isinstance(exc, TimeoutError) else exc,
                )
            else:
                lap(Stage.TOOLS)
        return PrepareJobResult(
            cache=cache,
            plan=plan,
            selection=selection,
            duration_ms=durations,
            tool_results=tool_results,
        )

    def _tools_budget_s(
        self, inp: PrepareJobInput, plan: PlanToolsResult, selection: SelectModelResult
    ) -> float | None:
        """How long ``prepare_job`` may spend running the plan's tools itself, in seconds.

        ``None`` (the workflow runs them) unless every planned call is a quick in-memory,
        parallel-safe tool (``ToolMetadata.runs_locally``), the job will not wait for approval
        (the workflow's own rule, :func:`domain.approvals.approval_reasons`: a gated call never
        runs before its decision), and this attempt has time left for the slowest call's
        timeout plus the first record's wait (:data:`FIRST_RECORD_WAIT_S`) and a second. The
        budget is what is left of the attempt minus that wait and the second, so running the
        tools never times ``prepare_job`` out (which would repeat the whole front).
        """
        planned = plan.planned
        if self.tool_runner is None or inp.approval_policy is None or not planned:
            return None
        if not all(p.runs_locally and p.parallel_safe for p in planned):
            return None
        reasons, _ = approval_reasons(
            inp.request.require_approval, inp.approval_policy, planned, selection
        )
        if reasons:
            return None
        info = activity.info()
        if info.start_to_close_timeout is None:
            return max(p.timeout_s for p in planned) + 1.0
        elapsed = datetime.now(UTC) - info.started_time
        budget_s = (info.start_to_close_timeout - elapsed).total_seconds()
        budget_s -= FIRST_RECORD_WAIT_S + 1.0
        return budget_s if budget_s > max(p.timeout_s for p in planned) else None

    # ------------------------------------------------------------------ planning

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
        """The compression stage as a local activity of its own (jobs of shape 1 and older).

        From shape 2 on, ``generate_answer`` compresses before it calls the model; both run
        :meth:`activities.compression.ContextCompressor.compress`, whose docstring says what
        it does and raises.
        """
        return await self.compressor.compress(inp)

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
            result = await self.answers.store(inp, result)
        try:
            await self._write_record(inp, result)
        except AgentflowError as exc:
            raise to_application_error(exc) from exc

    async def _write_record(self, inp: RecordJobInput, result: AgentResult) -> None:
        """Write ``result`` with ``inp``'s identity fields to the job database (in a thread).

        Raises:
            AgentflowError: ``StoreUnavailableError`` or ``StoreRejectedError`` from the store.
        """
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
        observe_job(result)  # after the write: a retried write is counted once

    def answer_ttl_s(self, result: AgentResult) -> tuple[int | None, str | None]:
        """How long ``result``'s answer may be cached, in seconds, or why it may not be.

        :meth:`infra.cache.answers.AnswerCache.answer_ttl_s` with this worker's tools and TTL.
        """
        return self.answers.answer_ttl_s(result)
