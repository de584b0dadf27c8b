"""Alembic migrations on real SQLite files and real PostgreSQL schemas."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, MetaData, Table, inspect, select, text
from sqlmodel import SQLModel

from core.models import AgentResult, JobStatus
from infra.db import TABLES, make_engine
from infra.jobs import JobStore
from infra.keys import ApiKeyRecord
from infra.migrations import (
    BASELINE_REVISION,
    VERSION_TABLE,
    create_tables,
    current_revision,
    head_revision,
    target_metadata,
    upgrade,
)

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def url_and_args(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, dict]]:
    """A URL and connect arguments naming an empty database: a SQLite file or a new schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'jobs.db'}", {}
        return
    url: str = request.getfixturevalue("postgres_url")
    schema = f"test_migrations_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield url, {"options": f"-csearch_path={schema}"}
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def bare_engine(url_and_args: tuple[str, dict]) -> Iterator[Engine]:
    url, connect_args = url_and_args
    engine = make_engine(url, connect_args=connect_args)
    yield engine
    engine.dispose()


def _differences(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": True}
        )
        return list(compare_metadata(context, target_metadata()))


def _schema(engine: Engine) -> dict[str, Any]:
    """Tables, columns (name, type, nullability, default), indexes and unique constraints."""
    inspector = inspect(engine)
    return {
        name: (
            [
                (c["name"], str(c["type"]), c["nullable"], c.get("default"))
                for c in inspector.get_columns(name)
            ],
            sorted((ix["name"], tuple(ix["column_names"])) for ix in inspector.get_indexes(name)),
            sorted(tuple(u["column_names"]) for u in inspector.get_unique_constraints(name)),
        )
        for name in sorted(inspector.get_table_names())
    }


def _old_metadata() -> MetaData:
    """The schema a previous release created: jobs without events_json, no api_keys table."""
    old = MetaData()
    for name in TABLES:
        table = SQLModel.metadata.tables[name]
        if name == "api_keys":
            continue
        columns = [c._copy() for c in table.columns if c.name != "events_json"]
        Table(name, old, *columns)
    return old


# --------------------------------------------------------------------------- fresh databases


def test_fresh_database_upgrades_to_exactly_the_models(bare_engine: Engine) -> None:
    assert current_revision(bare_engine) is None
    assert upgrade(bare_engine) == head_revision()
    assert current_revision(bare_engine) == head_revision()
    assert set(inspect(bare_engine).get_table_names()) == {*TABLES, VERSION_TABLE}
    assert _differences(bare_engine) == []


def test_baseline_equals_what_create_all_made(bare_engine: Engine) -> None:
    """The baseline revision and the old ``create_all`` give the same tables, column by column."""
    upgrade(bare_engine, BASELINE_REVISION)
    migrated = _schema(bare_engine)
    migrated.pop(VERSION_TABLE)
    with bare_engine.begin() as conn:
        for name in (*TABLES, VERSION_TABLE):
            conn.execute(text(f"DROP TABLE {name}"))
    SQLModel.metadata.create_all(bare_engine, tables=[target_metadata().tables[n] for n in TABLES])
    assert _schema(bare_engine) == migrated


def test_upgrade_takes_a_url(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'by-url.db'}"
    assert upgrade(url) == head_revision()
    assert current_revision(url) == head_revision()


# --------------------------------------------------------------------------- old databases


