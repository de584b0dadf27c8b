"""Context compression: fit context items into a token budget, cutting the least important first.

Pure and deterministic (no I/O, no clock, no randomness); the ``compress_context`` activity calls
:func:`compress_context` with every item's ``content`` already resolved from the blob store.

Contract (tokens are cl100k_base tokens, counted with :func:`core.tokens.count_tokens`):

* the output items' contents add up to at most ``max_tokens`` tokens, always;
* critical items appear unchanged and are never dropped; if they alone need more than
  ``max_tokens``, :class:`~core.errors.ContextBudgetExceededError` is raised;
* output items keep the input order (dropped items are omitted) and have ``blob=None``;
* the report has one entry per input item, in input order.

Algorithm. If everything fits verbatim, everything is kept. Otherwise the items walk down a
ladder of steps, and compression stops as soon as the total fits. Each step visits the items of
one importance, least query-relevant first, and applies one change at a time, so no item is cut
harder than the budget needs:

1. low -> ``heavy`` (about 25% of its tokens)
2. medium -> ``medium`` (about 50%)
3. high -> ``light`` (about 80%)
4. drop low items
5. medium -> ``heavy``
6. drop medium items
7. high -> ``medium``
8. high -> ``heavy``
9. drop high items

When a drop makes the total fit, the dropped item is instead cut to exactly the tokens left
(``truncated``) if at least :data:`MIN_TRUNCATE_TOKENS` remain; the total cannot exceed the
budget after step 9, because by then only critical items are left.

Compression is extractive. An item is split into sentences (at ``. ! ?`` followed by space, and
at line breaks); each sentence scores ``2 * (share of the query's terms it contains)`` plus the
mean within-item frequency of its terms (normalised to 0..1) plus a small bonus for the item's
first sentence. The best sentences are kept, in their original order, while their token counts fit
the level's target; if not even one sentence fits, the best sentence is hard-truncated to the
target. The kept text is re-counted, so the reported ``tokens_after`` are real counts.

Speed: each item is tokenized once for its size; sentences are tokenized only for items that get
compressed, once per item (shared by every level), and each compressed version is built and
counted once. The running total is updated by deltas, never re-counted.

Bounded work. Contents come from users and tools, so every step is linear in the input or
``n log n`` (sorting sentences and items): sentence splitting is one linear regular-expression
scan (see :data:`_SENTENCE_SPLIT`), term extraction and token counting are linear (tiktoken
0.14's encoder is linear even on one long run without spaces), and each item is compressed at
most three times. ``tests/test_compression.py`` checks that doubling a hostile input at most
about doubles the time.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from core.errors import ContextBudgetExceededError
from core.models import (
    CompressContextResult,
    CompressedItemReport,
    CompressionAction,
    CompressionSummary,
    ContextItem,
    Importance,
)
from core.tokens import count_tokens, truncate_to_tokens

LEVEL_RATIOS: dict[CompressionAction, float] = {"light": 0.8, "medium": 0.5, "heavy": 0.25}
"""Target size of each compression level, as a fraction of the item's original tokens."""

MIN_TRUNCATE_TOKENS = 16
"""Fewest tokens left in the budget for which an item is truncated rather than dropped."""

FIRST_SENTENCE_BONUS = 0.3
"""Score added to an item's first sentence (it often states the topic)."""

_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])[ \t]+|\n\s*")
r"""Sentence breaks: spaces or tabs after ``. ! ?``, and line breaks with the whitespace after
them. Spaces and tabs before a line break stay with the sentence, whose text is stripped; an
earlier pattern matched them too (``[ \t]*\n\s*``), which restarted at every space of a long
run without a line break and took quadratic time (100,000 spaces: 9.6 s of CPU)."""
_TERM = re.compile(r"[a-z0-9]+")
# fmt: off
_STOPWORDS = frozenset((
    "a", "an", "and", "are", "as", "at", "be", "been", "but", "by", "can", "could", "did", "do",
    "does", "for", "from", "had", "has", "have", "how", "i", "if", "in", "into", "is", "it",
    "its", "me", "my", "no", "not", "of", "on", "or", "our", "so", "than", "that", "the", "their",
    "them", "then", "there", "these", "they", "this", "to", "was", "we", "were", "what", "when",
    "where", "which", "who", "why", "will", "with", "would", "you", "your",
))
# fmt: on


