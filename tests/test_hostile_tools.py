"""The tools and the planner against a hostile user, on real servers and real SQLite.

The report behind these tests: ``http_get`` fetched the API itself (``127.0.0.1:8000/v1/jobs``),
the Temporal UI and metrics, because loopback was allowlisted and the port not checked;
``SELECT printf('%.*c', 20000000, 'x')`` took a worker from 196 MB to 3.26 GB and
``zeroblob(1e9)`` was accepted; the calculator raised ``RecursionError`` on ``"-" * 499 + "1"``;
and the rules planner spent 29 s of CPU on 20,000 spaces.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from core.arithmetic import MAX_EXPRESSION_DEPTH
from core.errors import ToolError, ToolTransientError
from core.models import ToolCall
from core.settings import PROJECT_ROOT, Settings
from core.tools import ToolRegistry
from domain.planner import TIME_LIMIT_S, find_expressions, plan_tools_by_rules
from infra.tools import builtin_registry, ensure_example_database
from infra.tools.calculator import evaluate_expression
from infra.tools.http_get import HttpPolicy, fetch_url
from infra.tools.sql_query import run_query

MARKER = "SECRET-JOB-LIST"
"""Text only the stand-in for the API serves: it must never reach a tool result."""

# --------------------------------------------------------------------------- local servers


@dataclass
class Server:
    """A real HTTP(S) server on 127.0.0.1 and what it was asked.

    Attributes:
        url: ``http(s)://127.0.0.1:<port>``.
        port: its port.
        requests: one ``(path, Host header, TLS server name or None)`` per request.
    """

    url: str
    port: int
    requests: list[tuple[str, str | None, str | None]] = field(default_factory=list)


@contextmanager
def serve(
    body: bytes, *, redirect_to: str | None = None, tls: ssl.SSLContext | None = None
) -> Iterator[Server]:
    """Serve ``body`` on every path (``/redirect`` answers 302 to ``redirect_to``)."""
    server_box: list[Server] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            sni = getattr(self.request, "server_name_seen", None)
            server_box[0].requests.append((self.path, self.headers.get("Host"), sni))
            if self.path == "/redirect" and redirect_to:
                self.send_response(302)
                self.send_header("Location", redirect_to)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if tls is not None:
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
    port = int(httpd.server_address[1])
    scheme = "https" if tls else "http"
    server_box.append(Server(url=f"{scheme}://127.0.0.1:{port}", port=port))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield server_box[0]
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture
def api_standin() -> Iterator[Server]:
    """Stands in for the agentflow API on a loopback port: what a self-fetch would read."""
    with serve(json.dumps({"jobs": [{"job_id": MARKER}]}).encode()) as server:
        yield server


async def get(settings: Settings, url: str) -> Any:
    """Validate and run an ``http_get`` call through the registry, as the activity does."""
    registry = builtin_registry(settings)
    tool, params = registry.validate(ToolCall(id="h", name="http_get", parameters={"url": url}))
    return await tool.fn(params)


async def refused(settings: Settings, url: str) -> str:
    """The message of the non-retryable refusal of ``url``; fails when it is fetched."""
    with pytest.raises(ToolError) as info:
        await get(settings, url)
    assert not isinstance(info.value, ToolTransientError), info.value.message
    assert not info.value.retryable
    return info.value.message


# --------------------------------------------------------------------------- http_get: self-fetch


async def test_default_settings_refuse_every_url(api_standin: Server) -> None:
    message = await refused(Settings(), f"{api_standin.url}/v1/jobs")
    assert "is not allowed" in message
    assert api_standin.requests == []


async def test_loopback_port_not_allowlisted_is_refused(api_standin: Server) -> None:
    """An operator opens 127.0.0.1 for a docs server on one port: the API's port stays shut."""
    with serve(b'{"doc": "page"}') as docs:
        settings = Settings(
            http_allowed_hosts=[f"127.0.0.1:{docs.port}"], http_allowed_networks=["127.0.0.1/32"]
        )
        message = await refused(settings, f"{api_standin.url}/v1/jobs")
        assert "is not allowed" in message and str(api_standin.port) in message
        assert MARKER not in message
        assert (await get(settings, f"{docs.url}/page"))["status_code"] == 200
    assert api_standin.requests == []


