"""The agentflow worker: polls the task queue and runs ``AgentWorkflow`` and its activities.

Run it with ``python worker.py`` (``agentflow dev`` does this for you). Configuration comes from
the environment (see :mod:`core.settings`). SIGINT/SIGTERM stop it gracefully: running activities
get their graceful-shutdown window before the process exits.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from contextlib import AsyncExitStack
from datetime import timedelta

from temporalio.client import Client
from temporalio.worker import Worker

from activities.agent import AgentActivities
from activities.cache import RedisCache
from activities.providers import ProviderRegistry
from activities.store import JobStore, create_tables, make_engine
from activities.tools import builtin_registry
from core.catalog import load_catalog
from core.settings import Settings, get_settings
from core.telemetry import configure_tracing
from core.temporal import connect
from core.tokens import encoding
from workflows.agent import AgentWorkflow
from workflows.sandbox import workflow_runner

log = logging.getLogger("agentflow.worker")


def build_activities(settings: Settings) -> tuple[AgentActivities, RedisCache, ProviderRegistry]:
    """Wire the activity class with its clients (no network I/O yet).

    Returns:
        The activities plus the cache and provider registry, which the caller must close.

    Raises:
        ValueError: bad configuration (the message names the setting).
    """
    encoding()  # fail at start-up, not on the first job, if the tokenizer file is missing
    catalog = load_catalog(settings.catalog_file, settings.openai_base_url)
    providers = ProviderRegistry.from_settings(settings)
    cache = RedisCache(settings.redis_url, timeout_s=settings.redis_timeout_s)
    engine = make_engine(settings.database_url)
    create_tables(engine)
    activities = AgentActivities(
        catalog=catalog,
        providers=providers,
        tools=builtin_registry(settings),
        cache=cache,
        store=JobStore(engine),
        payload_threshold_bytes=settings.large_payload_threshold_bytes,
        response_cache_ttl_s=settings.response_cache_ttl_s,
    )
    return activities, cache, providers


def build_worker(client: Client, settings: Settings, activities: AgentActivities) -> Worker:
    """A worker for the settings' task queue with the agent workflow and activities."""
    return Worker(
        client,
        task_queue=settings.task_queue,
        workflows=[AgentWorkflow],
        activities=activities.all(),
        workflow_runner=workflow_runner(),
        max_concurrent_activities=200,
        graceful_shutdown_timeout=timedelta(seconds=10),
    )


async def run_worker(settings: Settings, stop: asyncio.Event) -> None:
    """Connect, run the worker until ``stop`` is set, then shut down cleanly."""
    async with AsyncExitStack() as stack:
        activities, cache, providers = build_activities(settings)
        stack.push_async_callback(cache.aclose)
        stack.push_async_callback(providers.aclose)
        client = await connect(settings)
        worker = build_worker(client, settings, activities)
        log.info(
            "worker polling task queue %r on %s (namespace %s)",
            settings.task_queue,
            settings.temporal_address,
            settings.temporal_namespace,
        )
        async with worker:
            await stop.wait()
        log.info("worker stopped")


def main() -> None:
    """Entry point: ``python worker.py``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = get_settings()
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
