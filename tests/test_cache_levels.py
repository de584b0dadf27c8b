"""The cache levels against a real Redis, and the three correctness rules of the response level.

Level mechanics (TTL, byte limit with eviction, invalidation by prefix and tool, recent hit rate,
Redis stopped and restarted) run against a redis-server of this module's own, so the levels'
byte counters hold only what these tests write. The correctness rules run whole jobs on the
time-skipping server with a real worker:

- a degraded answer (a tool failed, or the job escalated after a failure) is not cached;
- the response key holds the model identity, and an answer lives no longer than the shortest
  TTL of the tools it used;
- an exact repeat never bypasses an approval gate the policy sets now.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from core.catalog import ModelCatalog
from core.models import (
    AgentRequest,
    AgentResult,
    ApprovalDecision,
    ApprovalPolicy,
    CacheLevel,
    JobStatus,
    ModelUsage,
    ResponseCacheKeyInput,
    SelectionScores,
    SelectModelResult,
    Stage,
    TaskType,
    Tier,
    ToolCall,
    ToolSuccess,
)
from core.settings import Settings
from core.tools import Tool, ToolMetadata
from domain.cache_guard import gated_by_policy
from infra.cache import RedisCache, response_cache_key
from infra.providers import ProviderRegistry
from infra.providers.scripted import ScriptedProvider
from tests import workflow_support
from tests.helpers import free_port, redis_server
from tests.workflow_support import Harness, SlowParams, agent_worker, slow_echo, wait_for_stage


def unique(text: str) -> str:
    return f"{text} [{uuid.uuid4().hex[:8]}]"


@pytest.fixture(scope="module")
def own_redis() -> Iterator[str]:
    """A redis-server of this module's own: the levels' byte counters are process-wide."""
    with redis_server() as url:
        yield url


@pytest.fixture
async def small_cache(own_redis: str) -> AsyncIterator[RedisCache]:
    cache = RedisCache(
        own_redis,
        timeout_s=0.5,
        level_max_bytes={level: 4096 for level in CacheLevel},
        breaker_cooldown_s=0.2,
    )
    await cache.client.flushdb()
    yield cache
    await cache.aclose()


def entry_key(level: CacheLevel, name: str) -> str:
    return f"{level.prefix}{name}"


# ----------------------------------------------------------------------------- level mechanics


async def test_level_entries_expire_with_their_ttl(small_cache: RedisCache) -> None:
    key = entry_key(CacheLevel.TOOL, "calculator:1:abc")
    assert await small_cache.set_level(CacheLevel.TOOL, key, {"v": 1}, ttl_s=1)
    assert await small_cache.get_level(CacheLevel.TOOL, key) == {"v": 1}
    await asyncio.sleep(1.2)
    assert await small_cache.get_level(CacheLevel.TOOL, key) is None
    # The next write drops the expired entry's bytes from the level's total.
    assert await small_cache.set_level(CacheLevel.TOOL, entry_key(CacheLevel.TOOL, "x"), 1, 60)
    stats = await small_cache.level_stats(CacheLevel.TOOL)
    assert stats.entries == 1 and stats.bytes == len(entry_key(CacheLevel.TOOL, "x")) + 1


async def test_level_byte_limit_evicts_the_entries_closest_to_expiry(
    small_cache: RedisCache,
) -> None:
    value = "x" * 1200  # about 1.2 KB per entry with its key; the level holds 4,096 bytes
    for i in range(3):
        key = entry_key(CacheLevel.RESPONSE, f"k{i}")
        assert await small_cache.set_level(CacheLevel.RESPONSE, key, value, ttl_s=100 + i)
    stats = await small_cache.level_stats(CacheLevel.RESPONSE)
    assert stats.entries == 3 and stats.bytes <= stats.max_bytes == 4096
    # Two more entries with long TTLs push the level over its limit: k0 and k1 (the soonest to
    # expire) go, the newer ones stay.
    for name in ("late-a", "late-b"):
        key = entry_key(CacheLevel.RESPONSE, name)
        assert await small_cache.set_level(CacheLevel.RESPONSE, key, value, ttl_s=1000)
    stats = await small_cache.level_stats(CacheLevel.RESPONSE)
    assert stats.bytes <= 4096
    present = {
        name
        for name in ("k0", "k1", "k2", "late-a", "late-b")
        if await small_cache.client.exists(entry_key(CacheLevel.RESPONSE, name))
    }
    assert present == {"k2", "late-a", "late-b"}
    assert small_cache.stats.evicted == 2
    # A value larger than the whole level is refused, and nothing else is evicted for it.
    huge = entry_key(CacheLevel.RESPONSE, "huge")
    assert not await small_cache.set_level(CacheLevel.RESPONSE, huge, "y" * 5000, ttl_s=60)
    assert (await small_cache.level_stats(CacheLevel.RESPONSE)).entries == 3


async def test_the_limit_holds_when_each_new_entry_expires_first(small_cache: RedisCache) -> None:
    """Writes whose TTL keeps shrinking: the new entry is always the soonest to expire, and the
    level still evicts older ones to stay within its bytes."""
    for i in range(20):
        key = entry_key(CacheLevel.TOOL, f"shrinking:{i}")
        assert await small_cache.set_level(CacheLevel.TOOL, key, "z" * 900, ttl_s=1000 - i)
    stats = await small_cache.level_stats(CacheLevel.TOOL)
    assert stats.bytes <= stats.max_bytes and small_cache.stats.evicted >= 15


async def test_rewriting_an_entry_does_not_count_its_bytes_twice(small_cache: RedisCache) -> None:
    key = entry_key(CacheLevel.COMPONENT, "selection:abc")
    for _ in range(10):
        assert await small_cache.set_level(CacheLevel.COMPONENT, key, "v" * 100, ttl_s=60)
    stats = await small_cache.level_stats(CacheLevel.COMPONENT)
    assert stats.entries == 1 and stats.bytes == len(key) + len('"' + "v" * 100 + '"')


async def test_delete_by_prefix_and_by_tool_leaves_the_rest(small_cache: RedisCache) -> None:
    for name in ("calculator:1:a", "calculator:2:b", "http_get:1:c", "http_get_x:1:d"):
        assert await small_cache.set_level(CacheLevel.TOOL, entry_key(CacheLevel.TOOL, name), 1, 60)
    assert await small_cache.delete_level(CacheLevel.TOOL, "calculator:") == 2
    assert await small_cache.delete_level(CacheLevel.TOOL, "http_get:") == 1
    left = await small_cache.level_stats(CacheLevel.TOOL)
    assert left.entries == 1
    assert await small_cache.client.exists(entry_key(CacheLevel.TOOL, "http_get_x:1:d"))
    # Glob characters in a prefix match literally, never as patterns.
    assert await small_cache.delete_level(CacheLevel.TOOL, "*") == 0
    assert await small_cache.delete_level(CacheLevel.TOOL) == 1
    assert (await small_cache.level_stats(CacheLevel.TOOL)).bytes == 0


async def test_tracked_entries_count_their_current_size_and_keep_the_later_expiry(
    small_cache: RedisCache,
) -> None:
    """The semantic level's streams are written elsewhere and tracked here: re-tracking a stream
    records its size now (not the sum of every report), a short TTL never shortens it, and the
    bookkeeping of a stream deleted by its owner is pruned."""
    key = entry_key(CacheLevel.SEMANTIC, "stream-a")
    await small_cache.client.set(key, "x")  # stands in for the stream
    for size in (100, 200, 300):
        assert await small_cache.track_level(CacheLevel.SEMANTIC, key, size, ttl_s=600)
    assert await small_cache.track_level(CacheLevel.SEMANTIC, key, 300, ttl_s=1)
    stats = await small_cache.level_stats(CacheLevel.SEMANTIC)
    assert (stats.entries, stats.bytes) == (1, 300)
    score = await small_cache.client.zscore("agentflow:{cache:semantic}#index", key)
    assert score is not None and score > (await small_cache.client.time())[0] * 1000 + 500_000
    await small_cache.client.delete(key)
    assert await small_cache.prune_level(CacheLevel.SEMANTIC) == 1
    assert (await small_cache.level_stats(CacheLevel.SEMANTIC)).bytes == 0


async def test_recent_hit_rate_counts_the_last_lookups(small_cache: RedisCache) -> None:
    key = entry_key(CacheLevel.RESPONSE, "hit")
    await small_cache.set_level(CacheLevel.RESPONSE, key, {"a": 1}, 60)
    for _ in range(3):
        await small_cache.get_level(CacheLevel.RESPONSE, key)
    await small_cache.get_level(CacheLevel.RESPONSE, entry_key(CacheLevel.RESPONSE, "miss"))
    stats = await small_cache.level_stats(CacheLevel.RESPONSE)
    assert (stats.recent_lookups, stats.recent_hits) == (4, 3)
    assert stats.recent_hit_rate == 0.75


async def test_redis_stopped_and_restarted_mid_run() -> None:
    """Lookups while Redis is down are fast misses with the degradation named; after the
    restart the cache works again without a new client."""
    port = free_port()
    key = entry_key(CacheLevel.TOOL, "calculator:1:restart")
    with redis_server(port) as url:
        cache = RedisCache(url, timeout_s=0.3, breaker_cooldown_s=0.2)
        assert await cache.set_level(CacheLevel.TOOL, key, {"v": 1}, 60)
        assert await cache.get_level(CacheLevel.TOOL, key) == {"v": 1}
    # Stopped: every call is a miss or a refused write, and the reason names no host.
    assert await cache.get_level(CacheLevel.TOOL, key) is None
    assert not await cache.set_level(CacheLevel.TOOL, key, {"v": 2}, 60)
    reason = cache.degraded_reason
    assert reason is not None and reason.startswith("redis unreachable")
    assert "127.0.0.1" not in reason and str(port) not in reason
    with redis_server(port):
        await asyncio.sleep(0.3)  # past the breaker's cooldown
        assert await cache.set_level(CacheLevel.TOOL, key, {"v": 3}, 60)
        assert await cache.get_level(CacheLevel.TOOL, key) == {"v": 3}
        assert cache.degraded_reason is None
        await cache.aclose()


# ----------------------------------------------------------------------------- correctness


def completed(**update: object) -> AgentResult:
    selection = SelectModelResult(
        tier=Tier.SMALL,
        escalation_tier=Tier.MEDIUM,
        task_type=TaskType.SIMPLE_FACTUAL,
        scores=SelectionScores(
            complexity=1,
            creativity_required=1,
            reasoning_depth=1,
            factual_knowledge=1,
            response_length=10,
        ),
        reason="test",
    )
    usage = ModelUsage(
        purpose="final",
        tier=Tier.SMALL,
        provider="simulated",
        model="sim-small",
        simulated=True,
        prompt_tokens=10,
        completion_tokens=5,
        cost_usd=0.001,
        latency_ms=3.0,
    )
    result = AgentResult(
        job_id="j", status=JobStatus.COMPLETED, answer="a", selection=selection, usage=[usage]
    )
    return result.model_copy(update=update)


async def test_answer_ttl_rules(harness: Harness) -> None:
    stages = harness.activities.stages
    ttl, reason = stages.answer_ttl_s(completed())
    assert ttl == stages.response_cache_ttl_s and reason is None
    http = ToolSuccess(call_id="h", name="http_get", value="page")
    calc = ToolSuccess(call_id="c", name="calculator", value=2)
    ttl, _ = stages.answer_ttl_s(completed(tool_results=[calc, http]))
    assert ttl == 300, "an answer on an http_get result lives no longer than the page's 5 min"
    aged = ToolSuccess(call_id="c", name="calculator", value=2, cache_hit=True, expires_in_s=40)
    ttl, _ = stages.answer_ttl_s(completed(tool_results=[aged]))
    assert ttl == 40, "an answer on a cached tool result lives no longer than that result"
    ttl, reason = stages.answer_ttl_s(completed(escalated_to=Tier.MEDIUM))
    assert ttl is None and "escalated" in (reason or "")
    ttl, reason = stages.answer_ttl_s(completed(response_cache_hit=True))
    assert ttl is None
    assert stages.answer_ttl_s(completed(status=JobStatus.FAILED, answer=None)) == (None, None)


async def test_an_answer_built_on_a_failed_tool_is_not_cached(
    client: Client, redis_url: str, settings: Settings, tmp_path: Path
) -> None:
    async with agent_worker(
        client,
        redis_url=redis_url,
        database_url=f"sqlite:///{tmp_path / 'jobs.db'}",
        settings=settings,
    ) as h:
        request = AgentRequest(
            query=unique("Is the upstream service healthy"),
            tool_calls=[ToolCall(id="d", name="always_down", parameters={})],
        )
        first = await h.run(request)
        assert first.status is JobStatus.COMPLETED and first.answer
        second = await h.run(request)
        assert not second.response_cache_hit, "a degraded answer was served from the cache"
        record = await asyncio.to_thread(h.store.get_job, second.job_id)
        assert record is not None
        recorded = record.to_result()
        assert recorded is not None and recorded.cache is not None
        assert not recorded.cache.stored
        assert "always_down failed" in (recorded.cache.not_stored_reason or "")


async def test_the_response_key_holds_the_model_identity(
    client: Client, redis_url: str, settings: Settings, tmp_path: Path
) -> None:
    """Switching a tier's model (here: another model id behind the same provider) never serves
    the old model's answers."""
    request = AgentRequest(query=unique("Name the capital of France"), model_tier="small")
    db = f"sqlite:///{tmp_path / 'jobs.db'}"
    async with agent_worker(client, redis_url=redis_url, database_url=db, settings=settings) as h:
        first = await h.run(request)
        assert not first.response_cache_hit
        assert (await h.run(request)).response_cache_hit, "same models: served from the cache"
    base = ModelCatalog.default()
    other = ModelCatalog(
        models=[
            m.model_copy(update={"model_id": m.model_id + "-v2"}) if m.tier is Tier.SMALL else m
            for m in base.models
        ]
    )
    assert other.fingerprint() != base.fingerprint()
    async with agent_worker(
        client, redis_url=redis_url, database_url=db, settings=settings, catalog=other
    ) as h:
        switched = await h.run(request)
        assert not switched.response_cache_hit, "an answer of the old model was served"
        assert switched.usage[-1].model.endswith("-v2")


