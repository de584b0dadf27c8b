"""API keys, scopes, job ownership, rate limits and budgets, over real HTTP.

A real dev server, a real worker, the real app under uvicorn, real Redis and SQLite (the shared
stack of ``tests/stack.py``, with a peppered key store). Every route is tried without a key, with
a bad or revoked key and with a key lacking its scope; jobs of one key are invisible to another.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import limits.aio.storage.redis.redispy as limits_redispy
import pytest
from sqlalchemy import text

from core.auth import Principal, Scope
from core.catalog import ModelCatalog
from core.errors import BudgetExceededError, RateLimitedError
from core.models import AgentRequest, ContextItem, Tier
from core.tokens import count_tokens
from infra.db import make_engine
from infra.keys import KeyStore
from infra.migrations import create_tables
from infra.quotas import QuotaDefaults, Quotas, estimate_cost_usd
from infra.redis_client import RedisClients
from tests.helpers import free_port, redis_server
from tests.stack import Stack, StackSpec

pytestmark = pytest.mark.devserver

TERMINAL = {"COMPLETED", "FAILED", "CANCELED", "REJECTED", "EXPIRED"}


@dataclass
class Keys:
    """The module's API keys (secrets), made once on the shared stack."""

    admin: str
    alice: str  # submit + read + approve
    bob: str  # submit + read + approve
    reader: str  # read only
    submitter: str  # submit only
    revoked: str


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def stack_spec() -> StackSpec:
    """A peppered key store, and budgets settled by the worker as ``python worker.py`` does."""
    return StackSpec(settings={"api_key_pepper": "test-pepper"}, quotas=True)


@pytest.fixture(scope="module")
def keys(stack: Stack) -> Keys:
    everyday = (Scope.SUBMIT, Scope.READ, Scope.APPROVE)
    revoked = stack.key("gone", Scope.ADMIN)
    stack.keys.revoke(revoked.key_id)
    return Keys(
        admin=stack.key("root", Scope.ADMIN).secret,
        alice=stack.key("alice", *everyday).secret,
        bob=stack.key("bob", *everyday).secret,
        reader=stack.key("auditor", Scope.READ).secret,
        submitter=stack.key("robot", Scope.SUBMIT).secret,
        revoked=revoked.secret,
    )


async def submit(http: httpx.AsyncClient, key: str, **body: Any) -> dict[str, Any]:
    body.setdefault("query", f"What is a Python list? {uuid.uuid4().hex[:6]}")
    r = await http.post("/v1/jobs", json=body, headers=bearer(key))
    assert r.status_code == 202, r.text
    return dict(r.json())


async def wait_status(
    http: httpx.AsyncClient, key: str, job_id: str, statuses: set[str]
) -> dict[str, Any]:
    for _ in range(300):
        r = await http.get(f"/v1/jobs/{job_id}", headers=bearer(key))
        assert r.status_code == 200, r.text
        if r.json()["status"] in statuses:
            return dict(r.json())
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached {statuses}")


# ------------------------------------------------------------------------- keys at rest


def test_keys_are_stored_as_digests_never_in_clear(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'k.db'}")
    create_tables(engine)
    store = KeyStore(engine, pepper="pepper-1")
    created = store.create("ci", [Scope.READ, Scope.SUBMIT])
    key_id, _, secret = created.secret.partition(".")
    assert key_id == created.key_id and len(secret) >= 40
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM api_keys")).all()
    dump = repr(rows)
    assert secret not in dump and hashlib.sha256(secret.encode()).hexdigest() not in dump
    principal = store.authenticate(created.secret)
    assert principal is not None and principal.scopes == {Scope.READ, Scope.SUBMIT}
    # A wrong secret, a key id alone, another pepper, a revoked key: nothing authenticates.
    assert store.authenticate(f"{key_id}.{secret[:-1]}x") is None
    assert store.authenticate(key_id) is None
    assert KeyStore(engine, pepper="pepper-2").authenticate(created.secret) is None
    assert KeyStore(engine).authenticate(created.secret) is None
    assert store.revoke(key_id) and not store.revoke(key_id)
    assert store.authenticate(created.secret) is None
    assert [k.key_id for k in store.list_keys(include_revoked=True)] == [key_id]
    assert store.list_keys() == []
    engine.dispose()


