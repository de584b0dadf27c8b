"""The content-word sequence: what a semantic hit's query must repeat word for word.

The other rules read facts (numbers, entities, negations, ...) as sets, and the lexical
embedding reads a bag of character n-grams: neither sees word order or a changed ordinary
word ("bishop captures knight" and "knight captures bishop" embed to the same row; "inhale"
and "exhale" share most of their n-grams). The content-word sequence is the rule that does:
what is left of a query once only framing, a few function words, casing and punctuation are
taken away must be the same, word for word and in the same order. Anything this code is
unsure of stays in the sequence, so it can only make two queries differ.
"""

from __future__ import annotations

import itertools
import unicodedata
from typing import NamedTuple

from domain.semantic_guard.content_vocabulary import (
    COPULAS,
    EMBEDDING_PHRASES,
    FOR_ME_VERBS,
    FUSED_IS,
    IGNORABLE,
    INTERJECTIONS,
    IS_HOSTS,
    NOT_STEMS,
    OPENING_PHRASES,
    POLITE_MODALS,
    REQUEST_VERBS,
    SEQUENCE_COMPARISONS,
    SEQUENCE_FUNCTION_WORDS,
    SEQUENCE_OPERATORS,
    SEQUENCE_SUFFIXES,
    SEQUENCE_TEXT,
    SEQUENCE_UNIT_ABBREVIATIONS,
    SEQUENCE_UNIT_WORDS,
)
from domain.semantic_guard.tokens import MAX_EMBED_CHARS, Token, tokenize
from domain.semantic_guard.vocabulary import (
    FUNCTION_WORDS,
    KNOWN_NAMES,
    NUMBER_WORDS,
    PRONOUN_ONE_AFTER,
    SYMBOL_OPERATORS,
    WORD_OPERATORS,
)


class _Piece(NamedTuple):
    value: str
    kind: str  # word num op sym cur
    raw: str  # as written (a word before case folding)
    sentence_start: bool = False


def _keeps_case(raw: str, shouted: bool) -> bool:
    """Whether a word is compared as written rather than case-folded.

    camelCase and inner capitals (``getUser``, ``iPhone``, ``macOS``) are identifiers, except
    the well-known technology names people write in any case (``PostgreSQL``, ``JavaScript``);
    an all-caps word that is also a function word (``IT``, ``US``, ``WHO``) is an acronym,
    unless the whole query is written in capitals.
    """
    if any(a.islower() and b.isupper() for a, b in itertools.pairwise(raw)):
        return raw.lower() not in KNOWN_NAMES
    if shouted or len(raw) < 2 or not raw.isupper():
        return False
    return raw.casefold().split("'")[0] in FUNCTION_WORDS


def _expand(word: str) -> list[str]:
    """A lower-cased word with its contraction spelled out.

    ``what's`` -> ``what is``, ``can't`` and ``cannot`` -> ``can not``, ``france's`` ->
    ``france`` (a possessive), ``let's`` -> ``let us``.
    """
    if word == "cannot":
        return ["can", "not"]
    if word == "let's":
        return ["let", "us"]
    if word in FUSED_IS:
        return [word[:-1], "is"]
    for suffix, expansion in SEQUENCE_SUFFIXES:
        if word.endswith(suffix) and len(word) > len(suffix):
            stem = word[: -len(suffix)]
            if suffix == "n't":
                return [NOT_STEMS.get(stem, stem), "not"]
            if suffix == "'s" and stem not in IS_HOSTS:
                return [stem]
            return [stem, expansion]
    return [word]


def _written_number(raw: str) -> str:
    """A numeral as written, without a trailing ``'s`` (``.5`` gains its ``0``).

    ``1,200`` is not folded into ``1200`` (it is 1.2 in much of Europe), nor ``3.10`` into
    ``3.1`` (a Python version).
    """
    text = raw.lower().removesuffix("'s")
    if text.startswith("."):
        return "0" + text
    if text.startswith("-."):
        return "-0" + text[1:]
    return text


