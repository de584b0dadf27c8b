"""The semantic cache level: an earlier answer for a query that asks the same thing in other words.

A lookup embeds the query (:mod:`infra.embeddings`), finds the cached queries of the same
namespace whose cosine similarity is at least the threshold, and returns the response key of the
most similar one that also passes the **wrong-hit guard**. Similarity alone cannot tell "What is
12 * 7?" from "What is 12 * 8?" (one character apart), nor, with the lexical embedding (a bag of
character n-grams and words), "bishop captures knight" from "knight captures bishop" (the same
row) or "inhale" from "exhale"; the guard can. It runs for every embedder, the lexical one and an
OpenAI-compatible embeddings model alike: a real model's vectors put antonyms and swapped roles
close together too.

The level is off by default (``AGENTFLOW_SEMANTIC_CACHE``); a deployment turns it on. With the
guard, the held-out near-miss split (``data/semantic/``, written for the tests and never used to
tune the guard) gets no wrong hit at thresholds 0.85 to 0.95; the price is that only paraphrases
differing in framing, function words, casing and punctuation hit.

The guard's rules (:func:`guard_signature` extracts the facts, :func:`guard_allows` compares
them; both queries are read as written, not as embedded):

- **Content words, in order** (:func:`content_words`): after dropping request framing at the
  start ("could you tell me", "I'd like to know", a leading "what is"), articles, present-tense
  ``is``/``are``/``do``/``does``, politeness, casing (identifiers and acronyms such as ``IT``
  keep theirs) and punctuation that only separates, the two word sequences must be equal.
  Every other difference refuses: an antonym, another entity, a modifier added or dropped, a
  changed tense or modal, words in another order, another script (NFC only, never
  transliterated), a symbol (``C#`` is not ``C``). Numbers stay as written (``3.10`` is not
  ``3.1``); only number words, operator spellings and unit spellings right after a number are
  written one way. A query with no content word left (a greeting) never hits. The rules below
  say why in more detail and also compare what the sequence writes one way.
- **Numbers**: digits and number words, canonical (``12``, ``12.0``, ``twelve`` -> ``12``;
  ``1,200`` -> ``1200``; ``.5`` -> ``0.5``; a leading minus is a sign; ``3rd``, ``third`` ->
  ``#3``). The two multisets must be equal, and in the same order when a non-commutative
  operator (``-``, ``/``, power, ``mod``) is present: "12 - 7" never matches "7 - 12".
- **Operators**: ``*``, the multiplication sign, ``x`` between numbers, ``times``,
  ``multiplied``, ``product`` -> ``mul``; ``+ plus add`` -> ``add``; ``- minus subtract`` ->
  ``sub``; ``/``, the division sign, ``divided``, ``quotient`` -> ``div``; ``** ^ power`` ->
  ``pow``; ``squared``, ``cubed``, ``sqrt``/``root``, ``mod``/``modulo``/``remainder``/``%`` between
  numbers, ``log``, ``sin`` and other functions: counted only when the query holds a number (and a
  symbol only between operands). The aggregates ``average``/``mean``/``avg``, ``median`` and
  ``sum`` count always. The sets must be equal.
- **Units and currencies**: ``km``/``kilometres``, ``mi``/``miles``, ``°C``/``celsius``, ``h``/
  ``hours``, ``GB``, ``%``/``percent``, ``$``/``USD``/``dollars``, ``€``/``EUR``/``euros``, ...
  (one- and two-letter abbreviations only right after a number). The sequences (first
  appearances, in order) must be equal: "5 km to miles" never matches "5 miles to km".
- **Named entities**: capitalized words (not function words; at a sentence start only when not a
  common sentence opener), ALL-CAPS acronyms, quoted strings, identifiers with digits,
  underscores or dots (``Q4``, ``order_items``, ``os.path.join``, ``config.yaml``), dotted or
  dashed number groups (``3.12.1``, ``2024-01-05``), URLs, e-mail addresses, and a short list of
  well-known lowercase technology names (``python``, ``numpy``, ``postgresql``, ...). Each
  entity of either query must occur, case-insensitively, among the other query's words, so a
  casing paraphrase ("france" vs "France") still matches and "Tokyo" never matches "Kyoto".
- **Negations**: ``not``/``n't``/``cannot``, ``never``, ``no``/``none``/``nothing``/``neither``/
  ``nor``, ``without``/``except``/``excluding``/``outside``/``other than`` (and ``nicht``,
  ``kein``, ``pas``, ``jamais``, ``sans``, ``ohne``, ``nunca``, ``niet``, ``geen``, ...). The
  sets must be equal. A word in one query that is another word of the other query with a
  negating prefix (``unpaid``/``paid``, ``inactive``/``active``, ``non-null``/``null``) is a
  negation difference too.
- **Comparisons and directions**: more/less (``over``/``under``/``above``/``below`` before a
  number), at least/at most, max/min (``largest``, ``cheapest``, ``top``, ``bottom``, ...),
  first/last (``oldest``, ``newest``, ``most recent``), before/after, ascending/descending,
  increase/decrease (``up``/``down``), older/younger, today/yesterday/tomorrow, true/false,
  enabled/disabled, success/failure, ``<``, ``>``, ``<=``, ``>=``. The sets must be equal.
- A query longer than :data:`infra.embeddings.MAX_EMBED_CHARS` characters is neither stored
  nor matched: the guard reads only that much, so two long queries that differ later could
  otherwise pass.

The guard errs on the side of a miss: "What is the capital of France?", "what's the capital of
france" and "Tell me the capital of France" hit one another; "Convert 5 km to miles" and
"convert 5 kilometres to miles" too; a synonym ("purchase" for "buy"), a reordering or "WWII"
for "World War II" does not.

Storage, shared by every worker and API process through Redis: one Redis stream per namespace
(``agentflow:cache:semantic:v1:<sha256 of embedder name and namespace>``), one entry per stored
query (one packed field: expiry in ms, float32 vector, response key, query, namespace), trimmed
to exactly ``max_entries`` by ``XADD MAXLEN`` and expiring as a whole after the longest TTL of
its entries (a small Lua script, so it works on Redis 6.2). Each process keeps a numpy copy per
namespace and reads only entries newer than the last one it saw, 256 per ``XRANGE``, each page
with ``XLEN`` in the same ``MULTI``: streams are trimmed from the oldest end, so once a page
reaches the end the local copy keeps its newest ``XLEN`` rows. Entries past their expiry never
match and are dropped. A stream deleted and re-created is picked up the same way.

Size limits: nearest neighbours are a brute-force float32 matrix-vector product, exact and
without an index, meant for at most 20,000 rows per namespace (``semantic_cache_max_entries``'s
upper bound). A lexical row is 4 KiB: 2,000 rows are 8 MiB per namespace in each process that
looks it up and about 9 MiB in Redis (20,000 rows: about 80 and 88 MiB). The product runs in the
event loop up to :data:`INLINE_SEARCH_MAX_FLOATS` elements (2,048 lexical rows), in a worker
thread above. The first lookup of a namespace in a process reads the whole stream: with
redis-py's pure-Python parser about 0.3 s for 2,000 rows and 3.5 s for 20,000 on the
benchmark's busy 2-core machine (``hiredis`` parses several times faster). Each process holds
at most ``max_namespaces`` namespaces and ``max_local_bytes`` of vectors (least recently used
evicted first; the namespace in use stays even if it alone is larger). Every stream expires;
the level's total across namespaces is bounded by Redis's ``maxmemory`` policy, not by this module.

A cache never fails a job: every ``RedisError`` or ``OSError`` is a miss (``degraded=True``),
and after one a breaker answers misses at once for ``breaker_cooldown_s``. An embedder failure
is a miss too. The client must return bytes (``decode_responses=False``, as
:class:`infra.cache.RedisCache` builds it); retries off and short timeouts keep a down Redis fast.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import re
import struct
import time
import unicodedata
from collections import OrderedDict
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any, NamedTuple

import numpy as np
from redis.asyncio import Redis
from redis.exceptions import RedisError

from core.errors import ModelError
from infra.embeddings import MAX_EMBED_CHARS, Embedder, Vectors

logger = logging.getLogger(__name__)

SEMANTIC_KEY_PREFIX = "agentflow:cache:semantic:v1:"
"""Prefix of the per-namespace streams; bump the version when the entry layout changes."""

INLINE_SEARCH_MAX_FLOATS = 2**21
"""A search over more matrix elements than this (8 MiB of float32, about a millisecond) runs in
a worker thread instead of the event loop."""

SYNC_PAGE_ENTRIES = 256
"""Entries read per ``XRANGE`` (1 MiB of lexical vectors): a process that loads a large
namespace reads it in pages, so Redis never builds one huge reply that would stall its other
clients."""

MAX_CANDIDATES = 16
"""Most rows above the threshold that the guard examines per lookup (most similar first)."""

# --------------------------------------------------------------------------- the guard


def _words(text: str) -> list[str]:
    """The whitespace-separated words of ``text`` (keeps the long word tables compact)."""
    return text.split()


_FUNCTION_WORDS = frozenset(
    _words(
        """a an the this that these those some any each every all both either no of in on at to
        for from by with about as into onto over under between among through during before
        after above below up down out off than then and or but nor so if whether because while
        when where why how what which who whom whose is are was were be been being am do does
        did done has have had having will would shall should can could may might must i me my
        mine we us our you your he him his she her it its they them their there here not please
        yes ok okay hi hello hey thanks per via vs versus"""
    )
)
"""Words that are never entities, even capitalized (title case, all caps)."""

_SENTENCE_OPENERS = frozenset(
    _words(
        """show list give tell find get count sum sort compute calculate convert explain
        describe summarize summarise fetch open send select delete remove archive add multiply
        divide subtract round write create make read print run use check return display search
        look help define compare translate generate build update insert set fix name total let
        given assume suppose consider quick just so also now next why is are does do can could
        would should will please kindly hey hi hello thanks ok okay"""
    )
)
"""Common first words of a request: capitalized at a sentence start, they are not entities."""

_KNOWN_NAMES = frozenset(
    _words(
        """python java javascript typescript ruby rust golang kotlin scala perl php haskell
        elixir erlang clojure lua bash powershell matlab fortran cobol sql nosql postgresql
        postgres mysql sqlite mariadb mongodb redis cassandra dynamodb elasticsearch kafka
        rabbitmq docker kubernetes k8s linux windows macos ubuntu debian fedora android ios numpy
        pandas scipy matplotlib sklearn scikit-learn pytorch torch tensorflow keras django flask
        fastapi requests httpx aiohttp asyncio pydantic sqlalchemy celery temporal react vue
        angular svelte nodejs node deno npm pip conda poetry git github gitlab aws azure gcp json
        yaml toml csv xml html css http https tcp udp ip dns ssh tls ssl graphql grpc rest oauth
        jwt"""
    )
)
"""Technology names people often write in lower case; always entities."""


def _classes(table: dict[str, str]) -> dict[str, str]:
    """``{"class": "word word ..."}`` turned into ``{"word": "class", ...}``."""
    return {word: label for label, text in table.items() for word in _words(text)}


_NEGATIONS = _classes(
    {
        # "ne" is French ("ne ... pas"), "othersthan" the phrase "other than".
        "not": "not cannot nicht pas non niet não nao ne",
        "never": "never jamais nie niemals nunca nooit",
        "no": """no none nothing nobody noone nowhere neither nor kein keine keinen keinem keiner
            keines aucun aucune rien nada ninguno ninguna ningún nessuno geen""",
        "excl": """without except excluding exclude excludes excluded outside ohne sans senza
            zonder othersthan""",
    }
)
"""Negation word -> its class; ``n't`` counts as ``not``."""

