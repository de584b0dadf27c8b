"""The ``sql_query`` tool: read-only SELECT queries over a SQLite database, bounded in size.

The hazards: SQL from a prompt may try to write, attach other files, change settings or run for
ever; and even a read-only SELECT can build huge values in memory
(``SELECT printf('%.*c', 20000000, 'x')`` took a worker from 196 MB to 3.26 GB, ``zeroblob(1e9)``
asks for a gigabyte) or return a few rows of megabytes each.

Three independent locks keep it read-only: the file is opened with ``mode=ro``,
``PRAGMA query_only=ON`` is set, and an authorizer allows only reading actions (``SELECT``,
``READ``, ``FUNCTION``, and ``RECURSIVE`` so recursive CTEs work) and denies everything else
(writes, ``ATTACH``, ``PRAGMA``, DDL, transactions). ``sqlite3`` itself refuses more than one
statement per call.

Size and time are bounded four ways:

* the authorizer allows only the SQL functions in :data:`ALLOWED_FUNCTIONS` (scalar, aggregate,
  window, date and math functions whose output is bounded by their input); functions that build
  values of a size the query chooses (``zeroblob``, ``randomblob``, and ``printf``/``format``,
  whose width argument sizes the output), that reach outside the query (``sqlite_version``,
  ``load_extension``) or that grow without SQLite's length check (``json_group_array``) are
  refused by name;
* ``SQLITE_LIMIT_LENGTH`` is set to ``max_cell_bytes``, so SQLite refuses to build any string or
  blob longer than that (``||`` in a recursive CTE, ``replace`` amplification, ``group_concat``),
  and ``SQLITE_LIMIT_COLUMN`` to :data:`MAX_COLUMNS`, so one row holds at most
  ``MAX_COLUMNS * max_cell_bytes`` bytes;
* rows are fetched one at a time and counted: at most ``max_rows`` rows and
  ``max_result_bytes`` bytes of cell data (UTF-8 text, blobs as hex) are returned, the rest is
  cut and the result marked ``truncated``;
* a progress handler interrupts the statement (compiling aside) after :data:`QUERY_TIME_LIMIT_S`,
  fetching included.

The blocking work runs in a worker thread (``asyncio.to_thread``) on a fresh connection per
call; the progress handler stops it there, so the thread does not outlive the limit by more than
one SQLite step.

The example database is built from ``examples/shop.sql`` by :func:`ensure_example_database`.
"""

from __future__ import annotations

import asyncio
import logging
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
DEFAULT_MAX_RESULT_BYTES = 256 * 1024
"""Most bytes of cell data returned when the caller names no limit."""
DEFAULT_MAX_CELL_BYTES = 16 * 1024
"""Largest string or blob SQLite may build when the caller names no limit."""
MAX_COLUMNS = 100
"""Most columns a result (and any table, ``GROUP BY`` or ``ORDER BY`` the query uses) may have
(``SQLITE_LIMIT_COLUMN``)."""
MAX_LIKE_PATTERN_BYTES = 1000
"""Longest ``LIKE``/``GLOB`` pattern (``SQLITE_LIMIT_LIKE_PATTERN_LENGTH``); matching costs up to
pattern length times text length, inside one SQLite step the time limit cannot split."""

# fmt: off
ALLOWED_FUNCTIONS: frozenset[str] = frozenset((
    # aggregates (group_concat and string_agg stop growing at SQLITE_LIMIT_LENGTH)
    "avg", "count", "group_concat", "max", "min", "string_agg", "sum", "total",
    # window functions
    "cume_dist", "dense_rank", "first_value", "lag", "last_value", "lead", "nth_value", "ntile",
    "percent_rank", "rank", "row_number",
    # text and values (output at most a small multiple of the input, and under the length limit)
    "abs", "char", "coalesce", "concat", "concat_ws", "glob", "hex", "ifnull", "iif", "instr",
    "length", "like", "likelihood", "likely", "lower", "ltrim", "nullif", "octet_length",
    "quote", "random", "replace", "round", "rtrim", "sign", "soundex", "substr", "substring",
    "trim", "typeof", "unhex", "unicode", "unlikely", "upper",
    # dates and times
    "current_date", "current_time", "current_timestamp", "date", "datetime", "julianday",
    "strftime", "time", "timediff", "unixepoch",
    # math
    "acos", "acosh", "asin", "asinh", "atan", "atan2", "atanh", "ceil", "ceiling", "cos", "cosh",
    "degrees", "exp", "floor", "ln", "log", "log10", "log2", "mod", "pi", "pow", "power",
    "radians", "sin", "sinh", "sqrt", "tan", "tanh", "trunc",
    # JSON reading (no aggregates: json_group_array/object grow without the length check)
    "->", "->>", "json", "json_array", "json_array_length", "json_extract", "json_object",
    "json_quote", "json_type", "json_valid",
))
# fmt: on
"""SQL functions a query may call (lower case). Every other function is refused, notably
``zeroblob``, ``randomblob``, ``printf`` and ``format`` (they build values of a size the query
chooses), ``load_extension``, ``sqlite_*`` and the FTS/R-tree helpers."""