# ------------------------------------------------------------------------- every route

ROUTES: list[tuple[str, str, Scope]] = [
    ("POST", "/v1/jobs", Scope.SUBMIT),
    ("GET", "/v1/jobs", Scope.READ),
    ("GET", "/v1/jobs/{job}", Scope.READ),
    ("GET", "/v1/jobs/{job}/events", Scope.READ),
    ("POST", "/v1/jobs/{job}/approval", Scope.APPROVE),
    ("POST", "/v1/jobs/{job}/cancel", Scope.APPROVE),
    ("GET", "/v1/tools", Scope.READ),
    ("GET", "/v1/models", Scope.READ),
    ("GET", "/v1/cache/stats", Scope.READ),
    ("DELETE", "/v1/cache/tool", Scope.ADMIN),
    ("GET", "/v1/metrics/summary", Scope.READ),
    ("GET", "/v1/metrics/cost", Scope.READ),
]


def route_request(method: str, path: str, job_id: str) -> dict[str, Any]:
    body: dict[str, Any] | None = None
    if path == "/v1/jobs" and method == "POST":
        body = {"query": "hello"}
    elif path.endswith("/approval"):
        body = {"approved": True}
    return {"method": method, "url": path.format(job=job_id), "json": body}


@pytest.mark.parametrize(("method", "path", "scope"), ROUTES)
async def test_every_route_needs_a_valid_key_with_its_scope(
    http: httpx.AsyncClient, keys: Keys, method: str, path: str, scope: Scope
) -> None:
    job_id = (await submit(http, keys.alice))["job_id"]
    req = route_request(method, path, job_id)
    missing = await http.request(**req)
    assert missing.status_code == 401, missing.text
    assert missing.headers["WWW-Authenticate"] == "Bearer"
    for bad in ("not-a-key", keys.revoked, keys.alice.split(".")[0] + ".wrong", "x" * 5000):
        r = await http.request(**req, headers=bearer(bad))
        assert r.status_code == 401, (bad[:20], r.text)
    # X-API-Key is accepted as well as Bearer.
    header_form = await http.request(**req, headers={"X-API-Key": "af_000000000000.nope"})
    assert header_form.status_code == 401
    lacking = keys.submitter if scope is not Scope.SUBMIT else keys.reader
    forbidden = await http.request(**req, headers=bearer(lacking))
    assert forbidden.status_code == 403, forbidden.text
    assert scope.value in forbidden.json()["detail"]


async def test_open_routes_need_no_key(http: httpx.AsyncClient) -> None:
    for path in ("/healthz", "/openapi.json"):
        assert (await http.get(path)).status_code == 200, path


# ------------------------------------------------------------------------- isolation


async def test_a_key_sees_and_touches_only_its_own_jobs(
    http: httpx.AsyncClient, keys: Keys
) -> None:
    mine = await submit(http, keys.alice, require_approval=True)
    job_id = mine["job_id"]
    assert mine["owner"] == keys.alice.split(".")[0]
    await wait_status(http, keys.alice, job_id, {"AWAITING_APPROVAL"})

    # Bob gets 404 for everything about Alice's job, as if it did not exist.
    theirs = bearer(keys.bob)
    assert (await http.get(f"/v1/jobs/{job_id}", headers=theirs)).status_code == 404
    decided = await http.post(
        f"/v1/jobs/{job_id}/approval", json={"approved": False}, headers=theirs
    )
    assert decided.status_code == 404, decided.text
    cancelled = await http.post(f"/v1/jobs/{job_id}/cancel", headers=theirs)
    assert cancelled.status_code == 404, cancelled.text
    listed = (await http.get("/v1/jobs", params={"limit": 500}, headers=theirs)).json()
    assert job_id not in {j["job_id"] for j in listed["data"]}

    # Alice lists it; the admin sees it too.
    own = (await http.get("/v1/jobs", params={"limit": 500}, headers=bearer(keys.alice))).json()
    assert job_id in {j["job_id"] for j in own["data"]}
    assert all(j["owner"] == mine["owner"] for j in own["data"])
    admin = await http.get("/v1/jobs", params={"limit": 500}, headers=bearer(keys.admin))
    assert job_id in {j["job_id"] for j in admin.json()["data"]}

    # The job is still waiting: Bob's attempts changed nothing.
    still = await wait_status(http, keys.alice, job_id, {"AWAITING_APPROVAL"})
    assert still["progress"]["approval"] is None


