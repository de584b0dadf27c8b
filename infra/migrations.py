"""Schema migrations: bring the job database to the newest Alembic revision.

The revisions live in the top-level ``migrations`` package; this module runs them (``agentflow
db upgrade``, and :func:`create_tables` at start-up) and reports where a database is.

Hazards this module handles:

- Several processes (API, worker, CLI) may upgrade one fresh database at the same time. The
  whole upgrade, its checks included, runs in one transaction under one lock: on SQLite the
  database's write lock (``BEGIN IMMEDIATE``; SQLite's DDL is transactional), on PostgreSQL a
  transaction-level advisory lock keyed by the schema. The process that waited finds the schema
  at head and changes nothing.
- Databases created before migrations (``create_all`` plus in-place ``ADD COLUMN`` and
  ``CREATE INDEX`` at every start) have the tables but no ``alembic_version``. They get what the
  old start-up would have added (tables, columns, indexes of the baseline revision), are stamped
  with the baseline, then upgraded.
- A database already at head costs one query and takes no lock, so starting a process on it
  stays cheap.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import cast

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, MetaData, inspect, text
from sqlalchemy.schema import CreateColumn
from sqlmodel import SQLModel

import migrations
from infra.db import TABLES, make_engine, translate_errors

MIGRATIONS_DIR = Path(migrations.__file__).resolve().parent
"""The Alembic script folder (``env.py``, ``script.py.mako``, ``versions/``)."""

BASELINE_REVISION = "0001"
"""The revision whose schema equals what agentflow created before it had migrations."""

VERSION_TABLE = "alembic_version"
"""Where Alembic records a database's revision (Alembic's default name)."""

_PG_LOCK_KEY = "agentflow-migrations:"
"""Prefix of the PostgreSQL advisory lock key; the schema name completes it."""


def target_metadata() -> MetaData:
    """The models' metadata (importing the table modules registers their tables on it)."""
    import infra.jobs
    import infra.keys
    import infra.payloads  # noqa: F401

    return SQLModel.metadata


def alembic_config(connection: Connection | None = None, url: str | None = None) -> Config:
    """An Alembic configuration for the ``migrations`` folder, without an ``alembic.ini``.

    Args:
        connection: an open connection ``env.py`` runs on (the caller commits).
        url: the database URL ``env.py`` opens when no connection is given (offline ``--sql``
            output uses it too); ``None``: the settings' ``DATABASE_URL``.

    Returns:
        A new :class:`alembic.config.Config`.
    """
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@cache
def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    """The newest revision id in ``migrations/versions``."""
    head = _scripts().get_current_head()
    assert head is not None, "migrations/versions holds no revision"
    return head


def baseline_schema() -> MetaData:
    """The baseline revision's tables (``schema()`` in ``versions/0001_baseline.py``)."""
    module = _scripts().get_revision(BASELINE_REVISION).module
    return cast(MetaData, module.schema())


@contextmanager
def _connect(target: Engine | str) -> Iterator[Connection]:
    if isinstance(target, Engine):
        with target.connect() as conn:
            yield conn
        return
    engine = make_engine(target)
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


def _current(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def current_revision(target: Engine | str) -> str | None:
    """The database's revision id; ``None`` for an empty database or one from before migrations.

    Args:
        target: an engine (:func:`infra.db.make_engine`) or a database URL.

    Raises:
        sqlalchemy.exc.OperationalError: the database is unreachable.
    """
    with _connect(target) as conn:
        return _current(conn)


def upgrade(target: Engine | str, revision: str = "head") -> str | None:
    """Migrate the database to ``revision``, adopting a database from before migrations.

    Safe to run from several processes at once (see the module docstring); a database already at
    head is left alone without taking a lock.

    Args:
        target: an engine (:func:`infra.db.make_engine`) or a database URL.
        revision: the revision to reach; ``head`` for the newest.

    Returns:
        The database's revision afterwards.

    Raises:
        sqlalchemy.exc.OperationalError: the database is unreachable or stayed locked.
        alembic.util.CommandError: the database is at a revision this code does not know (a
            newer release migrated it), or ``revision`` is unknown.
    """
    target_rev = head_revision() if revision == "head" else revision
    with _connect(target) as conn:
        if _current(conn) == target_rev:
            conn.rollback()
            return target_rev
        conn.rollback()
        _lock(conn)
        if _is_legacy(conn):
            _adopt_legacy(conn)
            command.stamp(alembic_config(conn), BASELINE_REVISION)
        command.upgrade(alembic_config(conn), revision)
        reached = _current(conn)
        conn.commit()
        return reached


def _lock(conn: Connection) -> None:
    """Begin the upgrade's transaction holding the lock that serializes upgrades."""
    if conn.dialect.name == "sqlite":
        # Takes the write lock now (waiting up to the busy timeout), not at the first write,
        # so the checks below already see any upgrade that another process committed.
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    elif conn.dialect.name == "postgresql":
        # Released at commit or rollback; keyed by schema, so tests in separate schemas of one
        # database do not wait for each other.
        conn.execute(
            text(
                "SELECT pg_advisory_xact_lock(hashtext(:prefix || coalesce(current_schema(), '')))"
            ),
            {"prefix": _PG_LOCK_KEY},
        )


def _is_legacy(conn: Connection) -> bool:
    """Whether agentflow's tables exist without a version table (created before migrations)."""
    present = set(inspect(conn).get_table_names())
    return VERSION_TABLE not in present and bool(present & set(TABLES))


def _adopt_legacy(conn: Connection) -> None:
    """Add what the old start-up added: missing baseline tables, columns and indexes.

    Columns are added with ``ALTER TABLE ... ADD COLUMN`` as declared in the baseline (every
    column added after the first release is nullable or has a server default).
    """
    schema = baseline_schema()
    schema.create_all(conn, checkfirst=True)
    inspector = inspect(conn)
    preparer = conn.dialect.identifier_preparer
    for table in schema.sorted_tables:
        present = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name not in present:
                ddl = CreateColumn(column).compile(dialect=conn.dialect)
                conn.execute(text(f"ALTER TABLE {preparer.format_table(table)} ADD COLUMN {ddl}"))
        indexes = {ix["name"] for ix in inspector.get_indexes(table.name)}
        for index in table.indexes:
            if index.name not in indexes:
                index.create(conn)


def create_tables(engine: Engine) -> None:
    """Bring the database to the newest schema revision (see :mod:`infra.migrations`).

    The one call every process makes at start-up: a database already at head costs one query; a
    fresh one is created, and one from before migrations is adopted, then upgraded. Concurrent
    callers are serialized by a lock.

    Raises:
        StoreUnavailableError: the database is unreachable or stayed locked (retryable).
        StoreRejectedError: the database refused a migration statement (non-retryable).
    """
    with translate_errors():
        upgrade(engine)
