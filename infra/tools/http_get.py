"""The ``http_get`` tool: fetch one URL from an allowlisted host.

The hazard: a tool that fetches arbitrary URLs lets a prompt reach internal services (SSRF) and
can be made to download without end. So the host must be on ``http_allowed_hosts`` (exact,
case-insensitive host-name match; the port is not checked), redirects are never followed (a
redirect to another host would bypass the allowlist; the status and ``Location`` are reported
instead), proxies from the environment are ignored (the allowlist names the host actually
connected to), the body is streamed and cut at ``http_max_bytes``, and the whole request is
bounded by ``http_timeout_s``. Because it reaches outside, the tool requires approval.

Error mapping:

| failure                                       | error                 | retryable |
|-----------------------------------------------|-----------------------|-----------|
| host not allowlisted, invalid URL             | ``ToolError``         | no        |
| connect error, timeout, broken connection     | ``ToolTransientError``| yes       |
| 5xx response                                  | ``ToolTransientError``| yes       |
| 1xx-4xx response (3xx not followed)           | normal result         |           |
"""

from __future__ import annotations

import codecs
import contextlib
import functools
import ssl
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, Field, JsonValue, field_validator

from core.errors import ToolError, ToolTransientError
from core.tools import Tool, ToolMetadata


class HttpGetParams(BaseModel):
    """Parameters of the ``http_get`` tool."""

    url: str = Field(
        min_length=1,
        max_length=2048,
        description="Absolute http:// or https:// URL on an allowlisted host.",
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value.strip())
        if parts.scheme.lower() not in ("http", "https"):
            raise ValueError("url must start with http:// or https://")
        if not parts.hostname:
            raise ValueError("url must name a host")
        return value.strip()


def _decode(body: bytes, charset: str | None) -> str:
    """Decode ``body`` with the response's charset (UTF-8 when absent or unknown)."""
    encoding = "utf-8"
    if charset:
        with contextlib.suppress(LookupError):
            encoding = codecs.lookup(charset).name
    return body.decode(encoding, errors="replace")


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """The TLS context of every ``http_get`` call, built once per process.

    ``httpx.AsyncClient()`` builds a fresh context (loading the CA bundle) when given none, which
    cost about 32 ms per call here: more than the request itself on a fast endpoint (measured by
    ``python -m benchmarks fanout``).
    """
    return ssl.create_default_context()


async def fetch_url(
    url: str, *, allowed_hosts: list[str], max_bytes: int, timeout_s: float
) -> dict[str, JsonValue]:
    """GET ``url`` without following redirects, reading at most ``max_bytes`` of its body.

    Args:
        url: absolute http(s) URL.
        allowed_hosts: host names that may be fetched (exact, case-insensitive).
        max_bytes: most body bytes read; the rest is not downloaded.
        timeout_s: timeout of connect, each read and the pool wait, in seconds.

    Returns:
        ``{"url": str, "status_code": int, "content_type": str | None, "body": str,
        "size_bytes": int, "truncated": bool, "location": str | None}``: ``body`` is the text
        decoded with the response's charset (bad bytes replaced), ``size_bytes`` the number of
        body bytes read (after content decoding), ``truncated`` whether the body was longer than
        ``max_bytes``, and ``location`` the ``Location`` header (set on redirects).

    Raises:
        ToolError: the URL is invalid or its host is not allowlisted (non-retryable).
        ToolTransientError: connect error, timeout, broken connection or a 5xx status
            (retryable).
    """
    try:
        host = httpx.URL(url).host.lower()
    except httpx.InvalidURL as exc:
        raise ToolError(f"invalid URL {url!r}: {exc}") from exc
    allowed = {h.lower() for h in allowed_hosts}
    if host not in allowed:
        listed = ", ".join(allowed_hosts) or "(none)"
        raise ToolError(f"host {host!r} is not allowed (allowed hosts: {listed})")

    chunks: list[bytes] = []
    size = 0
    truncated = False
    try:
        async with (
            httpx.AsyncClient(
                timeout=timeout_s, follow_redirects=False, trust_env=False, verify=_tls_context()
            ) as client,
            client.stream("GET", url) as response,
        ):
            if response.status_code >= 500:
                raise ToolTransientError(
                    f"GET {url} answered HTTP {response.status_code} {response.reason_phrase}"
                )
            async for chunk in response.aiter_bytes():
                room = max_bytes - size
                if len(chunk) > room:
                    chunks.append(chunk[:room])
                    size += room
                    truncated = True
                    break
                chunks.append(chunk)
                size += len(chunk)
    except httpx.TimeoutException as exc:
        raise ToolTransientError(f"GET {url} timed out after {timeout_s} s") from exc
    except (httpx.NetworkError, httpx.RemoteProtocolError, httpx.ProxyError) as exc:
        raise ToolTransientError(f"GET {url} failed: {type(exc).__name__}: {exc}") from exc
    except httpx.HTTPError as exc:
        raise ToolError(f"GET {url} failed: {type(exc).__name__}: {exc}") from exc

    return {
        "url": url,
        "status_code": response.status_code,
        "content_type": response.headers.get("content-type"),
        "body": _decode(b"".join(chunks), response.charset_encoding),
        "size_bytes": size,
        "truncated": truncated,
        "location": response.headers.get("location"),
    }


def make_http_get_tool(*, allowed_hosts: list[str], max_bytes: int, timeout_s: float) -> Tool:
    """The ``http_get`` tool bound to its limits (no I/O until called).

    Args:
        allowed_hosts: host names that may be fetched (``settings.http_allowed_hosts``).
        max_bytes: most body bytes read (``settings.http_max_bytes``).
        timeout_s: request timeout in seconds (``settings.http_timeout_s``).
    """
    hosts = list(allowed_hosts)

    async def http_get(params: HttpGetParams) -> dict[str, JsonValue]:
        return await fetch_url(
            params.url, allowed_hosts=hosts, max_bytes=max_bytes, timeout_s=timeout_s
        )

    return Tool(
        name="http_get",
        description=(
            "Fetch a URL with HTTP GET from an allowlisted host (redirects are reported, not "
            f"followed; bodies over {max_bytes} bytes are cut). Returns {{url, status_code, "
            "content_type, body, size_bytes, truncated, location}}."
        ),
        params_model=HttpGetParams,
        fn=http_get,
        metadata=ToolMetadata(
            parallel_safe=True,
            cacheable=True,
            cache_ttl_s=300,
            requires_approval=True,
            timeout_s=15,
        ),
    )
