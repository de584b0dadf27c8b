"""Request coalescing against real redis-servers: one compute per key across two clients."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from infra.coalesce import MAX_KEY_CHARS, Coalesced, Coalescer, make_client
from tests.helpers import ROOT, free_port, redis_server


@pytest.fixture
async def clients(redis_url: str) -> AsyncIterator[tuple[Redis, Redis]]:
    """Two separate clients: two workers."""
    a, b = make_client(redis_url), make_client(redis_url)
    yield a, b
    await a.aclose()
    await b.aclose()


@pytest.fixture
def prefix() -> str:
    return f"agentflow:test:coalesce:{uuid.uuid4().hex}:"


class Shared:
    """A Redis-backed result store plus a counter of computes, as a caller would use them."""

    def __init__(self, client: Redis, key: str, *, compute_s: float, store: bool = True) -> None:
        self.client = client
        self.key = key
        self.compute_s = compute_s
        self.store = store
        self.computes = 0
        self.compute_started: list[float] = []

    async def compute(self) -> str:
        self.computes += 1
        self.compute_started.append(time.monotonic())
        await asyncio.sleep(self.compute_s)
        value = f"value-{self.computes}"
        if self.store:
            await self.client.set(self.key, value, ex=30)
        return value

    async def load(self) -> str | None:
        raw = await self.client.get(self.key)
        return raw.decode() if isinstance(raw, bytes) else raw


def _lock(prefix: str, key: str) -> str:
    return f"{prefix}lock:{key}"


async def _timed(coalescer: Coalescer, key: str, shared: Shared) -> tuple[Coalesced[str], float]:
    started = time.monotonic()
    result = await coalescer.run(key, shared.compute, shared.load)
    return result, time.monotonic() - started


# --------------------------------------------------------------------------- coalescing


async def test_twenty_concurrent_calls_compute_once(
    clients: tuple[Redis, Redis], prefix: str
) -> None:
    a, b = clients
    workers = [Coalescer(a, prefix=prefix), Coalescer(b, prefix=prefix)]
    shared = Shared(a, prefix + "result", compute_s=0.3)
    calls = [_timed(workers[i % 2], "k", shared) for i in range(20)]
    outcomes = await asyncio.gather(*calls)

    assert shared.computes == 1
    assert {r.value for r, _ in outcomes} == {"value-1"}
    roles = collections.Counter(r.role for r, _ in outcomes)
    assert roles == {"holder": 1, "waiter": 19}
    holder_s = next(s for r, s in outcomes if r.role == "holder")
    waiter_s = [s for r, s in outcomes if r.role == "waiter"]
    # Waiters finish within a few polls of the holder, nowhere near a lease.
    assert max(waiter_s) < holder_s + 0.5
    assert await a.exists(_lock(prefix, "k")) == 0
    print(
        f"compute 300 ms; holder call {holder_s * 1000:.0f} ms; waiter calls "
        f"mean {sum(waiter_s) / len(waiter_s) * 1000:.0f} ms, max {max(waiter_s) * 1000:.0f} ms"
    )


async def test_different_keys_do_not_block_each_other(
    clients: tuple[Redis, Redis], prefix: str
) -> None:
    a, _ = clients
    coalescer = Coalescer(a, prefix=prefix)
    stores = [Shared(a, f"{prefix}result:{i}", compute_s=0.3) for i in range(5)]
    started = time.monotonic()
    results = await asyncio.gather(
        *(coalescer.run(f"k{i}", s.compute, s.load) for i, s in enumerate(stores))
    )
    elapsed = time.monotonic() - started
    assert [r.role for r in results] == ["holder"] * 5
    assert [s.computes for s in stores] == [1] * 5
    assert elapsed < 0.6  # in parallel: about one compute, not five


async def test_holder_that_raises_releases_at_once_and_waiters_compute(
    clients: tuple[Redis, Redis], prefix: str
) -> None:
    a, b = clients
    holder_side = Coalescer(a, prefix=prefix, lease_s=10.0)
    waiter_side = Coalescer(b, prefix=prefix, lease_s=10.0)
    # Longer than a poll, so every waiter sees the release before any fallback stores.
    shared = Shared(a, prefix + "result", compute_s=0.3)
    fail_now = asyncio.Event()

    async def failing() -> str:
        await fail_now.wait()
        raise RuntimeError("provider exploded")

    holder = asyncio.create_task(holder_side.run("k", failing, shared.load))
    await asyncio.sleep(0.05)
    assert await a.exists(_lock(prefix, "k")) == 1
    waiters = [
        asyncio.create_task(waiter_side.run("k", shared.compute, shared.load)) for _ in range(5)
    ]
    await asyncio.sleep(0.3)  # several polls: every waiter has seen the holder
    assert shared.computes == 0
    fail_now.set()
    failed_at = time.monotonic()
    with pytest.raises(RuntimeError, match="provider exploded"):
        await holder
    assert await a.exists(_lock(prefix, "k")) == 0  # released at once, not after the lease
    results = await asyncio.gather(*waiters)

    assert [r.role for r in results] == ["fallback"] * 5
    assert shared.computes == 5  # the failure is never shared; each waiter computes itself
    # Each computed within a poll or two of the failure, far below the 10 s lease.
    assert max(shared.compute_started) - failed_at < 0.5


async def test_uncached_result_is_not_shared_and_waiters_do_not_queue(
    clients: tuple[Redis, Redis], prefix: str
) -> None:
    """A holder whose answer is not stored: waiters compute at once, in parallel."""
    a, b = clients
    shared = Shared(a, prefix + "result", compute_s=0.3, store=False)
    workers = [Coalescer(a, prefix=prefix), Coalescer(b, prefix=prefix)]
    finish = asyncio.Event()

    async def unstored() -> str:
        await finish.wait()
        return "degraded answer"

    holder = asyncio.create_task(workers[0].run("k", unstored, shared.load))
    await asyncio.sleep(0.05)
    waiters = [
        asyncio.create_task(workers[i % 2].run("k", shared.compute, shared.load)) for i in range(6)
    ]
    await asyncio.sleep(0.3)  # every waiter has seen the holder
    finish.set()
    finished_at = time.monotonic()
    assert (await holder).role == "holder"
    results = await asyncio.gather(*waiters)
    done_s = time.monotonic() - finished_at

    assert [r.role for r in results] == ["fallback"] * 6
    assert shared.computes == 6
    # In parallel: about one 0.3 s compute; one after another would take 6 x 0.3 s.
    assert done_s < 0.3 + 0.5


async def test_cancelled_holder_releases_the_lock(
    clients: tuple[Redis, Redis], prefix: str
) -> None:
    a, _ = clients
    coalescer = Coalescer(a, prefix=prefix, lease_s=10.0)
    shared = Shared(a, prefix + "result", compute_s=30.0)
    task = asyncio.create_task(coalescer.run("k", shared.compute, shared.load))
    await asyncio.sleep(0.1)
    assert await a.exists(_lock(prefix, "k")) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await a.exists(_lock(prefix, "k")) == 0


async def test_holder_that_stored_before_our_lock_is_not_recomputed(
    clients: tuple[Redis, Redis], prefix: str
) -> None:
    """The caller missed its cache, then another worker stored and released: load, no compute."""
    a, _ = clients
    shared = Shared(a, prefix + "result", compute_s=0.01)
    await a.set(shared.key, "stored-by-someone", ex=30)
    result = await Coalescer(a, prefix=prefix).run("k", shared.compute, shared.load)
    assert (result.value, result.role, shared.computes) == ("stored-by-someone", "waiter", 0)
    assert await a.exists(_lock(prefix, "k")) == 0


async def test_long_keys_coalesce_under_a_bounded_lock_key(
    clients: tuple[Redis, Redis], prefix: str
) -> None:
    a, b = clients
    key = "x" * 5000
    shared = Shared(a, prefix + "result", compute_s=0.2)
    holder = asyncio.create_task(Coalescer(a, prefix=prefix).run(key, shared.compute, shared.load))
    await asyncio.sleep(0.05)
    locks = [k async for k in a.scan_iter(match=prefix + "lock:*")]
    assert len(locks) == 1
    assert len(locks[0]) <= len(prefix) + len("lock:sha256:") + 64
    assert len(key) > MAX_KEY_CHARS
    waiter = await Coalescer(b, prefix=prefix).run(key, shared.compute, shared.load)
    assert ((await holder).role, waiter.role, shared.computes) == ("holder", "waiter", 1)
    with pytest.raises(ValueError):
        await Coalescer(a, prefix=prefix).run("", shared.compute, shared.load)


async def test_in_flight_counts_held_locks(clients: tuple[Redis, Redis], prefix: str) -> None:
    a, _ = clients
    coalescer = Coalescer(a, prefix=prefix)
    stores = [Shared(a, f"{prefix}result:{i}", compute_s=0.3) for i in range(3)]
    assert await coalescer.in_flight() == 0
    tasks = [
        asyncio.create_task(coalescer.run(f"k{i}", s.compute, s.load)) for i, s in enumerate(stores)
    ]
    await asyncio.sleep(0.1)
    assert await coalescer.in_flight() == 3
    assert await coalescer.in_flight(max_keys=2) == 2
    await asyncio.gather(*tasks)
    assert await coalescer.in_flight() == 0


# --------------------------------------------------------------------------- leases


async def test_lease_is_renewed_while_the_holder_computes(
    clients: tuple[Redis, Redis], prefix: str
) -> None:
    a, b = clients
    lease_s = 0.3
    shared = Shared(a, prefix + "result", compute_s=lease_s * 3.5)
    holder = asyncio.create_task(
        Coalescer(a, prefix=prefix, lease_s=lease_s).run("k", shared.compute, shared.load)
    )
    await asyncio.sleep(lease_s * 2)  # without renewal the lock would be gone by now
    assert await a.pttl(_lock(prefix, "k")) > 0
    late = await Coalescer(b, prefix=prefix, lease_s=lease_s).run("k", shared.compute, shared.load)
    first = await holder
    assert (first.role, late.role) == ("holder", "waiter")
    assert late.value == first.value
    assert shared.computes == 1


async def test_killed_holder_is_taken_over_after_its_lease(
    clients: tuple[Redis, Redis], prefix: str, redis_url: str
) -> None:
    a, _ = clients
    lease_s = 1.0
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.coalesce_holder",
        redis_url,
        "k",
        str(lease_s),
        prefix,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=30)
        assert line.strip() == b"computing", line
        shared = Shared(a, prefix + "result", compute_s=0.1)
        waiter = asyncio.create_task(
            Coalescer(a, prefix=prefix, lease_s=lease_s).run("k", shared.compute, shared.load)
        )
        # Longer than the lease: the other process renews it, so the waiter keeps waiting.
        await asyncio.sleep(lease_s * 1.5)
        assert not waiter.done()
        assert shared.computes == 0
        killed_at = time.monotonic()
        proc.send_signal(signal.SIGKILL)
        result = await asyncio.wait_for(waiter, timeout=lease_s + 5)
        took_over_s = shared.compute_started[0] - killed_at
    finally:
        if proc.returncode is None:
            proc.kill()
        await asyncio.wait_for(proc.wait(), timeout=10)

    assert result.role == "fallback"
    assert result.value == "value-1"
    assert shared.computes == 1
    assert 0 <= took_over_s <= lease_s + 1.0
    print(f"waiter took over {took_over_s * 1000:.0f} ms after the kill (lease {lease_s} s)")


async def test_waiter_stops_waiting_after_max_wait(
    clients: tuple[Redis, Redis], prefix: str
) -> None:
    a, b = clients
    shared = Shared(a, prefix + "result", compute_s=0.01, store=False)
    finish = asyncio.Event()

    async def slow() -> str:
        await finish.wait()
        return "slow"

    holder = asyncio.create_task(Coalescer(a, prefix=prefix).run("k", slow, shared.load))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    result = await Coalescer(b, prefix=prefix, max_wait_s=0.3).run("k", shared.compute, shared.load)
    elapsed = time.monotonic() - started
    finish.set()
    assert (await holder).role == "holder"
    assert (result.role, result.value, shared.computes) == ("fallback", "value-1", 1)
    assert 0.3 <= elapsed < 1.0
    assert result.waited_ms >= 300


# --------------------------------------------------------------------------- Redis failures


async def test_unreachable_redis_computes_uncoordinated_quickly(prefix: str) -> None:
    client = make_client(f"redis://127.0.0.1:{free_port()}/0")
    try:
        coalescer = Coalescer(client, prefix=prefix)
        computes = 0

        async def compute() -> str:
            nonlocal computes
            computes += 1
            return "v"

        async def load() -> str | None:
            return None

        started = time.monotonic()
        result = await coalescer.run("k", compute, load)
        assert time.monotonic() - started < 0.5
        assert (result.value, result.role, computes) == ("v", "uncoordinated", 1)
        assert coalescer.stats.redis_errors == 1
    finally:
        await client.aclose()


async def test_known_down_redis_is_not_asked(clients: tuple[Redis, Redis], prefix: str) -> None:
    a, _ = clients
    shared = Shared(a, prefix + "result", compute_s=0.2, store=False)
    coalescer = Coalescer(a, prefix=prefix, available=lambda: False)
    task = asyncio.create_task(coalescer.run("k", shared.compute, shared.load))
    await asyncio.sleep(0.1)
    assert await a.exists(_lock(prefix, "k")) == 0  # no lock taken
    assert (await task).role == "uncoordinated"


async def test_redis_stopped_and_restarted_mid_run(prefix: str) -> None:
    port = free_port()
    server = contextlib.ExitStack()
    url = server.enter_context(redis_server(port))
    a, b = make_client(url), make_client(url)
    try:
        holder_side = Coalescer(a, prefix=prefix, lease_s=0.6)
        waiter_side = Coalescer(b, prefix=prefix, lease_s=0.6)
        compute_started: list[float] = []

        async def compute() -> str:
            compute_started.append(time.monotonic())
            await asyncio.sleep(1.2)
            return "v"

        async def no_result() -> str | None:
            return None

        holder = asyncio.create_task(holder_side.run("k", compute, no_result))
        await asyncio.sleep(0.1)
        waiter = asyncio.create_task(waiter_side.run("k", compute, no_result))
        await asyncio.sleep(0.2)
        assert not waiter.done() and len(compute_started) == 1
        await asyncio.to_thread(server.close)  # SIGTERM; waits for the server to exit
        stopped_at = time.monotonic()
        waiter_result = await asyncio.wait_for(waiter, timeout=5)
        assert (waiter_result.role, waiter_result.value) == ("uncoordinated", "v")
        assert len(compute_started) == 2
        assert compute_started[1] - stopped_at < 0.5  # fell back on its next poll
        holder_result = await holder  # renewals and release fail quietly
        assert (holder_result.role, holder_result.value) == ("holder", "v")

        with redis_server(port):
            await a.ping()  # the restarted server is up; the same clients reconnect
            shared = Shared(a, prefix + "result", compute_s=0.3)
            first = asyncio.create_task(_timed(holder_side, "k2", shared))
            await asyncio.sleep(0.05)
            late, _ = await _timed(waiter_side, "k2", shared)
            assert ((await first)[0].role, late.role, shared.computes) == ("holder", "waiter", 1)
    finally:
        server.close()
        await a.aclose()
        await b.aclose()


async def test_a_holder_always_stops_renewing_and_releases(
    clients: tuple[Redis, Redis], prefix: str
) -> None:
    """Many short leases renewed while computing: every holder returns and frees its lock (a
    renewer stopped by cancelling could swallow the cancel inside a Redis call and renew for
    ever)."""
    a, _ = clients
    coalescer = Coalescer(a, prefix=prefix, lease_s=0.03, poll_s=0.01)

    async def compute() -> str:
        await asyncio.sleep(0.02)
        return "v"

    async def load() -> str | None:
        return None

    for i in range(100):
        outcome = await asyncio.wait_for(coalescer.run(f"short-{i}", compute, load), 2.0)
        assert outcome.value == "v"
        assert await a.exists(_lock(prefix, f"short-{i}")) == 0