_NEGATING_PREFIXES = ("non-", "non", "un", "in", "im", "il", "ir", "dis")

_DIRECTIONS = _classes(
    {
        "gt": "more greater larger bigger higher exceeds exceed exceeding exceeded",
        "lt": "less fewer smaller lower",
        "ge": "atleast",
        "le": "atmost",
        "max": """most max maximum maximal maximize maximise largest biggest highest greatest top
            best priciest costliest longest tallest heaviest fastest deepest widest""",
        "min": """least min minimum minimal minimize minimise smallest lowest fewest bottom worst
            cheapest shortest lightest slowest shallowest narrowest""",
        "first": "first earliest oldest initial",
        "last": "last latest newest recent mostrecent final youngest",
        "before": "before earlier prior previous preceding until till",
        "after": "after later since next following subsequent upcoming",
        "asc": "ascending asc increasing",
        "desc": "descending desc decreasing",
        "inc": """increase increased increases raise raised grow grows grew growth rise rises rose
            up""",
        "dec": """decrease decreased decreases reduce reduced reduces reduction shrink shrank drop
            dropped decline declined fall fell down""",
        "older": "older elder",
        "younger": "younger",
        "today": "today",
        "yesterday": "yesterday",
        "tomorrow": "tomorrow",
        "tonight": "tonight",
        "true": "true",
        "false": "false",
        "out": "out",
        "enabled": "enable enabled enabling",
        "disabled": "disable disabled disabling",
        "success": "success successful succeeded succeed passed",
        "failure": "fail failed failure failures failing",
        "accept": "accept accepted approve approved allow allowed",
        "reject": "reject rejected deny denied block blocked",
    }
)
"""Comparison or direction word -> its class."""

_DIRECTIONS_BEFORE_NUMBER = _classes({"gt": "over above", "lt": "under below beneath"})
"""Words that compare only when a number (or currency sign) follows: "over $20", "under 5"."""

_SYMBOL_DIRECTIONS = {">": "gt", "<": "lt", ">=": "ge", "<=": "le", "\u2265": "ge", "\u2264": "le"}

_WORD_OPERATORS = _classes(
    {
        "mul": "times multiplied multiply multiplying product",
        "add": "plus add added adding",
        "sub": "minus subtract subtracted subtracting",
        "div": "divided divide dividing quotient",
        "pow": "power exponent",
        "square": "squared",
        "cube": "cubed",
        "root": "sqrt root squareroot",
        "mod": "mod modulo modulus remainder",
        "log": "log logarithm",
        "abs": "abs absolute",
        **{name: name for name in _words("factorial ln exp sin cos tan floor ceil")},
    }
)
"""Operator words, counted when the query holds a number."""

_AGGREGATES = _classes({"mean": "average mean avg", "median": "median", "sum": "sum"})
"""Aggregates, counted always ("average order value" vs "median order value")."""

_SYMBOL_OPERATORS = {
    "*": "mul",
    "\u00d7": "mul",  # multiplication sign
    "\u00b7": "mul",  # middle dot
    "x": "mul",
    "/": "div",
    "\u00f7": "div",  # division sign
    "+": "add",
    "-": "sub",
    "\u2212": "sub",  # minus sign
    "**": "pow",
    "^": "pow",
    "%": "mod",
}
"""Symbols (and ``x``) that are operators when they stand between two operands."""

_NON_COMMUTATIVE = frozenset({"sub", "div", "pow", "mod"})

