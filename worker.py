"""The agentflow worker: polls the task queue and runs ``AgentWorkflow`` and its activities.

Run it with ``python worker.py`` (``agentflow dev`` does this for you). Configuration comes from
the environment (see :mod:`core.settings`). SIGINT/SIGTERM stop it gracefully: running activities
get their graceful-shutdown window before the process exits.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine
from temporalio.client import Client
from temporalio.service import RPCError
from temporalio.worker import Worker
from threadpoolctl import threadpool_limits

from activities.retention import RetentionActivities
from activities.wiring import (
    AgentActivities,
    BatchActivities,
    ModelActivities,
    StageActivities,
    TokenStreamSettings,
    ToolActivities,
)
from core.catalog import ModelCatalog, load_catalog
from core.logs import configure_logging
from core.metrics import default_metrics, observe_cache, serve_worker_metrics, temporal_runtime
from core.settings import Settings, get_settings
from core.telemetry import configure_tracing
from core.tokens import encoding
from core.tools import ToolRegistry
from domain.routing import router_from_settings
from infra.batches import BatchStore
from infra.cache import RedisCache, cache_from_settings, semantic_from_settings
from infra.coalesce import Coalescer
from infra.db import make_engine
from infra.jobs import JobStore
from infra.migrations import require_schema
from infra.providers import ProviderRegistry
from infra.quotas import Quotas
from infra.redis_client import RedisClients
from infra.retention import RetentionStore, ensure_retention_schedule
from infra.temporal import AgentflowPlugin, connect, plugin_from_settings, temporal_target
from infra.tools import builtin_registry
from workflows.registry import all_workflows

log = logging.getLogger("agentflow.worker")


def build_activities(
    settings: Settings,
    store: JobStore,
    quotas: Quotas | None = None,
    *,
    catalog: ModelCatalog | None = None,
    providers: ProviderRegistry | None = None,
    tools: ToolRegistry | None = None,
    coalesce: bool = True,
    redis: RedisClients | None = None,
) -> tuple[AgentActivities, RedisCache, ProviderRegistry]:
    """Wire the activities with their clients (no network I/O yet).

    The keyword arguments replace one part of the wiring (the tests' scripted models and extra
    tools); left out, everything comes from ``settings`` as in ``python worker.py``.

    Args:
        settings: configuration.
        store: job records.
        quotas: where budgets are settled as jobs end (the caller closes it).
        catalog: the model catalog (default: the settings' ``catalog_file``).
        providers: the model providers (default: the settings'); the caller closes them.
        tools: the tool registry (default: the built-in tools).
        coalesce: run concurrent identical calls once across workers (off: every call runs).
        redis: the process's one Redis pool and breaker, shared by the caches, coalescing and
            the quotas (the caller closes it); ``None``: the cache builds and owns its own.

    Returns:
        The activities plus the cache and provider registry, which the caller must close.

    Raises:
        ValueError: bad configuration (the message names the setting).
    """
    encoding()  # fail at start-up, not on the first job, if the tokenizer file is missing
    if catalog is None:
        catalog = load_catalog(settings.catalog_file, settings.openai_base_url)
    if providers is None:
        providers = ProviderRegistry.from_settings(settings)
    cache = cache_from_settings(settings, redis, on_lookup=observe_cache)
    semantic = semantic_from_settings(settings, cache)
    coalescer = (
        Coalescer(
            cache.client,
            lease_s=settings.coalesce_lease_s,
            available=lambda: not cache.breaker_open,
        )
        if coalesce
        else None
    )
    tools = builtin_registry(settings) if tools is None else tools
    tool_activities = ToolActivities(tools=tools, cache=cache, coalescer=coalescer)
    stages = StageActivities(
        catalog=catalog,
        providers=providers,
        tools=tools,
        cache=cache,
        store=store,
        response_cache_ttl_s=settings.response_cache_ttl_s,
        planner_timeout_s=settings.planner_timeout_s,
        quotas=quotas,
        router=router_from_settings(settings),
        llm_router_timeout_s=settings.router_llm_timeout_s if settings.router == "llm" else None,
        semantic=semantic,
        semantic_ttl_s=settings.semantic_cache_ttl_s,
        component_cache_ttl_s=settings.component_cache_ttl_s,
        tool_runner=tool_activities,
    )
    stream = TokenStreamSettings(
        batch_ms=settings.stream_token_batch_ms,
        batch_tokens=settings.stream_token_batch_tokens,
    )
    activities = AgentActivities(
        stages=stages,
        model=ModelActivities(
            catalog=catalog,
            providers=providers,
            stream=stream,
            cache=cache,
            coalescer=coalescer,
            compressor=stages.compressor,
        ),
        tools=tool_activities,
        batches=BatchActivities(store=BatchStore(store.engine)),
    )
    return activities, cache, providers


def worker_plugin(
    settings: Settings, engine: Engine, activities: Sequence[Callable[..., Any]] = ()
) -> AgentflowPlugin:
    """The worker side's plugin: the client plugin plus every workflow and ``activities``.

    The API builds its client with :func:`infra.temporal.plugin_from_settings` alone and never
    imports workflow code; workers, the Replayer in the tests and the benchmarks use this one.

    Raises:
        ValueError: the encryption settings are invalid (the message names the setting).
    """
    return plugin_from_settings(
        settings, engine, activities=list(activities), workflows=all_workflows()
    )


def build_worker(client: Client, settings: Settings) -> Worker:
    """A worker for the settings' task queue.

    Workflows and activities come from the client's :class:`infra.temporal.AgentflowPlugin`.
    The sticky queue's timeout is ``AGENTFLOW_STICKY_QUEUE_TIMEOUT_S`` (the SDK's 10 s by
    default). Other options stay at the SDK's defaults, which measured best (pollers, slots and
    poller autoscaling no better; a small sticky cache worse).
    """
    return Worker(
        client,
        task_queue=settings.task_queue,
        graceful_shutdown_timeout=timedelta(seconds=10),
        sticky_queue_schedule_to_start_timeout=timedelta(seconds=settings.sticky_queue_timeout_s),
    )


async def run_worker(settings: Settings, stop: asyncio.Event) -> None:
    """Connect, run the worker until ``stop`` is set, then shut down cleanly."""
    async with AsyncExitStack() as stack:
        engine = make_engine(settings.database_url)
        stack.callback(engine.dispose)
        require_schema(engine)  # fails unless at head: `agentflow db upgrade` migrates
        redis = RedisClients.from_settings(settings)  # one pool and one breaker per process
        stack.push_async_callback(redis.aclose)
        quotas = Quotas.from_settings(settings, redis)
        stack.push_async_callback(quotas.aclose)
        activities, cache, providers = build_activities(
            settings, JobStore(engine), quotas, redis=redis
        )
        stack.push_async_callback(cache.aclose)
        stack.push_async_callback(providers.aclose)
        retention = RetentionActivities(RetentionStore(engine))
        plugin = worker_plugin(settings, engine, [*activities.all(), *retention.all()])
        if settings.worker_metrics_port is not None:
            stack.callback(serve_worker_metrics(settings.worker_metrics_port).close)
        default_metrics().watch_cache_degraded(lambda: cache.breaker_open)
        runtime = temporal_runtime(settings.temporal_metrics_port)
        client = await connect(settings, plugin, runtime=runtime)
        try:
            await ensure_retention_schedule(client, settings)
        except RPCError as exc:
            log.warning("retention schedule not created or updated: %s", exc)
        worker = build_worker(client, settings)
        log.info(
            "worker polling task queue %r on %s (namespace %s)",
            settings.task_queue,
            temporal_target(settings),
            settings.temporal_namespace,
        )
        async with worker:
            await stop.wait()
        log.info("worker stopped")


def main() -> None:
    """Entry point: ``python worker.py``."""
    # The workflow sandbox re-imports the workflow module for every workflow run; without cached
    # bytecode it compiles it from source each time (about 7 ms per job). Some environments set
    # PYTHONDONTWRITEBYTECODE; the worker writes bytecode regardless.
    sys.dont_write_bytecode = False
    settings = get_settings()
    configure_logging(settings)
    # numpy's BLAS (the semantic level's nearest-neighbour product, the learned router) on one
    # thread: its default thread per core waits for CPU beside the worker's own threads (a
    # 1,000-entry lookup went from 12 ms to 6.5 ms on 2 cores).
    threadpool_limits(1, user_api="blas")
    if settings.tracing_enabled:
        configure_tracing("agentflow-worker")

    async def _main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_worker(settings, stop)

    asyncio.run(_main())


if __name__ == "__main__":
    main()
