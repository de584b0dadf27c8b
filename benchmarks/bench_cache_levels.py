"""Benchmark: what a hit costs on each cache level, and what the work it replaces costs.

Every number comes from :class:`infra.cache.RedisCache` and :class:`infra.semantic.SemanticCache`
called in this process against a private ``redis-server`` on a free port (no persistence, no
eviction of its own), with the settings' timeouts and byte limits. Values are realistic and
produced the way the workers produce them:

- **response**: a :class:`core.models.CachedResponse` (an answer of about 1.2 KB of prose, its
  tier, model, tools, cost and tokens) under :func:`infra.cache.response_cache_key`;
- **tool**: a :class:`core.models.ToolSuccess` of ``http_get`` (the tool's result shape: url,
  status, content type, body) of 4 KB and of 64 KB, under :func:`core.tools.tool_cache_key`;
- **component**: the :class:`core.models.SelectModelResult` the learned router gives for an
  example request (selection plus attempt timeouts and cost estimate, as ``select_model``
  stores it), and the :class:`core.models.CompressContextResult` of ``compress_context`` on
  8,000 tokens of Python reference prose for a 4,000-token budget (``bench_compression``'s
  input);
- **semantic**: a namespace holding 100 or 1,000 queries (smoke: 100 only), each ``<example
  request> for store <i>?`` pointing at its own stored answer, searched with the offline
  :class:`infra.embeddings.LexicalEmbedder` at the settings' threshold.

Per case, the variants run interleaved one call after another (their order rotating each round,
so drift and other load on the machine fall on every variant alike), ``--smoke``: 20 rounds,
otherwise at least 300 measured rounds after unmeasured warm-up ones; the work a hit replaces
is timed after its case's lookups, in rounds of its own. The machine's load average at start
and end is kept in the parameters:

- ``plain GET`` (the baseline): redis-py ``GET`` of the same bytes on the same client, no decode;
- ``get_level hit``: the level lookup alone (a Lua script: ``GET`` plus ``LPUSH``/``LTRIM`` of
  the level's recent-lookups list, one round trip) with its JSON decode;
- ``hit as served``: the lookup plus the caller's pydantic validation (what ``run_tools``,
  ``check_response_cache`` and the component level do with the value);
- ``get_level miss``: a key that is not stored (a fresh one per round);
- for the component level, **the work a hit replaces**: the learned router's selection
  (:func:`domain.routing.select_with` plus the attempt timeouts and the cost estimate, as
  ``select_model``; queries cycle over ``examples/requests.jsonl``), and ``compress_context``,
  both called directly (the activities run them in a worker thread, which adds a hop);
- for the semantic level: the lookup alone on a hit (a reworded stored query: other case and
  punctuation, a fresh text each round and variant, so the embedding memo never answers), the
  same with numpy's BLAS limited to one thread (``threadpoolctl``, around the call; the search
  is a BLAS matrix-vector product whose default thread pool competes with everything else on a
  busy machine), the hit as ``prepare_job`` serves it (lookup, ``GET`` of the answer it points
  at, validation, the recent-lookups count), a miss whose nearest rows the wrong-hit guard
  refuses (a stored question with a store number never stored), and a miss with nothing
  similar stored;
- writes: ``set_level`` of a fresh 4 KB tool entry with the level far below its byte limit, and
  with the level held at a 1 MiB limit so every write evicts the entry closest to expiry,
  against a plain ``SET ... EX`` of the same bytes.

Each row's ``ratio`` is its median over the case's plain GET (or plain SET) median; the rows
carry the value's size in bytes. Everything shares one machine with the driver.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel, JsonValue
from threadpoolctl import ThreadpoolController

from benchmarks.bench_compression import BUDGET, QUERY, build_items, load_corpus
from benchmarks.bench_semantic import private_redis
from benchmarks.context import BenchContext
from benchmarks.report import BenchResult, Row
from core.catalog import ModelCatalog
from core.models import (
    CachedResponse,
    CacheLevel,
    CompressContextResult,
    ResponseCacheKeyInput,
    SelectModelInput,
    SelectModelResult,
    Tier,
    ToolCall,
    ToolSuccess,
)
from core.settings import PROJECT_ROOT, Settings
from core.tokens import count_tokens
from core.tools import ToolRegistry, tool_cache_key
from domain.compression import compress_context
from domain.routing import Router, build_router, prompt_tokens_estimate, select_with
from infra.cache import RedisCache, response_cache_key
from infra.embeddings import LexicalEmbedder
from infra.semantic.results import SemanticLookup
from infra.semantic.store import INLINE_SEARCH_MAX_FLOATS, SemanticCache
from infra.tools import builtin_registry

FULL_SAMPLES = 300
"""Measured rounds per case in a full run (at least; ``--repeats`` x 15 when larger)."""

FULL_WARMUP = 20
"""Unmeasured rounds per case in a full run."""

SMOKE_SAMPLES = 20
"""Measured rounds per case in a smoke run."""

TOOL_SIZES = (4 * 2**10, 64 * 2**10)
"""Sizes of the tool entries, in bytes of JSON."""

COMPRESSION_INPUT_TOKENS = 8_000
"""Tokens of context compressed into :data:`benchmarks.bench_compression.BUDGET`."""

SEMANTIC_SIZES = (100, 1_000)
"""Queries stored in the semantic namespace, per case (a smoke run: the first only)."""

EVICTION_LIMIT_BYTES = 2**20
"""The tool level's byte limit in the eviction case (256 entries of 4 KB)."""

