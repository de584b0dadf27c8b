"""The ``sql_query`` tool: read-only SELECT queries over a SQLite database.

The hazard: SQL from a prompt may try to write, attach other files, change settings or run for
ever. Three independent locks keep it read-only: the file is opened with ``mode=ro``,
``PRAGMA query_only=ON`` is set, and an authorizer allows only reading actions (``SELECT``,
``READ``, ``FUNCTION``, and ``RECURSIVE`` so recursive CTEs work) and denies everything else
(writes, ``ATTACH``, ``PRAGMA``, DDL, transactions). ``sqlite3`` itself refuses more than one
statement per call. A progress handler interrupts a query after :data:`QUERY_TIME_LIMIT_S`, and
at most ``max_rows`` rows are fetched. The blocking work runs in a worker thread
(``asyncio.to_thread``) on a fresh connection per call.

The example database is built from ``examples/shop.sql`` by :func:`ensure_example_database`.
"""

from __future__ import annotations

import asyncio
import math
import os
import sqlite3
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

from pydantic import BaseModel, Field, JsonValue

from core.errors import ToolError
from core.settings import PROJECT_ROOT
from core.tools import Tool, ToolMetadata

QUERY_TIME_LIMIT_S = 2.0
"""A query running longer than this (seconds) is interrupted and refused."""
EXAMPLE_SQL_PATH = PROJECT_ROOT / "examples" / "shop.sql"
"""SQL script of the example shop database."""

_ALLOWED_ACTIONS = frozenset(
    {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}
)
_PROGRESS_EVERY_N_OPS = 1000


class SqlQueryParams(BaseModel):
    """Parameters of the ``sql_query`` tool."""

    sql: str = Field(
        min_length=1,
        max_length=5000,
        description="One read-only SELECT (or WITH ... SELECT) statement in SQLite syntax.",
    )


def _authorizer(
    action: int, arg1: str | None, arg2: str | None, db_name: str | None, trigger: str | None
) -> int:
    return sqlite3.SQLITE_OK if action in _ALLOWED_ACTIONS else sqlite3.SQLITE_DENY


def _jsonable(value: object) -> JsonValue:
    """A SQLite value as JSON: blobs as hex text, non-finite floats as text."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, str | int | float):
        return value
    return str(value)


def run_query(
    db_path: Path, sql: str, *, max_rows: int, time_limit_s: float = QUERY_TIME_LIMIT_S
) -> dict[str, JsonValue]:
    """Run one read-only query (blocking; call it from a worker thread).

    Args:
        db_path: the SQLite file, opened read-only.
        sql: exactly one SELECT statement (a trailing ``;`` is fine).
        max_rows: most rows returned.
        time_limit_s: the query is interrupted after this many seconds.

    Returns:
        ``{"columns": [str], "rows": [[value]], "row_count": int, "truncated": bool}`` where
        ``row_count`` is ``len(rows)`` and ``truncated`` says more rows existed. Blobs come back
        as hex text.

    Raises:
        ToolError: the file is missing, the statement is not a single read-only SELECT, it is
            invalid (unknown table, syntax error), or it ran out of time (all non-retryable).
    """
    if not sql.strip():
        raise ToolError("the SQL statement is empty")
    if not db_path.is_file():
        raise ToolError(f"database file {str(db_path)!r} does not exist")
    uri = f"file:{quote(str(db_path.resolve()))}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True)
    except sqlite3.Error as exc:
        raise ToolError(f"cannot open database {str(db_path)!r}: {exc}") from exc
    try:
        conn.execute("PRAGMA query_only=ON")
        conn.set_authorizer(_authorizer)
        deadline = time.monotonic() + time_limit_s
        conn.set_progress_handler(lambda: int(time.monotonic() > deadline), _PROGRESS_EVERY_N_OPS)
        try:
            cursor = conn.execute(sql)
            if cursor.description is None:
                raise ToolError("only SELECT queries are allowed (the statement returns no rows)")
            columns: list[JsonValue] = [str(d[0]) for d in cursor.description]
            fetched = cursor.fetchmany(max_rows + 1)
        except sqlite3.ProgrammingError as exc:
            if "one statement" in str(exc):
                raise ToolError("only one SQL statement is allowed per query") from exc
            raise ToolError(f"invalid query: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            message = str(exc)
            if "not authorized" in message:
                raise ToolError(
                    "only read-only SELECT queries are allowed "
                    "(no INSERT/UPDATE/DELETE, DDL, ATTACH or PRAGMA); "
                    f"the database said: {message}"
                ) from exc
            if "interrupted" in message:
                raise ToolError(f"query ran longer than {time_limit_s} s and was stopped") from exc
            if "readonly" in message or "read-only" in message:
                raise ToolError(f"the database is read-only: {message}") from exc
            raise ToolError(f"query failed: {message}") from exc
    finally:
        conn.close()
    truncated = len(fetched) > max_rows
    rows: list[JsonValue] = [[_jsonable(v) for v in row] for row in fetched[:max_rows]]
    return {"columns": columns, "rows": rows, "row_count": len(rows), "truncated": truncated}


def make_sql_query_tool(*, database_path: Path, max_rows: int) -> Tool:
    """The ``sql_query`` tool bound to its database (no I/O until called).

    Args:
        database_path: the SQLite file (``settings.sql_database_path``).
        max_rows: most rows returned (``settings.sql_max_rows``).
    """
    path = Path(database_path)

    async def sql_query(params: SqlQueryParams) -> dict[str, JsonValue]:
        return await asyncio.to_thread(run_query, path, params.sql, max_rows=max_rows)

    return Tool(
        name="sql_query",
        description=(
            "Run one read-only SQLite SELECT over the shop database (tables customers, products, "
            f"orders, order_items); at most {max_rows} rows. Returns {{columns, rows, row_count, "
            "truncated}}."
        ),
        params_model=SqlQueryParams,
        fn=sql_query,
        metadata=ToolMetadata(
            parallel_safe=True,
            cacheable=True,
            cache_ttl_s=600,
            requires_approval=False,
            timeout_s=10,
        ),
    )


def ensure_example_database(db_path: Path, sql_path: Path = EXAMPLE_SQL_PATH) -> Path:
    """Build the SQLite file ``db_path`` from the script ``sql_path`` unless it exists.

    The database is written to a temporary file in the same folder and renamed into place, so a
    reader never sees a half-built file and a crash leaves no partial database behind.

    Args:
        db_path: where the database lives; its folder is created when missing.
        sql_path: the SQL script (``examples/shop.sql`` by default).

    Returns:
        ``db_path``.

    Raises:
        FileNotFoundError: ``sql_path`` does not exist.
        sqlite3.Error: the script is invalid.
    """
    db_path = Path(db_path)
    if db_path.is_file():
        return db_path
    script = Path(sql_path).read_text(encoding="utf-8")
    db_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{db_path.name}.", suffix=".tmp", dir=db_path.parent)
    os.close(fd)
    try:
        conn = sqlite3.connect(tmp_name)
        try:
            conn.executescript(script)
            conn.commit()
        finally:
            conn.close()
        os.replace(tmp_name, db_path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return db_path
