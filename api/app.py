"""The FastAPI application: ``create_app()`` with a lifespan that opens shared resources.

Run it with ``uvicorn api.app:create_app --factory`` (``agentflow dev`` does). OpenAPI lives at
``/docs``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import install_error_handlers
from api.routes import catalog, health, jobs
from api.state import AppState, TemporalGateway
from core.catalog import load_catalog
from core.settings import Settings, get_settings
from core.telemetry import configure_tracing
from infra.cache import RedisCache
from infra.db import create_tables, make_engine
from infra.jobs import JobStore
from infra.temporal import plugin_from_settings
from infra.tools import builtin_registry


class BodyLimitMiddleware:
    """Answers 413 for request bodies over ``max_bytes``, before any route reads them.

    Checks ``Content-Length`` up front and counts streamed chunks for chunked bodies.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        """Wrap ``app``; ``max_bytes`` is the largest accepted body in bytes."""
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await self._reject(send)
                return
        received = 0
        too_large = False

        async def limited_receive() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    too_large = True
                    raise _BodyTooLarge
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _BodyTooLarge:
            await self._reject(send)

    async def _reject(self, send: Send) -> None:
        body = f'{{"detail":"request body exceeds {self.max_bytes} bytes"}}'.encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _BodyTooLarge(Exception):
    pass


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the API.

    Args:
        settings: configuration; defaults to the environment's (:func:`core.settings.get_settings`).

    The lifespan opens the database engine (creating tables), the Redis cache and a lazily
    connected Temporal client, so the API starts and reports 503s while Temporal is down.
    """
    settings = settings or get_settings()
    if settings.tracing_enabled:
        configure_tracing("agentflow-api")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(settings.database_url)
        create_tables(engine)
        cache = RedisCache(settings.redis_url, timeout_s=settings.redis_timeout_s)
        app.state.agentflow = AppState(
            settings=settings,
            store=JobStore(engine),
            cache=cache,
            tools=builtin_registry(settings),
            catalog=load_catalog(settings.catalog_file, settings.openai_base_url),
            temporal=TemporalGateway(settings, plugin_from_settings(settings, engine)),
        )
        try:
            yield
        finally:
            await cache.aclose()
            engine.dispose()

    app = FastAPI(
        title="agentflow",
        version="0.1.0",
        description="Durable LLM agent requests on Temporal.",
        lifespan=lifespan,
    )
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_bytes)
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(jobs.router)
    app.include_router(catalog.router)
    return app