def _terms(text: str) -> list[str]:
    return [t for t in _TERM.findall(text.lower()) if len(t) > 1 and t not in _STOPWORDS]


@dataclass(slots=True)
class _Sentence:
    text: str
    tokens: int
    score: float
    ends_line: bool
    """Whether a line break followed it in the item (kept when re-joining)."""


@dataclass(slots=True)
class _ItemState:
    """One input item while the budget is being met."""

    index: int
    item: ContextItem
    tokens_before: int
    relevance: float
    action: CompressionAction = "verbatim"
    content: str = ""
    tokens: int = 0
    sentences: list[_Sentence] | None = None
    versions: dict[CompressionAction, tuple[str, int]] = field(default_factory=dict)


def _split_sentences(text: str) -> list[tuple[str, bool]]:
    pieces: list[tuple[str, bool]] = []
    position = 0
    for match in _SENTENCE_SPLIT.finditer(text):
        piece = text[position : match.start()].strip()
        if piece:
            pieces.append((piece, "\n" in match.group()))
        position = match.end()
    tail = text[position:].strip()
    if tail:
        pieces.append((tail, False))
    return pieces


def _analyse(text: str, query_terms: frozenset[str]) -> list[_Sentence]:
    pieces = _split_sentences(text)
    frequency = Counter(_terms(text))
    top = max(frequency.values(), default=1)
    sentences: list[_Sentence] = []
    for position, (piece, ends_line) in enumerate(pieces):
        terms = _terms(piece)
        distinct = set(terms)
        overlap = len(distinct & query_terms) / len(query_terms) if query_terms else 0.0
        salience = sum(frequency[t] for t in terms) / (top * len(terms)) if terms else 0.0
        bonus = FIRST_SENTENCE_BONUS if position == 0 else 0.0
        sentences.append(
            _Sentence(piece, count_tokens(piece), 2.0 * overlap + salience + bonus, ends_line)
        )
    return sentences


def extract_sentences(text: str, query: str, target_tokens: int) -> str:
    """The sentences of ``text`` most relevant to ``query`` that fit ``target_tokens``.

    Args:
        text: the text to shorten.
        query: the user's question; its terms raise the scores of the sentences that hold them.
        target_tokens: the most tokens the kept sentences may sum to.

    Returns:
        The kept sentences in their original order (the best sentence hard-truncated when none
        fits whole); ``""`` when ``target_tokens <= 0``. Joining can shift the real token count
        of the result by a token or two from the sum of its sentences, so re-count it when the
        exact size matters.
    """
    sentences = _analyse(text, frozenset(_terms(query)))
    return _extract(sentences, target_tokens)


def _extract(sentences: Sequence[_Sentence], target_tokens: int) -> str:
    if target_tokens <= 0 or not sentences:
        return ""
    ranked = sorted(range(len(sentences)), key=lambda i: (-sentences[i].score, i))
    kept: list[int] = []
    used = 0
    for i in ranked:
        if used + sentences[i].tokens <= target_tokens:
            kept.append(i)
            used += sentences[i].tokens
    if not kept:
        return truncate_to_tokens(sentences[ranked[0]].text, target_tokens)
    kept.sort()
    parts: list[str] = []
    for position, i in enumerate(kept):
        if position:
            previous = kept[position - 1]
            parts.append("\n" if sentences[previous].ends_line else " ")
        parts.append(sentences[i].text)
    return "".join(parts)