_UNITS = _classes(
    {
        "km": "km kilometer kilometers kilometre kilometres",
        "m": "meter meters metre metres",
        "cm": "cm centimeter centimeters centimetre centimetres",
        "mm": "mm millimeter millimeters millimetre millimetres",
        "mi": "mile miles",
        "ft": "ft foot feet",
        "inch": "inch inches",
        "yd": "yard yards yd yds",
        "kg": "kg kilogram kilograms kilo kilos",
        "g": "gram grams gramme grammes",
        "mg": "mg milligram milligrams",
        "lb": "lb lbs pound pounds",
        "oz": "oz ounce ounces",
        "t": "ton tons tonne tonnes",
        "l": "liter liters litre litres",
        "ml": "ml milliliter milliliters millilitre millilitres",
        "gal": "gallon gallons gal",
        "qt": "quart quarts qt",
        "pt": "pint pints",
        "cup": "cup cups",
        "degC": "celsius centigrade °c",
        "degF": "fahrenheit °f",
        "K": "kelvin",
        "deg": "degree degrees",
        "rad": "radian radians rad",
        "ms": "millisecond milliseconds",
        "s": "seconds sec secs",
        "min": "minute minutes mins",
        "h": "hour hours hr hrs",
        "day": "day days",
        "week": "week weeks wk",
        "month": "month months",
        "year": "year years yr yrs",
        "decade": "decade decades",
        "century": "century centuries",
        "bit": "bit bits",
        "B": "byte bytes",
        "kB": "kb kilobyte kilobytes",
        "MB": "mb megabyte megabytes",
        "GB": "gb gigabyte gigabytes",
        "TB": "tb terabyte terabytes",
        "KiB": "kib",
        "MiB": "mib",
        "GiB": "gib",
        "TiB": "tib",
        "mph": "mph",
        "kmh": "kph kmh",
        "knot": "knot knots",
        "W": "watt watts",
        "kW": "kw",
        "kWh": "kwh",
        "V": "volt volts",
        "Hz": "hz",
        "kHz": "khz",
        "MHz": "mhz",
        "GHz": "ghz",
        "%": "percent pct percentage",
        "USD": "$ usd dollar dollars buck bucks",
        "EUR": "€ eur euro euros",
        "GBP": "£ gbp sterling",
        "JPY": "¥ jpy yen",
        "INR": "₹ inr rupee rupees",
        "CHF": "chf franc francs",
        "CAD": "cad",
        "AUD": "aud",
        "CNY": "cny rmb yuan",
        "BTC": "btc bitcoin bitcoins",
        "ETH": "eth",
    }
)
"""Unit or currency word (case-folded) -> canonical unit."""

_UNITS_AFTER_NUMBER = _classes(
    {
        "m": "m",
        "s": "s second",
        "h": "h",
        "g": "g",
        "l": "l",
        "t": "t",
        "degC": "c",
        "degF": "f",
        "K": "k",
        "B": "b",
        "mi": "mi",
        "min": "min",
        "pt": "pt",
        "day": "d",
        "W": "w",
        "V": "v",
    }
)
"""Abbreviations that are units only right after a number ("5 m", "10 min"); "in" never is
("0.2 in Python")."""

_NUMBER_WORDS: dict[str, int] = {
    **{
        word: value
        for value, word in enumerate(
            _words(
                """zero one two three four five six seven eight nine ten eleven twelve thirteen
                fourteen fifteen sixteen seventeen eighteen nineteen"""
            )
        )
    },
    **{
        word: 10 * (i + 2)
        for i, word in enumerate(_words("twenty thirty forty fifty sixty seventy eighty ninety"))
    },
}
_SCALES = {"hundred": 100, "thousand": 10**3, "million": 10**6, "billion": 10**9}
_ORDINAL_WORDS = {
    word: i + 2
    for i, word in enumerate(_words("second third fourth fifth sixth seventh eighth ninth tenth"))
}
_PRONOUN_ONE_AFTER = frozenset(_words("the which this that any each every no some another one"))

_PHRASES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("no", "more", "than"), "atmost"),
    (("not", "more", "than"), "atmost"),
    (("no", "less", "than"), "atleast"),
    (("no", "fewer", "than"), "atleast"),
    (("not", "less", "than"), "atleast"),
    (("at", "least"), "atleast"),
    (("at", "most"), "atmost"),
    (("most", "recent"), "mostrecent"),
    (("square", "root"), "squareroot"),
    (("per", "cent"), "percent"),
    (("other", "than"), "othersthan"),
)
"""Multi-word expressions read as one word (longest first where they overlap)."""

_TOKEN = re.compile(
    r"""
    (?P<url>\b(?:https?|ftp)://[^\s<>"'`]+|\bwww\.[^\s<>"'`]+)
  | (?P<email>\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+)
  | (?P<ident>\b\d+(?:[.:-]\d+){2,}\b)
  | (?P<num>(?:(?<![\w)\].])-)?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?(?:st|nd|rd|th)?
            |(?<![\w.])\.\d+)(?:'s\b)?
  | (?P<word>°[cf]\b|[^\W\d_]\w*(?:['.-]\w+)*|_+\w*(?:\.\w+)*)
  | (?P<op>\*\*|<=|>=|!=|==|[*\u00d7\u00b7/\u00f7+^%=<>\u2264\u2265\u2212-])
  | (?P<cur>[$€£¥₹])
  | (?P<paren>[()\[\]])
    """,
    re.VERBOSE,
)
_QUOTED = re.compile(
    r"\"([^\"]{1,200})\"|“([^”]{1,200})”|`([^`]{1,200})`|(?<!\w)'([^']{1,200})'(?!\w)"
)
_SENTENCE_BREAK = re.compile(r"[.!?:;\n]")
_TRAILING_URL_PUNCTUATION = ".,;:!?)]}'\""
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'"})
_SUFFIXES = ("n't", "'s", "'re", "'ve", "'ll", "'d", "'m")


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


class _Token(NamedTuple):
    kind: str  # url email ident num word op cur paren
    raw: str
    low: str
    sentence_start: bool
    start: int = 0  # offsets of ``raw`` in the text (a URL's trailing punctuation is outside)
    end: int = 0


def _canonical_number(raw: str, ordinal: bool) -> str:
    text = raw.replace(",", "")
    try:
        value = Decimal(text)
    except InvalidOperation:
        return text
    if value == 0:
        value = Decimal(0)
    canonical = format(value.normalize(), "f")
    return f"#{canonical}" if ordinal else canonical