async def test_the_reviewer_is_the_key_not_a_body_field(
    http: httpx.AsyncClient, keys: Keys
) -> None:
    job_id = (await submit(http, keys.alice, require_approval=True))["job_id"]
    await wait_status(http, keys.alice, job_id, {"AWAITING_APPROVAL"})
    spoof = await http.post(
        f"/v1/jobs/{job_id}/approval",
        json={"approved": True, "reviewer": "the-ceo"},
        headers=bearer(keys.alice),
    )
    assert spoof.status_code == 422 and "reviewer" in spoof.text
    ok = await http.post(
        f"/v1/jobs/{job_id}/approval",
        json={"approved": True, "comment": "fine"},
        headers=bearer(keys.alice),
    )
    assert ok.status_code == 200, ok.text
    key_id = keys.alice.split(".")[0]
    assert ok.json()["reviewer"] == f"alice ({key_id})"
    done = await wait_status(http, keys.alice, job_id, TERMINAL)
    assert done["result"]["approval"] == {
        "approved": True,
        "reviewer": f"alice ({key_id})",
        "comment": "fine",
        "calls": [],
    }


async def test_idempotency_keys_are_per_api_key(http: httpx.AsyncClient, keys: Keys) -> None:
    shared = f"same-{uuid.uuid4().hex}"
    body = {"query": "What is a tuple?"}
    a = await http.post(
        "/v1/jobs", json=body, headers={**bearer(keys.alice), "Idempotency-Key": shared}
    )
    b = await http.post(
        "/v1/jobs", json=body, headers={**bearer(keys.bob), "Idempotency-Key": shared}
    )
    assert a.status_code == b.status_code == 202, (a.text, b.text)
    assert a.json()["job_id"] != b.json()["job_id"]
    assert "Idempotent-Replayed" not in b.headers
    again = await http.post(
        "/v1/jobs", json=body, headers={**bearer(keys.alice), "Idempotency-Key": shared}
    )
    assert again.json()["job_id"] == a.json()["job_id"]
    assert again.headers.get("Idempotent-Replayed") == "true"


async def test_cached_answers_stay_with_their_key_and_never_skip_a_gate(
    http: httpx.AsyncClient, keys: Keys
) -> None:
    """Found by a hostile probe: an approved job's answer, served to another key from the
    response cache, skipped that key's approval gate and handed it the first key's tool result."""
    body = {"query": f"What is a deque? {uuid.uuid4().hex[:6]}", "model_tier": "small"}
    plain = await submit(http, keys.alice, **body)
    await wait_status(http, keys.alice, plain["job_id"], TERMINAL)
    again = await submit(http, keys.alice, **body)  # the same key: its own cache
    assert (await wait_status(http, keys.alice, again["job_id"], TERMINAL))["response_cache_hit"]
    other = await submit(http, keys.bob, **body)  # another key: not the first key's answer
    assert not (await wait_status(http, keys.bob, other["job_id"], TERMINAL))["response_cache_hit"]

    gated = {**body, "query": f"Deploy it {uuid.uuid4().hex[:6]}", "require_approval": True}
    for _ in range(2):  # an approved answer is not reused: the repeat asks again
        job = await submit(http, keys.alice, **gated)
        await wait_status(http, keys.alice, job["job_id"], {"AWAITING_APPROVAL"})
        decided = await http.post(
            f"/v1/jobs/{job['job_id']}/approval",
            json={"approved": True},
            headers=bearer(keys.alice),
        )
        assert decided.status_code == 200, decided.text
        done = await wait_status(http, keys.alice, job["job_id"], TERMINAL)
        assert done["status"] == "COMPLETED" and not done["response_cache_hit"]


