"""Takes a coalescing lock in its own process and computes until killed.

Used by tests/test_coalesce.py: ``python -m tests.coalesce_holder URL KEY LEASE_S PREFIX``
prints ``computing`` once it holds the lock, then sleeps (renewing the lease) until killed.
"""

from __future__ import annotations

import asyncio
import sys

from infra.coalesce import Coalescer
from infra.redis_client import make_client


async def main(url: str, key: str, lease_s: float, prefix: str) -> None:
    client = make_client(url)
    coalescer = Coalescer(client, lease_s=lease_s, prefix=prefix)

    async def compute() -> str:
        print("computing", flush=True)
        await asyncio.sleep(3600)
        return "never"

    async def load() -> str | None:
        return None

    result = await coalescer.run(key, compute, load)
    print(f"unexpected: {result.role}", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]))