def _tokens(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    previous_end = 0
    for match in _TOKEN.finditer(text):
        kind = "num" if match.group("num") is not None else (match.lastgroup or "word")
        raw = match.group(0)
        if kind == "url":
            raw = raw.rstrip(_TRAILING_URL_PUNCTUATION)
        gap = text[previous_end : match.start()]
        starts = not tokens or bool(_SENTENCE_BREAK.search(gap))
        start = match.start()
        tokens.append(_Token(kind, raw, raw.casefold(), starts, start, start + len(raw)))
        previous_end = match.end()
    return tokens


def _split_word(low: str) -> tuple[str, bool]:
    """``low`` without contraction or possessive suffixes, and whether it carried ``n't``."""
    negated = False
    for suffix in _SUFFIXES:
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


def _number_words(words: list[str], start: int) -> tuple[int, int] | None:
    """A run of number words at ``words[start]``: (value, words consumed), or ``None``."""
    total = current = 0
    consumed = 0
    seen = False
    i = start
    while i < len(words):
        word = words[i]
        parts = word.split("-") if "-" in word else [word]
        if not all(p in _NUMBER_WORDS or p in _SCALES for p in parts):
            if word == "and" and seen and i + 1 < len(words) and words[i + 1] in _NUMBER_WORDS:
                i += 1
                consumed += 1
                continue
            break
        for part in parts:
            if part in _NUMBER_WORDS:
                current += _NUMBER_WORDS[part]
            elif part == "hundred":
                current = (current or 1) * 100
            else:
                total += (current or 1) * _SCALES[part]
                current = 0
        seen = True
        i += 1
        consumed += 1
    if not seen:
        return None
    return total + current, consumed


def _is_entity(token: _Token, low: str) -> bool:
    raw = token.raw
    if low in _KNOWN_NAMES:
        return True
    if low in _FUNCTION_WORDS:
        return False
    if any(ch.isdigit() for ch in raw) or "_" in raw or "." in raw:
        return True
    if len(raw) >= 2 and raw.isupper():
        return True
    if raw[:1].isupper():
        return not (token.sentence_start and low in _SENTENCE_OPENERS)
    return False


# --------------------------------------------------------------------------- content words

# The rules above read facts (numbers, entities, negations, ...) as sets, and the lexical
# embedding reads a bag of character n-grams: neither sees word order or a changed ordinary
# word ("bishop captures knight" and "knight captures bishop" embed to the same row; "inhale"
# and "exhale" share most of their n-grams). The content-word sequence is the rule that does:
# what is left of a query once only framing, a few function words, casing and punctuation are
# taken away must be the same, word for word and in the same order. Anything this code is
# unsure of stays in the sequence, so it can only make two queries differ.

_SEQUENCE_FUNCTION_WORDS = frozenset(
    _words("the an is are am do does please kindly pls plz thanks thx")
)
"""Dropped anywhere: articles, present-tense ``be`` and ``do`` (the tense of ``was``, ``did``,
``will`` and every modal stays), politeness. ``a`` is dropped only as an article (see
:func:`content_words`): "vitamin A" keeps it."""

_INTERJECTIONS = frozenset(_words("hi hello hey please kindly ok okay so"))
"""Dropped at the start of a query only ("so" means something later on)."""

_OPENING_PHRASES: tuple[tuple[str, ...], ...] = tuple(
    tuple(_words(phrase))
    for phrase in ("quick question", "just wondering", "hi there", "hello there", "hey there")
)
"""Openers dropped at the start of a query."""

_EMBEDDING_PHRASES: tuple[tuple[str, ...], ...] = tuple(
    tuple(_words(phrase))
    for phrase in (
        "i was wondering",
        "i wonder",
        "i want to know",
        "i would like to know",
        "i need to know",
        "do you know",
        "does anyone know",
        "tell me",
        "let me know",
    )
)
"""Framing dropped at the start of a query that embeds the question after it: "tell me what
the capital of France is" asks "what is the capital of France"."""

_FOR_ME_VERBS = frozenset(_words("show give find"))
"""Request verbs whose "me" right after them names the asker: "show me the orders" asks
"show the orders"."""

_POLITE_MODALS = frozenset(_words("can could would will"))
"""``<modal> you`` is framing when a request verb follows ("could you explain", "can you tell
me"); "can you swim" keeps it."""

_REQUEST_VERBS = frozenset(
    _words(
        """tell explain show give list describe write find calculate compute summarize summarise
        translate define help check convert name suggest let"""
    )
)

_COPULAS = frozenset(_words("is are"))

_IS_HOSTS = frozenset(_words("what who where when how why that there here it he she this"))
"""Words after which ``'s`` is ``is`` ("what's"); after any other word it is a possessive."""

_NOT_STEMS = {"ca": "can", "wo": "will", "sha": "shall", "ai": "is"}
_SEQUENCE_SUFFIXES = (
    ("n't", "not"),
    ("'re", "are"),
    ("'ve", "have"),
    ("'ll", "will"),
    ("'d", "would"),
    ("'m", "am"),
    ("'s", "is"),
)
_FUSED_IS = frozenset(_words("whats thats hows wheres whos whens whys heres theres"))

_SEQUENCE_TEXT: dict[int, str | int] = {
    **{code: code - 0xFEE0 for code in range(0xFF01, 0xFF5F)},  # full-width ASCII
    0x3000: " ",  # ideographic space
    0x2019: "'",
    0x2018: "'",
}
"""The only folding applied before the sequence is read (NFKC would turn ``2³`` into ``23``)."""

_IGNORABLE = frozenset(
    ".,;:!?\"'`"
    "\u00b4\u00bf\u00a1\u2026"  # acute accent, inverted ? and !, ellipsis
    "\u201c\u201d\u2018\u2019\u201e\u201a\u00ab\u00bb\u2039\u203a"  # quotation marks
    "\u2013\u2014"  # en and em dash (not "-": an operator)
    "\u3001\u3002\uff0c\uff0e\uff01\uff1f\uff1a\uff1b"  # CJK and full-width , . ! ? : ;
    "\u300c\u300d\u300e\u300f\u3010\u3011\u300a\u300b\u3008\u3009"  # CJK brackets
    "\u060c\u061b\u061f"  # Arabic comma, semicolon, question mark
    "\u0964\u0965"  # Devanagari danda and double danda
)
"""Punctuation that only separates or ends: dropped when it stands next to whitespace or at an
end. Every other symbol (``#``, ``&``, ``@``, ``{``, ``°``, combining marks, ...) is kept, and
so is any punctuation glued between two tokens ("1,5", "a:b")."""

_SEQUENCE_OPERATORS = {
    "mul": "*",
    "div": "/",
    "add": "+",
    "sub": "-",
    "pow": "^",
    "mod": "mod",
}
"""Operator classes as written in the sequence: ``12 * 7``, ``12 x 7`` and ``12 times 7`` are
one sequence; ``15 % 200`` (modulo) is not ``15%`` (percent)."""

_SEQUENCE_COMPARISONS = {"\u2265": ">=", "\u2264": "<="}

_SEQUENCE_UNIT_WORDS = _classes(
    {
        "km": "kilometer kilometers kilometre kilometres",
        "m": "meter meters metre metres",
        "cm": "centimeter centimeters centimetre centimetres",
        "mm": "millimeter millimeters millimetre millimetres",
        "mi": "mile miles",
        "ft": "foot feet",
        "inch": "inch inches",
        "yd": "yard yards",
        "kg": "kilogram kilograms kilo kilos",
        "g": "gram grams gramme grammes",
        "mg": "milligram milligrams",
        "oz": "ounce ounces",
        "t": "tonne tonnes",
        "ton": "ton tons",
        "l": "liter liters litre litres",
        "ml": "milliliter milliliters millilitre millilitres",
        "gal": "gallon gallons",
        "ms": "millisecond milliseconds",
        "s": "second seconds",
        "min": "minute minutes",
        "h": "hour hours",
        "day": "day days",
        "week": "week weeks",
        "month": "month months",
        "year": "year years",
        "%": "percent",
        "degC": "celsius centigrade",
        "degF": "fahrenheit",
        "K": "kelvin kelvins",
        "B": "byte bytes",
        "kB": "kilobyte kilobytes",
        "MB": "megabyte megabytes",
        "GB": "gigabyte gigabytes",
        "TB": "terabyte terabytes",
        "bit": "bit bits",
        "Mbit": "megabit megabits",
        "Gbit": "gigabit gigabits",
        "W": "watt watts",
        "kW": "kilowatt kilowatts",
        "V": "volt volts",
        "Hz": "hertz",
        "USD": "dollar dollars",
        "EUR": "euro euros",
        "JPY": "yen",
        "CNY": "yuan renminbi",
        "BTC": "bitcoin bitcoins",
    }
)
"""Unit words (case-folded) right after a number -> unit: only spellings of one and the same
unit. Ambiguous words stay as written: "pound" (lb or GBP), "rupee", "franc", "buck"; a ton is
not a tonne."""

_SEQUENCE_UNIT_ABBREVIATIONS = _classes(
    {
        "km": "km",
        "cm": "cm",
        "mm": "mm",
        "mi": "mi",
        "ft": "ft",
        "yd": "yd yds",
        "kg": "kg",
        "g": "g",
        "mg": "mg",
        "lb": "lb lbs",
        "oz": "oz",
        "l": "l L",
        "ml": "ml mL",
        "gal": "gal",
        "ms": "ms",
        "s": "sec secs",
        "min": "min mins",
        "h": "h hr hrs",
        "year": "yr yrs",
        "degC": "°C °c",
        "degF": "°F °f",
        "kB": "kB KB",
        "MB": "MB",
        "GB": "GB",
        "TB": "TB",
        "KiB": "KiB",
        "MiB": "MiB",
        "GiB": "GiB",
        "TiB": "TiB",
        "Mbit": "Mb Mbit",
        "Gbit": "Gb Gbit",
        "W": "W",
        "kW": "kW",
        "kWh": "kWh",
        "V": "V",
        "Hz": "Hz",
        "kHz": "kHz",
        "MHz": "MHz",
        "GHz": "GHz",
        "mph": "mph",
        "USD": "USD usd $",
        "EUR": "EUR eur €",
        "GBP": "GBP gbp £",
        "INR": "INR inr ₹",
        "CNY": "CNY cny RMB rmb",
        "CHF": "CHF chf",
        "BTC": "BTC btc",
    }
)
"""Unit abbreviations and currency signs as written (case matters: ``Mb`` is a megabit, ``MB``
a megabyte) -> unit. Letters that also mean something else after a number are left out:
``m`` (metre, minute, million), ``s``, ``t``, ``d``, ``K``, ``B``; so is ``¥`` (yen or yuan)."""


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
        return raw.lower() not in _KNOWN_NAMES
    if shouted or len(raw) < 2 or not raw.isupper():
        return False
    return raw.casefold().split("'")[0] in _FUNCTION_WORDS


def _expand(word: str) -> list[str]:
    """A lower-cased word with its contraction spelled out.

    ``what's`` -> ``what is``, ``can't`` and ``cannot`` -> ``can not``, ``france's`` ->
    ``france`` (a possessive), ``let's`` -> ``let us``.
    """
    if word == "cannot":
        return ["can", "not"]
    if word == "let's":
        return ["let", "us"]
    if word in _FUSED_IS:
        return [word[:-1], "is"]
    for suffix, expansion in _SEQUENCE_SUFFIXES:
        if word.endswith(suffix) and len(word) > len(suffix):
            stem = word[: -len(suffix)]
            if suffix == "n't":
                return [_NOT_STEMS.get(stem, stem), "not"]
            if suffix == "'s" and stem not in _IS_HOSTS:
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
    tokens = _tokens(text)
    shouted = not any(ch.islower() for ch in text)
    pieces: list[_Piece] = []

    def gap_symbols(gap: str, glued: bool, after: _Token | None) -> None:
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
            if factorial or not (ch.isspace() or ch in _IGNORABLE):
                pieces.append(_Piece(ch, "sym", ch))

    previous: _Token | None = None
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
    if word in _NUMBER_WORDS:
        value = _NUMBER_WORDS[word]
        following = words[i + 1] if i + 1 < len(words) else ""
        if value >= 20 and 0 < _NUMBER_WORDS.get(following, 0) < 10:
            return value + _NUMBER_WORDS[following], 2
        return value, 1
    tens, _, unit = word.partition("-")
    if _NUMBER_WORDS.get(tens, 0) >= 20 and 0 < _NUMBER_WORDS.get(unit, 0) < 10:
        return _NUMBER_WORDS[tens] + _NUMBER_WORDS[unit], 1
    return None


def _operand_before(out: list[_Piece]) -> bool:
    return bool(out) and (out[-1].kind == "num" or out[-1].value in (")", "]"))


def _operand_after(pieces: list[_Piece], i: int) -> bool:
    if i >= len(pieces):
        return False
    piece = pieces[i]
    return piece.kind == "num" or piece.value in ("(", "[") or piece.value in _NUMBER_WORDS


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
            pronoun = value == "one" and i > 0 and words[i - 1] in _PRONOUN_ONE_AFTER
            if run is not None and not pronoun:
                out.append(_Piece(str(run[0]), "num", piece.raw))
                i += run[1]
                continue
            operator = _WORD_OPERATORS.get(value)
            if value == "x":
                operator = "mul"
            if operator in _SEQUENCE_OPERATORS and _operand_before(out):
                by = value in ("multiplied", "divided") and i + 1 < len(pieces)
                skip = 2 if by and words[i + 1] == "by" else 1
                if _operand_after(pieces, i + skip):
                    out.append(_Piece(_SEQUENCE_OPERATORS[operator], "op", piece.raw))
                    i += skip
                    continue
            if after_number and value == "per" and i + 1 < len(pieces) and words[i + 1] == "cent":
                out.append(_Piece("%", "unit", piece.raw))
                i += 2
                continue
            unit = _SEQUENCE_UNIT_ABBREVIATIONS.get(piece.raw) or _SEQUENCE_UNIT_WORDS.get(value)
            if after_number and unit is not None:
                out.append(_Piece(unit, "unit", piece.raw))
                i += 1
                continue
            out.append(piece)
        elif kind == "cur":
            if i + 1 < len(pieces) and pieces[i + 1].kind == "num":
                currency = _SEQUENCE_UNIT_ABBREVIATIONS.get(value, value)
            else:
                out.append(_Piece(value, "sym", value))
        elif kind == "num":
            out.append(piece)
            if currency is not None:
                out.append(_Piece(currency, "unit", currency))
                currency = None
        elif kind == "op":
            symbol = _SEQUENCE_COMPARISONS.get(value, value)
            between = _operand_before(out) and _operand_after(pieces, i + 1)
            if symbol == "%" and after_number and not between:
                out.append(_Piece("%", "unit", value))
            elif between and symbol in _SYMBOL_OPERATORS:
                out.append(_Piece(_SEQUENCE_OPERATORS[_SYMBOL_OPERATORS[symbol]], "op", value))
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
        if _is_word(pieces, start, *_INTERJECTIONS):
            start += 1
            continue
        if _is_word(pieces, start, *_POLITE_MODALS) and _is_word(pieces, start + 1, "you"):
            verb = start + 2 + _is_word(pieces, start + 2, "please")
            if _is_word(pieces, verb, *_REQUEST_VERBS):
                start = verb
                continue
        if length := phrase_at(start, _OPENING_PHRASES):
            start += length
            continue
        if length := phrase_at(start, _EMBEDDING_PHRASES):
            start, embedded = start + length, True
            continue
        break
    # "What is the capital of France?" asks what "Tell me the capital of France" asks, and
    # "tell me what the capital of France is" too; "what does X return" keeps its "what".
    if _is_word(pieces, start, "what") and (embedded or _is_word(pieces, start + 1, *_COPULAS)):
        start += 1
    if _is_word(pieces, start, *_FOR_ME_VERBS) and _is_word(pieces, start + 1, "me"):
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
    text = unicodedata.normalize("NFC", query[:MAX_EMBED_CHARS]).translate(_SEQUENCE_TEXT)
    pieces = _strip_framing(_canonical(_pieces(text)))
    shouted = not any(ch.islower() for ch in text)
    kept: list[str] = []
    for i, piece in enumerate(pieces):
        if piece.kind == "word":
            value = piece.value
            if value in _SEQUENCE_FUNCTION_WORDS:
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


@lru_cache(maxsize=4096)
def guard_signature(query: str) -> QueryFacts:
    """The facts of ``query`` that a semantic hit must share (rules in the module docstring).

    Only the first :data:`infra.embeddings.MAX_EMBED_CHARS` characters are read; a longer
    query is marked ``truncated`` and never passes :func:`guard_allows`.

    Returns:
        The query's :class:`QueryFacts`. Pure and cached (4,096 most recent queries).
    """
    truncated = len(query) > MAX_EMBED_CHARS
    text = unicodedata.normalize("NFKC", query[:MAX_EMBED_CHARS]).translate(_APOSTROPHES)
    entities: set[str] = set()
    words: set[str] = set()
    for match in _QUOTED.finditer(text):
        quoted = next(g for g in match.groups() if g is not None)
        # Its words, tokenized like the rest of the query so containment compares like with
        # like (numbers, units and URLs inside the quotes have their own rules).
        folded = " ".join(
            _split_word(token.low)[0] for token in _tokens(quoted) if token.kind == "word"
        )
        if folded:
            entities.add(folded)
    tokens = _tokens(text)

    numbers: list[str] = []
    operators: set[str] = set()
    word_operators: set[str] = set()
    units: list[str] = []
    negations: set[str] = set()
    directions: set[str] = set()

    # Expand contractions and apply phrases on the word sequence, keeping token alignment.
    items: list[tuple[_Token, str]] = []
    for token in tokens:
        if token.kind != "word":
            items.append((token, token.low))
            continue
        low, negated = _split_word(token.low)
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
            numbers.append(_canonical_number(raw, ordinal))
        elif token.kind == "cur":
            add_unit(_UNITS[token.raw])
        elif token.kind == "op":
            symbol = token.raw
            if symbol in _SYMBOL_DIRECTIONS:
                directions.add(_SYMBOL_DIRECTIONS[symbol])
            elif symbol == "%" and previous is not None and previous[0].kind == "num":
                if following is not None and following[0].kind == "num":
                    operators.add("mod")
                else:
                    add_unit("%")
            elif symbol in _SYMBOL_OPERATORS and _between_operands(items, i):
                operators.add(_SYMBOL_OPERATORS[symbol])
        elif token.kind == "word":
            phrase = _phrase_at(lows, i)
            if phrase is not None:
                label, length = phrase
                low = label
                i += length - 1
            run = _number_words(lows, i) if phrase is None else None
            if run is not None and not (
                lows[i] == "one" and run[1] == 1 and i > 0 and lows[i - 1] in _PRONOUN_ONE_AFTER
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
            elif after_number and low in _UNITS_AFTER_NUMBER:
                add_unit(_UNITS_AFTER_NUMBER[low])
            elif low in _UNITS:
                add_unit(_UNITS[low])
            elif low in _ORDINAL_WORDS:
                numbers.append(f"#{_ORDINAL_WORDS[low]}")
            elif low in _NEGATIONS:
                negations.add(_NEGATIONS[low])
            elif low in _DIRECTIONS_BEFORE_NUMBER:
                if before_number:
                    directions.add(_DIRECTIONS_BEFORE_NUMBER[low])
            elif low in _DIRECTIONS:
                directions.add(_DIRECTIONS[low])
            elif low in _AGGREGATES:
                operators.add(_AGGREGATES[low])
            elif low in _WORD_OPERATORS:
                word_operators.add(_WORD_OPERATORS[low])
            elif _is_entity(token, low):
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
    for words, label in _PHRASES:
        if tuple(lows[i : i + len(words)]) == words:
            return label, len(words)
    return None


def _between_operands(items: list[tuple[_Token, str]], i: int) -> bool:
    """Whether the token at ``i`` stands between two operands (numbers, parentheses)."""
    if i == 0 or i + 1 >= len(items):
        return False
    before, after = items[i - 1][0], items[i + 1][0]
    left = before.kind == "num" or before.raw in (")", "]") or before.low in _NUMBER_WORDS
    right = after.kind in ("num", "cur") or after.raw in ("(", "[") or after.low in _NUMBER_WORDS
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
        for prefix in _NEGATING_PREFIXES:
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
    if query.numbers != cached.numbers and (query.operators & _NON_COMMUTATIVE):
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


# --------------------------------------------------------------------------- the cache


@dataclass(frozen=True, slots=True)
class SemanticHit:
    """A cached query close enough to the new one, and what it points at.

    Attributes:
        response_key: the response-cache key the cached query's answer lives under.
        similarity: cosine similarity of the two queries' embeddings (0..1).
        cached_query: the cached query as it was asked.
    """

    response_key: str
    similarity: float
    cached_query: str


@dataclass(frozen=True, slots=True)
class SemanticLookup:
    """Outcome of :meth:`SemanticCache.lookup`.

    Attributes:
        hit: the match, or ``None`` on a miss.
        similarity: best similarity among the namespace's live entries (``None`` when there
            were none or the lookup failed).
        reason: why the best candidate above the threshold was refused (the guard's reason), or
            why the lookup could not run (Redis, embedder, query too long); ``None`` otherwise.
        degraded: Redis or the embedder failed: the lookup ran (partly) uncached.
        embedder: the embedder's name (``lexical-hashing-v1`` says the match is lexical).
    """

    hit: SemanticHit | None = None
    similarity: float | None = None
    reason: str | None = None
    degraded: bool = False
    embedder: str = ""


class SemanticStats(NamedTuple):
    """Size of the semantic level in Redis (all namespaces).

    Attributes:
        entries: stored queries.
        size_bytes: Redis's ``MEMORY USAGE`` of the streams, in bytes.
        streams: namespaces with at least one entry.
    """

    entries: int
    size_bytes: int
    streams: int


_ADD_SCRIPT = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[1], '*', 'e', ARGV[2])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[3]) then
    redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return id