TTL_S = 3600
"""TTL of every entry written, in seconds."""

DOC_URL = "https://docs.python.org/3/reference/compound_stmts.html"
"""The URL of the cached ``http_get`` call (never fetched)."""

UNRELATED = (
    "Plan a three-day hiking trip around lake {i} with a tent and a stove",
    "Write a birthday poem for my grandmother who turns {i} this spring",
    "Which houseplants survive a north-facing window in apartment {i}",
    "Suggest a vegetarian dinner menu for {i} guests on a budget",
)
"""Queries with nothing similar among the stored ones (a fresh number each round)."""

BLAS = ThreadpoolController()
"""numpy's BLAS thread pools (the semantic search is a BLAS matrix-vector product)."""

_M = TypeVar("_M", bound=BaseModel)
_T = TypeVar("_T")


@dataclass(frozen=True)
class Variant:
    """One row of a case: an awaitable call per round and an untimed check of its outcome."""

    label: str
    call: Callable[[int], Awaitable[Any]]
    check: Callable[[int, Any], None] | None = None
    baseline: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def _expect(condition: bool, what: str) -> None:
    if not condition:
        raise RuntimeError(what)


def _prose(corpus_text: str, size: int, offset: int = 0) -> str:
    """``size`` characters of real prose starting near ``offset`` (wrapping around)."""
    start = offset % len(corpus_text)
    text = (corpus_text[start:] + "\n" + corpus_text) * (1 + size // len(corpus_text))
    return text[:size]


def _sized(make: Callable[[str], _M], corpus_text: str, size: int) -> _M:
    """``make(body)`` with the body cut so the model's compact JSON is about ``size`` bytes."""
    overhead = len(make("").model_dump_json().encode())
    return make(_prose(corpus_text, max(0, size - overhead)))


def _example_requests() -> list[dict[str, Any]]:
    lines = (PROJECT_ROOT / "examples" / "requests.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _selection_input(request: dict[str, Any], tools: ToolRegistry) -> SelectModelInput:
    """What ``prepare_job`` gives selection for an example request (explicit tool calls only)."""
    names = [call["name"] for call in request.get("tool_calls", [])]
    context = request.get("context", [])
    return SelectModelInput(
        query=request["query"],
        tool_call_names=names,
        context_items=len(context),
        context_tokens=sum(count_tokens(str(item.get("content", ""))) for item in context),
        tools_answer=bool(names) and tools.all_answer_query(names),
    )


def _stored_query(questions: list[str], i: int) -> str:
    """The ``i``-th stored semantic query: an example question for store ``i``."""
    return f"{questions[i % len(questions)].rstrip('?.! ')} for store {i}?"


def _component_key(kind: str, payload: str) -> str:
    """A component-level key shaped like the workers' (kind, SHA-256 of the input)."""
    digest = hashlib.sha256(f"bench|{kind}|{payload}".encode()).hexdigest()
    return f"{CacheLevel.COMPONENT.prefix}{kind}:{digest}"


async def _inline(fn: Callable[..., _T], *args: Any) -> _T:
    """``fn(*args)`` in the event loop's thread (CPU work timed without a thread hop)."""
    return fn(*args)


@dataclass
class _Bench:
    """One run: the result being built, the caches, the corpus and the round counts."""

    ctx: BenchContext
    result: BenchResult
    cache: RedisCache
    settings: Settings
    corpus_text: str
    samples: int
    warmup: int

    async def measure(self, case: str, variants: Sequence[Variant]) -> None:
        """Run ``variants`` interleaved for ``warmup + samples`` rounds; add one row each.

        Round ``i`` calls every variant once with ``i``, starting at variant ``i mod len`` so
        no variant always runs first. Each outcome goes through the variant's check, untimed.

        Raises:
            RuntimeError: a check failed (a hit that missed, a miss that hit, no eviction, ...).
        """
        gc.collect()
        times: dict[str, list[float]] = {v.label: [] for v in variants}
        for i in range(self.warmup + self.samples):
            shift = i % len(variants)
            for variant in [*variants[shift:], *variants[:shift]]:
                started = time.perf_counter()
                outcome = await variant.call(i)
                elapsed_ms = (time.perf_counter() - started) * 1000
                if variant.check is not None:
                    variant.check(i, outcome)
                if i >= self.warmup:
                    times[variant.label].append(elapsed_ms)
        for v in variants:
            self.result.add(case, v.label, times[v.label], baseline=v.baseline, **v.extra)

    async def lookups(
        self,
        case: str,
        level: CacheLevel,
        key: str,
        value: BaseModel,
        work: Variant | None = None,
    ) -> None:
        """Store ``value`` at ``key`` and time plain GET, level hit, hit as served, level miss."""
        cache = self.cache
        stored = value.model_dump(mode="json")
        _expect(await cache.set_level(level, key, stored, TTL_S), f"{case}: not stored")
        raw = await cache.client.get(key)
        if not isinstance(raw, bytes):
            raise RuntimeError(f"{case}: the stored value is not readable")
        model = type(value)
        miss_prefix = f"{level.prefix}bench-miss:{uuid.uuid4().hex}"

        # run_tools reads the tool level with the entry's remaining TTL; the others without.
        lookup_name = "get_level_ttl" if level is CacheLevel.TOOL else "get_level"

        async def served(i: int) -> BaseModel | None:
            if level is CacheLevel.TOOL:
                found, _ = await cache.get_level_ttl(level, key)
            else:
                found = await cache.get_level(level, key)
            return model.model_validate(found) if isinstance(found, dict) else None

        variants = [
            Variant(
                "plain GET (bytes, no decode)",
                lambda i: cache.client.get(key),
                lambda i, out: _expect(out == raw, f"{case}: plain GET returned something else"),
                baseline=True,
                extra={"bytes": len(raw)},
            ),
            Variant(
                "get_level hit",
                lambda i: cache.get_level(level, key),
                lambda i, out: _expect(out == stored, f"{case}: the hit returned something else"),
            ),
            Variant(
                f"hit as served ({lookup_name} + {model.__name__} validation)",
                served,
                lambda i, out: _expect(out == value, f"{case}: served something else"),
            ),
            Variant(
                "get_level miss",
                lambda i: cache.get_level(level, f"{miss_prefix}:{i}"),
                lambda i, out: _expect(out is None, f"{case}: a miss hit"),
            ),
        ]
        await self.measure(case, variants)
        if work is not None:
            # Apart, after the lookups: the garbage and cache misses a heavy computation leaves
            # behind would otherwise land on whichever lookup runs next.
            await self.measure(case, [work])

    async def semantic(self, questions: list[str], size: int) -> None:
        """Fill a namespace with ``size`` queries and their answers; time its lookups."""
        cache, settings = self.cache, self.settings
        embedder = LexicalEmbedder()
        max_entries = max(size, settings.semantic_cache_max_entries)
        threshold = settings.semantic_cache_threshold
        writer = SemanticCache(cache.client, embedder, threshold=threshold, max_entries=max_entries)
        namespace = f"-:{uuid.uuid4().hex}"

        def answer_key(i: int) -> str:
            return f"{CacheLevel.RESPONSE.prefix}v2:bench-{namespace}-{i}"

        answers: dict[str, JsonValue] = {}
        started = time.perf_counter()
        # One write at a time: many concurrent adds (each embeds in a worker thread) starve the
        # event loop past the cache's 0.5 s socket timeout, and the breaker would open.
        for i in range(size):
            query = _stored_query(questions, i)
            answers[answer_key(i)] = CachedResponse(
                answer=_prose(self.corpus_text, 1_200, offset=977 * i),
                tier=Tier.SMALL,
                model="simulated-small",
                simulated=True,
                job_id=str(uuid.uuid4()),
                query=query,
            ).model_dump(mode="json")
            stored = await cache.set_level(
                CacheLevel.RESPONSE, answer_key(i), answers[answer_key(i)], TTL_S
            )
            added = await writer.add(namespace, query, answer_key(i), TTL_S)
            _expect(stored and added, f"semantic {size}: the fill was refused at entry {i}")
        fill_s = time.perf_counter() - started
        reader = SemanticCache(cache.client, embedder, threshold=threshold, max_entries=max_entries)
        await reader.lookup(namespace, "warm-up: read the whole stream once")
        plain_key = answer_key(size // 2)
        raw = await cache.client.get(plain_key)
        if not isinstance(raw, bytes):
            raise RuntimeError(f"semantic {size}: the stored answer is not readable")
        target = [(7 + 13 * i) % size for i in range(self.warmup + self.samples)]

        def hit_text(i: int, variant: int = 0) -> str:
            # Lower case and other punctuation, a fresh text for each round and variant (the
            # embedding memo never answers); the lexical normalization maps it back onto the
            # stored query.
            text = _stored_query(questions, target[i]).lower().rstrip("?")
            return text + "?.;"[variant] * (1 + i % 5) + " " * (i // 5)

        def check_hit(i: int, out: SemanticLookup) -> None:
            _expect(
                out.hit is not None and out.hit.response_key == answer_key(target[i]),
                f"semantic {size}: {hit_text(i)!r} did not hit its stored query ({out})",
            )

        async def capped_hit(i: int) -> SemanticLookup:
            with BLAS.limit(limits=1, user_api="blas"):
                return await reader.lookup(namespace, hit_text(i, 1))

        async def served(i: int) -> CachedResponse | None:
            found = await reader.lookup(namespace, hit_text(i, 2))
            entry = None
            if found.hit is not None:
                value = await cache.get_json(found.hit.response_key)
                entry = CachedResponse.model_validate(value) if isinstance(value, dict) else None
            await cache.record_lookup(CacheLevel.SEMANTIC, entry is not None)
            return entry

        def check_served(i: int, out: CachedResponse | None) -> None:
            _expect(
                out is not None and out.model_dump(mode="json") == answers[answer_key(target[i])],
                f"semantic {size}: served something else",
            )

        below: list[bool] = []

        def check_unrelated(i: int, out: SemanticLookup) -> None:
            _expect(out.hit is None, f"semantic {size}: an unrelated query hit")
            if i >= self.warmup:
                below.append(out.similarity is None or out.similarity < threshold)

        case = f"semantic level: {size:,} entries"
        await self.measure(
            case,
            [
                Variant(
                    "plain GET of a stored answer (bytes, no decode)",
                    lambda i: cache.client.get(plain_key),
                    lambda i, out: _expect(out == raw, "plain GET returned something else"),
                    baseline=True,
                    extra={"bytes": len(raw)},
                ),
                Variant(
                    "lookup hit (search only)",
                    lambda i: reader.lookup(namespace, hit_text(i)),
                    check_hit,
                ),
                Variant(
                    "lookup hit, BLAS capped at 1 thread (threadpoolctl)",
                    capped_hit,
                    check_hit,
                ),
                Variant(
                    "hit as served (lookup + GET answer + validation + record_lookup)",
                    served,
                    check_served,
                ),
                Variant(
                    "lookup miss, near-miss (guard refuses: a store number never stored)",
                    lambda i: reader.lookup(namespace, _stored_query(questions, size + 1_000 + i)),
                    lambda i, out: _expect(out.hit is None, f"semantic {size}: a near-miss hit"),
                ),
                Variant(
                    "lookup miss, nothing similar stored",
                    lambda i: reader.lookup(namespace, UNRELATED[i % len(UNRELATED)].format(i=i)),
                    check_unrelated,
                ),
            ],
        )
        row = next(r for r in self.result.rows if r.case == case and "nothing" in r.variant)
        row.extra["below_threshold_share"] = round(sum(below) / max(1, len(below)), 3)
        self.result.notes.append(
            f"Semantic, {size:,} entries: filled in {fill_s:.2f} s (one query and its answer at "
            f"a time); {reader.local_bytes / 2**20:.1f} MiB of vectors in the reading process."
        )
        await cache.client.delete(reader.stream_key(namespace), *answers)

    async def writes(self, evicting: RedisCache, tool_key: str) -> None:
        """``set_level`` of fresh 4 KB tool entries below the byte limit and at it, vs a SET.

        ``evicting`` is a cache on another Redis database whose tool level is limited to
        :data:`EVICTION_LIMIT_BYTES`; it is filled to its limit first.
        """
        cache, size = self.cache, TOOL_SIZES[0]

        def entry(i: int) -> JsonValue:
            body = _prose(self.corpus_text, size - 300, offset=977 * i)
            return ToolSuccess(
                call_id="c",
                name="http_get",
                value={"url": f"https://example.org/{i}", "status_code": 200, "body": body},
            ).model_dump(mode="json")

        filled = 0
        while evicting.stats.evicted == 0:
            key = f"{tool_key}:fill:{filled}"
            _expect(
                await evicting.set_level(CacheLevel.TOOL, key, entry(filled), TTL_S),
                "the eviction level refused a fill entry",
            )
            filled += 1
        values = [entry(i) for i in range(self.warmup + self.samples)]
        encoded = [json.dumps(v, separators=(",", ":"), ensure_ascii=False) for v in values]
        run_id = uuid.uuid4().hex[:8]

        async def plain_set(i: int) -> Any:
            return await cache.client.set(f"{tool_key}:plain:{run_id}:{i}", encoded[i], ex=TTL_S)

        async def set_free(i: int) -> tuple[bool, int]:
            before = cache.stats.evicted
            key = f"{tool_key}:free:{run_id}:{i}"
            ok = await cache.set_level(CacheLevel.TOOL, key, values[i], TTL_S)
            return ok, cache.stats.evicted - before

        async def set_full(i: int) -> tuple[bool, int]:
            before = evicting.stats.evicted
            key = f"{tool_key}:full:{run_id}:{i}"
            ok = await evicting.set_level(CacheLevel.TOOL, key, values[i], TTL_S)
            return ok, evicting.stats.evicted - before

        await self.measure(
            f"tool level write: fresh {size // 2**10} KB ToolSuccess",
            [
                Variant(
                    "plain SET EX (bytes)",
                    plain_set,
                    lambda i, out: _expect(bool(out), "plain SET failed"),
                    baseline=True,
                    extra={"bytes": len(encoded[0])},
                ),
                Variant(
                    "set_level, level far below its byte limit (no eviction)",
                    set_free,
                    lambda i, out: _expect(out == (True, 0), f"a free write: {out}"),
                ),
                Variant(
                    f"set_level, level at its {EVICTION_LIMIT_BYTES // 2**20} MiB limit "
                    "(evicts the entry closest to expiry)",
                    set_full,
                    lambda i, out: _expect(out[0] and out[1] >= 1, f"a write at the limit: {out}"),
                    extra={"entries_at_limit": filled - evicting.stats.evicted},
                ),
            ],
        )
        stats = await evicting.level_stats(CacheLevel.TOOL)
        _expect(stats.bytes <= EVICTION_LIMIT_BYTES, "the evicting level went over its limit")


async def run(ctx: BenchContext) -> BenchResult:
    """Measure hit, miss and write latency per cache level against a plain GET/SET."""
    from pydoc_data.topics import topics

    load_start = os.getloadavg()[0]
    settings = Settings()
    samples = SMOKE_SAMPLES if ctx.smoke else max(FULL_SAMPLES, ctx.repeats * 15)
    warmup = 2 if ctx.smoke else max(FULL_WARMUP, ctx.warmup)
    sizes = list(SEMANTIC_SIZES[:1] if ctx.smoke else SEMANTIC_SIZES)
    catalog = ModelCatalog.default()
    router = build_router("learned")
    tools = builtin_registry(settings)
    requests = _example_requests()
    result = BenchResult(
        name="cache_levels",
        title="Cache levels: hit latency vs a plain Redis GET, and the work a hit replaces",
        baseline="a plain redis-py GET (or SET) of the same bytes on the same client, same run",
        params={
            "samples_per_row": samples,
            "warmup_rounds": warmup,
            "redis_timeout_s": settings.redis_timeout_s,
            "semantic_threshold": settings.semantic_cache_threshold,
            "semantic_sizes": sizes,
            "embedder": LexicalEmbedder.name,
            "compression_input_tokens": COMPRESSION_INPUT_TOKENS,
            "compression_budget_tokens": BUDGET,
            "eviction_limit_bytes": EVICTION_LIMIT_BYTES,
            "blas_threads": {
                str(pool.get("internal_api")): pool.get("num_threads") for pool in BLAS.info()
            },
        },
    )
    limits = {
        CacheLevel.RESPONSE: settings.response_cache_max_bytes,
        CacheLevel.SEMANTIC: settings.semantic_cache_max_bytes,
        CacheLevel.TOOL: settings.tool_cache_max_bytes,
        CacheLevel.COMPONENT: settings.component_cache_max_bytes,
    }
    with private_redis() as url:
        cache = RedisCache(url, timeout_s=settings.redis_timeout_s, level_max_bytes=limits)
        evicting = RedisCache(
            url.rsplit("/", 1)[0] + "/1",
            timeout_s=settings.redis_timeout_s,
            level_max_bytes={**limits, CacheLevel.TOOL: EVICTION_LIMIT_BYTES},
        )
        bench = _Bench(
            ctx=ctx,
            result=result,
            cache=cache,
            settings=settings,
            corpus_text="\n\n".join(str(topics[name]) for name in sorted(topics)),
            samples=samples,
            warmup=warmup,
        )
        try:
            await _reads(bench, catalog, router, tools, requests)
            questions = [r["query"] for r in requests if not any(c.isdigit() for c in r["query"])]
            for size in sizes:
                ctx.progress(f"semantic level, {size:,} entries")
                await bench.semantic(questions, size)
            ctx.progress("set_level with and without eviction")
            await bench.writes(evicting, _tool_key(tools))
        finally:
            await cache.aclose()
            await evicting.aclose()
    result.params["load_average_1min"] = {"start": load_start, "end": os.getloadavg()[0]}
    _headlines(result, sizes)
    result.notes += NOTES
    dim = LexicalEmbedder().dim
    threaded = [n for n in sizes if n * dim > INLINE_SEARCH_MAX_FLOATS]
    result.notes.append(
        f"The semantic search runs in a worker thread above {INLINE_SEARCH_MAX_FLOATS:,} matrix "
        f"elements ({dim:,} dimensions per entry): here "
        + (f"at {', '.join(f'{n:,}' for n in threaded)} entries." if threaded else "never.")
    )
    return result


def _tool_key(tools: ToolRegistry) -> str:
    """The tool-level key of an ``http_get`` call, as ``run_tools`` builds it."""
    tool, params = tools.validate(ToolCall(id="c", name="http_get", parameters={"url": DOC_URL}))
    return tool_cache_key(tool.name, params, tool.metadata.version)


async def _reads(
    bench: _Bench,
    catalog: ModelCatalog,
    router: Router,
    tools: ToolRegistry,
    requests: list[dict[str, Any]],
) -> None:
    """The response, tool and component cases."""
    bench.ctx.progress("response level")
    answer = _sized(
        lambda body: CachedResponse(
            answer=body,
            tier=Tier.MEDIUM,
            model="simulated-medium",
            simulated=True,
            job_id=str(uuid.uuid4()),
            query=requests[0]["query"],
            tools=["python_docs_search"],
            cost_usd=0.004215,
            tokens=1_873,
            duration_ms=2_412.5,
        ),
        bench.corpus_text,
        1_500,
    )
    key_input = ResponseCacheKeyInput(
        query=requests[0]["query"], model_identity=catalog.fingerprint()
    )
    await bench.lookups(
        "response level: CachedResponse",
        CacheLevel.RESPONSE,
        response_cache_key(key_input),
        answer,
    )

    tool_key = _tool_key(tools)
    for size in TOOL_SIZES:
        bench.ctx.progress(f"tool level, {size // 2**10} KB")
        success = _sized(
            lambda body: ToolSuccess(
                call_id="c",
                name="http_get",
                value={
                    "url": DOC_URL,
                    "status_code": 200,
                    "content_type": "text/html; charset=utf-8",
                    "body": body,
                    "size_bytes": len(body.encode()),
                    "truncated": False,
                    "location": None,
                },
                latency_ms=187.3,
            ),
            bench.corpus_text,
            size,
        )
        case = f"tool level: ToolSuccess {size // 2**10} KB"
        await bench.lookups(case, CacheLevel.TOOL, f"{tool_key}:{size}", success)

    bench.ctx.progress("component level: model selection")
    inputs = [_selection_input(r, tools) for r in requests]

    def select(inp: SelectModelInput) -> SelectModelResult:
        # What StageActivities.select_model stores: the choice plus timeouts and cost estimate.
        chosen = select_with(router, inp, catalog)
        estimate = catalog.estimate_remaining_cost_usd(
            chosen.tier,
            prompt_tokens=prompt_tokens_estimate(inp),
            completion_tokens=chosen.scores.response_length,
        )
        timeouts = {spec.tier: spec.attempt_timeout_s for spec in catalog.models}
        return chosen.model_copy(
            update={"attempt_timeouts_s": timeouts, "estimated_cost_usd": estimate}
        )

    await bench.lookups(
        "component level: SelectModelResult",
        CacheLevel.COMPONENT,
        _component_key("selection", inputs[0].model_dump_json()),
        select(inputs[0]),
        work=Variant(
            "the work a hit replaces: learned router select_with + costs",
            lambda i: _inline(select, inputs[i % len(inputs)]),
            lambda i, out: _expect(isinstance(out, SelectModelResult), "no selection"),
        ),
    )

    bench.ctx.progress(f"component level: compression of {COMPRESSION_INPUT_TOKENS:,} tokens")
    items = build_items(load_corpus(), COMPRESSION_INPUT_TOKENS)
    payload = json.dumps([item.model_dump(mode="json") for item in items])
    await bench.lookups(
        "component level: CompressContextResult",
        CacheLevel.COMPONENT,
        _component_key("compression", payload),
        compress_context(QUERY, items, BUDGET),
        work=Variant(
            f"the work a hit replaces: compress_context {COMPRESSION_INPUT_TOKENS:,} "
            f"-> {BUDGET:,} tokens",
            lambda i: _inline(compress_context, QUERY, items, BUDGET),
            lambda i, out: _expect(
                isinstance(out, CompressContextResult) and out.summary.tokens_after <= BUDGET,
                "compression went over its budget",
            ),
        ),
    )


NOTES = [
    "Every level lookup is one EVALSHA round trip (GET plus LPUSH/LTRIM of the level's "
    "recent-lookups list for GET /v1/cache/stats); its ratio to the plain GET is that script's "
    "and the JSON decode's price. 'hit as served' adds the pydantic validation the caller does.",
    "The response level replaces a whole job (the `caching` benchmark's response-cache rows: "
    "a miss runs the model calls at the simulated tiers' speed, hundreds of ms to seconds); "
    "the tool level replaces the tool call (an http_get round trip, a SQL query, a docs "
    "search). The component rows put the work they replace in the same table.",
    "The selection and compression rows call the functions directly; the activities run them "
    "through asyncio.to_thread, which adds a thread hop to the miss path only.",
    "The semantic 'hit as served' row is prepare_job's path: lookup, GET of the answer the hit "
    "points at (get_json), CachedResponse validation, record_lookup (one more round trip).",
    "The search's matrix-vector product runs on numpy's BLAS (params.blas_threads: its default "
    "thread pool). It is memory-bound, so extra BLAS threads gain little and, when the cores are "
    "busy with other processes, wait for them: compare 'lookup hit' with the BLAS-capped row.",
    "Single driver process, sequential calls (no concurrency), Redis on loopback; on a shared "
    "machine the p95 column carries other processes' noise, the medians less so.",
]
"""What every run's table needs said next to it."""


def _headlines(result: BenchResult, semantic_sizes: list[int]) -> None:
    """The headline numbers: hit latencies, ratios to a plain GET and to the work replaced."""

    def row(case: str, prefix: str) -> Row:
        return next(r for r in result.rows if r.case == case and r.variant.startswith(prefix))

    def over_base(case: str, prefix: str) -> float:
        base = next(r for r in result.rows if r.case == case and r.baseline)
        return row(case, prefix).stats.median / base.stats.median

    response = "response level: CachedResponse"
    result.headline("response hit p50", row(response, "get_level hit").stats.median, "ms")
    result.headline("response hit p95", row(response, "get_level hit").stats.p95, "ms")
    result.headline("response hit / plain GET", over_base(response, "get_level hit"))
    big = f"tool level: ToolSuccess {TOOL_SIZES[1] // 2**10} KB"
    result.headline("tool hit 64 KB p50", row(big, "get_level hit").stats.median, "ms")
    result.headline("tool hit 64 KB / plain GET", over_base(big, "get_level hit"))
    for case, what in (
        ("component level: SelectModelResult", "selection"),
        ("component level: CompressContextResult", "compression"),
    ):
        work = row(case, "the work").stats.median
        result.headline(
            f"{what}: work / component hit as served", work / row(case, "hit as").stats.median
        )
    for size in semantic_sizes:
        case = f"semantic level: {size:,} entries"
        hit = row(case, "hit as served")
        result.headline(f"semantic hit as served p50, {size:,} entries", hit.stats.median, "ms")
        result.headline(f"semantic hit as served p95, {size:,} entries", hit.stats.p95, "ms")
    largest = f"semantic level: {semantic_sizes[-1]:,} entries"
    result.headline(
        f"semantic lookup hit, BLAS 1 thread / default, {semantic_sizes[-1]:,} entries",
        row(largest, "lookup hit, BLAS").stats.median / row(largest, "lookup hit (").stats.median,
    )
    write = f"tool level write: fresh {TOOL_SIZES[0] // 2**10} KB ToolSuccess"
    result.headline(
        "set_level with eviction / without",
        row(write, "set_level, level at").stats.median
        / row(write, "set_level, level far").stats.median,
    )
