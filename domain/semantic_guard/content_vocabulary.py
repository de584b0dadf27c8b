"""The word tables of the content-word sequence (:mod:`domain.semantic_guard.content`).

Framing, function words, contractions, operators, comparison signs and unit spellings that the
sequence drops or writes one way.
"""

from __future__ import annotations

from domain.semantic_guard.vocabulary import split_words, word_classes

SEQUENCE_FUNCTION_WORDS = frozenset(
    split_words("the an is are am do does please kindly pls plz thanks thx")
)
"""Dropped anywhere: articles, present-tense ``be`` and ``do`` (the tense of ``was``, ``did``,
``will`` and every modal stays), politeness. ``a`` is dropped only as an article (see
:func:`content_words`): "vitamin A" keeps it."""


INTERJECTIONS = frozenset(split_words("hi hello hey please kindly ok okay so"))
"""Dropped at the start of a query only ("so" means something later on)."""


OPENING_PHRASES: tuple[tuple[str, ...], ...] = tuple(
    tuple(split_words(phrase))
    for phrase in ("quick question", "just wondering", "hi there", "hello there", "hey there")
)
"""Openers dropped at the start of a query."""


EMBEDDING_PHRASES: tuple[tuple[str, ...], ...] = tuple(
    tuple(split_words(phrase))
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


FOR_ME_VERBS = frozenset(split_words("show give find"))
"""Request verbs whose "me" right after them names the asker: "show me the orders" asks
"show the orders"."""


POLITE_MODALS = frozenset(split_words("can could would will"))
"""``<modal> you`` is framing when a request verb follows ("could you explain", "can you tell
me"); "can you swim" keeps it."""


REQUEST_VERBS = frozenset(
    split_words(
        """tell explain show give list describe write find calculate compute summarize summarise
        translate define help check convert name suggest let"""
    )
)


COPULAS = frozenset(split_words("is are"))


IS_HOSTS = frozenset(split_words("what who where when how why that there here it he she this"))
"""Words after which ``'s`` is ``is`` ("what's"); after any other word it is a possessive."""


NOT_STEMS = {"ca": "can", "wo": "will", "sha": "shall", "ai": "is"}


SEQUENCE_SUFFIXES = (
    ("n't", "not"),
    ("'re", "are"),
    ("'ve", "have"),
    ("'ll", "will"),
    ("'d", "would"),
    ("'m", "am"),
    ("'s", "is"),
)


FUSED_IS = frozenset(split_words("whats thats hows wheres whos whens whys heres theres"))


SEQUENCE_TEXT: dict[int, str | int] = {
    **{code: code - 0xFEE0 for code in range(0xFF01, 0xFF5F)},  # full-width ASCII
    0x3000: " ",  # ideographic space
    0x2019: "'",
    0x2018: "'",
}
"""The only folding applied before the sequence is read (NFKC would turn ``2³`` into ``23``)."""


IGNORABLE = frozenset(
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


SEQUENCE_OPERATORS = {
    "mul": "*",
    "div": "/",
    "add": "+",
    "sub": "-",
    "pow": "^",
    "mod": "mod",
}
"""Operator classes as written in the sequence: ``12 * 7``, ``12 x 7`` and ``12 times 7`` are
one sequence; ``15 % 200`` (modulo) is not ``15%`` (percent)."""


SEQUENCE_COMPARISONS = {"\u2265": ">=", "\u2264": "<="}


SEQUENCE_UNIT_WORDS = word_classes(
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


SEQUENCE_UNIT_ABBREVIATIONS = word_classes(
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