def _pieces(text: str) -> list[_Piece]:
    """The query's tokens as pieces, with the symbols between them that mean something."""
    tokens = tokenize(text)
    shouted = not any(ch.islower() for ch in text)
    pieces: list[_Piece] = []

    def gap_symbols(gap: str, glued: bool, after: Token | None) -> None:
        if glued and gap:
            pieces.append(_Piece(gap, "sym", gap))
            return
        for position, ch in enumerate(gap):
            factorial = (
                position == 0
                and ch == "!"
                and after is not None
                and (after.kind == "num" or after.raw == ")")
            )
            if factorial or not (ch.isspace() or ch in IGNORABLE):
                pieces.append(_Piece(ch, "sym", ch))

    previous: Token | None = None
    for token in tokens:
        gap = text[previous.end if previous else 0 : token.start]
        glued = previous is not None and bool(gap) and not any(ch.isspace() for ch in gap)
        gap_symbols(gap, glued, previous)
        raw = token.raw
        if token.kind == "word":
            if _keeps_case(raw, shouted):
                pieces.append(_Piece(raw, "word", raw, token.sentence_start))
            else:
                for n, word in enumerate(_expand(raw.lower())):
                    pieces.append(_Piece(word, "word", raw, token.sentence_start and n == 0))
        elif token.kind == "num":
            pieces.append(_Piece(_written_number(raw), "num", raw))
        elif token.kind == "email":
            pieces.append(_Piece(raw.lower(), "word", raw))
        elif token.kind in ("url", "ident"):
            pieces.append(_Piece(raw, "word", raw))
        elif token.kind == "paren":
            pieces.append(_Piece(raw, "sym", raw))
        else:  # op, cur
            pieces.append(_Piece(raw, token.kind, raw))
        previous = token
    gap_symbols(text[previous.end if previous else 0 :], False, previous)
    return pieces


def _number_word(words: list[str], i: int) -> tuple[int, int] | None:
    """A number written in words at ``words[i]``: (value, words used), or ``None``.

    Only one word (``seven``), or tens and a unit (``twenty-five``, ``twenty five``): longer
    runs stay words, because adding up any run of number words would read "three twenty" and
    "five and six" as 23 and 11.
    """
    word = words[i]
    if word in NUMBER_WORDS:
        value = NUMBER_WORDS[word]
        following = words[i + 1] if i + 1 < len(words) else ""
        if value >= 20 and 0 < NUMBER_WORDS.get(following, 0) < 10:
            return value + NUMBER_WORDS[following], 2
        return value, 1
    tens, _, unit = word.partition("-")
    if NUMBER_WORDS.get(tens, 0) >= 20 and 0 < NUMBER_WORDS.get(unit, 0) < 10:
        return NUMBER_WORDS[tens] + NUMBER_WORDS[unit], 1
    return None


def _operand_before(out: list[_Piece]) -> bool:
    return bool(out) and (out[-1].kind == "num" or out[-1].value in (")", "]"))


def _operand_after(pieces: list[_Piece], i: int) -> bool:
    if i >= len(pieces):
        return False
    piece = pieces[i]
    return piece.kind == "num" or piece.value in ("(", "[") or piece.value in NUMBER_WORDS


def _canonical(pieces: list[_Piece]) -> list[_Piece]:
    """Numbers, operators and units written one way; everything else as it came."""
    out: list[_Piece] = []
    words = [p.value if p.kind == "word" else "" for p in pieces]
    currency: str | None = None
    i = 0
    while i < len(pieces):
        piece = pieces[i]
        value, kind = piece.value, piece.kind
        after_number = bool(out) and out[-1].kind == "num"
        if kind == "word":
            run = _number_word(words, i)
            pronoun = value == "one" and i > 0 and words[i - 1] in PRONOUN_ONE_AFTER
            if run is not None and not pronoun:
                out.append(_Piece(str(run[0]), "num", piece.raw))
                i += run[1]
                continue
            operator = WORD_OPERATORS.get(value)
            if value == "x":
                operator = "mul"
            if operator in SEQUENCE_OPERATORS and _operand_before(out):
                by = value in ("multiplied", "divided") and i + 1 < len(pieces)
                skip = 2 if by and words[i + 1] == "by" else 1
                if _operand_after(pieces, i + skip):
                    out.append(_Piece(SEQUENCE_OPERATORS[operator], "op", piece.raw))
                    i += skip
                    continue
            if after_number and value == "per" and i + 1 < len(pieces) and words[i + 1] == "cent":
                out.append(_Piece("%", "unit", piece.raw))
                i += 2
                continue
            unit = SEQUENCE_UNIT_ABBREVIATIONS.get(piece.raw) or SEQUENCE_UNIT_WORDS.get(value)
            if after_number and unit is not None:
                out.append(_Piece(unit, "unit", piece.raw))
                i += 1
                continue
            out.append(piece)
        elif kind == "cur":
            if i + 1 < len(pieces) and pieces[i + 1].kind == "num":
                currency = SEQUENCE_UNIT_ABBREVIATIONS.get(value, value)
            else:
                out.append(_Piece(value, "sym", value))
        elif kind == "num":
            out.append(piece)
            if currency is not None:
                out.append(_Piece(currency, "unit", currency))
                currency = None
        elif kind == "op":
            symbol = SEQUENCE_COMPARISONS.get(value, value)
            between = _operand_before(out) and _operand_after(pieces, i + 1)
            if symbol == "%" and after_number and not between:
                out.append(_Piece("%", "unit", value))
            elif between and symbol in SYMBOL_OPERATORS:
                out.append(_Piece(SEQUENCE_OPERATORS[SYMBOL_OPERATORS[symbol]], "op", value))
            else:
                out.append(_Piece(symbol, "sym", value))
        else:
            out.append(piece)
        i += 1
    return out


