"""Request coalescing: concurrent identical calls run once and share the result, across workers.

When many jobs ask for the same tool call or generation at once, one of them (the *holder*)
computes it and the others (the *waiters*) read the holder's result from the caller's cache. The
holder is elected with a Redis lock: ``SET lock <random token> NX PX <lease>``.

How a call runs (:meth:`Coalescer.run`; the caller has already checked its cache and missed):

- **holder**: took the lock. It first reads ``load()`` once more (the previous holder may have
  stored the result between the caller's cache check and the ``SET``) and then runs
  ``compute()``, which is expected to store its result where ``load`` finds it. A background task
  renews the lease every ``lease_s / 3`` with a compare-token-and-``PEXPIRE`` script, so a holder
  never extends someone else's lock. When the lock has *vanished* (Redis restarted empty, flushed
  or evicted it), the same script takes it again with the holder's token; after a failed renewal
  the next try comes sooner (``min(lease_s / 3, 4 * poll_s)``), so after a blip the lock is back
  within a few polls of Redis. When ``compute`` returns, raises or is cancelled, the lock is
  deleted with a compare-token-and-``DEL`` script, and a *done marker* holding the token is
  written next to it.
- **waiter**: the lock was taken. Every ``poll_s`` (+-20 % jitter; for long waits the interval
  grows to 10 % of the time waited, at most ``4 * poll_s``) it reads the lock, its remaining
  lease and the done marker in one script call, and calls ``load()`` when the lock is no longer
  held by the holder it saw last (first poll included); the first value ``load`` returns is the
  answer. Only what ``load`` returns is shared, so a failure is never shared.
- **fallback**: a waiter that ended up computing itself, because

  - the holder it waited on finished (done marker carries the token it saw) and ``load`` still
    returns nothing: the holder failed or its answer is not cacheable. Every such waiter
    computes at once, in parallel and without the lock, rather than queueing behind each other
    (a queue would make N callers of an uncacheable answer wait N computes). After Redis
    trouble (below) the answer may instead have been lost (a store skipped while Redis was
    away), so then the waiters race for the lock and one computes while the others wait;
  - the lock vanished with no done marker: the holder died (``SIGKILL``, lost worker) and its
    lease ran out after at most ``lease_s``. The waiters race for the lock with ``SET NX``; the
    winner computes under it (role ``fallback``) and the others wait for it;
  - it waited longer than ``max_wait_s``: it computes without the lock.
- **uncoordinated**: computed without the lock because Redis could not be used (see below).

Redis trouble (a blip or an outage). A ``RedisError``/``OSError`` is never raised from
:meth:`Coalescer.run`, but it does not make every waiter compute either: a restart of a few
hundred milliseconds would otherwise turn N waiters into N computes (a stampede), and a
restarted Redis has also lost the lock and done marker.

- A waiter whose poll fails, or whose ``available()`` says the caller's store is down (for
  example the cache's breaker is open: a result there can neither be stored nor read), keeps
  polling with backoff and does nothing else. Only when that trouble has lasted ``lease_s``
  does it compute on its own (role ``uncoordinated``).
- A waiter that finds its holder's lock gone with no done marker, after Redis trouble or before
  the lease it last read could have run out, assumes the holder is alive (it will take the
  lock again at its next renewal) and waits a jittered 0.6 to 1 ``lease_s`` for it before
  racing for the lock. So a dead holder is taken over after about one lease, and one that
  vanished in a blip costs up to one more lease, not a second compute.
- A new call whose ``SET NX`` fails, or for which ``available()`` is false, computes at once
  (role ``uncoordinated``): it has no holder to wait for, and during a real outage every call
  would otherwise wait a lease.
- A holder whose Redis fails keeps computing; failed renewals are retried and take the lock
  again when Redis is back; a failed release leaves the lock to expire (waiters then wait out
  the grace above and one of them computes).

Measured (``tests/test_coalesce.py``): 200 waiters on four clients, Redis restarted empty for
about 0.4 s while the holder computes, gave 1 compute (201 before this handling); with the
production wiring (the cache's breaker tripped in every worker, so the holder's store is
skipped) 2 computes for 101 calls.

Coalescing is best effort, never exactly-once: a holder that cannot renew for ``lease_s``
(Redis stalled longer than the lease) loses the lock, and another worker may compute the same
call meanwhile; a blip that lasts longer than a lease, or one that a holder's store does not
survive, can add a compute. Exceptions from ``compute`` and from ``load`` (other than Redis
errors) propagate to the caller unchanged.

The client should have retries off and short socket timeouts (the process's
:class:`infra.redis_client.RedisClients`, or :func:`infra.redis_client.make_client`): with
redis-py's default retry policy every poll against a down Redis would take seconds. The
coalescer keeps its own outage clock (how long waiters have seen trouble) and reads the process's
breaker through ``available``; it does not open the breaker itself, so a failed poll never makes
the caches skip Redis.

Why not redis-py's ``redis.asyncio.lock.Lock``. It shares the basics (``SET NX PX`` with a
random token, ``extend``/``reacquire`` and ``release`` as compare-token scripts), but not what
the hazards above need:

- ``reacquire``/``extend`` fail (``LockNotOwnedError``) when the key has vanished. After Redis
  restarts empty, the holder must take its lock *again with the same token*, unless it has
  already released (its done marker), so its waiters find it instead of racing to compute
  (``_RENEW_LUA`` returns 1 renewed, 2 re-taken, 0 lost).
- ``release`` only deletes. Waiters must tell a holder that *finished* (compute without sharing
  its failure) from one that *died* or vanished in a blip (wait out a lease), so the release
  writes a done marker carrying the token in the same script that deletes the lock.
- It has no observer: a waiter here reads the lock's token, its remaining lease and the done
  marker in one round trip (``_POLL_LUA``) and loads the shared result between polls; the Lock's
  blocking ``acquire`` only retries ``SET NX`` on a fixed sleep, with no jitter, backoff or
  ``load``.
- Its token lives in a ``threading.local`` shared by every task of the event loop, so one Lock
  cannot serve concurrent calls, and its scripts are registered on the class with the first
  client it sees.

Adapting it would mean replacing all three of its scripts and its acquire loop, so the lock here
stays hand-written: four short scripts, the same token discipline.

One module on purpose (about 620 lines): one protocol (holder, waiters, lease renewal, done marker,
take-over) whose steps depend on each other's timing; split, its invariants would be spread over
files.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

from redis.asyncio import Redis

from infra.redis_client import REDIS_ERRORS

logger = logging.getLogger(__name__)

T = TypeVar("T")

Role = Literal["holder", "waiter", "fallback", "uncoordinated"]
"""How a :meth:`Coalescer.run` call got its value (see the module docstring)."""

COALESCE_KEY_PREFIX = "agentflow:coalesce:v1:"
"""Default prefix of the lock (``<prefix>lock:<key>``) and done-marker (``<prefix>done:<key>``)
keys."""

MAX_KEY_CHARS = 200
"""Caller keys longer than this are replaced by ``sha256:<hex digest>`` of the key."""

# KEYS[1] = lock, KEYS[2] = done marker, ARGV[1] = token, ARGV[2] = lease in ms. Extends the
# lease while the lock still holds this holder's token (1); takes the lock again when it vanished
# (2: Redis restarted empty, was flushed or evicted the key, or the lease ran out while Redis
# stalled), so the waiters find their holder again, unless this holder has already released
# (its done marker); never touches another holder's lock (0).
_RENEW_LUA = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not holder and redis.call('GET', KEYS[2]) ~= ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 2
end
return 0
"""

