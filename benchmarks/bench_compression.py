"""Benchmark 6: context compression against plain truncation.

Compares :func:`domain.compression.compress_context` (the pure function behind the
``compress_context`` activity, called in-process: no Temporal, no blob store) with what a
hand-rolled pipeline would do instead: concatenate the context items in order, tokenize, keep the
first ``budget`` cl100k_base tokens, decode. Both get the same items and the same 4,000-token
budget at about 2k, 8k, 32k and 128k input tokens.

Inputs are real prose that ships with every CPython: the Python Language Reference help topics
(``pydoc_data.topics``, the corpus of the ``python_docs_search`` tool), cut at paragraph breaks
into items of up to ~500 tokens. Three short critical items (the openings of the ``with``,
``context-managers`` and ``exceptions`` topics) sit first, two-thirds of the way in, and last; the
other items cycle high, medium, low, medium, low. The query asks about the ``with`` statement.

Per case and variant: wall time per call (the row values), input tokens per second (input tokens
/ median seconds), the share of the budget the output uses (output re-counted with
``core.tokens``), critical items found verbatim in the output, and a cheap relevance proxy: the
occurrences of the query's terms in the output out of those in the input. The two variants
alternate call by call (garbage collected, untimed, before each); output checks run untimed.

Caveats: the corpus holds about 105k tokens, so the 128k set repeats its first ~20% (with other
source names); the importance labels are assigned by position, not by a real retriever; the
compressed output is counted as the sum of its items (the contract's definition), so separators a
prompt builder adds between items are not counted, while truncation's count includes the ``\\n\\n``
it joins with. Truncation tokenizes the whole input even though it keeps only the first tokens;
that is the obvious implementation, not the fastest possible one. Single-threaded CPU work, so
timings depend on the machine and on other load.
"""

from __future__ import annotations

import gc
import random
import re
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from benchmarks.context import BenchContext
from benchmarks.report import BenchResult, plot
from core.models import ContextItem, Importance
from core.tokens import count_tokens, encoding, truncate_to_tokens
from domain.compression import compress_context

BUDGET = 4000
"""Token budget (cl100k_base) for the output of both variants."""

SIZES = (2_000, 8_000, 32_000, 128_000)
"""Total input tokens of each case (the sum of the items' token counts)."""

SMOKE_SIZES = SIZES[:2]

LARGE_SIZE = 100_000
"""Cases at least this large run with at most :data:`LARGE_REPEATS` measured repetitions."""

LARGE_REPEATS = 10

QUERY = "How does the with statement call __enter__ and __exit__ on a context manager?"

CRITICAL_TOPICS = ("with", "context-managers", "exceptions")
"""Topics whose opening paragraphs become the critical items."""

CRITICAL_TOKENS = 250
"""Most tokens of each critical item (whole paragraphs, so usually a little less)."""

CHUNK_TOKENS = 500
"""Most tokens of each other item (whole paragraphs; one longer paragraph stays whole)."""

FILLER_IMPORTANCE = (
    Importance.HIGH,
    Importance.MEDIUM,
    Importance.LOW,
    Importance.MEDIUM,
    Importance.LOW,
)
"""Importance of the non-critical items, cycled in input order."""

SEPARATOR = "\n\n"
"""What plain truncation joins the items with."""

_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
_WORD = re.compile(r"[a-z0-9]+")
_QUERY_STOPWORDS = frozenset(("how", "does", "the", "with", "on", "a", "and"))


# --------------------------------------------------------------------------- the baseline


def plain_truncation(items: list[ContextItem], budget: int) -> str:
    """Concatenate ``items`` in order and keep the first ``budget`` tokens."""
    enc = encoding()
    text = SEPARATOR.join(item.content for item in items)
    tokens = enc.encode(text, disallowed_special=())
    return enc.decode(tokens[:budget])


# --------------------------------------------------------------------------- inputs


def _chunks(text: str, limit: int) -> list[str]:
    """``text`` cut at paragraph breaks into pieces of at most ``limit`` tokens where possible."""
    chunks: list[str] = []
    current: list[str] = []
    used = 0
    for raw in _PARAGRAPH_BREAK.split(text):
        paragraph = raw.strip()
        if not paragraph:
            continue
        tokens = count_tokens(paragraph)
        if current and used + tokens > limit:
            chunks.append(SEPARATOR.join(current))
            current, used = [], 0
        current.append(paragraph)
        used += tokens
    if current:
        chunks.append(SEPARATOR.join(current))
    return chunks


@dataclass(frozen=True)
class Corpus:
    """Critical items and the stream of other chunks (``(source, text, tokens)``)."""

    critical: list[ContextItem]
    filler: list[tuple[str, str, int]]


