"""Schema migrations: bring the job database to the newest Alembic revision, or check it is there.

The revisions live in the top-level ``migrations`` package. :func:`upgrade` runs them (``agentflow
db upgrade``, which ``agentflow dev`` runs too; :func:`create_tables` for tests and benchmarks).
The API, the worker and the CLI commands only call :func:`require_schema` at start: it fails with
:class:`SchemaOutOfDateError`, naming ``agentflow db upgrade``, unless the database is at head.
Its one exception is an empty SQLite database, which it creates at head (see there).

Hazards this module handles:

- Several processes may upgrade one fresh database at the same time (two ``agentflow db
  upgrade``, or the API and the worker creating an empty SQLite file). The whole upgrade, its
  checks included, runs in one transaction under one lock: on SQLite the database's write lock
  (``BEGIN IMMEDIATE``; SQLite's DDL is transactional), on PostgreSQL a transaction-level
  advisory lock keyed by the schema. The process that waited finds the schema at head and
  changes nothing.
- Databases created before migrations (``create_all`` plus in-place ``ADD COLUMN`` and
  ``CREATE INDEX`` at every start) have the tables but no ``alembic_version``. They get what the
  old start-up would have added (tables, columns, indexes of the baseline revision), are stamped
  with the baseline, then upgraded.
- A database already at head costs one query and takes no lock, so starting a process on it
  stays cheap. Checking loads no Alembic (a third of a second of start-up): the newest revision
  is read from the file names in ``versions/`` (``NNNN_slug.py``, numbered by ``agentflow db
  revision``) and the database's from its ``alembic_version`` table.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, cast

from sqlalchemy import Connection, Engine, MetaData, inspect, text
from sqlalchemy.schema import CreateColumn
from sqlmodel import SQLModel

import migrations
from core.errors import AgentflowError, ErrorType
from infra.db import TABLES, make_engine, translate_errors

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

MIGRATIONS_DIR = Path(migrations.__file__).resolve().parent
"""The Alembic script folder (``env.py``, ``script.py.mako``, ``versions/``)."""

BASELINE_REVISION = "0001"
"""The revision whose schema equals what agentflow created before it had migrations."""

VERSION_TABLE = "alembic_version"
"""Where Alembic records a database's revision (Alembic's default name)."""

_PG_LOCK_KEY = "agentflow-migrations:"
"""Prefix of the PostgreSQL advisory lock key; the schema name completes it."""

_REVISION_FILE = re.compile(r"^(\d{4})_\w+\.py$")
"""A revision file's name: its four-digit revision id, then its slug."""


class SchemaOutOfDateError(AgentflowError, RuntimeError):
    """The job database is not at the revision this release needs (a start-up failure).

    Raised before a process serves anything; the message names the database (password hidden)
    and what to run (``agentflow db upgrade``), or says that a newer release migrated it.

    Attributes:
        current: the database's revision (``None``: no ``alembic_version`` table).
        head: the revision this release needs.
    """

    type = ErrorType.SCHEMA_OUT_OF_DATE
    retryable = False

    def __init__(self, message: str, current: str | None, head: str) -> None:
        """Describe a database at ``current`` where ``head`` is needed."""
        super().__init__(message)
        self.current = current
        self.head = head


def target_metadata() -> MetaData:
    """The models' metadata (importing the table modules registers their tables on it)."""
    import infra.batches
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
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@cache
def _scripts() -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config())


def known_revisions() -> list[str]:
    """The revision ids in ``migrations/versions``, oldest first (read from the file names).

    Revisions are numbered ``0001``, ``0002``, ... each revising the one before (``agentflow db
    revision`` writes them so; ``tests/test_migrations.py`` checks Alembic sees the same chain).
    """
    found = (_REVISION_FILE.match(p.name) for p in (MIGRATIONS_DIR / "versions").iterdir())
    return sorted(m.group(1) for m in found if m)


def head_revision() -> str:
    """The newest revision id in ``migrations/versions``."""
    revisions = known_revisions()
    assert revisions, "migrations/versions holds no revision"
    return revisions[-1]


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
    """The revision in ``alembic_version`` (what Alembic's ``current`` reads), without Alembic."""
    if not inspect(conn).has_table(VERSION_TABLE):
        return None
    rows = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
    return rows[0] if len(rows) == 1 else None


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
    from alembic import command

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
    """Bring the database to the newest schema revision: :func:`upgrade` with domain errors.

    For tests and benchmarks that set up their own database; processes call
    :func:`require_schema` instead.

    Raises:
        StoreUnavailableError: the database is unreachable or stayed locked (retryable).
        StoreRejectedError: the database refused a migration statement (non-retryable).
    """
    with translate_errors():
        upgrade(engine)


def require_schema(engine: Engine) -> str:
    """Check at start-up that the job database is at the newest revision.

    The API, the worker and the CLI commands that open the database call this; only ``agentflow
    db upgrade`` (and ``agentflow dev``, which runs it) changes a schema. The one exception, and
    the only automatic upgrade: an empty SQLite database (no table at all: a fresh checkout's
    ``data/agentflow.db``, a new file) is created at head here, so ``python worker.py`` and
    ``agentflow api`` work without a first step. That is safe: there are no rows to migrate or
    lose, and the creation runs under SQLite's write lock (:func:`upgrade`), so the API and the
    worker starting together take turns. Any other database behind head (PostgreSQL, a SQLite
    file with tables) fails instead of being changed by whichever process starts first.

    Args:
        engine: the job database (:func:`infra.db.make_engine`).

    Returns:
        The database's revision (the head).

    Raises:
        SchemaOutOfDateError: the database is not at head (the message says what to run).
        StoreUnavailableError: the database is unreachable or stayed locked (retryable).
        StoreRejectedError: the database refused the creation of an empty SQLite file's tables.
    """
    head = head_revision()
    with translate_errors():
        with _connect(engine) as conn:
            current = _current(conn)
            empty = current is None and not inspect(conn).get_table_names()
        if current == head:
            return head
        if empty and engine.dialect.name == "sqlite":
            upgrade(engine)
            return head
    shown = engine.url.render_as_string(hide_password=True)
    if current is not None and current not in known_revisions():
        message = (
            f"the job database {shown} is at revision {current}, which this release does not "
            f"know (it needs {head}): a newer release migrated it; run that release or a newer one"
        )
    else:
        state = (
            f"at revision {current}"
            if current is not None
            else "empty"
            if empty
            else "from before migrations (no alembic_version table)"
        )
        message = (
            f"the job database {shown} is {state}, and this release needs revision {head}: "
            "run `agentflow db upgrade` (with the same DATABASE_URL) before starting it"
        )
    raise SchemaOutOfDateError(message, current, head)