# KEYS[1] = lock, KEYS[2] = done marker. What a waiter polls, in one round trip: the lock's token,
# the done marker and the lock's remaining lease in ms (negative when there is no lock).
_POLL_LUA = """
return {redis.call('GET', KEYS[1]), redis.call('GET', KEYS[2]), redis.call('PTTL', KEYS[1])}
"""

# KEYS[1] = lock, KEYS[2] = done marker, ARGV[1] = token, ARGV[2] = marker TTL in ms. Deletes the
# lock only if it is still ours; the marker is written either way, so waiters that saw this token
# know its holder finished rather than died.
_RELEASE_LUA = """
local released = 0
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  released = 1
end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
return released
"""


@dataclass(frozen=True)
class Coalesced(Generic[T]):
    """The value of a coalesced call and how it was obtained.

    Attributes:
        value: what ``compute`` returned (holder, fallback, uncoordinated) or what ``load``
            returned (waiter).
        role: ``holder``, ``waiter``, ``fallback`` or ``uncoordinated`` (see the module
            docstring).
        waited_ms: milliseconds from the call until it got the shared value or began its own
            compute (about a Redis round trip for a holder).
    """

    value: T
    role: Role
    waited_ms: float


@dataclass
class CoalesceStats:
    """Counters since the coalescer was created: calls by role, and Redis failures seen.

    Attributes:
        holder: calls that took the lock at once and computed.
        waiter: calls answered by another call's stored result.
        fallback: calls that waited and then computed themselves.
        uncoordinated: calls that computed without Redis (down or known down).
        redis_errors: Redis commands that failed (``RedisError`` or ``OSError``).
        lost_leases: holders that found their lock taken by another holder when renewing.
        reasserted_leases: holders that found their lock gone when renewing (Redis restarted
            empty, or evicted or expired the key) and took it again.
        blips: waiters that found their holder's lock gone after Redis trouble (or before its
            lease could have run out) and gave the holder a lease to take it again.
    """

    holder: int = 0
    waiter: int = 0
    fallback: int = 0
    uncoordinated: int = 0
    redis_errors: int = 0
    lost_leases: int = 0
    reasserted_leases: int = 0
    blips: int = 0


