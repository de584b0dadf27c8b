"""A real local HTTP server whose every response takes a set time: the tool latency ``L``.

``GET /delay?ms=200&n=anything`` sleeps 200 ms and answers a small JSON body. Threaded, with a
listen backlog large enough for 64+ simultaneous connections (the standard library's default of
5 would make connections wait for SYN retries and distort the fan-out numbers).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import parse_qs, urlparse


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        query = parse_qs(urlparse(self.path).query)
        delay_ms = float(query.get("ms", ["0"])[0])
        time.sleep(delay_ms / 1000)
        body = json.dumps({"slept_ms": delay_ms, "n": query.get("n", [""])[0]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # quiet
        return


class _Server(ThreadingHTTPServer):
    request_queue_size = 512
    daemon_threads = True


class DelayServer:
    """Serve on 127.0.0.1 (a free port) in a background thread for a ``with`` block."""

    def __init__(self) -> None:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def allowlist(self) -> dict[str, list[str]]:
        """Settings that let ``http_get`` fetch this server (and nothing else on loopback)."""
        return {
            "http_allowed_hosts": [f"127.0.0.1:{self.port}"],
            "http_allowed_networks": ["127.0.0.1/32"],
        }

    @property
    def allowlist_env(self) -> dict[str, str]:
        """:attr:`allowlist` as a worker's environment variables."""
        return {f"AGENTFLOW_{k.upper()}": json.dumps(v) for k, v in self.allowlist.items()}

    def url(self, delay_ms: float, nonce: str) -> str:
        """The URL that answers after ``delay_ms`` milliseconds."""
        return f"http://127.0.0.1:{self.port}/delay?ms={delay_ms:g}&n={nonce}"

    def __enter__(self) -> DelayServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