async def test_an_answer_lives_no_longer_than_its_tools_results(
    client: Client, redis_url: str, settings: Settings, tmp_path: Path
) -> None:
    registry = workflow_support.test_registry(settings)
    registry.register(
        Tool(
            "brief_echo",
            "Echo, cached for 2 s.",
            SlowParams,
            slow_echo,
            ToolMetadata(timeout_s=5, cache_ttl_s=2),
        )
    )
    async with agent_worker(
        client,
        redis_url=redis_url,
        database_url=f"sqlite:///{tmp_path / 'jobs.db'}",
        settings=settings,
        registry=registry,
    ) as h:
        call = ToolCall(id="e", name="brief_echo", parameters={"text": "hi", "delay_ms": 0})
        request = AgentRequest(query=unique("What does the echo say"), tool_calls=[call])
        first = await h.run(request)
        assert first.status is JobStatus.COMPLETED
        record = await asyncio.to_thread(h.store.get_job, first.job_id)
        assert record is not None and (recorded := record.to_result()) is not None
        assert recorded.cache is not None and recorded.cache.stored
        key = response_cache_key(
            ResponseCacheKeyInput(
                query=request.query,
                tool_calls=request.tool_calls,
                model_identity=h.activities.stages.model_identity,
                max_context_tokens=request.max_context_tokens,
            )
        )
        ttl = await h.cache.client.ttl(key)
        assert 0 < ttl <= 2, f"an answer on a 2 s tool result lives {ttl} s"
        await asyncio.sleep(2.2)
        assert not (await h.run(request)).response_cache_hit