_ALLOWED_ACTIONS = frozenset({sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_RECURSIVE})
_PROGRESS_EVERY_N_OPS = 1000

log = logging.getLogger(__name__)


class SqlQueryParams(BaseModel):
    """Parameters of the ``sql_query`` tool."""

    sql: str = Field(
        min_length=1,
        max_length=5000,
        description="One read-only SELECT (or WITH ... SELECT) statement in SQLite syntax.",
    )


class _Authorizer:
    """The connection's authorizer: reading actions and allowlisted functions only.

    Remembers the first function it refused, so the error can name it.
    """

    def __init__(self) -> None:
        self.refused_function: str | None = None

    def __call__(
        self,
        action: int,
        arg1: str | None,
        arg2: str | None,
        db_name: str | None,
        trigger: str | None,
    ) -> int:
        if action == sqlite3.SQLITE_FUNCTION:
            name = (arg2 or "").lower()
            if name in ALLOWED_FUNCTIONS:
                return sqlite3.SQLITE_OK
            if self.refused_function is None:
                self.refused_function = name
            return sqlite3.SQLITE_DENY
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


def _cell_bytes(value: JsonValue) -> int:
    """Bytes a converted cell counts against ``max_result_bytes`` (UTF-8 text, else its repr)."""
    if isinstance(value, str):
        return len(value.encode("utf-8", errors="replace"))
    return len(repr(value))