def _text(raw: object) -> str | None:
    if raw is None:
        return None
    if isinstance(raw, bytes):
        return raw.decode("utf-8", "replace")
    return str(raw)


class Coalescer:
    """Runs concurrent identical calls once across workers that share one Redis.

    Safe to share between coroutines of one event loop; one per worker process is enough.
    """

    def __init__(
        self,
        client: Redis,
        *,
        lease_s: float = 10.0,
        poll_s: float = 0.05,
        max_wait_s: float = 120.0,
        prefix: str = COALESCE_KEY_PREFIX,
        available: Callable[[], bool] | None = None,
    ) -> None:
        """Configure the coalescer; no Redis command is sent until the first call.

        Args:
            client: the Redis client (retries off, short timeouts: the process's
                :attr:`infra.redis_client.RedisClients.client`). Not closed by the coalescer.
            lease_s: lock lease in seconds; a holder renews it every ``lease_s / 3``, and a dead
                holder's lock frees itself after at most this long. Also how long waiters put
                up with Redis trouble before computing on their own.
            poll_s: how often a waiter looks for the result, in seconds (+-20 % jitter).
            max_wait_s: a waiter computes itself after waiting this many seconds.
            prefix: key prefix of the lock and done-marker keys; no glob characters.
            available: when given and it returns ``False`` (for example the process's breaker,
                :attr:`infra.redis_client.RedisBreaker.open`, is open), new calls skip Redis
                and compute at once (role ``uncoordinated``), and waiters count it as Redis
                trouble (see the module docstring).

        Raises:
            ValueError: a non-positive ``lease_s`` or ``poll_s``, a negative ``max_wait_s``, or a
                prefix that is empty or contains a glob character (``*?[]`` or a backslash).
        """
        if lease_s <= 0:
            raise ValueError(f"lease_s must be positive, got {lease_s}")
        if poll_s <= 0:
            raise ValueError(f"poll_s must be positive, got {poll_s}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must not be negative, got {max_wait_s}")
        if not prefix or any(c in prefix for c in "*?[]\\"):
            raise ValueError(f"prefix must be non-empty and free of glob characters: {prefix!r}")
        self._client = client
        self._lease_s = lease_s
        self._lease_ms = max(1, round(lease_s * 1000))
        self._poll_s = poll_s
        self._max_wait_s = max_wait_s
        self._prefix = prefix
        self._available = available
        # Long enough for every waiter to see the marker on its next poll, however short the
        # lease; waiters compare tokens, so a stale marker is harmless.
        self._done_ttl_ms = max(5000, round(poll_s * 1000 * 20))
        # A holder whose renewal failed tries again this soon, so that after a blip its lock is
        # back long before its waiters' grace (at least 0.6 lease) runs out.
        self._retry_s = min(lease_s / 3, 4 * poll_s)
        self._renew = client.register_script(_RENEW_LUA)
        self._poll = client.register_script(_POLL_LUA)
        self._release_script = client.register_script(_RELEASE_LUA)
        self._background: set[asyncio.Task[None]] = set()
        self._outage_since: float | None = None  # first failure since Redis last answered
        self.stats = CoalesceStats()
        self.waiting = 0
        """Calls of this coalescer waiting on another call's result right now."""

    # ----------------------------------------------------------------------------- public

    async def run(
        self,
        key: str,
        compute: Callable[[], Awaitable[T]],
        load: Callable[[], Awaitable[T | None]],
    ) -> Coalesced[T]:
        """Run ``compute`` once across all concurrent callers of ``key``; the others ``load``.

        Call it after a cache miss. ``compute`` should store its result where ``load`` finds it
        (the caller's cache); a result it does not store is not shared, and waiters then
        compute themselves.

        Args:
            key: identifies the call (for example the cache key's SHA-256 hex digest); keys
                longer than :data:`MAX_KEY_CHARS` are hashed.
            compute: produces the value; it runs at most once per call of ``run``.
            load: the shared result, or ``None`` when there is none yet. A value of ``None``
                therefore cannot be shared.

        Returns:
            The value with the role that produced it and the time spent waiting.

        Raises:
            ValueError: ``key`` is empty.
            Exception: whatever ``compute`` raises (the lock is released first), or what
                ``load`` raises other than ``RedisError``/``OSError``. Redis errors are never
                raised: a new call computes uncoordinated at once, a waiter after up to
                ``lease_s`` of Redis trouble.
        """
        lock_key, done_key = self._keys(key)
        started = time.monotonic()
        if self._available is not None and not self._available():
            return await self._compute_alone(compute, "uncoordinated", started)
        token = secrets.token_hex(16)
        try:
            acquired = await self._client.set(lock_key, token, nx=True, px=self._lease_ms)
        except REDIS_ERRORS as exc:
            self._redis_failed("SET", exc)
            return await self._compute_alone(compute, "uncoordinated", started)
        self._redis_ok()
        if acquired:
            return await self._hold(lock_key, done_key, token, compute, load, "holder", started)
        self.waiting += 1
        try:
            return await self._wait(lock_key, done_key, compute, load, started)
        finally:
            self.waiting -= 1

    async def in_flight(self, *, max_keys: int = 10_000) -> int:
        """How many coalescing locks exist now (calls being computed by a holder, all workers).

        Uses ``SCAN``, so it never blocks Redis; counts at most ``max_keys`` keys.

        Args:
            max_keys: stop counting at this many lock keys.

        Returns:
            The number of lock keys, capped at ``max_keys``.

        Raises:
            redis.exceptions.RedisError: Redis failed (also ``OSError``); unlike :meth:`run`,
                this does not hide Redis errors.
        """
        count = 0
        cursor = 0
        pattern = self._prefix + "lock:*"
        while True:
            cursor, keys = await self._client.scan(cursor=cursor, match=pattern, count=1000)
            count += len(keys)
            if cursor == 0 or count >= max_keys:
                return min(count, max_keys)

    # ----------------------------------------------------------------------------- internals

    def _keys(self, key: str) -> tuple[str, str]:
        if not key:
            raise ValueError("key must not be empty")
        if len(key) > MAX_KEY_CHARS:
            key = "sha256:" + hashlib.sha256(key.encode()).hexdigest()
        return f"{self._prefix}lock:{key}", f"{self._prefix}done:{key}"

    def _elapsed_ms(self, started: float) -> float:
        return (time.monotonic() - started) * 1000.0

    def _count(self, role: Role) -> None:
        setattr(self.stats, role, getattr(self.stats, role) + 1)

    def _redis_failed(self, op: str, exc: BaseException) -> None:
        self.stats.redis_errors += 1
        if self._outage_since is None:
            logger.warning(
                "redis %s failed (%s: %s); coalescing degraded: new calls compute on their "
                "own, waiters re-check for up to one lease",
                op,
                type(exc).__name__,
                exc,
            )
        if self._outage_since is None:
            self._outage_since = time.monotonic()

    def _redis_ok(self) -> None:
        if self._outage_since is not None:
            logger.info("redis is reachable again; coalescing resumed")
            self._outage_since = None

    async def _compute_alone(
        self, compute: Callable[[], Awaitable[T]], role: Role, started: float
    ) -> Coalesced[T]:
        waited_ms = self._elapsed_ms(started)
        self._count(role)
        return Coalesced(await compute(), role, waited_ms)

    async def _load(self, load: Callable[[], Awaitable[T | None]]) -> T | None:
        """``load()``, with Redis errors from the caller's store read as "nothing yet"."""
        try:
            return await load()
        except REDIS_ERRORS as exc:
            self._redis_failed("load", exc)
            return None

    async def _hold(
        self,
        lock_key: str,
        done_key: str,
        token: str,
        compute: Callable[[], Awaitable[T]],
        load: Callable[[], Awaitable[T | None]],
        role: Role,
        started: float,
    ) -> Coalesced[T]:
        try:
            # The previous holder may have stored its result after the caller's cache check.
            stored = await self._load(load)
        except BaseException:
            await self._release(lock_key, done_key, token)
            raise
        if stored is not None:
            await self._release(lock_key, done_key, token)
            self._count("waiter")
            return Coalesced(stored, "waiter", self._elapsed_ms(started))
        waited_ms = self._elapsed_ms(started)
        self._count(role)
        done = asyncio.Event()
        renewer = asyncio.create_task(self._renew_loop(lock_key, done_key, token, done))
        try:
            value = await compute()
        finally:
            # Stopped by an event, not by cancelling it: redis-py can swallow a cancel that
            # lands inside a call, which left a cancelled renewer renewing for ever. The wait is
            # bounded for the same reason.
            done.set()
            await asyncio.wait([renewer], timeout=self._lease_s)
            await self._release(lock_key, done_key, token)
        return Coalesced(value, role, waited_ms)

    async def _renew_loop(
        self, lock_key: str, done_key: str, token: str, done: asyncio.Event
    ) -> None:
        interval = self._lease_s / 3
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), interval)
            if done.is_set():
                return
            try:
                renewed = await self._renew(keys=[lock_key, done_key], args=[token, self._lease_ms])
            except REDIS_ERRORS as exc:
                self._redis_failed("renew", exc)
                # The lease may still be alive, or Redis may come back empty: try again soon.
                interval = self._retry_s
                continue
            self._redis_ok()
            interval = self._lease_s / 3
            if renewed == 2:
                self.stats.reasserted_leases += 1
                logger.info("coalescing lock %s had vanished; the holder took it again", lock_key)
            elif not renewed:
                self.stats.lost_leases += 1
                logger.warning(
                    "coalescing lease on %s lost while computing; another worker may compute "
                    "the same call",
                    lock_key,
                )
                return

    async def _release(self, lock_key: str, done_key: str, token: str) -> None:
        # Shielded: a cancelled holder still frees its lock, so waiters need not sit out the
        # lease. The task is kept referenced until it ends.
        task = asyncio.create_task(self._release_now(lock_key, done_key, token))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        await asyncio.shield(task)

    async def _release_now(self, lock_key: str, done_key: str, token: str) -> None:
        try:
            await self._release_script(keys=[lock_key, done_key], args=[token, self._done_ttl_ms])
        except REDIS_ERRORS as exc:
            self._redis_failed("release", exc)  # the lease expires on its own
            return
        self._redis_ok()

    async def _wait(
        self,
        lock_key: str,
        done_key: str,
        compute: Callable[[], Awaitable[T]],
        load: Callable[[], Awaitable[T | None]],
        started: float,
    ) -> Coalesced[T]:
        seen_token: str | None = None  # the holder this waiter is waiting on
        expires_at = 0.0  # when seen_token's lease runs out unless renewed (monotonic clock)
        deadline = started + self._max_wait_s
        # Start of the current run of Redis trouble (failed polls, or ``available`` false): one
        # lease of it and the call computes on its own.
        trouble_since: float | None = None
        trouble_at: float | None = None  # the last trouble seen
        failures = 0  # failed polls in a row
        grace_until: float | None = None  # a vanished lock may be re-taken by its holder until
        while True:
            now = time.monotonic()
            if trouble_since is not None and now - trouble_since >= self._lease_s:
                logger.warning(
                    "redis unusable for %.1fs while waiting on %s; computing without the lock",
                    now - trouble_since,
                    lock_key,
                )
                return await self._compute_alone(compute, "uncoordinated", started)
            if now >= deadline:
                logger.warning(
                    "waited %.1fs for the holder of %s; computing without the lock",
                    self._max_wait_s,
                    lock_key,
                )
                return await self._compute_alone(compute, "fallback", started)
            # Long computes are polled less often: the added latency stays under about 10 %
            # of the wait, and never above 4 polls. Failed polls back off further.
            interval = min(4 * self._poll_s, max(self._poll_s, 0.1 * (now - started)))
            if failures:
                interval = min(interval * 2 ** min(failures, 3), max(interval, self._lease_s / 4))
            await asyncio.sleep(interval * random.uniform(0.8, 1.2))

            sent_at = time.monotonic()
            try:
                # An open breaker (``available``) means the caller's store is being skipped: a
                # result cannot be loaded, so it counts as trouble, but the lock is still read.
                usable = self._available is None or self._available()
                lock_raw, done_raw, pttl_ms = await self._poll(keys=[lock_key, done_key])
                holder = _text(lock_raw)
                # A holder stores its result before it releases, so while the holder seen last
                # time still holds the lock there is nothing new to load; once the lock is
                # gone or changed hands, load() (read after the lock) sees what it stored.
                value = None if holder is not None and holder == seen_token else await load()
            except REDIS_ERRORS as exc:
                self._redis_failed("poll", exc)
                usable = False
                holder = done_raw = value = None
                pttl_ms = -2
                failed = True
            else:
                self._redis_ok()
                failed = False
            now = time.monotonic()
            if value is not None:
                self._count("waiter")
                return Coalesced(value, "waiter", self._elapsed_ms(started))
            if not usable:
                if trouble_since is None:
                    trouble_since = self._outage_since or now
                trouble_at = now
            else:
                trouble_since = None
            failures = failures + 1 if failed else 0
            if failed:
                continue
            troubled = trouble_at is not None and now - trouble_at < self._lease_s

            if holder is not None:
                seen_token = holder
                expires_at = sent_at + max(0, int(pttl_ms)) / 1000.0
                grace_until = None
                continue
            if not usable:
                # The caller's store is skipped (breaker open): a result there cannot be read,
                # and one computed here could not be shared. Keep watching the lock until the
                # store is back or the trouble lasts a lease.
                continue
            done_token = _text(done_raw)
            early = seen_token is not None and sent_at < expires_at - self._lease_s / 10
            if seen_token is not None and done_token == seen_token:
                if not troubled:
                    # Finished without a shareable result (failed, or not cached): never share
                    # the failure; compute here, in parallel with the other waiters.
                    return await self._compute_alone(compute, "fallback", started)
                # Redis trouble during the wait: the result may be lost rather than unshareable
                # (a store skipped while Redis was away). One waiter computes under the lock
                # below and the others wait for it, instead of all computing at once.
            elif early or (troubled and (seen_token is not None or done_token is None)):
                # The lock vanished with no done marker after Redis trouble, or before its lease
                # could have run out: Redis lost it (restart, flush, eviction), and the holder is
                # probably alive and will take it again at its next renewal. (A waiter that has
                # not read the lock yet knows there was one: its SET NX found it held.) Give
                # the holder most of a lease, jittered so the waiters do not all race at the
                # same moment, before taking over.
                if grace_until is None:
                    self.stats.blips += 1
                    grace_until = now + self._lease_s * random.uniform(0.6, 1.0)
                if now < grace_until:
                    continue
            # Free with no word from the holder: its lease ran out (it died), Redis lost the lock
            # and the holder did not take it again within the grace, or the holder finished
            # before this waiter first looked. Race to take over: one waiter wins and computes
            # under the lock, the others keep waiting for it.
            token = secrets.token_hex(16)
            try:
                acquired = await self._client.set(lock_key, token, nx=True, px=self._lease_ms)
            except REDIS_ERRORS as exc:
                self._redis_failed("SET", exc)
                if trouble_since is None:
                    trouble_since = self._outage_since or now
                trouble_at = now
                failures += 1
                continue
            grace_until = None
            if acquired:
                return await self._hold(
                    lock_key, done_key, token, compute, load, "fallback", started
                )