"""
"""XADD trimmed to exactly ARGV[1] entries; the stream lives as long as its longest-lived entry."""

_ENTRY_HEADER = struct.Struct("<2sqIIII")
"""An entry's one field ``e``: magic, expiry (Unix ms), dim, then the byte lengths of the
response key, the query and the namespace; the float32 vector and those three follow. One field
instead of five: redis-py's pure-Python parser pays per bulk string, so a process loading a large
namespace parses about three times fewer."""

_ENTRY_MAGIC = b"S1"


def _pack_entry(
    vector: Vectors, expires_ms: int, response_key: str, query: str, namespace: str
) -> bytes:
    key_bytes, query_bytes, ns_bytes = response_key.encode(), query.encode(), namespace.encode()
    header = _ENTRY_HEADER.pack(
        _ENTRY_MAGIC,
        expires_ms,
        vector.shape[0],
        len(key_bytes),
        len(query_bytes),
        len(ns_bytes),
    )
    return b"".join((header, vector.astype("<f4").tobytes(), key_bytes, query_bytes, ns_bytes))


class _Entry(NamedTuple):
    vector: bytes
    expires_ms: int
    response_key: str
    query: str
    namespace: str


def _unpack_entry(fields: dict[bytes, bytes]) -> _Entry | None:
    """An entry's parts, or ``None`` when it is not one this module wrote."""
    payload = fields.get(b"e")
    if payload is None or len(payload) < _ENTRY_HEADER.size:
        return None
    magic, expires_ms, dim, key_len, query_len, ns_len = _ENTRY_HEADER.unpack_from(payload)
    start = _ENTRY_HEADER.size
    vector_end = start + 4 * dim
    key_end = vector_end + key_len
    query_end = key_end + query_len
    if magic != _ENTRY_MAGIC or query_end + ns_len != len(payload) or key_len == 0:
        return None
    return _Entry(
        vector=payload[start:vector_end],
        expires_ms=expires_ms,
        response_key=payload[vector_end:key_end].decode(errors="replace"),
        query=payload[key_end:query_end].decode(errors="replace"),
        namespace=payload[query_end:].decode(errors="replace"),
    )