def test_database_from_before_migrations_is_adopted_with_its_rows(bare_engine: Engine) -> None:
    old = _old_metadata()
    old.create_all(bare_engine)
    with bare_engine.begin() as conn:
        # The release before that also lacked the completed_at index.
        conn.execute(text("DROP INDEX ix_jobs_completed_at"))
    created = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
    with bare_engine.begin() as conn:
        conn.execute(
            old.tables["jobs"]
            .insert()
            .values(
                job_id="old",
                workflow_id="agent-old",
                status=JobStatus.COMPLETED.value,
                revision=3,
                query="from before migrations",
                cost_usd=0.25,
                prompt_tokens=10,
                completion_tokens=20,
                response_cache_hit=False,
                idempotency_key="idem-1",
                created_at=created,
                updated_at=created,
                completed_at=created,
            )
        )
        conn.execute(
            old.tables["payloads"]
            .insert()
            .values(sha256="a" * 64, size_bytes=3, data=b"abc", created_at=created)
        )
    assert current_revision(bare_engine) is None

    create_tables(bare_engine)

    assert current_revision(bare_engine) == head_revision()
    assert _differences(bare_engine) == []
    indexes = {ix["name"] for ix in inspect(bare_engine).get_indexes("jobs")}
    assert "ix_jobs_completed_at" in indexes
    store = JobStore(bare_engine)
    job = store.get_job("old")
    assert job is not None
    assert (job.revision, job.query, job.cost_usd, job.created_at) == (
        3,
        "from before migrations",
        0.25,
        created,
    )
    assert job.events_json is None
    assert store.find_by_idempotency_key("idem-1") is not None
    with bare_engine.connect() as conn:
        assert conn.execute(text("SELECT data FROM payloads")).scalar_one() == b"abc"
        assert conn.execute(select(ApiKeyRecord)).all() == []
    # The unique idempotency key survived the adoption.
    with pytest.raises(sqlalchemy.exc.IntegrityError), bare_engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO jobs (job_id, workflow_id, status, query, cost_usd, prompt_tokens,"
                " completion_tokens, response_cache_hit, idempotency_key, created_at, updated_at)"
                " VALUES ('dup', 'agent-dup', 'running', '', 0, 0, 0, false, 'idem-1',"
                " :t, :t)"
            ),
            {"t": created.replace(tzinfo=None)},
        )


def test_upgrading_twice_is_a_no_op(bare_engine: Engine) -> None:
    create_tables(bare_engine)
    running = AgentResult.model_validate({"job_id": "kept", "status": JobStatus.RUNNING})
    JobStore(bare_engine).record(running, revision=1)
    before = _schema(bare_engine)
    assert upgrade(bare_engine) == head_revision()
    create_tables(bare_engine)
    assert _schema(bare_engine) == before
    assert JobStore(bare_engine).get_job("kept") is not None


def test_a_database_at_head_is_not_locked_to_upgrade(tmp_path: Path) -> None:
    """Start-up on a migrated database needs no write lock: a busy writer does not delay it."""
    path = tmp_path / "busy.db"
    engine = make_engine(f"sqlite:///{path}")
    create_tables(engine)
    other = make_engine(f"sqlite:///{path}")
    try:
        with other.connect() as conn:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            started = time.perf_counter()
            create_tables(engine)
            assert time.perf_counter() - started < 1.0
            conn.exec_driver_sql("ROLLBACK")
    finally:
        other.dispose()
        engine.dispose()


# --------------------------------------------------------------------------- concurrency


def test_concurrent_upgrades_of_a_fresh_database_succeed(
    url_and_args: tuple[str, dict],
) -> None:
    url, connect_args = url_and_args
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def run() -> None:
        engine = make_engine(url, connect_args=connect_args)
        barrier.wait()
        try:
            upgrade(engine)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    engine = make_engine(url, connect_args=connect_args)
    try:
        assert current_revision(engine) == head_revision()
        assert _differences(engine) == []
    finally:
        engine.dispose()


_UPGRADER = """
import sys, time
from pathlib import Path
from infra.migrations import upgrade
go = Path(sys.argv[2])
Path(sys.argv[3]).touch()
while not go.exists():
    time.sleep(0.005)
print(upgrade(sys.argv[1]))
"""


def test_two_processes_upgrade_one_fresh_sqlite_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    go = tmp_path / "go"
    ready = [tmp_path / f"ready-{i}" for i in range(2)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _UPGRADER, url, str(go), str(flag)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).parent.parent,
        )
        for flag in ready
    ]
    deadline = time.monotonic() + 60
    while not all(flag.exists() for flag in ready) and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()
    outputs = [proc.communicate(timeout=60) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    assert [out.strip() for out, _ in outputs] == [head_revision()] * 2
    assert current_revision(url) == head_revision()
