"""The word tables and patterns the wrong-hit guard reads its facts with.

Function words, sentence openers and known technology names (entities), negations, directions,
operators, aggregates, units, number words, multi-word phrases, and the tokenizer's pattern.
Each ``{"class": "word word ..."}`` table maps every word to its class.
"""

from __future__ import annotations

import re


def split_words(text: str) -> list[str]:
    """The whitespace-separated words of ``text`` (keeps the long word tables compact)."""
    return text.split()


FUNCTION_WORDS = frozenset(
    split_words(
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


SENTENCE_OPENERS = frozenset(
    split_words(
        """show list give tell find get count sum sort compute calculate convert explain
        describe summarize summarise fetch open send select delete remove archive add multiply
        divide subtract round write create make read print run use check return display search
        look help define compare translate generate build update insert set fix name total let
        given assume suppose consider quick just so also now next why is are does do can could
        would should will please kindly hey hi hello thanks ok okay"""
    )
)
"""Common first words of a request: capitalized at a sentence start, they are not entities."""


KNOWN_NAMES = frozenset(
    split_words(
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


def word_classes(table: dict[str, str]) -> dict[str, str]:
    """``{"class": "word word ..."}`` turned into ``{"word": "class", ...}``."""
    return {word: label for label, text in table.items() for word in split_words(text)}


NEGATIONS = word_classes(
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


NEGATING_PREFIXES = ("non-", "non", "un", "in", "im", "il", "ir", "dis")


DIRECTIONS = word_classes(
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


DIRECTIONS_BEFORE_NUMBER = word_classes({"gt": "over above", "lt": "under below beneath"})
"""Words that compare only when a number (or currency sign) follows: "over $20", "under 5"."""


SYMBOL_DIRECTIONS = {">": "gt", "<": "lt", ">=": "ge", "<=": "le", "\u2265": "ge", "\u2264": "le"}


WORD_OPERATORS = word_classes(
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
        **{name: name for name in split_words("factorial ln exp sin cos tan floor ceil")},
    }
)
"""Operator words, counted when the query holds a number."""


AGGREGATES = word_classes({"mean": "average mean avg", "median": "median", "sum": "sum"})
"""Aggregates, counted always ("average order value" vs "median order value")."""


SYMBOL_OPERATORS = {
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


NON_COMMUTATIVE = frozenset({"sub", "div", "pow", "mod"})


UNITS = word_classes(
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


UNITS_AFTER_NUMBER = word_classes(
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


NUMBER_WORDS: dict[str, int] = {
    **{
        word: value
        for value, word in enumerate(
            split_words(
                """zero one two three four five six seven eight nine ten eleven twelve thirteen
                fourteen fifteen sixteen seventeen eighteen nineteen"""
            )
        )
    },
    **{
        word: 10 * (i + 2)
        for i, word in enumerate(
            split_words("twenty thirty forty fifty sixty seventy eighty ninety")
        )
    },
}


SCALES = {"hundred": 100, "thousand": 10**3, "million": 10**6, "billion": 10**9}


ORDINAL_WORDS = {
    word: i + 2
    for i, word in enumerate(
        split_words("second third fourth fifth sixth seventh eighth ninth tenth")
    )
}


PRONOUN_ONE_AFTER = frozenset(split_words("the which this that any each every no some another one"))


PHRASES: tuple[tuple[tuple[str, ...], str], ...] = (
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


TOKEN = re.compile(
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


QUOTED = re.compile(
    r"\"([^\"]{1,200})\"|“([^”]{1,200})”|`([^`]{1,200})`|(?<!\w)'([^']{1,200})'(?!\w)"
)


SENTENCE_BREAK = re.compile(r"[.!?:;\n]")


TRAILING_URL_PUNCTUATION = ".,;:!?)]}'\""


APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'"})


SUFFIXES = ("n't", "'s", "'re", "'ve", "'ll", "'d", "'m")