def _parse_id(stream_id: bytes) -> tuple[int, int]:
    ms, _, seq = stream_id.partition(b"-")
    return int(ms), int(seq or 0)


@dataclass
class _Namespace:
    """One process's copy of a namespace's stream: rows ``start..end`` of ``vectors`` are live.

    Rows are appended at the end and dropped from the start (streams trim their oldest
    entries). Compaction copies into a new array, so a search holding a view of the old one
    reads consistent rows while another coroutine syncs.
    """

    dim: int
    max_rows: int
    vectors: Vectors = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))
    expires_ms: np.ndarray[Any, np.dtype[np.int64]] = field(
        default_factory=lambda: np.zeros(0, dtype=np.int64)
    )
    keys: list[str] = field(default_factory=list)
    queries: list[str] = field(default_factory=list)
    start: int = 0
    end: int = 0
    last_id: tuple[int, int] | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def size(self) -> int:
        return self.end - self.start

    @property
    def nbytes(self) -> int:
        return int(self.vectors.nbytes + self.expires_ms.nbytes)

    def drop_oldest(self, count: int) -> None:
        self.start = min(self.end, self.start + max(count, 0))

    def drop_expired_prefix(self, now_ms: int) -> None:
        while self.start < self.end and self.expires_ms[self.start] <= now_ms:
            self.start += 1

    def append(
        self, rows: Vectors, expires_ms: list[int], keys: list[str], queries: list[str]
    ) -> None:
        count = len(keys)
        if count == 0:
            return
        if self.end + count > len(self.keys) or self.vectors.shape[1] != self.dim:
            live = self.size
            # Double, but never far beyond what the stream can hold (max_rows).
            capacity = max(live + count, min(max(16, 2 * (live + count)), self.max_rows))
            vectors = np.zeros((capacity, self.dim), dtype=np.float32)
            expires = np.zeros(capacity, dtype=np.int64)
            if live:
                vectors[:live] = self.vectors[self.start : self.end]
                expires[:live] = self.expires_ms[self.start : self.end]
            self.keys = self.keys[self.start : self.end] + [""] * (capacity - live)
            self.queries = self.queries[self.start : self.end] + [""] * (capacity - live)
            self.vectors, self.expires_ms = vectors, expires
            self.start, self.end = 0, live
        stop = self.end + count
        self.vectors[self.end : stop] = rows
        self.expires_ms[self.end : stop] = expires_ms
        self.keys[self.end : stop] = keys
        self.queries[self.end : stop] = queries
        self.end = stop


