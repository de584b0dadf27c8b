"""The job database: engine set-up, a UTC datetime column type, error translation, tables.

Everything here is synchronous SQLAlchemy (through sqlmodel). Async callers (the API, the payload
storage driver, the ``record_job`` activity) run each call in a thread (``asyncio.to_thread``).

Hazards this module handles:

- SQLite returns naive datetimes whatever the column says; :class:`UTCDateTime` stores UTC and
  hands back timezone-aware values on every backend.
- A database that is down or locked surfaces as SQLAlchemy's ``OperationalError``; it becomes
  :class:`core.errors.StoreUnavailableError` (retryable). Any other database error (bad data, a
  NUL byte on PostgreSQL, a constraint) becomes :class:`core.errors.StoreRejectedError`
  (non-retryable): retrying the same statement cannot succeed.
- The worker and the API create tables on start-up, racing on a fresh database; a lost race is
  retried once per table.
- Columns added after a table was first created are added in place (``ALTER TABLE ... ADD
  COLUMN``), so an existing ``data/agentflow.db`` keeps working after an upgrade.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import DateTime, Dialect, Engine, Table, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError, StatementError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.schema import CreateColumn
from sqlalchemy.types import TypeDecorator
from sqlmodel import SQLModel

from core.errors import StoreRejectedError, StoreUnavailableError

SQLITE_BUSY_TIMEOUT_MS = 5000
"""How long a SQLite connection waits for another writer's lock before failing, in ms."""

POSTGRES_CONNECT_TIMEOUT_S = 5
"""Connect timeout for PostgreSQL in seconds, so a down database fails a call promptly."""


@contextmanager
def translate_errors() -> Iterator[None]:
    """Raise database failures as domain errors.

    Raises:
        StoreUnavailableError: connection-level failures and locks (retryable).
        StoreRejectedError: any other database error (non-retryable); the message names the
            error class only, never the statement or its parameters.
    """
    try:
        yield
    except (OperationalError, PoolTimeoutError) as exc:
        raise StoreUnavailableError(f"job database unavailable ({type(exc).__name__})") from exc
    except (DBAPIError, StatementError) as exc:
        original = getattr(exc, "orig", None) or exc
        raise StoreRejectedError(
            f"job database refused the write ({type(original).__name__})"
        ) from exc


WRITE_PROBE_TIMEOUT_S = 1.0
"""How long :func:`check_writable` waits for another writer's lock, in seconds."""


def check_writable(engine: Engine, timeout_s: float = WRITE_PROBE_TIMEOUT_S) -> None:
    """Check that the database answers and would accept a write now, and write nothing.

    SQLite: ``BEGIN IMMEDIATE`` (takes the write lock) then ``ROLLBACK``, with the connection's
    busy timeout lowered to ``timeout_s`` for the probe. PostgreSQL: in a transaction rolled
    back, ``UPDATE jobs ... WHERE false`` under a ``lock_timeout`` of ``timeout_s``: it takes the
    lock every write takes, and fails on a read-only server or transaction. Both cost one round
    trip or two on a pooled connection.

    Args:
        engine: the job database's engine (tables created).
        timeout_s: most seconds to wait for a lock held by another writer.

    Raises:
        StoreUnavailableError: the database did not answer, or does not accept writes (locked,
            read-only); retryable. The message names the error class only.
    """
    timeout_ms = max(int(timeout_s * 1000), 1)
    with translate_errors(), engine.connect() as conn:
        try:
            if engine.dialect.name == "sqlite":
                conn.exec_driver_sql(f"PRAGMA busy_timeout={timeout_ms}")
                try:
                    conn.exec_driver_sql("BEGIN IMMEDIATE")
                    conn.exec_driver_sql("ROLLBACK")
                finally:
                    conn.exec_driver_sql(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            else:
                conn.exec_driver_sql(f"SET LOCAL lock_timeout = {timeout_ms}")
                conn.exec_driver_sql(f"SET LOCAL statement_timeout = {timeout_ms * 2}")
                conn.execute(text("UPDATE jobs SET job_id = job_id WHERE false"))
                conn.rollback()
        except (DBAPIError, StatementError) as exc:
            original = getattr(exc, "orig", None) or exc
            raise StoreUnavailableError(
                f"job database does not accept writes ({type(original).__name__})"
            ) from exc


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend.

    PostgreSQL stores ``timestamptz``; SQLite has no time zones, so values are stored as naive UTC
    and UTC is attached again when read.

    Raises:
        ValueError: when binding a naive datetime (its zone would be a guess).
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Convert to UTC before storing (naive UTC on SQLite)."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Return an aware UTC datetime."""
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def utc_now() -> datetime:
    """The wall clock in UTC (store code only; workflows use ``workflow.now()``)."""
    return datetime.now(UTC)


def make_engine(database_url: str, *, connect_args: dict[str, Any] | None = None) -> Engine:
    """Create the engine for ``database_url``.

    SQLite: creates the file's parent folder, allows use from worker threads, and sets WAL journal
    mode, ``synchronous=NORMAL`` (durable at every checkpoint, no fsync per commit; safe against
    corruption) and a busy timeout on every connection. PostgreSQL (``postgresql+psycopg://``):
    pings connections before use and bounds the connect time.

    Args:
        database_url: a SQLAlchemy URL, ``sqlite:///path`` or ``postgresql+psycopg://...``.
        connect_args: extra DBAPI connect arguments, merged over the defaults (for example
            ``{"options": "-csearch_path=myschema"}`` for PostgreSQL).

    Returns:
        A synchronous SQLAlchemy engine. No connection is opened yet.

    Raises:
        ValueError: the URL names neither SQLite nor PostgreSQL.
    """
    url = make_url(database_url)
    backend = url.get_backend_name()
    if backend == "sqlite":
        if url.database and url.database != ":memory:" and not url.database.startswith("file:"):
            Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"check_same_thread": False, **(connect_args or {})}
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    if backend == "postgresql":
        return create_engine(
            url,
            pool_pre_ping=True,
            connect_args={"connect_timeout": POSTGRES_CONNECT_TIMEOUT_S, **(connect_args or {})},
        )
    raise ValueError(
        f"unsupported database URL {url.render_as_string()!r}: use sqlite or postgresql"
    )