# ------------------------------------------------------------------------- quotas over HTTP


async def test_rate_limit_answers_429_with_retry_after(
    http: httpx.AsyncClient, stack: Stack, keys: Keys
) -> None:
    limited = stack.key("bursty", Scope.SUBMIT, rate_limit_per_minute=3).secret
    codes = []
    for _ in range(5):
        r = await http.post("/v1/jobs", json={"query": "hi"}, headers=bearer(limited))
        codes.append(r.status_code)
    assert codes == [202, 202, 202, 429, 429]
    assert 1 <= int(r.headers["Retry-After"]) <= 60
    assert "3 requests per minute" in r.json()["detail"]
    # Another key is not affected.
    assert (
        await http.post("/v1/jobs", json={"query": "hi"}, headers=bearer(keys.bob))
    ).status_code == 202


async def test_budget_is_reserved_refused_when_spent_and_settled_with_the_real_cost(
    http: httpx.AsyncClient, stack: Stack
) -> None:
    estimate = estimate_cost_usd(AgentRequest(query="What is a set?"), ModelCatalog.default())
    created = stack.key(
        "frugal", Scope.SUBMIT, Scope.READ, Scope.APPROVE, daily_budget_usd=estimate * 1.5
    )
    key = created.secret
    quotas = Quotas.from_settings(stack.settings)
    try:
        # The first job holds its reservation while it waits for approval.
        first = await submit(http, key, query="What is a set?", require_approval=True)
        await wait_status(http, key, first["job_id"], {"AWAITING_APPROVAL"})
        assert await quotas.spent_usd(created.key_id) == pytest.approx(estimate)
        second = await http.post("/v1/jobs", json={"query": "What is a set?"}, headers=bearer(key))
        assert second.status_code == 402, second.text
        assert "daily budget" in second.json()["detail"]

        approved = await http.post(
            f"/v1/jobs/{first['job_id']}/approval", json={"approved": True}, headers=bearer(key)
        )
        assert approved.status_code == 200, approved.text
        done = await wait_status(http, key, first["job_id"], TERMINAL)
        assert done["status"] == "COMPLETED"
        real = done["usage"]["cost_usd"]
        assert 0 < real < estimate
        # Settled by the worker when the job ended: the real cost replaces the estimate.
        assert await quotas.spent_usd(created.key_id) == pytest.approx(real, abs=1e-9)
        again = await http.post("/v1/jobs", json={"query": "What is a set?"}, headers=bearer(key))
        assert again.status_code == 202, again.text
    finally:
        await quotas.aclose()


async def test_repeats_and_conflicts_give_their_reservation_back(
    http: httpx.AsyncClient, stack: Stack
) -> None:
    created = stack.key("retrying", Scope.SUBMIT, Scope.READ, daily_budget_usd=10.0)
    key = created.secret
    quotas = Quotas.from_settings(stack.settings)
    try:
        headers = {**bearer(key), "Idempotency-Key": f"retry-{uuid.uuid4().hex}"}
        body = {"query": "What is a frozenset?", "model_tier": "small"}
        first = await http.post("/v1/jobs", json=body, headers=headers)
        assert first.status_code == 202, first.text
        done = await wait_status(http, key, first.json()["job_id"], TERMINAL)
        for _ in range(3):  # client retries: the same job, nothing more charged
            again = await http.post("/v1/jobs", json=body, headers=headers)
            assert again.json()["job_id"] == first.json()["job_id"]
        other = await http.post("/v1/jobs", json={"query": "something else"}, headers=headers)
        assert other.status_code == 409, other.text
        assert await quotas.spent_usd(created.key_id) == pytest.approx(
            done["usage"]["cost_usd"], abs=1e-9
        )
    finally:
        await quotas.aclose()


# ------------------------------------------------------------------------- quotas, fake clock