def load_corpus() -> Corpus:
    """Cut the Python reference help topics into critical items and filler chunks."""
    from pydoc_data.topics import topics

    critical = [
        ContextItem(
            content=_chunks(str(topics[name]), CRITICAL_TOKENS)[0],
            importance=Importance.CRITICAL,
            source=f"pydoc:{name}#0",
        )
        for name in CRITICAL_TOPICS
    ]
    names = sorted(name for name in topics if name not in CRITICAL_TOPICS)
    random.Random(6).shuffle(names)  # a fixed mix of topics, so small sets are not all "a..."
    filler = [
        (f"pydoc:{name}#{i}", chunk, count_tokens(chunk))
        for name in names
        for i, chunk in enumerate(_chunks(str(topics[name]), CHUNK_TOKENS))
    ]
    return Corpus(critical=critical, filler=filler)


def build_items(corpus: Corpus, total: int) -> list[ContextItem]:
    """Items adding up to ``total`` tokens: the critical ones first, 2/3 in and last."""
    critical_tokens = sum(count_tokens(item.content) for item in corpus.critical)
    needed = total - critical_tokens
    filler: list[ContextItem] = []
    position = 0
    while needed > 0:
        source, text, tokens = corpus.filler[position % len(corpus.filler)]
        rounds = position // len(corpus.filler)
        if rounds:
            source = f"{source} (repeat {rounds})"
        if tokens > needed:  # the last item is cut so the total is exact
            text = truncate_to_tokens(text, needed)
            tokens = count_tokens(text)
        importance = FILLER_IMPORTANCE[position % len(FILLER_IMPORTANCE)]
        filler.append(ContextItem(content=text, importance=importance, source=source))
        needed -= tokens
        position += 1
    first, middle, last = corpus.critical
    cut = round(len(filler) * 2 / 3)
    return [first, *filler[:cut], middle, *filler[cut:], last]


# --------------------------------------------------------------------------- measures


def query_terms(query: str) -> frozenset[str]:
    """The query's content words (lower-case, a few stopwords dropped)."""
    return frozenset(w for w in _WORD.findall(query.lower()) if w not in _QUERY_STOPWORDS)


def term_hits(text: str, terms: frozenset[str]) -> int:
    """Occurrences of ``terms`` in ``text`` (as whole lower-case words)."""
    counts = Counter(_WORD.findall(text.lower()))
    return sum(counts[t] for t in terms)


def _time_interleaved(
    calls: dict[str, Callable[[], list[str]]], warmup: int, repeats: int
) -> dict[str, tuple[list[float], list[str]]]:
    """Wall ms of each call, ``warmup`` unmeasured then ``repeats`` measured rounds.

    Each call returns the text pieces it kept (items, or the one truncated text). The calls
    alternate within each round, so load from other processes on a shared machine falls on every
    variant alike; the garbage collector runs (untimed) before each call.
    """
    outputs = {name: call() for name, call in calls.items()}
    for _ in range(max(0, warmup - 1)):
        for name, call in calls.items():
            outputs[name] = call()
    values: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            gc.collect()
            t0 = time.perf_counter()
            outputs[name] = call()
            values[name].append((time.perf_counter() - t0) * 1000)
    return {name: (values[name], outputs[name]) for name in calls}


# --------------------------------------------------------------------------- run


