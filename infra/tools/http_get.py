"""The ``http_get`` tool: fetch one URL from an allowlisted ``host:port``, on a public address.

The hazard: a tool that fetches URLs lets a prompt reach what only the worker can reach (SSRF):
the agentflow API itself, the Temporal UI, metrics endpoints, other services on the host's
private network and the cloud's metadata service; it can also be made to download without end.
So a URL is fetched only when every check below passes, in this order:

1. **Allowlist.** The URL's host *and* port must be listed in ``http_allowed_hosts``
   (``host:port`` entries, exact and case-insensitive; a bare ``host`` means ports 80 and 443).
   An empty allowlist refuses every URL.
2. **Resolved addresses.** The host is resolved (an IP literal stands for itself) and *every*
   address it resolves to must be public: loopback, private, link-local, multicast, reserved,
   unspecified, shared (100.64/10) and IPv6 site-local addresses are refused, including IPv4
   addresses embedded in IPv6 (``::ffff:127.0.0.1``, 6to4, NAT64), unless the address lies in
   one of ``http_allowed_networks`` (an operator's local docs server, say). Cloud-metadata
   addresses (:data:`METADATA_ADDRESSES`) are refused always, whatever the networks say.
3. **Pinned connection.** The request goes to the checked address itself (the URL's host is
   replaced by it), with the original ``Host`` header and, for https, the original name as TLS
   SNI and certificate name. A DNS answer that changes between the check and the connection
   (DNS rebinding) therefore cannot send the request elsewhere.

Redirects are never followed (the status and ``Location`` are reported instead); if they ever
are, each hop must pass :func:`check_target` again before it is fetched. Proxies from the
environment are ignored (a proxy would connect instead of the checked address), the body is
streamed and cut at ``http_max_bytes``, and connect, each read and the name lookup are bounded by
``http_timeout_s``. Because it reaches outside, the tool also requires approval.

Refusals name the URL's host and what kind of address it resolved to, never the addresses
themselves or the allowlist (both describe the operator's network).

Error mapping:

| failure                                                 | error                 | retryable |
|---------------------------------------------------------|-----------------------|-----------|
| host:port not allowlisted, non-public or metadata       | ``ToolError``         | no        |
| address, invalid URL, name that does not exist          |                       |           |
| connect error, timeout, broken connection, DNS failure  | ``ToolTransientError``| yes       |
| 5xx response                                            | ``ToolTransientError``| yes       |
| 1xx-4xx response (3xx not followed)                     | normal result         |           |

One module on purpose (about 500 lines): the tool and its SSRF checks must be read together; each
check is a small function in the order listed above.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import functools
import ipaddress
import socket
import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, Field, JsonValue, field_validator

from core.errors import ToolError, ToolTransientError
from core.tools import Tool, ToolMetadata

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean, Oracle
        "169.254.170.2",  # AWS ECS task metadata
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "100.100.100.200",  # Alibaba Cloud
    )
)
"""Cloud-metadata service addresses: refused always, even inside ``http_allowed_networks``."""

DEFAULT_PORTS: dict[str, int] = {"http": 80, "https": 443}
"""The port of a URL that names none, by scheme."""
BARE_HOST_PORTS: frozenset[int] = frozenset({80, 443})
"""Ports a bare ``host`` entry of the allowlist stands for."""
MAX_ADDRESSES_TRIED = 4
"""Most resolved addresses tried in turn when connecting fails (all of them are checked)."""

_NAME_DOES_NOT_EXIST = frozenset(
    code for code in (getattr(socket, n, None) for n in ("EAI_NONAME", "EAI_NODATA")) if code
)


class HttpGetParams(BaseModel):
    """Parameters of the ``http_get`` tool."""

    url: str = Field(
        min_length=1,
        max_length=2048,
        description="Absolute http:// or https:// URL on an allowlisted host and port.",
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


def _normalise_host(host: str) -> str:
    """``host`` as compared with the allowlist: lower case, no trailing dot, IPs canonical."""
    text = host.strip().lower().rstrip(".")
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(text).compressed
    return text


@dataclass(frozen=True)
class HttpPolicy:
    """Where ``http_get`` may connect: allowlisted ``(host, port)`` pairs and opened networks.

    Build it with :meth:`from_settings`, which validates the entries once.

    Attributes:
        allowed: ``(host, port)`` pairs; hosts lower case, IDNA-encoded, IPs in canonical form.
        networks: non-public networks whose addresses may be connected to (metadata addresses
            never).
    """

    allowed: frozenset[tuple[str, int]]
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_settings(cls, hosts: Iterable[str], networks: Iterable[str] = ()) -> HttpPolicy:
        """Parse ``http_allowed_hosts`` and ``http_allowed_networks`` entries.

        Args:
            hosts: ``"host:port"``, ``"[v6]:port"``, a bare ``"host"`` (ports 80 and 443) or a
                bare IP address.
            networks: CIDRs such as ``"127.0.0.1/32"`` or ``"10.0.0.0/8"``.

        Raises:
            ValueError: an entry is malformed; the message names the setting and the entry.
        """
        allowed: set[tuple[str, int]] = set()
        for entry in hosts:
            allowed.update(_parse_host_entry(entry))
        parsed: list[IPNetwork] = []
        for cidr in networks:
            try:
                parsed.append(ipaddress.ip_network(cidr.strip(), strict=False))
            except ValueError as exc:
                raise ValueError(
                    f"http_allowed_networks: {cidr!r} is not a CIDR such as 127.0.0.1/32"
                ) from exc
        return cls(allowed=frozenset(allowed), networks=tuple(parsed))

    def allows(self, host: str, port: int) -> bool:
        """Whether ``host:port`` is on the allowlist (``host`` as in the URL)."""
        return (_normalise_host(host), port) in self.allowed

    def address_problem(self, address: IPAddress) -> str | None:
        """Why ``address`` may not be connected to, or ``None`` when it may.

        Returns:
            ``"cloud-metadata"``, or the kind of non-public address (``"loopback"``,
            ``"private"``, ...) when it lies in none of :attr:`networks`; ``None`` for a public
            address or one inside an allowed network.
        """
        embedded = _embedded_ipv4(address)
        candidates = [address] if embedded is None else [address, embedded]
        if any(a in METADATA_ADDRESSES for a in candidates):
            return "cloud-metadata"
        kinds = [kind for a in candidates if (kind := _non_public_kind(a)) is not None]
        if not kinds:
            return None
        if any(a in net for a in candidates for net in self.networks if a.version == net.version):
            return None
        return kinds[0]


def _parse_host_entry(entry: str) -> set[tuple[str, int]]:
    text = entry.strip()
    with contextlib.suppress(ValueError):  # a bare IP address, IPv6 without brackets included
        return {(ipaddress.ip_address(text).compressed, p) for p in BARE_HOST_PORTS}
    try:
        url = httpx.URL(f"http://{text}")
    except httpx.InvalidURL as exc:
        raise ValueError(f"http_allowed_hosts: {entry!r} is not a host or host:port") from exc
    if not url.raw_host or url.userinfo or url.raw_path not in (b"/", b"") or url.query:
        raise ValueError(f"http_allowed_hosts: {entry!r} is not a host or host:port")
    host = _normalise_host(url.raw_host.decode("ascii"))
    if url.port is None:
        return {(host, p) for p in BARE_HOST_PORTS}
    if not 0 < url.port < 65536:
        raise ValueError(f"http_allowed_hosts: {entry!r} names port {url.port} (1-65535)")
    return {(host, url.port)}


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, 6to4 or NAT64), else ``None``."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_SHARED = ipaddress.IPv4Network("100.64.0.0/10")


def _non_public_kind(address: IPAddress) -> str | None:
    """The kind of non-public address ``address`` is, or ``None`` when it is public."""
    checks = (
        ("loopback", address.is_loopback),
        ("unspecified", address.is_unspecified),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
        ("site-local", isinstance(address, ipaddress.IPv6Address) and address.is_site_local),
        ("shared", isinstance(address, ipaddress.IPv4Address) and address in _SHARED),
        ("non-public", not address.is_global),
    )
    return next((kind for kind, hit in checks if hit), None)


@dataclass(frozen=True)
class CheckedTarget:
    """A URL that passed every check, with the addresses it may be fetched from.

    Attributes:
        url: the parsed URL as given.
        host: its host as written in the URL (IDNA-encoded, lower case).
        port: its port (the scheme's default when the URL names none).
        addresses: every address the host resolved to, each one checked, in resolver order.
    """

    url: httpx.URL
    host: str
    port: int
    addresses: tuple[IPAddress, ...]


async def check_target(url: str, policy: HttpPolicy, *, timeout_s: float) -> CheckedTarget:
    """Parse ``url``, match it against the allowlist and check every address it resolves to.

    Every URL fetched passes through here first; a redirect, if one is ever followed, must too.

    Args:
        url: absolute http(s) URL.
        policy: the allowlist and opened networks.
        timeout_s: how long the name lookup may take, in seconds.

    Returns:
        The checked target; connect only to its :attr:`CheckedTarget.addresses`.

    Raises:
        ToolError: invalid URL, host:port not allowlisted, a name that does not exist, or an
            address that is non-public (outside the allowed networks) or cloud metadata
            (non-retryable).
        ToolTransientError: the name lookup failed for another reason or timed out (retryable).
    """
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise ToolError(f"invalid URL: {exc}") from exc
    scheme = parsed.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parsed.raw_host:
        raise ToolError("invalid URL: only absolute http:// and https:// URLs can be fetched")
    host = _normalise_host(parsed.raw_host.decode("ascii"))
    port = parsed.port if parsed.port is not None else DEFAULT_PORTS[scheme]
    if not policy.allows(host, port):
        raise ToolError(
            f"host {host!r} port {port} is not allowed: http_get fetches only the host:port "
            "pairs the operator allowlisted (AGENTFLOW_HTTP_ALLOWED_HOSTS)"
        )
    addresses = await _resolve(host, port, timeout_s)
    for address in addresses:
        problem = policy.address_problem(address)
        if problem is not None:
            raise ToolError(
                f"host {host!r} resolves to an address http_get may not reach ({problem}): it "
                "connects only to public addresses and to networks the operator opened with "
                "AGENTFLOW_HTTP_ALLOWED_NETWORKS, and never to cloud-metadata addresses"
            )
    return CheckedTarget(url=parsed, host=host, port=port, addresses=addresses)


async def _resolve(host: str, port: int, timeout_s: float) -> tuple[IPAddress, ...]:
    """Every address ``host`` resolves to for TCP (an IP literal resolves to itself)."""
    with contextlib.suppress(ValueError):
        return (ipaddress.ip_address(host),)
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP),
            timeout_s,
        )
    except TimeoutError as exc:
        raise ToolTransientError(f"looking up {host!r} timed out after {timeout_s} s") from exc
    except socket.gaierror as exc:
        if exc.errno in _NAME_DOES_NOT_EXIST:
            raise ToolError(f"host {host!r} does not exist (DNS)") from exc
        raise ToolTransientError(f"looking up {host!r} failed (DNS)") from exc
    except OSError as exc:
        raise ToolTransientError(f"looking up {host!r} failed (DNS)") from exc
    addresses: list[IPAddress] = []
    for info in infos:
        # IPv6 sockaddrs may carry a scope ("fe80::1%eth0"); the address alone is checked.
        text = str(info[4][0]).split("%", 1)[0]
        address = ipaddress.ip_address(text)
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise ToolError(f"host {host!r} has no address (DNS)")
    return tuple(addresses)


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
    url: str,
    *,
    policy: HttpPolicy,
    max_bytes: int,
    timeout_s: float,
    tls_context: ssl.SSLContext | None = None,
) -> dict[str, JsonValue]:
    """GET ``url`` from a checked address; redirects are not followed, bodies cut at max_bytes.

    Args:
        url: absolute http(s) URL.
        policy: allowlisted host:port pairs and opened networks (see the module docstring).
        max_bytes: most body bytes read; the rest is not downloaded.
        timeout_s: timeout of the name lookup, connect, each read and the pool wait, in seconds.
        tls_context: the TLS context for https (the system's CAs when ``None``).

    Returns:
        ``{"url": str, "status_code": int, "content_type": str | None, "body": str,
        "size_bytes": int, "truncated": bool, "location": str | None}``: ``url`` as given,
        ``body`` the text decoded with the response's charset (bad bytes replaced),
        ``size_bytes`` the number of body bytes read (after content decoding), ``truncated``
        whether the body was longer than ``max_bytes``, and ``location`` the ``Location``
        header (set on redirects).

    Raises:
        ToolError: the URL is invalid, its host:port is not allowlisted, or it resolves to an
            address that may not be reached (non-retryable).
        ToolTransientError: name lookup failure, connect error, timeout, broken connection or
            a 5xx status (retryable).
    """
    target = await check_target(url, policy, timeout_s=timeout_s)
    headers = {"Host": target.url.netloc.decode("ascii")}
    extensions: dict[str, str] = {}
    if target.url.scheme.lower() == "https" and not _is_ip(target.host):
        extensions["sni_hostname"] = target.host  # also the name the certificate must carry
    last_error: httpx.ConnectError | None = None
    for address in target.addresses[:MAX_ADDRESSES_TRIED]:
        pinned = target.url.copy_with(host=address.compressed)
        try:
            return await _get(pinned, url, headers, extensions, max_bytes, timeout_s, tls_context)
        except httpx.ConnectError as exc:  # refused or unreachable: the next address may answer
            last_error = exc
    raise ToolTransientError(f"GET {url} failed: could not connect") from last_error


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def _get(
    pinned: httpx.URL,
    url: str,
    headers: dict[str, str],
    extensions: dict[str, str],
    max_bytes: int,
    timeout_s: float,
    tls_context: ssl.SSLContext | None,
) -> dict[str, JsonValue]:
    """One GET of ``pinned`` (the checked address); ``url`` is the original, for messages.

    Raises:
        httpx.ConnectError: the connection could not be made (the caller tries the next
            address).
        ToolError, ToolTransientError: as :func:`fetch_url`.
    """
    chunks: list[bytes] = []
    size = 0
    truncated = False
    try:
        async with (
            httpx.AsyncClient(
                timeout=timeout_s,
                follow_redirects=False,
                trust_env=False,
                verify=tls_context or _tls_context(),
            ) as client,
            client.stream("GET", pinned, headers=headers, extensions=extensions) as response,
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
    except httpx.ConnectError:
        raise
    except httpx.TimeoutException as exc:
        raise ToolTransientError(f"GET {url} timed out after {timeout_s} s") from exc
    except (httpx.NetworkError, httpx.RemoteProtocolError, httpx.ProxyError) as exc:
        raise ToolTransientError(f"GET {url} failed: {type(exc).__name__}") from exc
    except httpx.HTTPError as exc:
        raise ToolError(f"GET {url} failed: {type(exc).__name__}") from exc

    return {
        "url": url,
        "status_code": response.status_code,
        "content_type": response.headers.get("content-type"),
        "body": _decode(b"".join(chunks), response.charset_encoding),
        "size_bytes": size,
        "truncated": truncated,
        "location": response.headers.get("location"),
    }


def make_http_get_tool(
    *,
    allowed_hosts: Sequence[str],
    max_bytes: int,
    timeout_s: float,
    allowed_networks: Sequence[str] = (),
) -> Tool:
    """The ``http_get`` tool bound to its policy and limits (no I/O until called).

    Args:
        allowed_hosts: ``host:port`` entries that may be fetched (``settings.http_allowed_hosts``;
            a bare host means ports 80 and 443).
        max_bytes: most body bytes read (``settings.http_max_bytes``).
        timeout_s: request timeout in seconds (``settings.http_timeout_s``).
        allowed_networks: CIDRs of non-public addresses that may be reached
            (``settings.http_allowed_networks``).

    Raises:
        ValueError: an allowlist or network entry is malformed (names the setting).
    """
    policy = HttpPolicy.from_settings(allowed_hosts, allowed_networks)

    async def http_get(params: HttpGetParams) -> dict[str, JsonValue]:
        return await fetch_url(params.url, policy=policy, max_bytes=max_bytes, timeout_s=timeout_s)

    return Tool(
        name="http_get",
        description=(
            "Fetch a URL with HTTP GET from an allowlisted host:port on a public address "
            f"(redirects are reported, not followed; bodies over {max_bytes} bytes are cut). "
            "Returns {url, status_code, content_type, body, size_bytes, truncated, location}."
        ),
        params_model=HttpGetParams,
        fn=http_get,
        metadata=ToolMetadata(
            answers_query=True,
            parallel_safe=True,
            cacheable=True,
            cache_ttl_s=300,
            requires_approval=True,
            timeout_s=15,
        ),
    )
