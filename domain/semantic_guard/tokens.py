"""How the guard reads a query: the read limit, tokens, numbers, contractions and entities."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import NamedTuple

from domain.semantic_guard.vocabulary import (
    FUNCTION_WORDS,
    KNOWN_NAMES,
    NUMBER_WORDS,
    SCALES,
    SENTENCE_BREAK,
    SENTENCE_OPENERS,
    SUFFIXES,
    TOKEN,
    TRAILING_URL_PUNCTUATION,
)

MAX_EMBED_CHARS = 2000
"""Characters of a query that are read by the guard and embedded (:mod:`infra.embeddings`); the
rest is ignored. The semantic cache neither stores nor looks up longer queries."""


class Token(NamedTuple):
    """One token of a query, as :func:`tokenize` found it."""

    kind: str  # url email ident num word op cur paren
    raw: str
    low: str
    sentence_start: bool
    start: int = 0  # offsets of ``raw`` in the text (a URL's trailing punctuation is outside)
    end: int = 0


def canonical_number(raw: str, ordinal: bool) -> str:
    """``raw`` written one way (``1,200.0`` -> ``1200``, ``-0`` -> ``0``; ``#3`` for an ordinal).

    Returns:
        The canonical number, or ``raw`` without its commas when it is no decimal number.
    """
    text = raw.replace(",", "")
    try:
        value = Decimal(text)
    except InvalidOperation:
        return text
    if value == 0:
        value = Decimal(0)
    canonical = format(value.normalize(), "f")
    return f"#{canonical}" if ordinal else canonical


def tokenize(text: str) -> list[Token]:
    """The URLs, e-mail addresses, identifiers, numbers, words and symbols of ``text``, in order."""
    tokens: list[Token] = []
    previous_end = 0
    for match in TOKEN.finditer(text):
        kind = "num" if match.group("num") is not None else (match.lastgroup or "word")
        raw = match.group(0)
        if kind == "url":
            raw = raw.rstrip(TRAILING_URL_PUNCTUATION)
        gap = text[previous_end : match.start()]
        starts = not tokens or bool(SENTENCE_BREAK.search(gap))
        start = match.start()
        tokens.append(Token(kind, raw, raw.casefold(), starts, start, start + len(raw)))
        previous_end = match.end()
    return tokens


def split_contraction(low: str) -> tuple[str, bool]:
    """``low`` without contraction or possessive suffixes, and whether it carried ``n't``."""
    negated = False
    for suffix in SUFFIXES:
        if low.endswith(suffix) and len(low) > len(suffix):
            if suffix == "n't":
                negated = True
                low = {"ca": "can", "wo": "will", "sha": "shall", "ai": "is"}.get(
                    low[:-3], low[:-3]
                )
            else:
                low = low[: -len(suffix)]
            break
    if low in ("whats", "thats", "hows", "wheres", "whos", "whens", "whys", "heres", "theres"):
        low = low[:-1]
    return low, negated


def read_number_words(words: list[str], start: int) -> tuple[int, int] | None:
    """A run of number words at ``words[start]``: (value, words consumed), or ``None``."""
    total = current = 0
    consumed = 0
    seen = False
    i = start
    while i < len(words):
        word = words[i]
        parts = word.split("-") if "-" in word else [word]
        if not all(p in NUMBER_WORDS or p in SCALES for p in parts):
            if word == "and" and seen and i + 1 < len(words) and words[i + 1] in NUMBER_WORDS:
                i += 1
                consumed += 1
                continue
            break
        for part in parts:
            if part in NUMBER_WORDS:
                current += NUMBER_WORDS[part]
            elif part == "hundred":
                current = (current or 1) * 100
            else:
                total += (current or 1) * SCALES[part]
                current = 0
        seen = True
        i += 1
        consumed += 1
    if not seen:
        return None
    return total + current, consumed


def is_entity(token: Token, low: str) -> bool:
    """Whether ``token`` (case-folded without suffixes: ``low``) names an entity."""
    raw = token.raw
    if low in KNOWN_NAMES:
        return True
    if low in FUNCTION_WORDS:
        return False
    if any(ch.isdigit() for ch in raw) or "_" in raw or "." in raw:
        return True
    if len(raw) >= 2 and raw.isupper():
        return True
    if raw[:1].isupper():
        return not (token.sentence_start and low in SENTENCE_OPENERS)
    return False
