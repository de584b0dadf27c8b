"""Context compression: the budget contract (property tests) and the order of the ladder."""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import ContextBudgetExceededError, ErrorType
from core.models import BlobRef, CompressContextResult, ContextItem, Importance
from core.tokens import count_tokens, truncate_to_tokens
from domain.compression import (
    LEVEL_RATIOS,
    MIN_TRUNCATE_TOKENS,
    compress_context,
    extract_sentences,
)

# fmt: off
WORDS = (
    "temporal", "workflow", "activity", "retry", "policy", "cache", "redis", "token", "budget",
    "model", "tier", "latency", "cost", "database", "query", "index", "summary", "context",
    "approval", "signal", "history", "replay", "worker", "queue", "timeout", "the", "a", "of",
    "and", "to", "in", "is", "with", "for", "über", "naïve", "42", "3.14", "x=1;", "{json:",
    "true}", "café", "🙂",
)
# fmt: on

QUERY = "how does the retry policy affect latency and cost"


@st.composite
def sentences(draw: st.DrawFn) -> str:
    words = draw(st.lists(st.sampled_from(WORDS), min_size=1, max_size=25))
    end = draw(st.sampled_from([". ", "! ", "? ", "\n", "; ", " "]))
    return " ".join(words).capitalize() + end


texts = st.one_of(
    st.lists(sentences(), max_size=30).map("".join),
    st.text(max_size=300),  # arbitrary unicode, no sentence structure
)
importances = st.sampled_from(
    [Importance.CRITICAL, *[Importance.HIGH] * 2, *[Importance.MEDIUM] * 2, *[Importance.LOW] * 2]
)
context_items = st.lists(
    st.builds(
        ContextItem,
        content=texts,
        importance=importances,
        source=st.one_of(st.none(), st.text(max_size=5)),
    ),
    max_size=8,
)


def tokens_of(items: list[ContextItem]) -> int:
    return sum(count_tokens(item.content) for item in items)


def check_contract(
    items: list[ContextItem], result: CompressContextResult, max_tokens: int
) -> None:
    out = result.items
    summary = result.summary
    # Never over budget, and the summary tells the truth.
    assert tokens_of(out) <= max_tokens
    assert summary.tokens_after == tokens_of(out)
    assert summary.tokens_before == tokens_of(items)
    assert summary.max_tokens == max_tokens
    # One report entry per input, in input order.
    assert len(summary.report) == len(items)
    kept = [
        item for item, entry in zip(items, summary.report, strict=True) if entry.action != "dropped"
    ]
    assert len(out) == len(kept)
    for item, entry in zip(items, summary.report, strict=True):
        assert entry.importance is item.importance
        assert entry.source == item.source
        assert entry.tokens_before == count_tokens(item.content)
        if entry.action == "dropped":
            assert entry.tokens_after == 0
        if item.importance is Importance.CRITICAL:
            assert entry.action == "verbatim"
    # Output keeps input order, critical items verbatim, no blobs.
    for original, new, entry in zip(
        kept, out, [e for e in summary.report if e.action != "dropped"], strict=True
    ):
        assert new.importance is original.importance
        assert new.source == original.source
        assert new.blob is None
        assert entry.tokens_after == count_tokens(new.content)
        if entry.action == "verbatim":
            assert new.content == original.content
        else:
            assert entry.tokens_after < entry.tokens_before


@settings(max_examples=60, deadline=None)
@given(items=context_items, data=st.data())
def test_contract_holds_for_any_items_and_budget(
    items: list[ContextItem], data: st.DataObject
) -> None:
    total = tokens_of(items)
    critical = tokens_of([i for i in items if i.importance is Importance.CRITICAL])
    max_tokens = data.draw(st.integers(0, total + 20), label="max_tokens")
    if critical > max_tokens:
        with pytest.raises(ContextBudgetExceededError) as excinfo:
            compress_context(QUERY, items, max_tokens)
        assert str(critical) in excinfo.value.message
        assert str(max_tokens) in excinfo.value.message
        assert excinfo.value.type is ErrorType.CONTEXT_BUDGET_EXCEEDED
        return
    result = compress_context(QUERY, items, max_tokens)
    check_contract(items, result, max_tokens)
    if total <= max_tokens:
        assert all(entry.action == "verbatim" for entry in result.summary.report)
    assert result == compress_context(QUERY, items, max_tokens), "deterministic"


@settings(max_examples=40, deadline=None)
@given(items=context_items, budget_share=st.floats(0.0, 1.0), query=st.text(max_size=60))
def test_contract_holds_for_any_query(
    items: list[ContextItem], budget_share: float, query: str
) -> None:
    items = [i for i in items if i.importance is not Importance.CRITICAL]
    max_tokens = math.floor(tokens_of(items) * budget_share)
    check_contract(items, compress_context(query, items, max_tokens), max_tokens)


# --------------------------------------------------------------------------- examples


def paragraph(topic: str, sentences: int) -> str:
    return " ".join(
        f"Sentence {n} about {topic} covers detail number {n} of the {topic} subject at length."
        for n in range(sentences)
    )