def _is_word(pieces: list[_Piece], i: int, *values: str) -> bool:
    return i < len(pieces) and pieces[i].kind == "word" and pieces[i].value in values


def _strip_framing(pieces: list[_Piece]) -> list[_Piece]:
    """``pieces`` without the request framing at their start.

    Greetings and openers, "could you (please) <request verb>", "tell me", "I'd like to know",
    "do you know", a leading "what is", the "me" of "show me".
    """

    def phrase_at(start: int, phrases: tuple[tuple[str, ...], ...]) -> int:
        for phrase in phrases:
            if all(_is_word(pieces, start + n, word) for n, word in enumerate(phrase)):
                return len(phrase)
        return 0

    start = 0
    embedded = False
    while start < len(pieces):
        if _is_word(pieces, start, *INTERJECTIONS):
            start += 1
            continue
        if _is_word(pieces, start, *POLITE_MODALS) and _is_word(pieces, start + 1, "you"):
            verb = start + 2 + _is_word(pieces, start + 2, "please")
            if _is_word(pieces, verb, *REQUEST_VERBS):
                start = verb
                continue
        if length := phrase_at(start, OPENING_PHRASES):
            start += length
            continue
        if length := phrase_at(start, EMBEDDING_PHRASES):
            start, embedded = start + length, True
            continue
        break
    # "What is the capital of France?" asks what "Tell me the capital of France" asks, and
    # "tell me what the capital of France is" too; "what does X return" keeps its "what".
    if _is_word(pieces, start, "what") and (embedded or _is_word(pieces, start + 1, *COPULAS)):
        start += 1
    if _is_word(pieces, start, *FOR_ME_VERBS) and _is_word(pieces, start + 1, "me"):
        return [pieces[start], *pieces[start + 2 :]]
    return pieces[start:]


def content_words(query: str) -> tuple[str, ...]:
    """The query's content-word sequence: what a semantic hit's query must repeat exactly.

    The text is read as written (its first :data:`infra.embeddings.MAX_EMBED_CHARS`
    characters): Unicode NFC with only full-width ASCII folded, never transliterated (a
    Cyrillic letter is never the Latin one it looks like), lower-cased but not case-folded
    (``Maße`` is not ``Masse``), except identifiers and the acronyms that are also function
    words (``getUser``, ``IT``, ``US``), which keep their case. Then, and only then:

    - contractions are spelled out (``what's`` -> ``what is``, ``can't`` -> ``can not``) and a
      possessive ``'s`` is dropped;
    - request framing at the start is dropped (greetings, "could you (please) <verb>", "tell
      me", "I'd like to know", "do you know", a leading "what is");
    - articles (``a`` only before another word and not as a capital letter mid-sentence),
      ``is``/``are``/``am``/``do``/``does`` and politeness are dropped anywhere;
    - punctuation that only separates (``.,;:!?``, quotes, dashes) is dropped; other symbols
      stay, in place (``C#`` is not ``C``), and so does punctuation glued between two tokens;
    - numbers stay as written (``1,200`` is not ``1200``, ``3.10`` is not ``3.1``), except
      that a number word becomes digits (``seven`` -> ``7``, ``twenty-five`` -> ``25``);
      operators between operands are written one way (``12 times 7`` -> ``12 * 7``); a unit
      right after a number is written one way (``5 kilometres`` -> ``5 km``, ``$20`` -> ``20
      USD``), but only among spellings of the very same unit.

    Every other word stays, in order: word order, tense (``was``, ``did``), modals, pronouns,
    prepositions, negations, every noun, verb, adjective and adverb.

    Returns:
        The sequence; empty when nothing is left (a greeting), which no hit may rely on.
    """
    text = unicodedata.normalize("NFC", query[:MAX_EMBED_CHARS]).translate(SEQUENCE_TEXT)
    pieces = _strip_framing(_canonical(_pieces(text)))
    shouted = not any(ch.islower() for ch in text)
    kept: list[str] = []
    for i, piece in enumerate(pieces):
        if piece.kind == "word":
            value = piece.value
            if value in SEQUENCE_FUNCTION_WORDS:
                continue
            if value == "thank" and _is_word(pieces, i + 1, "you"):
                continue
            if value == "you" and _is_word(pieces, i - 1, "thank"):
                continue
            if value == "a" and (piece.raw == "a" or piece.sentence_start or shouted):
                following = pieces[i + 1] if i + 1 < len(pieces) else None
                if following is not None and following.kind in ("word", "num"):
                    continue
        kept.append(piece.value)
    return tuple(kept)