def run_query(
    db_path: Path,
    sql: str,
    *,
    max_rows: int,
    max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
    max_cell_bytes: int = DEFAULT_MAX_CELL_BYTES,
    time_limit_s: float = QUERY_TIME_LIMIT_S,
) -> dict[str, JsonValue]:
    """Run one read-only query (blocking; call it from a worker thread).

    Args:
        db_path: the SQLite file, opened read-only.
        sql: exactly one SELECT statement (a trailing ``;`` is fine).
        max_rows: most rows returned.
        max_result_bytes: most bytes of cell data returned (text as UTF-8, blobs as hex text,
            numbers as written); the row that would pass it is not returned.
        max_cell_bytes: largest string or blob SQLite may build or read while running the
            statement (``SQLITE_LIMIT_LENGTH``).
        time_limit_s: the query, fetching included, is interrupted after this many seconds.

    Returns:
        ``{"columns": [str], "rows": [[value]], "row_count": int, "truncated": bool}`` where
        ``row_count`` is ``len(rows)`` and ``truncated`` says the result was cut: more rows
        existed, or the next row would have passed ``max_result_bytes``. Blobs come back as hex
        text.

    Raises:
        ToolError: the file is missing, the statement is not a single read-only SELECT, it calls
            a function that is not allowed, it builds a value over ``max_cell_bytes``, it is
            invalid (unknown table, syntax error), or it ran out of time (all non-retryable).
    """
    if not sql.strip():
        raise ToolError("the SQL statement is empty")
    if not db_path.is_file():
        # The server's path stays in the worker's log, not in the job's result.
        log.error("sql_query: database file %s does not exist", db_path)
        raise ToolError("the query database is not available (AGENTFLOW_SQL_DATABASE_PATH)")
    uri = f"file:{quote(str(db_path.resolve()))}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True)
    except sqlite3.Error as exc:
        log.error("sql_query: cannot open %s: %s", db_path, exc)
        raise ToolError(
            "the query database cannot be opened (AGENTFLOW_SQL_DATABASE_PATH)"
        ) from exc
    authorizer = _Authorizer()
    rows: list[JsonValue] = []
    truncated = False
    try:
        conn.execute("PRAGMA query_only=ON")
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, max_cell_bytes)
        conn.setlimit(sqlite3.SQLITE_LIMIT_COLUMN, MAX_COLUMNS)
        conn.setlimit(sqlite3.SQLITE_LIMIT_LIKE_PATTERN_LENGTH, MAX_LIKE_PATTERN_BYTES)
        conn.set_authorizer(authorizer)
        deadline = time.monotonic() + time_limit_s
        conn.set_progress_handler(lambda: int(time.monotonic() > deadline), _PROGRESS_EVERY_N_OPS)
        try:
            cursor = conn.execute(sql)
            if cursor.description is None:
                raise ToolError("only SELECT queries are allowed (the statement returns no rows)")
            columns: list[JsonValue] = [str(d[0]) for d in cursor.description]
            size = 0
            while (row := cursor.fetchone()) is not None:
                if len(rows) == max_rows:
                    truncated = True
                    break
                cells = [_jsonable(v) for v in row]
                row_bytes = sum(_cell_bytes(c) for c in cells)
                if size + row_bytes > max_result_bytes:
                    truncated = True
                    break
                size += row_bytes
                rows.append(cells)
        except sqlite3.ProgrammingError as exc:
            if "one statement" in str(exc):
                raise ToolError("only one SQL statement is allowed per query") from exc
            raise ToolError(f"invalid query: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            raise _query_error(exc, authorizer, max_cell_bytes, time_limit_s) from exc
    finally:
        conn.close()
    return {"columns": columns, "rows": rows, "row_count": len(rows), "truncated": truncated}


def _query_error(
    exc: sqlite3.DatabaseError, authorizer: _Authorizer, max_cell_bytes: int, time_limit_s: float
) -> ToolError:
    """The :class:`ToolError` for a statement SQLite refused or stopped."""
    message = str(exc)
    if "not authorized" in message:
        if authorizer.refused_function is not None:
            return ToolError(
                f"function {authorizer.refused_function}() is not allowed in sql_query: only "
                "common aggregate, window, text, date, math and JSON functions are (not printf, "
                "zeroblob or randomblob, which build values of any size)"
            )
        return ToolError(
            "only read-only SELECT queries are allowed "
            "(no INSERT/UPDATE/DELETE, DDL, ATTACH or PRAGMA); "
            f"the database said: {message}"
        )
    if "too big" in message:
        return ToolError(
            f"the query builds or reads a value larger than {max_cell_bytes} bytes "
            "(sql_query's limit on one string or blob)"
        )
    if "too many columns" in message:
        return ToolError(f"the query uses more than {MAX_COLUMNS} columns")
    if "pattern too complex" in message:
        return ToolError(f"a LIKE or GLOB pattern is longer than {MAX_LIKE_PATTERN_BYTES} bytes")
    if "interrupted" in message:
        return ToolError(f"query ran longer than {time_limit_s} s and was stopped")
    if "readonly" in message or "read-only" in message:
        return ToolError(f"the database is read-only: {message}")
    return ToolError(f"query failed: {message}")


def make_sql_query_tool(
    *,
    database_path: Path,
    max_rows: int,
    max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
    max_cell_bytes: int = DEFAULT_MAX_CELL_BYTES,
) -> Tool:
    """The ``sql_query`` tool bound to its database and limits (no I/O until called).

    Args:
        database_path: the SQLite file (``settings.sql_database_path``).
        max_rows: most rows returned (``settings.sql_max_rows``).
        max_result_bytes: most bytes of cell data returned (``settings.sql_max_result_bytes``).
        max_cell_bytes: largest string or blob a statement may build
            (``settings.sql_max_cell_bytes``).
    """
    path = Path(database_path)

    async def sql_query(params: SqlQueryParams) -> dict[str, JsonValue]:
        return await asyncio.to_thread(
            run_query,
            path,
            params.sql,
            max_rows=max_rows,
            max_result_bytes=max_result_bytes,
            max_cell_bytes=max_cell_bytes,
        )

    return Tool(
        name="sql_query",
        description=(
            "Run one read-only SQLite SELECT over the shop database (tables customers, products, "
            f"orders, order_items); at most {max_rows} rows and {max_result_bytes} bytes, "
            f"values up to {max_cell_bytes} bytes, common SQL functions only (no printf: use "
            "round). Returns {columns, rows, row_count, truncated}."
        ),
        params_model=SqlQueryParams,
        fn=sql_query,
        metadata=ToolMetadata(
            answers_query=True,
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
