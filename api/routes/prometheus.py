"""``GET /metrics`` in Prometheus' text format, and the middleware that times every request.

``/metrics`` needs no API key: scrapers rarely carry one, and it serves only aggregate numbers
(counts, latencies, tokens and cost per tier, cache outcomes per level). No label carries a job
id, an owner, a key, a query or a raw path; routes appear as their templates
(``/v1/jobs/{job_id}``), and paths no route matches share the label ``unmatched``. Operators who
do not want it public block ``/metrics`` at the proxy, as they would ``/healthz``.

Each scrape also pings Redis (at most once a second per process, bounded by the cache's socket
timeout) and sets ``agentflow_cache_degraded``, so a Redis outage shows on the API's metrics
even while no request touches the cache.
"""

from __future__ import annotations

import asyncio
import time
import weakref

from fastapi import APIRouter, FastAPI, Request, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.metrics import UNMATCHED_ROUTE, Metrics, default_metrics
from infra.cache import RedisCache

router = APIRouter(tags=["metrics"], include_in_schema=False)

SUBMIT_ROUTE = ("POST", "/v1/jobs")
"""The route whose ``202`` answers count as submitted jobs (unless ``Idempotent-Replayed``)."""

REDIS_PROBE_REUSE_S = 1.0
"""A Redis ping answered this recently is reused: ``/metrics`` needs no key, so a flood of
scrapes must not become a flood of pings."""


class _RedisProbe:
    """One Redis ping at a time per cache, its answer reused for :data:`REDIS_PROBE_REUSE_S`."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._at: float | None = None
        self._up = True

    async def up(self, cache: RedisCache) -> bool:
        async with self._lock:
            if self._at is None or time.monotonic() - self._at >= REDIS_PROBE_REUSE_S:
                self._up = await cache.ping()
                self._at = time.monotonic()
            return self._up


_probes: weakref.WeakKeyDictionary[RedisCache, _RedisProbe] = weakref.WeakKeyDictionary()


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    """This process's metrics in Prometheus' text format (OpenMetrics when the scraper asks).

    No key needed; aggregate numbers only (see the module docstring).
    """
    state = getattr(request.app.state, "agentflow", None)
    registry = default_metrics()
    if state is not None:
        cache: RedisCache = state.cache
        registry.set_cache_degraded(not await _probes.setdefault(cache, _RedisProbe()).up(cache))
    body, content_type = registry.render(request.headers.get("accept"))
    return Response(content=body, media_type=content_type)


def route_template(scope: Scope) -> str:
    """The template of the route that handled ``scope`` (``/v1/jobs/{job_id}``).

    :data:`UNMATCHED_ROUTE` when no route handled it: none matched its path, or a middleware
    answered before routing (a 413 for a ``Content-Length`` over the body limit; its
    ``status`` label tells it apart). Matching the path again here would need FastAPI's private
    route tree, or its OpenAPI schema (over a second to build on first use).
    """
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) else UNMATCHED_ROUTE


class HttpMetricsMiddleware:
    """Counts and times every HTTP request by route template, method and status code.

    The time runs until the response's last byte (or the exception), so a server-sent event
    stream counts for as long as it stays open. A request whose app raised counts as 500. A
    ``202`` from ``POST /v1/jobs`` without ``Idempotent-Replayed`` also counts as a submitted job.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics | None = None) -> None:
        """Wrap ``app``, recording into ``metrics`` (default: this process's)."""
        self.app = app
        self.metrics = metrics or default_metrics()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        replayed = False

        async def recording_send(message: Message) -> None:
            nonlocal status, replayed
            if message["type"] == "http.response.start":
                status = int(message["status"])
                replayed = any(
                    name.lower() == b"idempotent-replayed" for name, _ in message.get("headers", [])
                )
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = route_template(scope)
            method = str(scope.get("method", ""))
            self.metrics.observe_http(route, method, status, time.perf_counter() - started)
            if (method, route) == SUBMIT_ROUTE and status == 202 and not replayed:
                self.metrics.observe_submitted()


def mount_metrics(app: FastAPI) -> None:
    """Add ``GET /metrics`` and the request metrics middleware to ``app``.

    Call it in ``create_app`` after the other middleware, so the timing covers them and the
    answers they give themselves (a 413 from the body limit) are counted too.
    """
    app.include_router(router)
    app.add_middleware(HttpMetricsMiddleware)