def actions(result: CompressContextResult) -> list[str]:
    return [entry.action for entry in result.summary.report]


def test_everything_fits_keeps_everything_verbatim() -> None:
    items = [
        ContextItem(content=paragraph("cats", 3), importance=Importance.LOW, source="a"),
        ContextItem(content=paragraph("dogs", 3), importance=Importance.CRITICAL, source="b"),
        ContextItem(
            content="blob preview",
            importance=Importance.HIGH,
            blob=BlobRef(blob_id="0" * 64, size_bytes=12),
        ),
    ]
    total = tokens_of(items)
    result = compress_context("cats", items, total)
    assert actions(result) == ["verbatim"] * 3
    assert [i.content for i in result.items] == [i.content for i in items]
    assert result.items[2].blob is None
    assert result.summary.tokens_before == result.summary.tokens_after == total


def test_empty_input() -> None:
    result = compress_context("anything", [], 10)
    assert result.items == []
    assert result.summary.report == []
    assert result.summary.tokens_before == result.summary.tokens_after == 0


def test_low_is_compressed_before_anything_else() -> None:
    low = ContextItem(content=paragraph("rivers", 20), importance=Importance.LOW)
    medium = ContextItem(content=paragraph("mountains", 20), importance=Importance.MEDIUM)
    total = tokens_of([low, medium])
    result = compress_context("mountains", [low, medium], total - 10)
    assert actions(result) == ["heavy", "verbatim"]


def test_low_is_dropped_before_medium_goes_heavy() -> None:
    low = ContextItem(content=paragraph("rivers", 20), importance=Importance.LOW, source="low")
    medium = ContextItem(
        content=paragraph("mountains", 20), importance=Importance.MEDIUM, source="medium"
    )
    medium_tokens = count_tokens(
        extract_sentences(
            medium.content,
            "mountains",
            math.floor(count_tokens(medium.content) * LEVEL_RATIOS["medium"]),
        )
    )
    # Room for medium at "medium" plus a remainder too small to truncate low into.
    budget = medium_tokens + MIN_TRUNCATE_TOKENS - 6
    result = compress_context("mountains", [low, medium], budget)
    assert actions(result) == ["dropped", "medium"]
    assert [i.source for i in result.items] == ["medium"]
    check_contract([low, medium], result, budget)


def test_medium_goes_heavy_then_is_dropped_before_high_is_cut_further() -> None:
    high = ContextItem(content=paragraph("glaciers", 20), importance=Importance.HIGH)
    medium = ContextItem(content=paragraph("deserts", 20), importance=Importance.MEDIUM)
    high_light = count_tokens(
        extract_sentences(high.content, "q", math.floor(count_tokens(high.content) * 0.8))
    )
    result = compress_context("q", [high, medium], high_light + 5)
    assert actions(result) == ["light", "dropped"]


def test_high_survives_longer_than_low() -> None:
    text = paragraph("forests", 20)
    items = [
        ContextItem(content=text, importance=Importance.HIGH, source="high"),
        ContextItem(content=text, importance=Importance.LOW, source="low"),
    ]
    budget = count_tokens(text) // 2
    result = compress_context("forests", items, budget)
    high_action, low_action = actions(result)
    assert low_action == "dropped"
    assert high_action in {"light", "medium", "heavy"}
    assert [i.source for i in result.items] == ["high"]


def test_least_relevant_item_is_dropped_first() -> None:
    relevant = ContextItem(content=paragraph("kubernetes", 10), importance=Importance.LOW)
    unrelated = ContextItem(content=paragraph("baking", 10), importance=Importance.LOW)
    budget = count_tokens(relevant.content) // 4 + 5
    result = compress_context("kubernetes pods", [unrelated, relevant], budget)
    assert actions(result)[0] == "dropped"
    assert actions(result)[1] in {"heavy", "truncated"}


def test_last_item_is_truncated_to_the_remaining_budget() -> None:
    critical = ContextItem(
        content="The deploy key is in the vault.", importance=Importance.CRITICAL
    )
    low = ContextItem(content=paragraph("oceans", 30), importance=Importance.LOW)
    critical_tokens = count_tokens(critical.content)
    budget = critical_tokens + 40
    result = compress_context("oceans", [critical, low], budget)
    assert actions(result) == ["verbatim", "truncated"]
    report = result.summary.report[1]
    assert 0 < report.tokens_after <= 40
    assert report.tokens_after >= 38, "truncation uses (nearly) all of the remainder"
    assert result.items[0].content == critical.content
    check_contract([critical, low], result, budget)


def test_small_remainder_drops_instead_of_truncating() -> None:
    critical = ContextItem(
        content="The deploy key is in the vault.", importance=Importance.CRITICAL
    )
    low = ContextItem(content=paragraph("oceans", 30), importance=Importance.LOW)
    budget = count_tokens(critical.content) + MIN_TRUNCATE_TOKENS - 1
    result = compress_context("oceans", [critical, low], budget)
    assert actions(result) == ["verbatim", "dropped"]
    assert [i.content for i in result.items] == [critical.content]