class SemanticCache:
    """Nearest cached query per namespace, shared by every process through Redis.

    See the module docstring for storage, limits and failure behaviour. Safe to share between
    coroutines of one event loop.
    """

    def __init__(
        self,
        redis: Redis,
        embedder: Embedder,
        *,
        threshold: float,
        max_entries: int,
        max_namespaces: int = 256,
        max_local_bytes: int = 256 * 2**20,
        breaker_cooldown_s: float = 5.0,
    ) -> None:
        """Create the cache; nothing is read until the first lookup.

        Args:
            redis: an asyncio client returning bytes (``decode_responses=False``), ideally with
                retries off and short timeouts (:class:`infra.cache.RedisCache`'s client).
            embedder: embeds queries; its ``name`` is part of every stream key.
            threshold: cosine similarity at or above which a cached query is a candidate
                (``semantic_cache_threshold``), in ``(0, 1]``.
            max_entries: stored queries per namespace (``semantic_cache_max_entries``).
            max_namespaces: namespaces one process keeps in memory (least recently used
                evicted first).
            max_local_bytes: bytes of vectors one process keeps in memory across namespaces.
            breaker_cooldown_s: after a Redis failure, lookups and adds are misses for this
                many seconds without calling Redis.

        Raises:
            ValueError: an argument is out of range, or the client decodes responses.
        """
        if not 0 < threshold <= 1:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        if max_entries < 1 or max_namespaces < 1 or max_local_bytes < 1:
            raise ValueError("max_entries, max_namespaces and max_local_bytes must be positive")
        if redis.connection_pool.connection_kwargs.get("decode_responses"):
            raise ValueError("the semantic cache needs a Redis client with decode_responses=False")
        self._redis = redis
        self.embedder = embedder
        self.threshold = threshold
        self.max_entries = max_entries
        self.max_namespaces = max_namespaces
        self.max_local_bytes = max_local_bytes
        self._cooldown_s = breaker_cooldown_s
        self._open_until = 0.0
        self._namespaces: OrderedDict[str, _Namespace] = OrderedDict()
        self._vectors: OrderedDict[str, Vectors] = OrderedDict()
        self._add = redis.register_script(_ADD_SCRIPT)

    # ----------------------------------------------------------------- keys and state

    def stream_key(self, namespace: str) -> str:
        """The Redis key of ``namespace``'s stream for this cache's embedder."""
        digest = hashlib.sha256(f"{self.embedder.name}\n{namespace}".encode()).hexdigest()
        return SEMANTIC_KEY_PREFIX + digest

    @property
    def breaker_open(self) -> bool:
        """Whether Redis calls are being skipped right now (after a failure)."""
        return time.monotonic() < self._open_until

    @property
    def local_namespaces(self) -> int:
        """Namespaces this process holds in memory."""
        return len(self._namespaces)

    @property
    def local_bytes(self) -> int:
        """Bytes of vectors this process holds across namespaces."""
        return sum(ns.nbytes for ns in self._namespaces.values())

    def _failed(self, op: str, exc: BaseException) -> str:
        reason = f"redis unreachable ({type(exc).__name__})"
        if not self.breaker_open:
            logger.warning(
                "semantic cache %s failed (%s); misses for %.1fs", op, reason, self._cooldown_s
            )
        self._open_until = time.monotonic() + self._cooldown_s
        return reason

    async def _embed(self, query: str) -> Vectors:
        """The query's row (shape ``(dim,)``), remembered for the next 128 distinct queries."""
        memo = self._vectors.get(query)
        if memo is not None:
            self._vectors.move_to_end(query)
            return memo
        row: Vectors = (await self.embedder.embed([query]))[0]
        self._vectors[query] = row
        while len(self._vectors) > 128:
            self._vectors.popitem(last=False)
        return row

    def _namespace(self, key: str, dim: int) -> _Namespace:
        state = self._namespaces.get(key)
        if state is None or state.dim != dim:
            state = _Namespace(dim=dim, max_rows=self.max_entries + SYNC_PAGE_ENTRIES)
            self._namespaces[key] = state
        self._namespaces.move_to_end(key)
        return state

    def _evict(self) -> None:
        """Drop least recently used namespaces beyond the count or byte budget (not the newest)."""
        while len(self._namespaces) > 1 and (
            len(self._namespaces) > self.max_namespaces or self.local_bytes > self.max_local_bytes
        ):
            self._namespaces.popitem(last=False)

    async def _sync(self, key: str, state: _Namespace) -> None:
        """Read entries newer than the last one seen, and drop those Redis trimmed or expired.

        Raises:
            RedisError, OSError: Redis failed.
        """
        zero = bytes(4 * state.dim)
        while True:
            low = "-" if state.last_id is None else f"{state.last_id[0]}-{state.last_id[1] + 1}"
            # XLEN in the same MULTI as the page: once a page reaches the stream's end, the
            # stream is exactly the newest XLEN of the rows read so far (streams trim the
            # oldest), whatever was added or trimmed between pages.
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.xrange(key, min=low, max="+", count=SYNC_PAGE_ENTRIES)
                pipe.xlen(key)
                page, length = await pipe.execute()
            vectors: list[bytes] = []
            expires: list[int] = []
            keys: list[str] = []
            queries: list[str] = []
            for entry_id, fields in page:
                state.last_id = _parse_id(entry_id)
                entry = _unpack_entry(fields)
                if entry is None or len(entry.vector) != len(zero):
                    # An unusable entry keeps its place as a row that matches nothing, so the
                    # rows stay one-to-one with the stream's entries (trimming counts on it).
                    entry = _Entry(zero, 0, "", "", "")
                vectors.append(entry.vector)
                expires.append(entry.expires_ms)
                keys.append(entry.response_key)
                queries.append(entry.query)
            if vectors:
                rows = np.frombuffer(b"".join(vectors), dtype="<f4").reshape(len(vectors), -1)
                bad = ~np.isfinite(rows).all(axis=1)
                if bad.any():
                    rows = np.where(bad[:, None], np.float32(0), rows)
                    expires = [0 if b else e for b, e in zip(bad.tolist(), expires, strict=True)]
                state.append(rows.astype(np.float32), expires, keys, queries)
            if len(page) < SYNC_PAGE_ENTRIES:
                break
        state.drop_oldest(state.size - int(length))
        state.drop_expired_prefix(int(time.time() * 1000))

    # ----------------------------------------------------------------- public

    async def lookup(self, namespace: str, query: str) -> SemanticLookup:
        """The most similar cached query of ``namespace`` that the guard lets serve ``query``.

        Args:
            namespace: whose entries to search (the caller builds it from owner, model
                identity and context digest); entries never cross namespaces.
            query: the new query, as asked.

        Returns:
            A :class:`SemanticLookup`. Never raises for Redis or embedder failures: those are
            misses with ``degraded=True``.
        """
        name = self.embedder.name
        if len(query) > MAX_EMBED_CHARS:
            return SemanticLookup(reason="query too long for the semantic level", embedder=name)
        if self.breaker_open:
            return SemanticLookup(
                reason="redis unreachable (breaker open)", degraded=True, embedder=name
            )
        try:
            vector = await self._embed(query)
        except ModelError as exc:
            return SemanticLookup(
                reason=f"embeddings unavailable ({exc.type})", degraded=True, embedder=name
            )
        if not np.any(vector):
            return SemanticLookup(reason="nothing to compare in the query", embedder=name)
        key = self.stream_key(namespace)
        state = self._namespace(key, vector.shape[0])
        try:
            async with state.lock:
                await self._sync(key, state)
                start, end = state.start, state.end
                matrix = state.vectors[start:end]
                expires = state.expires_ms[start:end]
                keys = state.keys[start:end]
                queries = state.queries[start:end]
        except (RedisError, OSError) as exc:
            return SemanticLookup(reason=self._failed("lookup", exc), degraded=True, embedder=name)
        finally:
            self._evict()
        if not keys:
            return SemanticLookup(embedder=name)
        if matrix.size > INLINE_SEARCH_MAX_FLOATS:
            sims = await asyncio.to_thread(np.matmul, matrix, vector)
        else:
            sims = matrix @ vector
        sims[expires <= int(time.time() * 1000)] = -1.0
        best = float(sims.max())
        if best < self.threshold:
            return SemanticLookup(similarity=best, embedder=name)
        above = np.flatnonzero(sims >= self.threshold)
        ranked = above[np.argsort(-sims[above], kind="stable")][:MAX_CANDIDATES]
        facts = guard_signature(query)
        first_reason: str | None = None
        for row in ranked:
            reason = guard_allows(facts, guard_signature(queries[row]))
            if reason is None:
                hit = SemanticHit(
                    response_key=keys[row],
                    similarity=float(sims[row]),
                    cached_query=queries[row],
                )
                return SemanticLookup(hit=hit, similarity=best, embedder=name)
            first_reason = first_reason or reason
        return SemanticLookup(similarity=best, reason=first_reason, embedder=name)

    async def add(self, namespace: str, query: str, response_key: str, ttl_s: float) -> bool:
        """Store ``query`` as pointing at ``response_key`` for ``ttl_s`` seconds.

        Args:
            namespace: as for :meth:`lookup`.
            query: the query as asked (at most :data:`infra.embeddings.MAX_EMBED_CHARS`
                characters; longer ones are not stored).
            response_key: the response-cache key of its answer.
            ttl_s: seconds the entry lives (at most as long as the answer it points at).

        Returns:
            ``True`` when stored; ``False`` when the query is too long or empty, the embedder
            failed, Redis failed or the breaker is open.

        Raises:
            ValueError: ``ttl_s`` is not positive or ``response_key`` is empty.
        """
        if not ttl_s > 0:
            raise ValueError(f"ttl_s must be positive, got {ttl_s}")
        if not response_key:
            raise ValueError("response_key must not be empty")
        if len(query) > MAX_EMBED_CHARS or self.breaker_open:
            return False
        try:
            vector = await self._embed(query)
        except ModelError:
            return False
        if not np.any(vector):
            return False
        ttl_ms = max(1, int(ttl_s * 1000))
        expires_ms = int(time.time() * 1000) + ttl_ms
        try:
            await self._add(
                keys=[self.stream_key(namespace)],
                args=[
                    self.max_entries,
                    _pack_entry(vector, expires_ms, response_key, query, namespace),
                    ttl_ms,
                ],
            )
        except (RedisError, OSError) as exc:
            self._failed("add", exc)
            return False
        return True

    async def _streams(self) -> list[bytes]:
        found: list[bytes] = []
        async for key in self._redis.scan_iter(
            match=f"{SEMANTIC_KEY_PREFIX}*", count=500, _type="stream"
        ):
            found.append(key)
        return found

    async def clear(self, namespace_prefix: str | None = None) -> int:
        """Delete the namespaces whose name starts with ``namespace_prefix`` (all when ``None``).

        Scans the keyspace for semantic streams (``SCAN``, so its cost grows with the number
        of Redis keys; meant for administration, e.g. ``DELETE /v1/cache/semantic``).

        Returns:
            The number of entries deleted.

        Raises:
            redis.RedisError, OSError: Redis failed (nothing is guaranteed deleted).
        """
        deleted = 0
        for key in await self._streams():
            if namespace_prefix is not None:
                first: Any = await self._redis.xrange(key, min="-", max="+", count=1)
                if not first:
                    continue
                entry = _unpack_entry(first[0][1])
                if entry is None or not entry.namespace.startswith(namespace_prefix):
                    continue
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.xlen(key)
                pipe.delete(key)
                length, _ = await pipe.execute()
            deleted += int(length)
            self._namespaces.pop(key.decode(), None)
        self._open_until = 0.0
        return deleted

    async def stats(self) -> SemanticStats:
        """Entries and bytes of the semantic level in Redis, across namespaces.

        Raises:
            redis.RedisError, OSError: Redis failed.
        """
        entries = size = streams = 0
        for key in await self._streams():
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.xlen(key)
                pipe.memory_usage(key, samples=0)
                length, usage = await pipe.execute()
            if length:
                streams += 1
                entries += int(length)
                size += int(usage or 0)
        return SemanticStats(entries=entries, size_bytes=size, streams=streams)