async def test_allowlisted_loopback_needs_its_network_opened(api_standin: Server) -> None:
    hostport = api_standin.url.removeprefix("http://")
    message = await refused(Settings(http_allowed_hosts=[hostport]), f"{api_standin.url}/v1/jobs")
    assert "loopback" in message
    assert api_standin.requests == []

    opened = Settings(http_allowed_hosts=[hostport], http_allowed_networks=["127.0.0.1/32"])
    value = await get(opened, f"{api_standin.url}/v1/jobs")
    assert value["status_code"] == 200 and MARKER in value["body"]
    assert [path for path, _, _ in api_standin.requests] == ["/v1/jobs"]


async def test_a_name_that_resolves_to_loopback_is_refused(api_standin: Server) -> None:
    settings = Settings(http_allowed_hosts=[f"localhost:{api_standin.port}"])
    message = await refused(settings, f"http://localhost:{api_standin.port}/v1/jobs")
    assert "'localhost'" in message and "loopback" in message
    assert "127.0.0.1" not in message  # the resolved address is not disclosed
    assert api_standin.requests == []


@pytest.mark.parametrize(
    ("host", "networks"),
    [
        ("[::1]", []),
        ("[::ffff:127.0.0.1]", []),  # IPv4-mapped IPv6
        ("[::1]", ["127.0.0.1/32"]),  # opening IPv4 loopback does not open IPv6 loopback
        ("[::ffff:7f00:1]", ["::1/128"]),  # the same mapped address, hex spelling
        ("[2002:7f00:1::]", []),  # 6to4 around 127.0.0.1
        ("[64:ff9b::7f00:1]", []),  # NAT64 around 127.0.0.1
    ],
)
async def test_ipv6_spellings_of_loopback_are_refused(
    api_standin: Server, host: str, networks: list[str]
) -> None:
    settings = Settings(
        http_allowed_hosts=[f"{host}:{api_standin.port}"], http_allowed_networks=networks
    )
    message = await refused(settings, f"http://{host}:{api_standin.port}/v1/jobs")
    assert "may not reach" in message
    assert api_standin.requests == []


@pytest.mark.parametrize(
    "host",
    ["169.254.169.254", "[fd00:ec2::254]", "[::ffff:169.254.169.254]", "100.100.100.200"],
)
async def test_metadata_addresses_are_refused_always(host: str) -> None:
    """Even allowlisted, with every network opened, and without trying to connect."""
    settings = Settings(
        http_allowed_hosts=[host], http_allowed_networks=["0.0.0.0/0", "::/0"], http_timeout_s=30
    )
    started = time.monotonic()
    message = await refused(settings, f"http://{host}/latest/meta-data/")
    assert "cloud-metadata" in message
    assert time.monotonic() - started < 5  # refused before any connection attempt


@pytest.mark.parametrize(
    "host",
    [
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "100.64.0.1",  # shared address space (carrier-grade NAT)
        "198.18.0.1",
        "224.0.0.1",  # multicast: ipaddress calls it global
        "0.0.0.0",
        "255.255.255.255",
        "[fe80::1]",
        "[fc00::1]",
        "[fec0::1]",  # IPv6 site-local: ipaddress calls it global
        "[ff02::1]",
    ],
)
async def test_non_public_addresses_are_refused_unless_opened(host: str) -> None:
    settings = Settings(http_allowed_hosts=[f"{host}:80"], http_timeout_s=30)
    started = time.monotonic()
    message = await refused(settings, f"http://{host}:80/")
    assert "may not reach" in message
    assert time.monotonic() - started < 5


async def test_redirects_to_the_api_are_reported_not_followed(api_standin: Server) -> None:
    with serve(b"{}", redirect_to=f"{api_standin.url}/v1/jobs") as docs:
        settings = Settings(
            http_allowed_hosts=[docs.url.removeprefix("http://")],
            http_allowed_networks=["127.0.0.1/32"],
        )
        value = await get(settings, f"{docs.url}/redirect")
    assert value["status_code"] == 302
    assert value["location"] == f"{api_standin.url}/v1/jobs"
    assert MARKER not in json.dumps(value)
    assert api_standin.requests == []


async def test_connects_to_the_checked_address_with_the_original_host() -> None:
    """The request goes to the resolved, checked IP; the server still sees ``Host: localhost``."""
    with serve(b'{"ok": true}') as site:
        settings = Settings(
            http_allowed_hosts=[f"localhost:{site.port}"],
            http_allowed_networks=["127.0.0.0/8", "::1/128"],
        )
        value = await get(settings, f"http://localhost:{site.port}/page")
    assert value["status_code"] == 200
    assert value["url"] == f"http://localhost:{site.port}/page"
    assert site.requests == [("/page", f"localhost:{site.port}", None)]


