"""The API + worker stack the HTTP tests share: one factory instead of a copy per file.

A stack is the real app under uvicorn and a real worker (wired by ``worker.build_activities``,
its client by ``worker.worker_plugin``) on one task queue of a Temporal server, over real Redis
and a SQLite job database of its own. ``tests/conftest.py`` builds one per test module on the
session's dev server (the ``stack`` fixture, shaped by the module's ``stack_spec``); tests that
stop or crash the server start their own.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import Engine
from temporalio.client import Client

from api.app import create_app
from core.auth import Scope
from core.catalog import ModelCatalog
from core.settings import Settings
from infra.db import make_engine
from infra.jobs import JobStore
from infra.keys import CreatedKey, KeyStore
from infra.migrations import create_tables
from infra.providers import ProviderRegistry
from infra.quotas import Quotas
from infra.temporal import connect
from infra.tools.sql_query import ensure_example_database
from tests.helpers import serve_asgi
from tests.workflow_support import Harness, agent_worker
from worker import worker_plugin


@dataclass(frozen=True)
class StackSpec:
    """What a module's stack differs in (a module overrides the ``stack_spec`` fixture).

    Args:
        settings: ``Settings`` fields over the stack's defaults (auth, limits, TTLs, ...).
        latency_scale: the simulated models' speed (0: answers at once; 1: the tiers' speed).
        quotas: settle job budgets as ``python worker.py`` does (``Quotas.from_settings``).
        worker: run a worker on the stack's task queue (off: the API alone).
        temporal: the stack has a Temporal server (off: the API is pointed at a closed port,
            for routes that read the database only, or at the ``temporal_address`` that
            ``settings`` names; no client and no worker then).
    """

    settings: dict[str, Any] = field(default_factory=dict)
    latency_scale: float = 0.0
    quotas: bool = False
    worker: bool = True
    temporal: bool = True


def stack_settings(
    temporal_address: str, redis_url: str, tmp: Path, /, *, prefix: str, **overrides: Any
) -> Settings:
    """A stack's settings: its own job database, example shop database and task queue
    (``overrides`` win, ``redis_url`` and ``temporal_address`` included)."""
    fields: dict[str, Any] = {
        "temporal_address": temporal_address,
        "redis_url": redis_url,
        "database_url": f"sqlite:///{tmp / 'jobs.db'}",
        "task_queue": f"{prefix}-{uuid.uuid4()}",
        "sql_database_path": ensure_example_database(tmp / "shop.sqlite"),
        **overrides,
    }
    return Settings(**fields)


@contextmanager
def serve_api(settings: Settings) -> Iterator[str]:
    """The real app for ``settings`` under uvicorn on a free port, in a thread; its URL."""
    with serve_asgi(create_app(settings)) as url:
        yield url


@dataclass
class Stack:
    """A running API (and worker) with handles on what they share."""

    url: str
    """The API's base URL."""
    settings: Settings
    engine: Engine
    """The job database's engine (records, keys and large payloads)."""
    client: Client | None
    """A client of the stack's server with the worker's plugin (``None`` without Temporal)."""
    harness: Harness | None
    """The stack's worker (``None`` when the spec runs none)."""
    latency_scale: float = 0.0
    app: FastAPI | None = None
    """The served app (its state holds the event hub, the client, the caches)."""

    @property
    def temporal(self) -> Client:
        """The stack's Temporal client (to look at workflows behind the API's back)."""
        assert self.client is not None, "this stack has no Temporal server"
        return self.client

    @property
    def store(self) -> JobStore:
        return JobStore(self.engine)

    @property
    def keys(self) -> KeyStore:
        """The API keys, peppered as the API's settings say."""
        return KeyStore.from_settings(self.engine, self.settings)

    def key(self, name: str, *scopes: Scope, **limits: Any) -> CreatedKey:
        """A new API key ``name`` with ``scopes`` (and ``rate_limit_per_minute``, ... limits)."""
        return self.keys.create(name, list(scopes), **limits)

    def providers(self) -> ProviderRegistry:
        """The simulated models at the stack's speed (a worker closes its registry)."""
        return ProviderRegistry.from_settings(
            self.settings.model_copy(update={"simulated_latency_scale": self.latency_scale})
        )

    @asynccontextmanager
    async def worker(
        self,
        settings: Settings | None = None,
        providers: ProviderRegistry | None = None,
        catalog: ModelCatalog | None = None,
    ) -> AsyncIterator[Harness]:
        """Another real worker on ``settings``' task queue (default: the stack's), serving the
        models of ``catalog`` (default: ``ModelCatalog.default()``)."""
        settings = settings or self.settings
        async with agent_worker(
            self.temporal,
            redis_url=settings.redis_url,
            database_url=settings.database_url,
            settings=settings,
            task_queue=settings.task_queue,
            providers=providers or self.providers(),
            catalog=catalog,
        ) as harness:
            yield harness

    @asynccontextmanager
    async def own_api(
        self, *, timeout_s: float = 60, **overrides: Any
    ) -> AsyncIterator[tuple[Settings, httpx.AsyncClient]]:
        """A second API on a task queue of its own (same database and server), for tests that
        stop, replace or kill the worker: no worker polls its queue until the test starts one."""
        own = self.settings.model_copy(update={"task_queue": f"own-{uuid.uuid4()}", **overrides})
        with serve_api(own) as url:
            async with httpx.AsyncClient(base_url=url, timeout=timeout_s) as c:
                yield own, c

    def http(self, key: str | None = None, timeout_s: float = 30) -> httpx.AsyncClient:
        """An HTTP client of the API (with ``key`` as its bearer token when given)."""
        headers = {"Authorization": f"Bearer {key}"} if key else None
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=timeout_s)


@asynccontextmanager
async def api_stack(settings: Settings, spec: StackSpec = StackSpec()) -> AsyncIterator[Stack]:
    """The API for ``settings`` and, as ``spec`` says, a worker on its task queue."""
    engine = make_engine(settings.database_url)
    create_tables(engine)
    async with AsyncExitStack() as running:
        running.callback(engine.dispose)
        client = None
        if spec.temporal:
            client = await connect(settings, worker_plugin(settings, engine))
        stack = Stack("", settings, engine, client, None, spec.latency_scale)
        if spec.worker and client is not None:
            quotas = None
            if spec.quotas:
                quotas = Quotas.from_settings(settings)
                running.push_async_callback(quotas.aclose)
            stack.harness = await running.enter_async_context(
                agent_worker(
                    client,
                    redis_url=settings.redis_url,
                    database_url=settings.database_url,
                    settings=settings,
                    task_queue=settings.task_queue,
                    providers=stack.providers(),
                    quotas=quotas,
                )
            )
        stack.app = create_app(settings)
        stack.url = running.enter_context(serve_asgi(stack.app))
        yield stack