TABLES = ("jobs", "payloads", "blobs", "api_keys")
"""The tables agentflow owns: job records, externally stored payloads, legacy blobs, API keys."""


def create_tables(engine: Engine) -> None:
    """Create agentflow's tables when missing and add columns that newer versions define.

    Raises:
        StoreUnavailableError: the database is unreachable (retryable).
    """
    # Importing the table modules registers their tables on SQLModel.metadata.
    import infra.jobs
    import infra.keys
    import infra.payloads  # noqa: F401

    tables = [SQLModel.metadata.tables[name] for name in TABLES]
    # The worker and the API start together and both create the tables; on a fresh database
    # one can lose the check-then-create race ("table already exists"). A second pass sees the
    # winner's tables and creates nothing (one more pass per table that can race).
    attempts = 2 * len(tables) + 1
    for attempt in range(1, attempts + 1):
        try:
            with translate_errors():
                SQLModel.metadata.create_all(engine, tables=tables)
                _add_missing_columns(engine)
                _add_missing_indexes(engine, tables)
            return
        except (StoreUnavailableError, StoreRejectedError):
            if attempt == attempts:
                raise


def _add_missing_indexes(engine: Engine, tables: list[Table]) -> None:
    """Create indexes declared after a table was created (``create_all`` skips existing tables).

    One inspection per table; only absent indexes are created (the analytics and retention
    queries filter and sort on ``jobs.completed_at``).
    """
    inspector = inspect(engine)
    for table in tables:
        present = {ix["name"] for ix in inspector.get_indexes(table.name)}
        missing = [ix for ix in table.indexes if ix.name not in present]
        if missing:
            with engine.begin() as conn:
                for index in missing:
                    index.create(conn, checkfirst=True)


def _add_missing_columns(engine: Engine) -> None:
    """``ALTER TABLE ... ADD COLUMN`` for model columns an older database lacks.

    Only nullable columns or columns with a server default are added, which is how every column
    added after the first release is declared; indexes declared on them are created too.
    """
    inspector = inspect(engine)
    for name in TABLES:
        table = SQLModel.metadata.tables[name]
        present = {c["name"] for c in inspector.get_columns(name)}
        missing = [c for c in table.columns if c.name not in present]
        if not missing:
            continue
        with engine.begin() as conn:
            for column in missing:
                ddl = CreateColumn(column).compile(dialect=engine.dialect)
                conn.execute(text(f"ALTER TABLE {name} ADD COLUMN {ddl}"))
            # Indexes on the added columns (create_all made them only for new tables).
            added = {c.name for c in missing}
            for index in table.indexes:
                if {c.name for c in index.columns} & added:
                    index.create(conn, checkfirst=True)