def test_critical_over_budget_raises_with_both_numbers() -> None:
    critical = ContextItem(content=paragraph("secrets", 5), importance=Importance.CRITICAL)
    need = count_tokens(critical.content)
    with pytest.raises(ContextBudgetExceededError) as excinfo:
        compress_context("q", [critical], need - 1)
    assert str(need) in str(excinfo.value)
    assert str(need - 1) in str(excinfo.value)
    # Exactly at the budget is fine, and every other item goes.
    low = ContextItem(content=paragraph("noise", 5), importance=Importance.LOW)
    result = compress_context("q", [critical, low], need)
    assert actions(result) == ["verbatim", "dropped"]


def test_negative_budget_is_rejected() -> None:
    with pytest.raises(ValueError, match="max_tokens"):
        compress_context("q", [], -1)


def test_extraction_prefers_query_sentences_in_original_order() -> None:
    text = (
        "Our office moved to a new building last spring. "
        "The Kubernetes cluster runs three control plane nodes. "
        "Lunch is served at noon on weekdays. "
        "Each Kubernetes node reports its health every ten seconds."
    )
    first_k8s, second_k8s = text.split(". ")[1] + ".", text.split(". ")[3]
    target = count_tokens(first_k8s) + count_tokens(second_k8s)
    out = extract_sentences(text, "kubernetes nodes", target)
    assert out == f"{first_k8s} {second_k8s}"


def test_extraction_hard_truncates_one_long_sentence() -> None:
    text = " ".join(["word"] * 500)
    out = extract_sentences(text, "word", 37)
    assert count_tokens(out) <= 37
    assert text.startswith(out)
    assert extract_sentences(text, "word", 0) == ""


def test_extraction_keeps_line_breaks_between_kept_lines() -> None:
    text = "alpha one\nbeta two\ngamma three\ndelta four"
    out = extract_sentences(text, "alpha gamma", count_tokens("alpha one gamma three"))
    assert out == "alpha one\ngamma three"


def test_fifty_kilobytes_compress_quickly() -> None:
    import time

    items = [
        ContextItem(content=paragraph(f"topic{n}", 40), importance=importance)
        for n, importance in enumerate(
            [Importance.HIGH, Importance.MEDIUM, Importance.LOW] * 6 + [Importance.CRITICAL]
        )
    ]
    assert sum(len(i.content) for i in items) > 50_000
    started = time.perf_counter()
    result = compress_context("topic3 detail", items, 2000)
    elapsed = time.perf_counter() - started
    check_contract(items, result, 2000)
    assert elapsed < 5.0


# --------------------------------------------------------------------------- hostile sizes

DOCUMENTED_SPLIT = re.compile(r"(?<=[.!?])[ \t]+|[ \t]*\n\s*")
"""The sentence rule as the module docstring states it (and as an earlier version, quadratic on
long space runs, implemented it)."""


def split_as_documented(text: str) -> str:
    """Every sentence kept, joined as ``extract_sentences`` joins them: by the documented rule."""
    parts: list[str] = []
    position = 0
    pieces: list[tuple[str, bool]] = []
    for match in DOCUMENTED_SPLIT.finditer(text):
        piece = text[position : match.start()].strip()
        if piece:
            pieces.append((piece, "\n" in match.group()))
        position = match.end()
    if text[position:].strip():
        pieces.append((text[position:].strip(), False))
    for i, (piece, _) in enumerate(pieces):
        if i:
            parts.append("\n" if pieces[i - 1][1] else " ")
        parts.append(piece)
    return "".join(parts)


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet="ab.!? \t\n\r\u00a0", max_size=60))
def test_sentences_split_by_the_documented_rule(text: str) -> None:
    assert extract_sentences(text, "", 10**6) == split_as_documented(text)


@pytest.mark.parametrize("blank", [" ", "\t", " \t", "\u00a0"])
def test_long_blank_runs_split_in_linear_time(blank: str) -> None:
    """200,000 blanks without a line break took 40-80 s of CPU when splitting was quadratic."""
    import time

    text = "First sentence. " + blank * (200_000 // len(blank)) + "last words. Tail"
    started = time.process_time()
    out = extract_sentences(text, "last", 10**6)
    assert time.process_time() - started < 5.0
    assert out.startswith("First sentence.") and out.endswith("last words. Tail")


def test_a_megabyte_of_short_sentences_compresses_in_bounded_time() -> None:
    """The API admits about 1 MiB of job input: the worst shape (a sentence every 2 bytes) is
    linear too."""
    import time

    items = [
        ContextItem(content=". " * 500_000, importance=Importance.LOW),
        ContextItem(content="keep me.", importance=Importance.CRITICAL),
    ]
    started = time.process_time()
    result = compress_context("anything", items, 50)
    assert time.process_time() - started < 30.0
    check_contract(items, result, 50)


def test_token_counting_survives_a_million_whitespace_characters() -> None:
    """tiktoken's regex gives up ("Max stack size exceeded for backtracking") on about a million
    whitespace characters followed by anything; a client can send that in one context item."""
    text = " " * 1_000_000 + "x"
    count = count_tokens(text)
    assert 0 < count < len(text)
    head = truncate_to_tokens(text, 10)
    assert text.startswith(head) and count_tokens(head) <= 10
