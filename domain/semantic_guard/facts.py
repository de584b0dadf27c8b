"""The guard's facts of a query and their comparison.

:func:`guard_signature` extracts a :class:`QueryFacts` (numbers, operators, units, entities,
negations, directions, content words); :func:`guard_allows` says why two differ, or ``None``
when a cached query may answer the new one. The rules are in :mod:`domain.semantic_guard`.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from domain.semantic_guard.content import content_words
from domain.semantic_guard.tokens import (
    MAX_EMBED_CHARS,
    Token,
    canonical_number,
    is_entity,
    read_number_words,
    split_contraction,
    tokenize,
)
from domain.semantic_guard.vocabulary import (
    AGGREGATES,
    APOSTROPHES,
    DIRECTIONS,
    DIRECTIONS_BEFORE_NUMBER,
    NEGATING_PREFIXES,
    NEGATIONS,
    NON_COMMUTATIVE,
    NUMBER_WORDS,
    ORDINAL_WORDS,
    PHRASES,
    PRONOUN_ONE_AFTER,
    QUOTED,
    SYMBOL_DIRECTIONS,
    SYMBOL_OPERATORS,
    UNITS,
    UNITS_AFTER_NUMBER,
    WORD_OPERATORS,
)


@dataclass(frozen=True, slots=True)
class QueryFacts:
    """What the wrong-hit guard compares, extracted from one query by :func:`guard_signature`.

    Attributes:
        numbers: canonical numbers in order of appearance (``"12"``, ``"-5"``, ``"0.5"``,
            ``"#3"`` for an ordinal).
        operators: operator and aggregate classes (``mul``, ``div``, ``mean``, ...).
        units: canonical units and currencies, first appearances in order.
        entities: case-folded entities (see the module docstring).
        negations: negation classes (``not``, ``never``, ``no``, ``excl``).
        directions: comparison and direction classes (``gt``, ``max``, ``before``, ...).
        words: every case-folded word and identifier of the query (for entity containment).
        truncated: the query was longer than :data:`infra.embeddings.MAX_EMBED_CHARS`.
        content: the content-word sequence (:func:`content_words`).
    """

    numbers: tuple[str, ...] = ()
    operators: frozenset[str] = frozenset()
    units: tuple[str, ...] = ()
    entities: frozenset[str] = frozenset()
    negations: frozenset[str] = frozenset()
    directions: frozenset[str] = frozenset()
    words: frozenset[str] = frozenset()
    truncated: bool = False
    content: tuple[str, ...] = ()


@lru_cache(maxsize=4096)
def guard_signature(query: str) -> QueryFacts:
    """The facts of ``query`` that a semantic hit must share (rules in the module docstring).

    Only the first :data:`infra.embeddings.MAX_EMBED_CHARS` characters are read; a longer
    query is marked ``truncated`` and never passes :func:`guard_allows`.

    Returns:
        The query's :class:`QueryFacts`. Pure and cached (4,096 most recent queries).
    """
    truncated = len(query) > MAX_EMBED_CHARS
    text = unicodedata.normalize("NFKC", query[:MAX_EMBED_CHARS]).translate(APOSTROPHES)
    entities: set[str] = set()
    words: set[str] = set()
    for match in QUOTED.finditer(text):
        quoted = next(g for g in match.groups() if g is not None)
        # Its words, tokenized like the rest of the query so containment compares like with
        # like (numbers, units and URLs inside the quotes have their own rules).
        folded = " ".join(
            split_contraction(token.low)[0] for token in tokenize(quoted) if token.kind == "word"
        )
        if folded:
            entities.add(folded)
    tokens = tokenize(text)

    numbers: list[str] = []
    operators: set[str] = set()
    word_operators: set[str] = set()
    units: list[str] = []
    negations: set[str] = set()
    directions: set[str] = set()

    # Expand contractions and apply phrases on the word sequence, keeping token alignment.
    items: list[tuple[Token, str]] = []
    for token in tokens:
        if token.kind != "word":
            items.append((token, token.low))
            continue
        low, negated = split_contraction(token.low)
        items.append((token, low))
        if negated:
            negations.add("not")
    lows = [low for _, low in items]

    def add_unit(unit: str) -> None:
        if unit and unit not in units:
            units.append(unit)

    i = 0
    while i < len(items):
        token, low = items[i]
        previous = items[i - 1] if i > 0 else None
        following = items[i + 1] if i + 1 < len(items) else None
        if token.kind in ("url", "email", "ident"):
            value = token.raw if token.kind == "url" else token.low
            entities.add(value)
            words.add(value)
        elif token.kind == "num":
            raw = token.low.removesuffix("'s")
            ordinal = raw.endswith(("st", "nd", "rd", "th"))
            raw = raw[:-2] if ordinal else raw
            numbers.append(canonical_number(raw, ordinal))
        elif token.kind == "cur":
            add_unit(UNITS[token.raw])
        elif token.kind == "op":
            symbol = token.raw
            if symbol in SYMBOL_DIRECTIONS:
                directions.add(SYMBOL_DIRECTIONS[symbol])
            elif symbol == "%" and previous is not None and previous[0].kind == "num":
                if following is not None and following[0].kind == "num":
                    operators.add("mod")
                else:
                    add_unit("%")
            elif symbol in SYMBOL_OPERATORS and _between_operands(items, i):
                operators.add(SYMBOL_OPERATORS[symbol])
        elif token.kind == "word":
            phrase = _phrase_at(lows, i)
            if phrase is not None:
                label, length = phrase
                low = label
                i += length - 1
            run = read_number_words(lows, i) if phrase is None else None
            if run is not None and not (
                lows[i] == "one" and run[1] == 1 and i > 0 and lows[i - 1] in PRONOUN_ONE_AFTER
            ):
                amount, consumed = run
                numbers.append(str(amount))
                words.update(lows[i : i + consumed])
                i += consumed
                continue
            after_number = previous is not None and previous[0].kind == "num"
            before_number = following is not None and following[0].kind in ("num", "cur")
            if low == "x" and _between_operands(items, i):
                operators.add("mul")
            elif after_number and low in UNITS_AFTER_NUMBER:
                add_unit(UNITS_AFTER_NUMBER[low])
            elif low in UNITS:
                add_unit(UNITS[low])
            elif low in ORDINAL_WORDS:
                numbers.append(f"#{ORDINAL_WORDS[low]}")
            elif low in NEGATIONS:
                negations.add(NEGATIONS[low])
            elif low in DIRECTIONS_BEFORE_NUMBER:
                if before_number:
                    directions.add(DIRECTIONS_BEFORE_NUMBER[low])
            elif low in DIRECTIONS:
                directions.add(DIRECTIONS[low])
            elif low in AGGREGATES:
                operators.add(AGGREGATES[low])
            elif low in WORD_OPERATORS:
                word_operators.add(WORD_OPERATORS[low])
            elif is_entity(token, low):
                entities.add(low)
            words.add(low)
            if "-" in low or "." in low:
                words.update(part for part in re.split(r"[-.]", low) if part)
        i += 1

    if numbers:
        operators |= word_operators
    for entity in list(entities):
        words.update(entity.split())
    return QueryFacts(
        numbers=tuple(numbers),
        operators=frozenset(operators),
        units=tuple(units),
        entities=frozenset(entities),
        negations=frozenset(negations),
        directions=frozenset(directions),
        words=frozenset(words),
        truncated=truncated,
        content=content_words(query),
    )


def _phrase_at(lows: list[str], i: int) -> tuple[str, int] | None:
    for words, label in PHRASES:
        if tuple(lows[i : i + len(words)]) == words:
            return label, len(words)
    return None


def _between_operands(items: list[tuple[Token, str]], i: int) -> bool:
    """Whether the token at ``i`` stands between two operands (numbers, parentheses)."""
    if i == 0 or i + 1 >= len(items):
        return False
    before, after = items[i - 1][0], items[i + 1][0]
    left = before.kind == "num" or before.raw in (")", "]") or before.low in NUMBER_WORDS
    right = after.kind in ("num", "cur") or after.raw in ("(", "[") or after.low in NUMBER_WORDS
    return left and right


def _differ(label: str, mine: Any, theirs: Any, verb: str = "differ") -> str:
    def show(value: Any) -> str:
        items = list(value) if isinstance(value, tuple) else sorted(value)
        return ", ".join(items) if items else "none"

    return f"{label} {verb}: {show(mine)} vs {show(theirs)}"


def _missing_entities(facts: QueryFacts, other: QueryFacts) -> list[str]:
    return sorted(e for e in facts.entities if not set(e.split()) <= other.words)


def _prefix_negation(facts: QueryFacts, other: QueryFacts) -> str | None:
    for word in sorted(facts.words - other.words):
        for prefix in NEGATING_PREFIXES:
            rest = word[len(prefix) :]
            if word.startswith(prefix) and len(rest) >= 3 and rest in other.words:
                return f"negations differ: {word} vs {rest}"
    return None


def guard_allows(query: QueryFacts, cached: QueryFacts) -> str | None:
    """Whether a cached query's answer may serve ``query`` (symmetric).

    Args:
        query: facts of the new query (:func:`guard_signature`).
        cached: facts of the cached query.

    Returns:
        ``None`` when every rule of the module docstring holds, else the first failed rule as
        a short reason, e.g. ``"numbers differ: 7 vs 8"``.
    """
    if query.truncated or cached.truncated:
        return f"query longer than {MAX_EMBED_CHARS} characters"
    if sorted(query.numbers) != sorted(cached.numbers):
        mine = [n for n in query.numbers if n not in cached.numbers]
        theirs = [n for n in cached.numbers if n not in query.numbers]
        return _differ("numbers", tuple(mine or query.numbers), tuple(theirs or cached.numbers))
    if query.operators != cached.operators:
        return _differ("operators", query.operators, cached.operators)
    if query.numbers != cached.numbers and (query.operators & NON_COMMUTATIVE):
        return _differ("operand order", query.numbers, cached.numbers, "differs")
    if query.units != cached.units:
        return _differ("units", query.units, cached.units)
    missing = _missing_entities(query, cached)
    extra = _missing_entities(cached, query)
    if missing or extra:
        return _differ("entities", tuple(missing), tuple(extra))
    if query.negations != cached.negations:
        return _differ("negations", query.negations, cached.negations)
    prefixed = _prefix_negation(query, cached) or _prefix_negation(cached, query)
    if prefixed is not None:
        return prefixed
    if query.directions != cached.directions:
        return _differ("comparisons", query.directions, cached.directions)
    if not query.content or not cached.content:
        return "no content words to compare"
    if query.content != cached.content:
        return _sequence_difference(query.content, cached.content)
    return None


def _sequence_difference(mine: tuple[str, ...], theirs: tuple[str, ...]) -> str:
    """The content rule's reason, naming only the differing stretch of each sequence.

    ``"word order differs: ..."`` when both hold the same words, else ``"content words differ:
    ..."``; at most eight words of each stretch.
    """
    head = 0
    while head < min(len(mine), len(theirs)) and mine[head] == theirs[head]:
        head += 1
    tail = 0
    while tail < min(len(mine), len(theirs)) - head and mine[-1 - tail] == theirs[-1 - tail]:
        tail += 1
    mine_part = mine[head : len(mine) - tail]
    theirs_part = theirs[head : len(theirs) - tail]

    def show(part: tuple[str, ...]) -> str:
        if not part:
            return "nothing"
        return " ".join(part[:8]) + (" ..." if len(part) > 8 else "")

    label = "word order differs" if sorted(mine) == sorted(theirs) else "content words differ"
    return f"{label}: {show(mine_part)} vs {show(theirs_part)}"