async def test_an_exact_repeat_never_bypasses_the_approval_policy(
    client: Client, redis_url: str, settings: Settings, tmp_path: Path
) -> None:
    """An answer cached while calculator needed no approval is not served once the policy
    gates calculator: the repeat waits for a reviewer like a fresh job."""
    async with agent_worker(
        client,
        redis_url=redis_url,
        database_url=f"sqlite:///{tmp_path / 'jobs.db'}",
        settings=settings,
    ) as h:
        call = ToolCall(id="c", name="calculator", parameters={"expression": "6 * 7"})
        request = AgentRequest(query=unique("What is six times seven"), tool_calls=[call])
        first = await h.run(request)
        assert first.status is JobStatus.COMPLETED and not first.response_cache_hit
        assert (await h.run(request)).response_cache_hit, "no gate: the repeat is a hit"

        gated = ApprovalPolicy(tools=["calculator"])
        handle = await h.start(request, approval_policy=gated)
        progress = await wait_for_stage(handle, Stage.AWAITING_APPROVAL)
        assert progress.cache is not None
        assert "calculator" in (progress.cache.bypassed or "")
        await handle.execute_update(
            "decide", ApprovalDecision(approved=True, reviewer="tester"), result_type=object
        )
        result = await handle.result()
        assert result.status is JobStatus.COMPLETED and not result.response_cache_hit