class _Compressor:
    """The ladder of steps over one call's items; see the module docstring."""

    def __init__(self, query: str, items: Sequence[ContextItem], max_tokens: int) -> None:
        self.query_terms = frozenset(_terms(query))
        self.max_tokens = max_tokens
        self.states = [self._state(i, item) for i, item in enumerate(items)]
        self.total = sum(s.tokens for s in self.states)

    def _state(self, index: int, item: ContextItem) -> _ItemState:
        tokens = count_tokens(item.content)
        relevance = 0.0
        if self.query_terms and item.importance is not Importance.CRITICAL:
            terms = _terms(item.content)
            hits = len(self.query_terms.intersection(terms))
            density = sum(1 for t in terms if t in self.query_terms) / len(terms) if terms else 0
            relevance = hits / len(self.query_terms) + density
        return _ItemState(index, item, tokens, relevance, content=item.content, tokens=tokens)

    @property
    def fits(self) -> bool:
        return self.total <= self.max_tokens

    def _set(self, state: _ItemState, action: CompressionAction, content: str, tokens: int) -> None:
        self.total += tokens - state.tokens
        state.action, state.content, state.tokens = action, content, tokens

    def _version(self, state: _ItemState, level: CompressionAction) -> tuple[str, int]:
        cached = state.versions.get(level)
        if cached is None:
            if state.sentences is None:
                state.sentences = _analyse(state.item.content, self.query_terms)
            target = math.floor(state.tokens_before * LEVEL_RATIOS[level])
            content = _extract(state.sentences, target)
            cached = (content, count_tokens(content))
            state.versions[level] = cached
        return cached

    def _compress(self, state: _ItemState, level: CompressionAction) -> None:
        content, tokens = self._version(state, level)
        if tokens < state.tokens:
            self._set(state, level, content, tokens)

    def _drop(self, state: _ItemState) -> None:
        kept = state.content
        self._set(state, "dropped", "", 0)
        remaining = self.max_tokens - self.total
        if self.fits and remaining >= MIN_TRUNCATE_TOKENS:
            # This drop is the one that made the total fit, so the item could not fit whole in
            # ``remaining``: keep the prefix of its current text that does.
            content = truncate_to_tokens(kept, remaining)
            self._set(state, "truncated", content, count_tokens(content))

    def run(self) -> None:
        steps: list[tuple[Importance, Callable[[_ItemState], None]]] = [
            (Importance.LOW, lambda s: self._compress(s, "heavy")),
            (Importance.MEDIUM, lambda s: self._compress(s, "medium")),
            (Importance.HIGH, lambda s: self._compress(s, "light")),
            (Importance.LOW, self._drop),
            (Importance.MEDIUM, lambda s: self._compress(s, "heavy")),
            (Importance.MEDIUM, self._drop),
            (Importance.HIGH, lambda s: self._compress(s, "medium")),
            (Importance.HIGH, lambda s: self._compress(s, "heavy")),
            (Importance.HIGH, self._drop),
        ]
        for importance, apply in steps:
            if self.fits:
                return
            # Least relevant first; among equals, later items go first.
            candidates = sorted(
                (s for s in self.states if s.item.importance is importance and s.tokens > 0),
                key=lambda s: (s.relevance, -s.index),
            )
            for state in candidates:
                apply(state)
                if self.fits:
                    return

    def result(self) -> CompressContextResult:
        items = [
            ContextItem(content=s.content, importance=s.item.importance, source=s.item.source)
            for s in self.states
            if s.action != "dropped"
        ]
        report = [
            CompressedItemReport(
                source=s.item.source,
                importance=s.item.importance,
                action=s.action,
                tokens_before=s.tokens_before,
                tokens_after=s.tokens,
            )
            for s in self.states
        ]
        summary = CompressionSummary(
            report=report,
            tokens_before=sum(s.tokens_before for s in self.states),
            tokens_after=self.total,
            max_tokens=self.max_tokens,
        )
        return CompressContextResult(items=items, summary=summary)


def compress_context(
    query: str, items: Sequence[ContextItem], max_tokens: int
) -> CompressContextResult:
    """Fit ``items`` into ``max_tokens`` tokens, compressing and dropping the least important.

    See the module docstring for the contract and the algorithm.

    Args:
        query: the user's question; sentences and items that share its terms are kept longest.
        items: context items with ``content`` resolved (``blob`` is ignored), in prompt order.
        max_tokens: the budget in cl100k_base tokens for all output contents together (>= 0).

    Returns:
        The kept items in input order (``blob=None``), and a summary with one report entry per
        input item, the token totals before (all inputs) and after (outputs) and ``max_tokens``.

    Raises:
        ContextBudgetExceededError: the critical items alone need more than ``max_tokens``
            tokens (non-retryable: the same request always fails).
        ValueError: ``max_tokens`` is negative.
    """
    if max_tokens < 0:
        raise ValueError(f"max_tokens must be >= 0, got {max_tokens}")
    compressor = _Compressor(query, items, max_tokens)
    critical = sum(
        s.tokens_before for s in compressor.states if s.item.importance is Importance.CRITICAL
    )
    if critical > max_tokens:
        raise ContextBudgetExceededError(
            f"critical context items need {critical} tokens but max_tokens is {max_tokens}"
        )
    compressor.run()
    return compressor.result()
