"""Alembic migrations on real SQLite files and real PostgreSQL schemas.

Policy under test: ``agentflow db upgrade`` (:func:`infra.migrations.upgrade`) is the one thing
that changes a schema; the API, the worker and the CLI commands only check it at start
(:func:`infra.migrations.require_schema`) and name ``agentflow db upgrade`` when it is behind,
except that an empty SQLite database is created at head.
"""

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
from sqlalchemy.engine import make_url
from sqlmodel import SQLModel
from typer.testing import CliRunner

from cli.db import db_app, upgrade_database
from cli.keys import keys_app
from core.models import AgentResult, JobStatus
from core.settings import Settings, get_settings
from infra.db import TABLES, make_engine
from infra.jobs import JobStore
from infra.keys import ApiKeyRecord
from infra.migrations import (
    BASELINE_REVISION,
    VERSION_TABLE,
    SchemaOutOfDateError,
    _scripts,
    baseline_schema,
    create_tables,
    current_revision,
    head_revision,
    known_revisions,
    require_schema,
    target_metadata,
    upgrade,
)
from tests.helpers import ROOT

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


BATCH_TABLES = ("batches", "batch_items")
"""Tables added after the baseline (revision 0002)."""


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
    assert set(inspect(bare_engine).get_table_names()) == {*TABLES, *BATCH_TABLES, VERSION_TABLE}
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


# --------------------------------------------------------------------------- the previous release


def _url_of(url_and_args: tuple[str, dict]) -> str:
    """One URL naming the database, PostgreSQL's schema included (as ``DATABASE_URL`` would)."""
    url, connect_args = url_and_args
    if "options" not in connect_args:
        return url
    return (
        make_url(url)
        .update_query_dict({"options": connect_args["options"]})
        .render_as_string(hide_password=False)
    )


def _previous_release(engine: Engine) -> datetime:
    """The schema exactly as the last release before Alembic built it (``create_all`` of its
    models: the baseline), with a row in each table; returns the rows' timestamp."""
    old = baseline_schema()
    old.create_all(engine)
    created = datetime(2025, 5, 6, 7, 8, 9, tzinfo=UTC)
    with engine.begin() as conn:
        conn.execute(
            old.tables["jobs"]
            .insert()
            .values(
                job_id="prev",
                workflow_id="agent-prev",
                status=JobStatus.COMPLETED.value,
                revision=7,
                query="from the previous release",
                result_json='{"answer": "42"}',
                cost_usd=0.5,
                prompt_tokens=11,
                completion_tokens=22,
                response_cache_hit=True,
                idempotency_key="idem-prev",
                owner="af_owner",
                created_at=created,
                updated_at=created,
                completed_at=created,
                events_json="[]",
            )
        )
        conn.execute(
            old.tables["payloads"]
            .insert()
            .values(sha256="b" * 64, size_bytes=3, data=b"xyz", created_at=created)
        )
        conn.execute(
            old.tables["blobs"]
            .insert()
            .values(blob_id="blob-1", size_bytes=5, content="hello", created_at=created)
        )
        conn.execute(
            old.tables["api_keys"]
            .insert()
            .values(
                key_id="af_owner",
                name="ops",
                scopes="read",
                secret_hash="h" * 64,
                hash_scheme="hmac-sha256",
                created_at=created,
            )
        )
    return created


