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
- The schema is created and changed by Alembic revisions (:mod:`infra.migrations`), which also
  serialize the worker and the API when both start on a fresh database and adopt a database
  created before migrations, so an existing ``data/agentflow.db`` keeps working.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import DateTime, Dialect, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError, StatementError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.types import TypeDecorator
from tenacity import retry, retry_if_exception, stop_after_delay, wait_fixed

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


def _is_busy(exc: BaseException) -> bool:
    """Whether ``exc`` is SQLite's ``SQLITE_BUSY`` (any extended code)."""
    return (
        isinstance(exc, sqlite3.OperationalError)
        and exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY
    )


@retry(
    retry=retry_if_exception(_is_busy),
    stop=stop_after_delay(SQLITE_BUSY_TIMEOUT_MS / 1000),
    wait=wait_fixed(0.01),
    reraise=True,
)
def _set_wal(cursor: sqlite3.Cursor) -> None:
    """``PRAGMA journal_mode=WAL``, retried while another connection holds the file busy.

    Switching to WAL, or opening a WAL file that another connection is recovering, answers
    ``SQLITE_BUSY`` at once without calling the busy handler, so processes opening one fresh
    database together can fail here although the busy timeout has not passed. The retry is a
    declared ``tenacity`` policy (every 10 ms for up to the busy timeout, then the last
    ``SQLITE_BUSY`` is raised; any other error at once), which replaced a hand-written loop.
    """
    cursor.execute("PRAGMA journal_mode=WAL")


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
            _set_wal(cursor)
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