def test_gated_by_policy_rules(settings: Settings) -> None:
    registry = workflow_support.test_registry(settings)
    assert gated_by_policy([], ApprovalPolicy(tools=["calculator"]), registry) is None
    assert gated_by_policy(["calculator"], ApprovalPolicy(), registry) is None
    assert gated_by_policy(["calculator"], ApprovalPolicy(tools=["calculator"]), registry)
    # http_get's own metadata requires approval, whatever the policy lists.
    assert gated_by_policy(["http_get"], ApprovalPolicy(), registry)
    # A cost threshold does not gate a hit: serving it calls no model.
    assert gated_by_policy(["calculator"], ApprovalPolicy(cost_threshold_usd=0.0), registry) is None


# ----------------------------------------------------------------------------- coalescing
# On the dev server: the jobs overlap in real time (the time-skipping server may skip ahead while
# several jobs' local activities run at once).


class CountParams(BaseModel):
    tag: str


@pytest.mark.devserver
async def test_concurrent_identical_tool_calls_run_once(
    dev_env: WorkflowEnvironment, redis_url: str, settings: Settings, tmp_path: Path
) -> None:
    """Four jobs asking the same slow tool call at once: the tool runs once, the other jobs
    share its result, and every job gets the same value."""
    runs: list[str] = []

    async def counted(params: CountParams) -> dict[str, str]:
        runs.append(params.tag)
        await asyncio.sleep(1.5)
        return {"tag": params.tag}

    registry = workflow_support.test_registry(settings)
    registry.register(
        Tool("counted", "Counts its runs.", CountParams, counted, ToolMetadata(timeout_s=5))
    )
    tag = uuid.uuid4().hex
    async with agent_worker(
        dev_env.client,
        redis_url=redis_url,
        database_url=f"sqlite:///{tmp_path / 'jobs.db'}",
        settings=settings,
        registry=registry,
        coalesce=True,
    ) as h:
        call = ToolCall(id="n", name="counted", parameters={"tag": tag})
        results = await asyncio.gather(
            *(h.run(AgentRequest(query=unique(f"count {i}"), tool_calls=[call])) for i in range(4))
        )
    assert runs == [tag], f"the tool ran {len(runs)} times"
    shared = [r.tool_results[0] for r in results]
    assert all(isinstance(s, ToolSuccess) and s.value == {"tag": tag} for s in shared)
    # The others shared it: in flight (coalesced) or, for a job that reached its tools after
    # the first finished, from the tool level.
    coalesced = sum(1 for s in shared if isinstance(s, ToolSuccess) and s.coalesced)
    cached = sum(1 for s in shared if s.cache_hit)
    assert coalesced >= 1 and coalesced + cached == 3