async def run(ctx: BenchContext) -> BenchResult:
    """Time compress_context and plain truncation at each input size; compare what they keep."""
    sizes = SMOKE_SIZES if ctx.smoke else SIZES
    result = BenchResult(
        name="compression",
        title="Context compression vs plain truncation",
        baseline=(
            f"plain truncation: join the items in input order and keep the first {BUDGET} "
            "cl100k_base tokens (encode, cut, decode)"
        ),
        unit="ms",
        params={
            "budget_tokens": BUDGET,
            "input_tokens": list(sizes),
            "query": QUERY,
            "corpus": "pydoc_data.topics (Python Language Reference help topics)",
            "item_tokens_max": CHUNK_TOKENS,
            "critical_items": len(CRITICAL_TOPICS),
            "critical_item_tokens_max": CRITICAL_TOKENS,
            "filler_importance_cycle": [i.value for i in FILLER_IMPORTANCE],
            "repeats": ctx.repeats,
            "repeats_at_or_above_large_size": min(ctx.repeats, LARGE_REPEATS),
            "large_size": LARGE_SIZE,
            "warmup": ctx.warmup,
        },
    )
    corpus = load_corpus()
    terms = query_terms(QUERY)
    xs: list[float] = []
    speed: dict[str, list[float]] = {"plain truncation": [], "agentflow compress_context": []}
    summary: dict[str, dict[str, float]] = {}
    contract_broken: list[str] = []

    for size in sizes:
        items = build_items(corpus, size)
        input_tokens = sum(count_tokens(item.content) for item in items)
        input_hits = sum(term_hits(item.content, terms) for item in items)
        critical = [item.content for item in items if item.importance is Importance.CRITICAL]
        repeats = min(ctx.repeats, LARGE_REPEATS) if size >= LARGE_SIZE else ctx.repeats
        case = f"{input_tokens} tokens in, budget {BUDGET}"
        ctx.progress(f"{case}: {len(items)} items, {repeats} repeats")
        xs.append(input_tokens)

        def truncate(items: list[ContextItem] = items) -> list[str]:
            return [plain_truncation(items, BUDGET)]

        def compress(items: list[ContextItem] = items) -> list[str]:
            return [item.content for item in compress_context(QUERY, items, BUDGET).items]

        timed = _time_interleaved(
            {"plain truncation": truncate, "agentflow compress_context": compress},
            ctx.warmup,
            repeats,
        )
        for variant, (values, pieces) in timed.items():
            is_baseline = variant == "plain truncation"
            seconds = statistics.median(values) / 1000
            output_tokens = sum(count_tokens(p) for p in pieces)  # re-counted, untimed
            text = SEPARATOR.join(pieces)
            kept = sum(1 for c in critical if c in text)
            hits = sum(term_hits(p, terms) for p in pieces)
            tokens_per_s = input_tokens / seconds
            budget_used = output_tokens / BUDGET
            result.add(
                case,
                variant,
                values,
                baseline=is_baseline,
                tokens_per_s=round(tokens_per_s),
                output_tokens=output_tokens,
                budget_used=round(budget_used, 4),
                critical_kept=f"{kept}/{len(critical)}",
                query_hits=f"{hits}/{input_hits}",
            )
            speed[variant].append(tokens_per_s)
            summary[variant] = {
                "tokens_per_s": tokens_per_s,
                "median_ms": seconds * 1000,
                "budget_used": budget_used,
                "critical_kept": kept,
                "critical_total": len(critical),
            }
            if output_tokens > BUDGET or (variant != "plain truncation" and kept < len(critical)):
                contract_broken.append(f"{variant} at {case}: {output_tokens} tokens, {kept} kept")
            ctx.progress(
                f"  {variant}: {seconds * 1000:.2f} ms, {tokens_per_s:,.0f} tokens/s, "
                f"{budget_used:.1%} of budget, critical {kept}/{len(critical)}, "
                f"query hits {hits}/{input_hits}"
            )

    largest = f"{round(xs[-1])} tokens in"
    comp, trunc = summary["agentflow compress_context"], summary["plain truncation"]
    result.headline(f"compress_context throughput at {largest}", comp["tokens_per_s"], "tokens/s")
    result.headline(
        f"compress_context time / plain truncation time at {largest}",
        comp["median_ms"] / trunc["median_ms"],
        "x slower",
    )
    result.headline(f"budget used by compress_context at {largest}", 100 * comp["budget_used"], "%")
    result.headline(
        f"budget used by plain truncation at {largest}", 100 * trunc["budget_used"], "%"
    )
    for name, row in (("compress_context", comp), ("plain truncation", trunc)):
        result.headline(
            f"critical items kept verbatim by {name} at {largest}",
            row["critical_kept"],
            f"of {row['critical_total']:.0f}",
        )

    result.notes += [
        "Ratios are time ratios (median ms / truncation's median ms): how many times slower "
        "compress_context is. tokens_per_s = input tokens / median seconds.",
        "budget_used = output tokens / budget, re-counted with core.tokens: compress_context's "
        "output as the sum of its items (its contract), truncation's as its one text.",
        "critical_kept: critical items found verbatim in the output. query_hits: occurrences of "
        f"the query's terms ({', '.join(sorted(terms))}) kept / in the input, a cheap relevance "
        "proxy (it counts words, not meaning).",
        "Inputs: Python Language Reference help topics (pydoc_data.topics) in items of up to "
        f"{CHUNK_TOKENS} tokens; 3 critical items (first, 2/3 in, last); others cycle "
        "high/medium/low/medium/low. The 128k set repeats part of the ~105k-token corpus.",
        f"Cases of {LARGE_SIZE}+ tokens run at most {LARGE_REPEATS} measured repetitions.",
    ]
    if contract_broken:
        result.notes.append("CONTRACT BROKEN: " + "; ".join(contract_broken))

    result.plots.append(
        plot(
            ctx.out_dir,
            "compression",
            title=f"Compression throughput, budget {BUDGET} tokens",
            xlabel="input tokens",
            ylabel="tokens/s",
            series={label: (xs, ys) for label, ys in speed.items()},
            logx=True,
            logy=True,
        )
    )
    return result
