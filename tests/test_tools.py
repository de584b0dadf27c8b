"""The four built-in tools against real parts: an HTTP server on loopback, a SQLite file."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from core.errors import ToolCallInvalidError, ToolError, ToolTransientError
from core.models import ToolCall
from core.settings import Settings
from core.tools import ToolRegistry, tool_cache_key
from infra.tools import builtin_registry, ensure_example_database
from infra.tools.calculator import evaluate_expression
from infra.tools.python_docs import search_python_docs, tokenize
from infra.tools.sql_query import run_query
from tests.helpers import free_port

BIG_BODY = b"0123456789" * 1000  # 10,000 bytes


# --------------------------------------------------------------------------- fixtures


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str = "text/plain; charset=utf-8",
        extra: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/hello":
            self._send(200, "héllo wörld".encode())
        elif self.path == "/json":
            self._send(200, b'{"ok": true}', "application/json")
        elif self.path == "/big":
            self._send(200, BIG_BODY)
        elif self.path == "/latin1":
            self._send(200, "café".encode("latin-1"), "text/plain; charset=iso-8859-1")
        elif self.path == "/boom":
            self._send(500, b"internal error")
        elif self.path == "/unavailable":
            self._send(503, b"try later")
        elif self.path == "/redirect":
            self._send(302, b"", extra={"Location": "http://example.com/elsewhere"})
        else:
            self._send(404, b"no such page")


@pytest.fixture(scope="module")
def http_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(scope="module")
def shop_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_example_database(tmp_path_factory.mktemp("shop") / "shop.sqlite")


def loopback_settings(port: int, **overrides: Any) -> Settings:
    """Settings that allow ``http_get`` to reach 127.0.0.1:``port`` (and nothing else)."""
    return Settings(
        http_allowed_hosts=[f"127.0.0.1:{port}"],
        http_allowed_networks=["127.0.0.1/32"],
        **overrides,
    )


@pytest.fixture
def registry(shop_db: Path, http_server: str) -> ToolRegistry:
    settings = Settings(
        http_allowed_hosts=[http_server.removeprefix("http://")],
        http_allowed_networks=["127.0.0.1/32"],
        http_max_bytes=1024,
        http_timeout_s=5.0,
        sql_database_path=shop_db,
        sql_max_rows=10,
    )
    return builtin_registry(settings)


async def call(registry: ToolRegistry, name: str, **parameters: Any) -> Any:
    """Validate through the registry (as the activity does), then run the tool."""
    tool, params = registry.validate(ToolCall(id="t-1", name=name, parameters=parameters))
    return await tool.fn(params)


# --------------------------------------------------------------------------- registry


def test_registry_lists_the_four_tools_with_their_metadata(registry: ToolRegistry) -> None:
    assert registry.names() == ["calculator", "python_docs_search", "http_get", "sql_query"]
    meta = {t.name: t.metadata for t in registry}
    assert meta["calculator"].cache_ttl_s == 86400 and meta["calculator"].timeout_s == 5
    assert meta["python_docs_search"].timeout_s == 10
    assert meta["http_get"].requires_approval is True
    assert meta["http_get"].cache_ttl_s == 300 and meta["http_get"].timeout_s == 15
    assert meta["sql_query"].cache_ttl_s == 600 and meta["sql_query"].timeout_s == 10
    for name in ("calculator", "python_docs_search", "sql_query"):
        assert meta[name].requires_approval is False
    assert all(m.parallel_safe and m.cacheable for m in meta.values())
    # Public specs serialize (GET /v1/tools).
    for tool in registry:
        assert tool.public().parameters_schema["type"] == "object"


def test_building_the_registry_does_no_io(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "shop.sqlite"
    builtin_registry(Settings(sql_database_path=missing))
    assert not missing.parent.exists()


# --------------------------------------------------------------------------- calculator


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("2 + 3 * 4", 14),
        ("(2 + 3) * 4", 20),
        ("17 * (3 + 4)", 119),
        ("-2 ** 2", -4),
        ("2 ** 10", 1024),
        ("7 // 2", 3),
        ("7 % 3", 1),
        ("10 / 4", 2.5),
        ("-(3 - 5)", 2),
        ("sqrt(16)", 4.0),
        ("abs(-3) + round(2.567, 2)", 5.57),
        ("min(3, 1, 2) + max(4, 5)", 6),
        ("factorial(5)", 120),
    ],
)
def test_calculator_evaluates_arithmetic(expression: str, value: float) -> None:
    result = evaluate_expression(expression)
    assert result == pytest.approx(value)
    assert type(result) is type(value)


def test_calculator_math_functions_and_constants() -> None:
    assert evaluate_expression("sin(pi / 2)") == pytest.approx(1.0)
    assert evaluate_expression("cos(0)") == pytest.approx(1.0)
    assert evaluate_expression("log(e)") == pytest.approx(1.0)
    assert evaluate_expression("log10(1000)") == pytest.approx(3.0)


async def test_calculator_tool_returns_expression_and_value(registry: ToolRegistry) -> None:
    assert await call(registry, "calculator", expression="17 * (3 + 4)") == {
        "expression": "17 * (3 + 4)",
        "value": 119,
    }


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("1 / 0", "division by zero"),
        ("5 // 0", "division by zero"),
        ("__import__('os').system('true')", "only calls of the known math functions"),
        ("__import__('os')", "unknown function '__import__'"),
        ("x + 1", "unknown name 'x'"),
        ("open('/etc/passwd')", "unknown function 'open'"),
        ("(1).real", "Attribute is not allowed"),
        ("'a' * 3", "only numbers"),
        ("[1, 2]", "not allowed"),
        ("lambda: 1", "not allowed"),
        ("2 +", "not a valid arithmetic expression"),
        ("1; 2", "not a valid arithmetic expression"),
        ("9 ** 9 ** 9", "too large"),
        ("2 ** 100000", "too large"),
        ("10 ** 999 * 10 ** 999", "too large"),
        ("exp(1000)", "too large"),
        ("1e999", "not a finite number"),
        ("sqrt(-1)", "math domain error"),
        ("factorial(100000)", "too large"),
        ("(-8) ** (1 / 3)", "not a real number"),
        ("2 ^ 3", "use '**'"),
        ("sqrt", "is a function"),
    ],
)
def test_calculator_refuses(expression: str, message: str) -> None:
    with pytest.raises(ToolError) as info:
        evaluate_expression(expression)
    assert message in info.value.message
    assert not info.value.retryable


async def test_calculator_tool_refusal_is_a_tool_error(registry: ToolRegistry) -> None:
    with pytest.raises(ToolError, match="division by zero"):
        await call(registry, "calculator", expression="1/0")


def test_calculator_params_limit_length() -> None:
    registry = builtin_registry(Settings())
    with pytest.raises(ToolCallInvalidError, match="at most 500"):
        registry.validate(ToolCall(id="c", name="calculator", parameters={"expression": "1" * 501}))


# --------------------------------------------------------------------------- python docs


def test_tokenize_lowercases_drops_stopwords_and_folds_plurals() -> None:
    assert tokenize("How do the Decorators work with classes, indexes and properties?") == [
        "decorator",
        "work",
        "with",
        "class",
        "index",
        "and",
        "property",
    ]


def test_docs_search_ranks_function_definitions_for_decorators() -> None:
    results = search_python_docs("decorator function definition", top_k=3)
    assert "function" in [r["topic"] for r in results]
    assert results[0]["score"] >= results[-1]["score"] > 0


def test_docs_search_finds_the_with_statement() -> None:
    results = search_python_docs("with statement context manager", top_k=3)
    topics = [r["topic"] for r in results]
    assert "with" in topics
    with_result = results[topics.index("with")]
    assert "context manager" in str(with_result["snippet"]).lower()


def test_docs_search_respects_top_k_and_snippet_length() -> None:
    for k in (1, 5, 10):
        results = search_python_docs("exception handling try except", top_k=k)
        assert len(results) == k
        assert all(len(str(r["snippet"])) <= 600 for r in results)
    scores = [r["score"] for r in search_python_docs("yield generator", top_k=10)]
    assert scores == sorted(scores, reverse=True)


def test_docs_search_keeps_python_keywords() -> None:
    assert tokenize("for in and with") == ["for", "in", "and", "with"]
    assert search_python_docs("for statement", top_k=1)[0]["topic"] == "for"


def test_docs_search_without_known_words_returns_nothing() -> None:
    assert search_python_docs("zzqx qqwv", top_k=5) == []
    assert search_python_docs("the of which", top_k=5) == []


async def test_docs_tool_shape(registry: ToolRegistry) -> None:
    value = await call(registry, "python_docs_search", query="lambda expressions", top_k=2)
    assert value["query"] == "lambda expressions"
    assert len(value["results"]) == 2
    assert value["results"][0]["topic"] == "lambda"
    assert set(value["results"][0]) == {"topic", "score", "snippet"}


def test_docs_params_bounds() -> None:
    registry = builtin_registry(Settings())
    for bad in ({"query": "x", "top_k": 0}, {"query": "x", "top_k": 11}, {"query": ""}):
        with pytest.raises(ToolCallInvalidError, match="invalid parameters"):
            registry.validate(ToolCall(id="d", name="python_docs_search", parameters=bad))


# --------------------------------------------------------------------------- http_get


async def test_http_get_returns_the_body(registry: ToolRegistry, http_server: str) -> None:
    value = await call(registry, "http_get", url=f"{http_server}/hello")
    assert value["status_code"] == 200
    assert value["content_type"] == "text/plain; charset=utf-8"
    assert value["body"] == "héllo wörld"
    assert value["size_bytes"] == len("héllo wörld".encode())
    assert value["truncated"] is False
    assert value["url"] == f"{http_server}/hello"


async def test_http_get_decodes_with_the_declared_charset(
    registry: ToolRegistry, http_server: str
) -> None:
    value = await call(registry, "http_get", url=f"{http_server}/latin1")
    assert value["body"] == "café"


async def test_http_get_truncates_at_max_bytes(registry: ToolRegistry, http_server: str) -> None:
    value = await call(registry, "http_get", url=f"{http_server}/big")
    assert value["truncated"] is True
    assert value["size_bytes"] == 1024
    assert value["body"] == BIG_BODY[:1024].decode()


async def test_http_get_4xx_is_a_result(registry: ToolRegistry, http_server: str) -> None:
    value = await call(registry, "http_get", url=f"{http_server}/missing")
    assert value["status_code"] == 404
    assert value["body"] == "no such page"


async def test_http_get_does_not_follow_redirects(registry: ToolRegistry, http_server: str) -> None:
    value = await call(registry, "http_get", url=f"{http_server}/redirect")
    assert value["status_code"] == 302
    assert value["location"] == "http://example.com/elsewhere"
    assert value["body"] == ""


@pytest.mark.parametrize("path", ["/boom", "/unavailable"])
async def test_http_get_5xx_is_transient(
    registry: ToolRegistry, http_server: str, path: str
) -> None:
    with pytest.raises(ToolTransientError) as info:
        await call(registry, "http_get", url=f"{http_server}{path}")
    assert info.value.retryable
    assert "HTTP 5" in info.value.message


async def test_http_get_connection_refused_is_transient() -> None:
    port = free_port()  # nothing listens there
    registry = builtin_registry(loopback_settings(port))
    with pytest.raises(ToolTransientError, match="could not connect"):
        await call(registry, "http_get", url=f"http://127.0.0.1:{port}/")


async def test_http_get_timeout_is_transient() -> None:
    # A listening socket that never answers: the read times out.
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        registry = builtin_registry(loopback_settings(port, http_timeout_s=0.3))
        with pytest.raises(ToolTransientError, match="timed out"):
            await call(registry, "http_get", url=f"http://127.0.0.1:{port}/")


async def test_http_get_refuses_hosts_off_the_allowlist(
    registry: ToolRegistry, http_server: str
) -> None:
    port = int(http_server.rsplit(":", 1)[1])
    other_port = port + 1 if port < 65535 else port - 1
    for url in (
        f"http://localhost:{port}/hello",  # the same server under another name
        f"http://127.0.0.1:{other_port}/hello",  # the allowlisted host on another port
        "http://127.0.0.1/hello",  # port 80: the entry names the server's port only
        "https://example.com/",
    ):
        with pytest.raises(ToolError) as info:
            await call(registry, "http_get", url=url)
        assert not isinstance(info.value, ToolTransientError)
        assert "is not allowed" in info.value.message
        assert "AGENTFLOW_HTTP_ALLOWED_HOSTS" in info.value.message  # names the setting ...
        assert f"127.0.0.1:{port}" not in info.value.message  # ... not the operator's list


def test_http_get_params_refuse_other_schemes() -> None:
    registry = builtin_registry(Settings())
    for url in ("ftp://127.0.0.1/x", "file:///etc/passwd", "127.0.0.1/x", "http://"):
        with pytest.raises(ToolCallInvalidError, match="invalid parameters"):
            registry.validate(ToolCall(id="h", name="http_get", parameters={"url": url}))


# --------------------------------------------------------------------------- sql_query


def test_example_database_has_the_documented_size(shop_db: Path) -> None:
    with sqlite3.connect(shop_db) as conn:
        counts = {
            table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for table in ("customers", "products", "orders", "order_items")
        }
        countries = conn.execute("SELECT count(DISTINCT country) FROM customers").fetchone()[0]
        categories = conn.execute("SELECT count(DISTINCT category) FROM products").fetchone()[0]
        span = conn.execute("SELECT min(ordered_at), max(ordered_at) FROM orders").fetchone()
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    conn.close()
    assert counts == {"customers": 20, "products": 25, "orders": 60, "order_items": 150}
    assert countries == 6 and categories == 5
    assert span[0] >= "2025" and span[1] < "2027"


def test_ensure_example_database_is_idempotent(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "shop.sqlite"
    assert ensure_example_database(target) == target
    mtime = target.stat().st_mtime_ns
    assert ensure_example_database(target) == target
    assert target.stat().st_mtime_ns == mtime
    assert [p.name for p in target.parent.iterdir()] == ["shop.sqlite"]  # no temp files left


def test_ensure_example_database_leaves_nothing_on_a_bad_script(tmp_path: Path) -> None:
    script = tmp_path / "bad.sql"
    script.write_text("CREATE TABLE t (x); INSERT INTO nope VALUES (1);")
    target = tmp_path / "db" / "bad.sqlite"
    with pytest.raises(sqlite3.Error):
        ensure_example_database(target, script)
    assert list(target.parent.iterdir()) == []


async def test_sql_query_join_and_aggregate(registry: ToolRegistry, shop_db: Path) -> None:
    sql = """
        SELECT c.country, count(DISTINCT o.id) AS orders,
               round(sum(oi.quantity * oi.unit_price_usd), 2) AS revenue_usd
        FROM customers c
        JOIN orders o ON o.customer_id = c.id
        JOIN order_items oi ON oi.order_id = o.id
        GROUP BY c.country
        ORDER BY revenue_usd DESC;
    """
    value = await call(registry, "sql_query", sql=sql)
    assert value["columns"] == ["country", "orders", "revenue_usd"]
    assert value["row_count"] == len(value["rows"]) == 6
    assert value["truncated"] is False
    revenues = [row[2] for row in value["rows"]]
    assert revenues == sorted(revenues, reverse=True)
    assert sum(row[1] for row in value["rows"]) == 60
    # Cross-check against a direct read.
    with sqlite3.connect(shop_db) as conn:
        total = conn.execute(
            "SELECT round(sum(quantity * unit_price_usd), 2) FROM order_items"
        ).fetchone()[0]
    conn.close()
    assert sum(revenues) == pytest.approx(total)


async def test_sql_query_with_cte_and_recursion(registry: ToolRegistry) -> None:
    value = await call(
        registry,
        "sql_query",
        sql="WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3) "
        "SELECT i FROM n",
    )
    assert value["rows"] == [[1], [2], [3]]


async def test_sql_query_truncates_at_max_rows(registry: ToolRegistry) -> None:
    value = await call(registry, "sql_query", sql="SELECT id, name FROM customers ORDER BY id")
    assert value["row_count"] == 10  # sql_max_rows
    assert value["truncated"] is True
    assert value["rows"][0][0] == 1
    exact = await call(registry, "sql_query", sql="SELECT id FROM customers LIMIT 10")
    assert exact["truncated"] is False


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        (
            "INSERT INTO customers (name, email, country, created_at) VALUES ('x','y','FR','z')",
            "read-only SELECT",
        ),
        ("UPDATE products SET price_usd = 0", "read-only SELECT"),
        ("DELETE FROM orders", "read-only SELECT"),
        ("DROP TABLE customers", "read-only SELECT"),
        ("CREATE TABLE t (x)", "read-only SELECT"),
        ("ATTACH DATABASE '/tmp/other.sqlite' AS other", "read-only SELECT"),
        ("PRAGMA table_info(customers)", "read-only SELECT"),
        ("PRAGMA query_only = OFF", "read-only SELECT"),
        ("SELECT 1; DROP TABLE customers", "only one SQL statement"),
        ("WITH x AS (SELECT 1) DELETE FROM orders", "read-only SELECT"),
        ("SELECT * FROM no_such_table", "no such table"),
        ("SELEC 1", "syntax error"),
        ("   ", "empty"),
    ],
)
async def test_sql_query_refuses(
    registry: ToolRegistry, shop_db: Path, sql: str, message: str
) -> None:
    with pytest.raises(ToolError) as info:
        await call(registry, "sql_query", sql=sql)
    assert message in info.value.message
    assert not info.value.retryable
    # Nothing changed.
    with sqlite3.connect(shop_db) as conn:
        assert conn.execute("SELECT count(*) FROM customers").fetchone()[0] == 20
        assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] == 60
    conn.close()


def test_sql_query_stops_long_queries(shop_db: Path) -> None:
    endless = (
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) FROM n"
    )
    with pytest.raises(ToolError, match=r"longer than 0\.2 s"):
        run_query(shop_db, endless, max_rows=5, time_limit_s=0.2)


async def test_sql_query_missing_database_names_the_setting_not_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "absent.sqlite"
    registry = builtin_registry(Settings(sql_database_path=missing))
    with pytest.raises(ToolError) as info:
        await call(registry, "sql_query", sql="SELECT 1")
    # The job's result reaches clients: it names the setting, never the server's file path.
    assert "AGENTFLOW_SQL_DATABASE_PATH" in info.value.message
    assert str(tmp_path) not in info.value.message
    assert not missing.exists()  # read-only open never creates the file


def test_sql_params_bounds() -> None:
    registry = builtin_registry(Settings())
    for bad in ("", "x" * 5001):
        with pytest.raises(ToolCallInvalidError, match="invalid parameters"):
            registry.validate(ToolCall(id="s", name="sql_query", parameters={"sql": bad}))
    with pytest.raises(ToolCallInvalidError, match="sql"):
        registry.validate(ToolCall(id="s", name="sql_query", parameters={"nope": 1}))


def test_calculator_calls_that_mean_the_same_are_one_call(settings: Settings) -> None:
    """Spacing does not make a different call: one cache entry, and the planner's proposal
    for the same arithmetic is recognised as a duplicate of the explicit call."""
    registry = builtin_registry(settings)
    keys = set()
    for text in ("17*23", " 17 * 23 ", "17  *23"):
        tool, params = registry.validate(
            ToolCall(id="c", name="calculator", parameters={"expression": text})
        )
        keys.add(tool_cache_key(tool.name, params))
    assert len(keys) == 1
    _, other = registry.validate(
        ToolCall(id="c", name="calculator", parameters={"expression": "17*24"})
    )
    assert tool_cache_key("calculator", other) not in keys