def _self_signed(name: str) -> tuple[bytes, bytes]:
    """A certificate for DNS name ``name`` only, and its key (both PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


async def test_https_keeps_the_name_for_sni_and_the_certificate(tmp_path: Path) -> None:
    """Pinned to 127.0.0.1, the TLS handshake still names ``localhost``, and the certificate
    (valid for ``localhost`` only, not for the IP) verifies."""
    cert_pem, key_pem = _self_signed("localhost")
    (tmp_path / "cert.pem").write_bytes(cert_pem)
    (tmp_path / "key.pem").write_bytes(key_pem)
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")

    def remember_name(sock: ssl.SSLObject | ssl.SSLSocket, name: str | None, _: Any) -> None:
        sock.server_name_seen = name  # type: ignore[union-attr]

    server_tls.sni_callback = remember_name
    client_tls = ssl.create_default_context(cadata=cert_pem.decode())
    with serve(b'{"tls": true}', tls=server_tls) as site:
        policy = HttpPolicy.from_settings([f"localhost:{site.port}"], ["127.0.0.0/8", "::1/128"])
        value = await fetch_url(
            f"https://localhost:{site.port}/secure",
            policy=policy,
            max_bytes=1024,
            timeout_s=5,
            tls_context=client_tls,
        )
    assert value["status_code"] == 200 and value["body"] == '{"tls": true}'
    assert site.requests == [("/secure", f"localhost:{site.port}", "localhost")]


@pytest.mark.parametrize(
    ("hosts", "networks", "setting"),
    [
        (["http://example.com/"], [], "http_allowed_hosts"),
        (["example.com/path"], [], "http_allowed_hosts"),
        (["example.com:99999"], [], "http_allowed_hosts"),
        ([], ["not-a-network"], "http_allowed_networks"),
    ],
)
def test_malformed_policy_fails_at_start_up(
    hosts: list[str], networks: list[str], setting: str
) -> None:
    with pytest.raises(ValueError, match=setting):
        builtin_registry(Settings(http_allowed_hosts=hosts, http_allowed_networks=networks))


# --------------------------------------------------------------------------- sql_query: memory

CHILD = """
import asyncio, json, resource, sys
from pathlib import Path
# A safety net: a regression fails this test instead of swapping the machine.
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
from core.errors import ToolError
from core.models import ToolCall
from core.settings import Settings
from infra.tools import builtin_registry


def peak_rss_kb():
    # VmHWM: the kernel's high-water mark of this process's resident memory. (ru_maxrss would
    # also count the parent's memory at fork time.)
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1])


registry = builtin_registry(Settings(sql_database_path=Path(sys.argv[1])))

async def run(sql):
    tool, params = registry.validate(
        ToolCall(id="s", name="sql_query", parameters={"sql": sql})
    )
    return await tool.fn(params)

asyncio.run(run("SELECT count(*) FROM customers"))  # warm: SQLite loaded, code paged in
baseline_kb = peak_rss_kb()
try:
    value = asyncio.run(run(sys.argv[2]))
    out = {"outcome": "rows", "truncated": value["truncated"], "row_count": value["row_count"],
           "json_bytes": len(json.dumps(value["rows"]))}
except ToolError as exc:
    out = {"outcome": "refused", "message": exc.message}
