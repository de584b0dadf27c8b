"""The FastAPI application: ``create_app()`` with a lifespan that opens shared resources.

Run it with ``uvicorn api.app:create_app --factory`` (``agentflow dev`` does). OpenAPI lives at
``/docs``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import version as package_version

from fastapi import FastAPI
from threadpoolctl import threadpool_limits

from api.errors import install_error_handlers
from api.event_hub import EventHub
from api.middleware import BodyLimitMiddleware
from api.routes import cache as cache_routes
from api.routes import catalog, events, health, jobs, metrics, ui
from api.routes.codec import mount_codec
from api.routes.prometheus import mount_metrics
from api.state import AppState, TemporalGateway
from core.catalog import load_catalog
from core.logs import configure_logging
from core.settings import Settings, get_settings
from core.telemetry import configure_tracing
from infra.cache import cache_from_settings
from infra.db import make_engine
from infra.jobs import JobStore
from infra.keys import KeyStore
from infra.migrations import require_schema
from infra.quotas import Quotas
from infra.redis_client import RedisClients
from infra.temporal import plugin_from_settings
from infra.tools import builtin_registry

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the API.

    Args:
        settings: configuration; defaults to the environment's (:func:`core.settings.get_settings`).

    The lifespan opens the database engine (checking its schema), the Redis cache and a lazily
    connected Temporal client, so the API starts and reports 503s while Temporal is down.
    """
    settings = settings or get_settings()
    if settings.log_format == "json":  # text: uvicorn's set-up, as before
        configure_logging(settings)
    if settings.tracing_enabled:
        configure_tracing("agentflow-api")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        threadpool_limits(1, user_api="blas")  # as the worker does (see worker.main)
        engine = make_engine(settings.database_url)
        require_schema(engine)  # fails unless at head: `agentflow db upgrade` migrates
        redis = RedisClients.from_settings(settings)  # one pool and one breaker per process
        cache = cache_from_settings(settings, redis)
        quotas = Quotas.from_settings(settings, redis)
        # A client only: the API starts and reads jobs by name and never loads workflow code.
        temporal = TemporalGateway(settings, plugin_from_settings(settings, engine))
        event_hub = EventHub(
            temporal.client,
            redis,
            poll_ms=settings.stream_poll_ms,
            linger_s=settings.sse_linger_s,
            max_readers=settings.sse_max_readers_per_job,
        )
        app.state.agentflow = AppState(
            settings=settings,
            store=JobStore(engine),
            cache=cache,
            tools=builtin_registry(settings),
            catalog=load_catalog(settings.catalog_file, settings.openai_base_url),
            temporal=temporal,
            keys=KeyStore.from_settings(engine, settings),
            quotas=quotas,
            event_hub=event_hub,
        )
        if settings.auth_disabled:
            log.warning(
                "AUTHENTICATION IS OFF (AGENTFLOW_AUTH_DISABLED): every caller is an admin; "
                "for local development only"
            )
        try:
            yield
        finally:
            await event_hub.aclose()
            await quotas.aclose()
            await cache.aclose()
            await redis.aclose()
            engine.dispose()

    app = FastAPI(
        title="agentflow",
        version=package_version("agentflow"),
        description="Durable LLM agent requests on Temporal.",
        lifespan=lifespan,
    )
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_bytes)
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(jobs.router)
    app.include_router(events.router)
    app.include_router(ui.router)
    app.include_router(catalog.router)
    app.include_router(metrics.router)
    app.include_router(cache_routes.router)
    mount_codec(app, settings)
    mount_metrics(app)  # last: its timing covers the other middleware
    return app