def _rows(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    with engine.connect() as conn:
        return {
            name: [tuple(row) for row in conn.execute(text(f"SELECT * FROM {name} ORDER BY 1"))]
            for name in TABLES
        }


def test_previous_release_database_upgrades_with_its_rows(
    url_and_args: tuple[str, dict], bare_engine: Engine
) -> None:
    """``agentflow db upgrade`` on the last pre-Alembic schema: stamped, at head, rows intact."""
    created = _previous_release(bare_engine)
    before = _rows(bare_engine)
    assert current_revision(bare_engine) is None

    said = upgrade_database(_url_of(url_and_args))

    assert said.endswith(f"empty -> {head_revision()}")
    assert current_revision(bare_engine) == head_revision()
    assert _differences(bare_engine) == []
    assert _rows(bare_engine) == before
    job = JobStore(bare_engine).get_job("prev")
    assert job is not None
    assert (job.revision, job.owner, job.cost_usd, job.created_at) == (7, "af_owner", 0.5, created)
    assert upgrade_database(_url_of(url_and_args)).endswith(f"already at {head_revision()}")


@pytest.fixture
def configured_database(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    """``DATABASE_URL`` naming a new SQLite file, with the cached settings reread around it."""
    url = f"sqlite:///{tmp_path / 'prev.db'}"
    monkeypatch.setenv("DATABASE_URL", url)
    get_settings.cache_clear()
    yield url
    get_settings.cache_clear()


def test_db_upgrade_command_migrates_the_configured_database(configured_database: str) -> None:
    engine = make_engine(configured_database)
    _previous_release(engine)
    before = _rows(engine)
    runner = CliRunner()

    behind = runner.invoke(db_app, ["current", "--check"])
    assert behind.exit_code == 1
    assert "run agentflow db upgrade" in behind.output
    result = runner.invoke(db_app, ["upgrade"])
    assert result.exit_code == 0, result.output
    assert f"-> {head_revision()}" in result.output
    assert runner.invoke(db_app, ["current", "--check"]).exit_code == 0
    assert _rows(engine) == before
    engine.dispose()


# --------------------------------------------------------------------------- start-up checks


def test_revisions_read_from_file_names_are_alembic_s_chain() -> None:
    """The start-up check reads revision ids from file names; Alembic must see the same chain."""
    chain = [script.revision for script in _scripts().walk_revisions()][::-1]
    assert known_revisions() == chain
    assert head_revision() == _scripts().get_current_head()
    assert all(
        _scripts().get_revision(rev).down_revision == (chain[i - 1] if i else None)
        for i, rev in enumerate(chain)
    )


def test_require_schema_accepts_a_database_at_head(bare_engine: Engine) -> None:
    upgrade(bare_engine)
    before = _schema(bare_engine)
    assert require_schema(bare_engine) == head_revision()
    assert _schema(bare_engine) == before


def test_require_schema_creates_an_empty_sqlite_database(tmp_path: Path) -> None:
    """The one automatic upgrade: a new SQLite file (the README's quick start)."""
    engine = make_engine(f"sqlite:///{tmp_path / 'new.db'}")
    assert require_schema(engine) == head_revision()
    assert current_revision(engine) == head_revision()
    assert _differences(engine) == []
    engine.dispose()


@pytest.mark.postgres
@pytest.mark.parametrize("url_and_args", ["postgres"], indirect=True)
def test_require_schema_leaves_an_empty_postgres_schema_alone(bare_engine: Engine) -> None:
    with pytest.raises(SchemaOutOfDateError, match="agentflow db upgrade") as caught:
        require_schema(bare_engine)
    assert "is empty" in str(caught.value)
    assert (caught.value.current, caught.value.head) == (None, head_revision())
    assert inspect(bare_engine).get_table_names() == []


def test_require_schema_refuses_the_previous_release_and_changes_nothing(
    bare_engine: Engine,
) -> None:
    _previous_release(bare_engine)
    before = (_schema(bare_engine), _rows(bare_engine))
    with pytest.raises(SchemaOutOfDateError, match="run `agentflow db upgrade`") as caught:
        require_schema(bare_engine)
    assert "before migrations" in str(caught.value)
    assert "password" not in str(caught.value)
    assert (_schema(bare_engine), _rows(bare_engine)) == before


def test_require_schema_refuses_a_revision_from_a_newer_release(bare_engine: Engine) -> None:
    upgrade(bare_engine)
    with bare_engine.begin() as conn:
        conn.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = '9999'"))
    with pytest.raises(SchemaOutOfDateError, match="a newer release migrated it"):
        require_schema(bare_engine)


def test_api_refuses_to_start_on_an_old_schema(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from api.app import create_app

    url = f"sqlite:///{tmp_path / 'prev.db'}"
    engine = make_engine(url)
    _previous_release(engine)
    engine.dispose()
    settings = Settings(database_url=url, auth_disabled=True, temporal_address="127.0.0.1:9")
    with (
        pytest.raises(SchemaOutOfDateError, match="agentflow db upgrade"),
        TestClient(create_app(settings)),
    ):
        pass


def test_worker_refuses_to_start_on_an_old_schema(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'prev.db'}"
    engine = make_engine(url)
    _previous_release(engine)
    engine.dispose()
    env = {
        "PATH": "/usr/bin:/bin",
        "DATABASE_URL": url,
        "TEMPORAL_ADDRESS": "127.0.0.1:9",  # never reached: the schema check comes first
        "AGENTFLOW_DATA_DIR": str(tmp_path),
    }
    out = subprocess.run(
        [sys.executable, "-m", "cli.main", "worker"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 1, out.stdout + out.stderr
    assert "run `agentflow db upgrade`" in out.stdout + out.stderr
    assert current_revision(url) is None


def test_cli_commands_refuse_an_old_schema(configured_database: str) -> None:
    url = configured_database
    engine = make_engine(url)
    _previous_release(engine)
    engine.dispose()
    result = CliRunner().invoke(keys_app, ["list"])
    assert result.exit_code == 1
    assert "agentflow db upgrade" in result.output
    assert current_revision(url) is None