@pytest.mark.devserver
async def test_concurrent_identical_generations_call_the_model_once(
    dev_env: WorkflowEnvironment, redis_url: str, settings: Settings, tmp_path: Path
) -> None:
    calls = 0

    async def slow_model(spec: object, messages: object, max_tokens: int) -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.5)
        return "Paris is the capital of France."

    providers = ProviderRegistry({"simulated": ScriptedProvider(slow_model)})
    async with agent_worker(
        dev_env.client,
        redis_url=redis_url,
        database_url=f"sqlite:///{tmp_path / 'jobs.db'}",
        settings=settings,
        providers=providers,
        coalesce=True,
    ) as h:
        # One query, three context budgets (none is reached): three response-cache keys, and
        # the same prompt for the model.
        query = unique("What is the capital of France")
        requests = [
            AgentRequest(query=query, model_tier="small", max_context_tokens=1000 + i)
            for i in range(3)
        ]
        results = await asyncio.gather(*(h.run(r) for r in requests))
    assert calls == 1, f"the model was called {calls} times"
    assert {r.answer for r in results} == {"Paris is the capital of France."}
    finals = [u for r in results for u in r.usage if u.purpose == "final"]
    assert sum(1 for u in finals if u.coalesced) == 2
    assert all(u.cost_usd == 0 and u.completion_tokens == 0 for u in finals if u.coalesced)


# ----------------------------------------------------------------------------- semantic level


async def test_a_paraphrase_is_served_from_the_semantic_level_and_a_near_miss_is_not(
    client: Client, redis_url: str, settings: Settings, tmp_path: Path
) -> None:
    owner = uuid.uuid4().hex[:12]  # a fresh namespace: earlier runs against this Redis differ
    async with agent_worker(
        client,
        redis_url=redis_url,
        database_url=f"sqlite:///{tmp_path / 'jobs.db'}",
        settings=settings,
        semantic=True,
    ) as h:

        async def ask(query: str) -> AgentResult:
            return await h.run(AgentRequest(query=query, model_tier="small"), owner=owner)

        first = await ask("What is the capital of France?")
        assert not first.response_cache_hit
        same = await ask("what is the capital of france")
        assert same.response_cache_hit and same.cache is not None
        assert same.cache.hits.get("response") == 1, "an exact repeat is the response level's"
        paraphrase = await ask("What's the capital of France, please?")
        assert paraphrase.response_cache_hit and paraphrase.answer == first.answer
        assert paraphrase.cache is not None and paraphrase.cache.hits.get("semantic") == 1
        assert paraphrase.cache.semantic_similarity is not None
        near_miss = await ask("What is the capital of Germany?")
        assert not near_miss.response_cache_hit, "another entity got France's answer"
        negated = await ask("What is not the capital of France?")
        assert not negated.response_cache_hit