class FakeClock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def fake_clock_quotas(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Quotas, FakeClock]]:
    clock = FakeClock(1_900_000_000.0)  # 2030-03-17 17:46:40 UTC
    # The limits library reads time.time() for its moving window; give it the same fake clock.
    monkeypatch.setattr(limits_redispy, "time", SimpleNamespace(time=clock))
    quotas = Quotas(
        redis_url, QuotaDefaults(rate_limit_per_minute=2, daily_budget_usd=1.0), clock=clock
    )
    yield quotas, clock
    await quotas.aclose()


def principal(**kw: Any) -> Principal:
    return Principal(key_id=f"af_{uuid.uuid4().hex[:12]}", name="t", **kw)


async def test_rate_limit_window_moves_with_the_clock(
    fake_clock_quotas: tuple[Quotas, FakeClock],
) -> None:
    quotas, clock = fake_clock_quotas
    p = principal()
    await quotas.hit_rate_limit(p)
    clock.now += 20
    await quotas.hit_rate_limit(p)
    with pytest.raises(RateLimitedError) as refused:
        await quotas.hit_rate_limit(p)
    assert refused.value.retry_after_s == 40  # the first request leaves the window in 40 s
    clock.now += 40.5
    await quotas.hit_rate_limit(p)  # one slot free again
    with pytest.raises(RateLimitedError):
        await quotas.hit_rate_limit(p)
    await quotas.hit_rate_limit(principal(rate_limit_per_minute=5))  # another key: its own


async def test_budget_counts_per_utc_day_and_settles_once(
    fake_clock_quotas: tuple[Quotas, FakeClock],
) -> None:
    quotas, clock = fake_clock_quotas
    p = principal(daily_budget_usd=0.10)
    first = await quotas.reserve(p, "j1", 0.06)
    assert first is not None
    with pytest.raises(BudgetExceededError) as refused:
        await quotas.reserve(p, "j2", 0.06)
    assert refused.value.spent_usd == pytest.approx(0.06)
    assert await quotas.settle(first, 0.01)
    assert not await quotas.settle(first, 0.01)  # a retried settlement changes nothing
    assert await quotas.spent_usd(p.key_id) == pytest.approx(0.01)
    second = await quotas.reserve(p, "j2", 0.06)  # fits now that j1 cost only 0.01
    assert second is not None
    with pytest.raises(BudgetExceededError):
        await quotas.reserve(p, "j3", 0.06)
    clock.now += 86_400  # the next UTC day starts from zero
    assert await quotas.reserve(p, "j3", 0.06) is not None
    # Settling yesterday's job counts against yesterday.
    assert await quotas.settle(second, 0.0)
    assert await quotas.spent_usd(p.key_id, second.day) == pytest.approx(0.01)
    assert await quotas.spent_usd(p.key_id) == pytest.approx(0.06)


async def test_quotas_fail_open_when_redis_is_down() -> None:
    quotas = Quotas(
        f"redis://127.0.0.1:{free_port()}/0",
        QuotaDefaults(rate_limit_per_minute=1, daily_budget_usd=0.0),
        timeout_s=0.2,
    )
    p = principal()
    for _ in range(3):
        await quotas.hit_rate_limit(p)
        assert await quotas.reserve(p, "j", 10.0) is None
    await quotas.aclose()


async def test_quotas_are_enforced_at_once_after_redis_restarts() -> None:
    """Found by an outage probe: pooled connections that died with Redis made the next
    submissions after its restart fail open (no budget reserved, no rate limit)."""
    port = free_port()
    p = principal(rate_limit_per_minute=100, daily_budget_usd=100.0)
    with redis_server(port) as url:
        quotas = Quotas(url, QuotaDefaults(rate_limit_per_minute=100, daily_budget_usd=100.0))
        await asyncio.gather(*(quotas.reserve(p, f"before-{i}", 0.01) for i in range(8)))
        await asyncio.gather(*(quotas.hit_rate_limit(p) for _ in range(8)))
    try:
        with redis_server(port):
            reserved = await asyncio.gather(
                *(quotas.reserve(p, f"after-{i}", 0.01) for i in range(8))
            )
            assert all(r is not None for r in reserved), "a reservation failed open"
            assert await quotas.spent_usd(p.key_id) == pytest.approx(0.08)
            limited = principal(rate_limit_per_minute=8)
            await asyncio.gather(*(quotas.hit_rate_limit(limited) for _ in range(8)))
            with pytest.raises(RateLimitedError):
                await quotas.hit_rate_limit(limited)
    finally:
        await quotas.aclose()