out["baseline_kb"] = baseline_kb
out["peak_kb"] = peak_rss_kb()
print(json.dumps(out))
"""

PEAK_LIMIT_MB = 200
"""A worker-like process that ran one hostile query stays under this peak RSS."""
GROWTH_LIMIT_MB = 32
"""And its peak grows by less than this while running it: the result is capped at 256 KiB,
one row at ``MAX_COLUMNS * 16 KiB``, and SQLite never builds a value over 16 KiB."""


def run_in_child(db: Path, sql: str) -> dict[str, Any]:
    """Run ``sql`` through the ``sql_query`` tool in a fresh Python process.

    Returns:
        The child's report, with its peak RSS (kB, the kernel's ``VmHWM``) before and after.
    """
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(db), sql],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report: dict[str, Any] = json.loads(proc.stdout)
    return report


_DOUBLE_8K = (
    "s(x, n) AS (SELECT 'xxxxxxxx', 0 UNION ALL SELECT x || x, n + 1 FROM s WHERE n < 10), "
    "big(v) AS (SELECT x FROM s WHERE n = 10)"  # one 8 KiB string
)
_X100 = "x" * 100


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        pytest.param(
            "SELECT printf('%.*c', 20000000, 'x')", "printf() is not allowed", id="printf"
        ),
        pytest.param("SELECT zeroblob(1e9)", "zeroblob() is not allowed", id="zeroblob"),
        pytest.param("SELECT randomblob(1e9)", "randomblob() is not allowed", id="randomblob"),
        pytest.param(
            "WITH RECURSIVE r(i, s) AS (SELECT 1, 'x' UNION ALL SELECT i + 1, s || s FROM r "
            "WHERE i < 40) SELECT length(s) FROM r ORDER BY i DESC LIMIT 1",
            "larger than 16384 bytes",
            id="cte-doubling",
        ),
        pytest.param(
            "SELECT length(" + "replace(" * 5 + f"'{_X100}'" + f", 'x', '{_X100}')" * 5 + ")",
            "larger than 16384 bytes",
            id="replace-amplification",
        ),
        pytest.param(
            "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < 100000) "
            "SELECT group_concat(i) FROM r",
            "larger than 16384 bytes",
            id="group-concat",
        ),
        pytest.param(
            f"WITH RECURSIVE {_DOUBLE_8K}, "
            "r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < 1000) "
            f"SELECT i, {', '.join(['v'] * 30)} FROM r, big",
            "truncated",
            id="wide-rows",
        ),
    ],
)
@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads VmHWM from /proc")
def test_hostile_queries_keep_the_process_small(tmp_path: Path, sql: str, expected: str) -> None:
    db = ensure_example_database(tmp_path / "shop.sqlite")
    report = run_in_child(db, sql)
    if expected == "truncated":
        assert report["outcome"] == "rows" and report["truncated"] is True, report
        assert report["json_bytes"] <= 256 * 1024 + 64 * report["row_count"] + 64, report
    else:
        assert report["outcome"] == "refused", report
        assert expected in report["message"]
    peak_mb = report["peak_kb"] / 1024
    growth_mb = (report["peak_kb"] - report["baseline_kb"]) / 1024
    assert peak_mb < PEAK_LIMIT_MB, f"peak RSS {peak_mb:.0f} MB"
    assert growth_mb < GROWTH_LIMIT_MB, f"grew {growth_mb:.0f} MB during the query"


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_example_database(tmp_path_factory.mktemp("hostile") / "shop.sqlite")


def test_a_normal_query_still_works(shop: Path) -> None:
    value = run_query(
        shop,
        "SELECT p.category, count(*) AS items, round(avg(p.price_usd), 2) AS avg_usd, "
        "upper(substr(min(p.name), 1, 3)) AS first, strftime('%Y', max(o.ordered_at)) AS year "
        "FROM products p JOIN order_items oi ON oi.product_id = p.id "
        "JOIN orders o ON o.id = oi.order_id GROUP BY p.category ORDER BY items DESC",
        max_rows=200,
    )
    assert value["row_count"] == 5 and value["truncated"] is False
    assert sum(row[1] for row in value["rows"]) == 150


def test_result_bytes_are_capped_at_whole_rows(shop: Path) -> None:
    """Rows stop at the one that would pass ``max_result_bytes``; the result says truncated."""
    sql = (
        "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < 150) "
        f"SELECT '{'y' * 995}' || substr('0000' || i, -4, 4) FROM r"
    )
    value = run_query(shop, sql, max_rows=200, max_result_bytes=10_000)
    assert value["truncated"] is True
    assert value["row_count"] == 10_000 // 999 == len(value["rows"])  # 999 bytes a row
    assert sum(len(row[0]) for row in value["rows"]) <= 10_000
    whole = run_query(shop, sql, max_rows=200, max_result_bytes=150 * 999)
    assert whole["truncated"] is False and whole["row_count"] == 150


def test_cell_size_limit_is_the_setting(shop: Path) -> None:
    sql = f"WITH RECURSIVE {_DOUBLE_8K} SELECT length(v || v) FROM big"  # 16 KiB
    assert run_query(shop, sql, max_rows=1, max_cell_bytes=16 * 1024)["rows"] == [[16384]]
    with pytest.raises(ToolError, match="larger than 16383 bytes"):
        run_query(shop, sql, max_rows=1, max_cell_bytes=16 * 1024 - 1)


@pytest.mark.parametrize(
    "call",
    [
        "printf('%d', 1)",
        "format('%d', 1)",
        "zeroblob(10)",
        "randomblob(10)",
        "load_extension('x')",
        "sqlite_version()",
        "json_group_array(name)",
    ],
)
def test_functions_off_the_allowlist_are_refused_by_name(shop: Path, call: str) -> None:
    with pytest.raises(ToolError) as info:
        run_query(shop, f"SELECT {call} FROM customers", max_rows=5)
    name = call.split("(")[0]
    assert f"function {name}() is not allowed" in info.value.message
    assert "SELECT" not in info.value.message  # the statement is not echoed


# --------------------------------------------------------------------------- calculator

FOURTEEN_KB = " + ".join(str(i) for i in range(3000))[:14_000].rstrip(" +")


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        pytest.param("-" * 499 + "1", "nested too deeply", id="unary-499"),
        pytest.param("(" * 10_000, "too long", id="parens-10000"),
        pytest.param(FOURTEEN_KB, "too long", id="arithmetic-14KB"),
        pytest.param("9**9**9**9", "too large", id="power-tower"),
        pytest.param("+".join(["1"] * MAX_EXPRESSION_DEPTH), "nested too deeply", id="long-sum"),
        pytest.param("-(" * 166 + "1" + ")" * 166, "nested too deeply", id="unary-parens"),
    ],
)
def test_calculator_refuses_hostile_input_quickly(expression: str, expected: str) -> None:
    started = time.process_time()
    with pytest.raises(ToolError) as info:
        evaluate_expression(expression)
    assert expected in info.value.message
    assert time.process_time() - started < 0.5


def test_calculator_depth_limit_is_the_stated_one() -> None:
    """A chain of n terms is n + 1 levels deep: 99 terms pass, 100 do not."""
    assert evaluate_expression("+".join(["1"] * (MAX_EXPRESSION_DEPTH - 1))) == 99
    with pytest.raises(ToolError, match="nested too deeply"):
        evaluate_expression("+".join(["1"] * MAX_EXPRESSION_DEPTH))


def test_calculator_stops_at_its_deadline() -> None:
    with pytest.raises(ToolError, match="longer than"):
        evaluate_expression("+".join(["2 ** 10"] * 40), time_limit_s=1e-9)


async def test_calculator_tool_refuses_deep_input_without_recursion_error() -> None:
    """Through the registry, as a job calls it: 500 characters pass the parameter check."""
    registry: ToolRegistry = builtin_registry(Settings())
    tool, params = registry.validate(
        ToolCall(id="c", name="calculator", parameters={"expression": "-" * 499 + "1"})
    )
    with pytest.raises(ToolError, match="nested too deeply"):
        await tool.fn(params)


# --------------------------------------------------------------------------- planner

HOSTILE_QUERIES = {
    "arithmetic-14KB": FOURTEEN_KB,
    "spaces-20000": " " * 19_999 + "x",
    "tabs-then-math": "\t" * 19_990 + "1 + 2",
    "parens-10000": "(" * 10_000 + "1" + ")" * 9_999,
    "unary-19999": "-" * 19_999 + "1",
    "unary-then-op": "what is " + "-" * 496 + "1+1",
    "unary-runs": ("-" * 998 + "1 x ") * 19,
    "unbalanced-runs": ("(" * 500 + "1" + ")" * 400 + " x ") * 21,
    "trim-heavy": ("1+" * 480 + "1" + "(" * 35 + " x ") * 20,
}


@pytest.mark.parametrize("query", HOSTILE_QUERIES.values(), ids=HOSTILE_QUERIES.keys())
def test_planner_bounds_hostile_queries(query: str) -> None:
    """It returns within its time limit plus one bounded step, and proposes nothing the
    calculator would choke on."""
    registry = builtin_registry(Settings())
    started = time.process_time()
    calls = plan_tools_by_rules(query, registry)
    assert time.process_time() - started < TIME_LIMIT_S + 1.0
    for call in calls:
        registry.validate(call)
        if call.name == "calculator":
            with contextlib.suppress(ToolError):  # a refusal is an answer; RecursionError is not
                evaluate_expression(str(call.parameters["expression"]))


def test_planner_search_stops_at_its_deadline() -> None:
    assert find_expressions("what is 1 + 1 and 2 * 3") == ["1 + 1", "2 * 3"]
    assert find_expressions("what is 1 + 1 and 2 * 3", time_limit_s=0) == []