def test_estimate_bounds_what_the_model_calls_can_cost() -> None:
    """The stated rule: the final answer at the large tier with its full max_tokens, on a prompt
    of every query token plus the whole context budget (tool results are compressed into it)."""
    catalog = ModelCatalog.default()
    large = catalog.for_tier(Tier.LARGE)
    for query in ("hi", "把这段文字翻译成英文并解释其中的成语" * 20, "🙂" * 500):
        request = AgentRequest(query=query, max_context_tokens=2000)
        prompt = count_tokens(query) + request.max_context_tokens
        assert estimate_cost_usd(request, catalog) >= large.cost_usd(prompt, large.max_tokens)
    # The context's own size does not matter (it is cut to the budget); the budget does.
    small_ctx = AgentRequest(
        query="hi", context=[ContextItem(content="a")], max_context_tokens=1000
    )
    big_ctx = AgentRequest(
        query="hi", context=[ContextItem(content="word " * 50_000)], max_context_tokens=1000
    )
    assert estimate_cost_usd(small_ctx, catalog) == estimate_cost_usd(big_ctx, catalog)
    wider = AgentRequest(query="hi", max_context_tokens=100_000)
    assert estimate_cost_usd(wider, catalog) > estimate_cost_usd(small_ctx, catalog)


# ------------------------------------------------------------------------- the keys command


def test_keys_command_creates_lists_and_revokes(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'keys.db'}",
        "AGENTFLOW_API_KEY_PEPPER": "cli-pepper",
    }
    agentflow = str(Path(sys.executable).with_name("agentflow"))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [agentflow, "keys", *args], env=env, capture_output=True, text=True, timeout=60
        )

    created = run("create", "ci-bot", "--scope", "submit", "-s", "read", "--quiet")
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    key_id = secret.split(".")[0]
    engine = make_engine(env["DATABASE_URL"])
    store = KeyStore(engine, pepper="cli-pepper")
    found = store.authenticate(secret)
    assert found is not None and found.name == "ci-bot"
    assert found.scopes == {Scope.SUBMIT, Scope.READ}

    listed = run("list")
    assert listed.returncode == 0 and key_id in listed.stdout
    assert secret.split(".")[1] not in listed.stdout
    assert run("create", "x", "--scope", "everything").returncode != 0
    assert run("revoke", key_id).returncode == 0
    assert store.authenticate(secret) is None
    again = run("revoke", key_id)
    assert again.returncode == 1 and "no active key" in again.stdout
    assert key_id not in run("list").stdout and key_id in run("list", "--all").stdout
    engine.dispose()


async def test_limits_are_checked_while_the_caches_hold_every_pooled_connection(
    redis_url: str,
) -> None:
    """Rate limits and budgets fail open on a Redis error, so they must not share the pool the
    caches can exhaust: with every connection of the main pool taken, a limit is still
    enforced (the third request in the minute is refused)."""
    clients = RedisClients(redis_url, max_connections=2, pool_timeout_s=0.2)
    quotas = Quotas(clients, QuotaDefaults(rate_limit_per_minute=2, daily_budget_usd=1.0))
    taken = [await clients.pool.get_connection() for _ in range(2)]  # type: ignore[no-untyped-call]
    try:
        p = principal()
        await quotas.hit_rate_limit(p)
        await quotas.hit_rate_limit(p)
        with pytest.raises(RateLimitedError):
            await quotas.hit_rate_limit(p)
        assert not clients.breaker.open
    finally:
        for conn in taken:
            await clients.pool.release(conn)
        await quotas.aclose()
        await clients.aclose()
