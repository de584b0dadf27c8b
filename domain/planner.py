"""The rules-based tool planner: which built-in tools a query obviously needs.

Transparent, deterministic rules, no model call and no I/O. Each rule proposes calls only for a
tool present in the registry; the ``plan_tools`` activity then validates every proposal and drops
duplicates of calls the request already made.

| rule | when the query ...                               | proposes                              |
|------|--------------------------------------------------|---------------------------------------|
| (c)  | is SQL: starts with ``SELECT``/``WITH`` and      | ``sql_query{sql: <query>}``, and      |
|      | SQLite parses it ("With decorators, ..." does    | nothing else                          |
|      | not)                                             |                                       |
| (a)  | contains arithmetic: numbers joined by           | ``calculator{expression: <expr>}``    |
|      | ``+ - * / // % ** ^`` (parentheses allowed), or  | per distinct expression, at most      |
|      | a math call such as ``sqrt(2)``                  | :data:`MAX_EXPRESSIONS`               |
| (b)  | names a Python language concept                  | ``python_docs_search{query: <query>}``|
|      | (:data:`PYTHON_TERMS`: python, decorator,        |                                       |
|      | generator, lambda, with statement, class,        |                                       |
|      | exception, comprehension, async/await, yield...) |                                       |

Rule (c) asks SQLite's own parser: the query is compiled on an empty in-memory database with an
authorizer that denies everything, so nothing can run; a syntax error ("near ...", "incomplete
input") means prose, any other outcome (unknown table, not authorized) means SQL.

Details of rule (a): ``^`` and the multiplication and division signs are rewritten to ``**``,
``*`` and ``/``; a run that only subtracts numbers written without spaces (``2025-01-15``,
``pages 10-20``) is read as a date or a range, not arithmetic, unless the query asks to calculate
(``calculate``, ``compute``, ``evaluate``, ``what is``, ``how much is``, ...).

Calls come in this order: calculator calls (in order of appearance), then the docs search; ids
are ``plan-1``, ``plan-2``, ...

Bounded work. Queries come from users, so every step is linear in the query or bounded by a
constant: the query is scanned for arithmetic only in its first :data:`MAX_QUERY_CHARS`
characters; math-token runs are found with one forward scan (an earlier version restarted a
regular expression at every whitespace character, which took 29 s of CPU on 20,000 spaces); a
run longer than :data:`MAX_RUN_CHARS` is skipped; trimming parses a run at most
:data:`MAX_TRIMS` + 1 times; an expression nested deeper than the calculator accepts is skipped;
parser failures of every kind (recursion and memory included) mean "not an expression". On top
of that the arithmetic search checks a deadline (``time_limit_s`` of :func:`plan_tools_by_rules`,
:data:`TIME_LIMIT_S` by default) between runs and between trims, and stops with what it found so
far: a cooperative check, which stops the work because each step between two checks is bounded.
The ``prepare_job`` activity runs the planner in a thread, off the event loop.
"""

from __future__ import annotations

import ast
import re
import sqlite3
import time

from pydantic import JsonValue

from core.arithmetic import (
    ALLOWED_NODES,
    CONSTANTS,
    FUNCTIONS,
    MAX_EXPRESSION_CHARS,
    MAX_EXPRESSION_DEPTH,
    expression_depth,
)
from core.models import ToolCall
from core.pyast import parse_expression
from core.tools import ToolRegistry

MAX_EXPRESSIONS = 3
"""Most calculator calls proposed for one query."""
MAX_RUN_CHARS = 2 * MAX_EXPRESSION_CHARS
"""Longest run of math tokens the planner tries to trim into an expression. Trimming parses the
run once per character it drops, so an unbounded run costs quadratic CPU (a 14 KB arithmetic
query took 9-14 s); no run this long trims down to an expression under the limit in practice."""

MAX_TRIMS = 32
"""Most edge characters trimmed off one run (each trim is one more parse)."""
MAX_QUERY_CHARS = 20_000
"""Characters of the query searched for arithmetic (the API's own limit on a query)."""
TIME_LIMIT_S = 0.5
"""How long the arithmetic search may run before it stops with what it found, in seconds."""

MAX_DOCS_QUERY_CHARS = 500
"""Longest docs query proposed; longer queries are cut at a word boundary."""
MAX_SQL_CHARS = 5000
"""Longest SQL proposed (the ``sql_query`` tool's own limit)."""

PYTHON_TERMS: tuple[str, ...] = (
    "python",
    "pythonic",
    "decorator",
    "generator",
    "lambda",
    "with statement",
    "context manager",
    "class",
    "metaclass",
    "exception",
    "try/except",
    "try except",
    "comprehension",
    "async",
    "await",
    "coroutine",
    "yield",
    "iterator",
    "iterable",
    "nonlocal",
    "global statement",
    "import statement",
    "dunder",
    "__init__",
    "magic method",
    "f-string",
    "keyword argument",
    "*args",
    "**kwargs",
    "walrus",
    "assignment expression",
    "match statement",
    "pattern matching",
    "type hint",
    "annotation",
    "docstring",
    "slicing",
)
"""Terms that mark a question about the Python language (matched as whole words, any case,
with an optional plural ``s``/``es``)."""

_CALC_INTENT = re.compile(
    r"\b(calculate|calculation|compute|evaluate|solve|what\s+is|what's|how\s+much\s+is)\b",
    re.IGNORECASE,
)
_SQL_START = re.compile(r"^\s*(select|with)\b", re.IGNORECASE)
_SYNTAX_ERROR_MARKERS = ("syntax error", "incomplete input", "unrecognized token")
_NAMES = "|".join(sorted((re.escape(n) for n in (*FUNCTIONS, *CONSTANTS)), key=len, reverse=True))
_TOKEN = (
    r"(?:"
    r"(?P<number>(?<![\w.])(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)"
    "|(?P<op>\\*\\*|//|[-+*/%^\N{MULTIPLICATION SIGN}\N{DIVISION SIGN}])"
    r"|(?P<paren>[(),])"
    rf"|(?P<name>\b(?:{_NAMES})\b)"
    r")"
)
_FIRST_TOKEN = re.compile(_TOKEN)
"""A math token (searched for; never starts with whitespace, so a search is one linear scan)."""
_MATH_TOKEN = re.compile(r"\s*" + _TOKEN)
"""The next math token of a run, after optional whitespace (matched where the last one ended)."""
_PURE_NUMBER = re.compile(r"[\d.\s]+")
_UNSPACED_SUBTRACTION = re.compile(r"[\d.]+(?:-[\d.]+)+")


def _python_term_pattern() -> re.Pattern[str]:
    alternatives = []
    for term in PYTHON_TERMS:
        body = r"\s+".join(re.escape(word) for word in term.split())
        # Word boundaries only where the term starts/ends with a word character.
        start = r"\b" if term[0].isalnum() or term[0] == "_" else ""
        end = r"(?:e?s)?\b" if term[-1].isalnum() or term[-1] == "_" else ""
        alternatives.append(f"{start}{body}{end}")
    return re.compile("|".join(alternatives), re.IGNORECASE)


_PYTHON_TERMS = _python_term_pattern()


def _candidate_runs(query: str, deadline: float) -> list[str]:
    """Maximal runs of consecutive math tokens in ``query``, as written (until ``deadline``)."""
    runs: list[str] = []
    pos = 0
    while (first := _FIRST_TOKEN.search(query, pos)) is not None:
        end = first.end()
        while (nxt := _MATH_TOKEN.match(query, end)) is not None:
            end = nxt.end()
        runs.extend(_split_top_level_commas(query[first.start() : end]))
        pos = end
        if time.monotonic() > deadline:
            break
    return runs


def _split_top_level_commas(run: str) -> list[str]:
    """Split ``run`` at commas outside parentheses ("1+1, 2+2" is two expressions, not a tuple)."""
    parts: list[str] = []
    depth = 0
    current = ""
    for char in run:
        if char == "," and depth <= 0:
            parts.append(current)
            current = ""
            continue
        depth += {"(": 1, ")": -1}.get(char, 0)
        current += char
    parts.append(current)
    return [part.strip() for part in parts if part.strip()]


def _normalize(run: str) -> str:
    return (
        run.replace("^", "**")
        .replace("\N{MULTIPLICATION SIGN}", "*")
        .replace("\N{DIVISION SIGN}", "/")
    )


def _parses(candidate: str) -> ast.Expression | None:
    """``candidate`` parsed as a Python expression, or ``None`` when the parser fails at all."""
    try:
        return parse_expression(candidate)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


def _trim_to_expression(text: str, deadline: float) -> str | None:
    """The longest prefix-and-suffix trim of ``text`` that parses as an arithmetic expression.

    Strips dangling operators, commas and unbalanced parentheses at the edges ("(see 2 + 3",
    "2 + 3 =", "4 * 5,") until the rest parses; ``None`` when nothing does. A leading ``+`` or
    a spaced ``-`` followed a word ("a + 1", "x - 2"), so it is dropped too.
    """
    candidate = text.strip()
    if candidate.startswith("+") or candidate.startswith(("- ", "-\t")):
        candidate = candidate[1:].lstrip()
    for _ in range(MAX_TRIMS + 1):
        if not candidate or time.monotonic() > deadline:
            return None
        if _parses(candidate) is not None:
            return candidate
        if candidate[-1] in "+-*/%^,(" or candidate.count("(") < candidate.count(")"):
            candidate = candidate[:-1].rstrip()
        elif candidate[0] in "*/%,)" or candidate.count("(") > candidate.count(")"):
            candidate = candidate[1:].lstrip()
        else:
            return None
    return None


def _is_arithmetic(tree: ast.Expression) -> bool:
    """Whether the parsed run is arithmetic, does some (an operation or a call), nests little.

    "Nests little": no deeper than the calculator accepts (:data:`MAX_EXPRESSION_DEPTH`).
    """
    nodes = list(ast.walk(tree))
    return (
        all(isinstance(node, ALLOWED_NODES) for node in nodes)
        and any(isinstance(node, ast.BinOp | ast.Call) for node in nodes)
        and expression_depth(tree) <= MAX_EXPRESSION_DEPTH
    )


def find_expressions(query: str, *, time_limit_s: float = TIME_LIMIT_S) -> list[str]:
    """The arithmetic expressions in ``query``, in order of appearance, without repeats.

    Args:
        query: free text, e.g. ``"what is 17 * (3 + 4)?"``; only its first
            :data:`MAX_QUERY_CHARS` characters are searched.
        time_limit_s: the search stops after this many seconds, returning what it found so far.

    Returns:
        Expressions the calculator accepts syntactically (``["17 * (3 + 4)"]``), at most
        :data:`MAX_EXPRESSIONS`; ``^`` and the multiplication and division signs are rewritten
        to Python operators.
    """
    deadline = time.monotonic() + time_limit_s
    query = query[:MAX_QUERY_CHARS]
    wants_calculation = _CALC_INTENT.search(query) is not None
    found: list[str] = []
    for run in _candidate_runs(query, deadline):
        if time.monotonic() > deadline:
            break
        if len(run) > MAX_RUN_CHARS:
            continue  # trimming parses once per character: bound the CPU before trying
        expression = _trim_to_expression(_normalize(run), deadline)
        if expression is None or len(expression) > MAX_EXPRESSION_CHARS:
            continue
        if _PURE_NUMBER.fullmatch(expression):
            continue
        if _UNSPACED_SUBTRACTION.fullmatch(expression) and not wants_calculation:
            continue  # a date (2025-01-15) or a range (10-20), not a subtraction
        tree = _parses(expression)
        if tree is None or not _is_arithmetic(tree) or expression in found:
            continue
        found.append(expression)
        if len(found) == MAX_EXPRESSIONS:
            break
    return found


def is_sql(query: str) -> bool:
    """Whether ``query`` is a SQL query: starts with SELECT/WITH and parses as SQLite SQL.

    Nothing is executed: the statement is only compiled, on an empty in-memory database whose
    authorizer denies every action.
    """
    if not _SQL_START.match(query):
        return False
    conn = sqlite3.connect(":memory:")
    try:
        conn.set_authorizer(lambda *_: sqlite3.SQLITE_DENY)
        conn.execute(query)
    except sqlite3.Error as exc:
        message = str(exc)
        return not any(marker in message for marker in _SYNTAX_ERROR_MARKERS)
    finally:
        conn.close()
    return True


def mentions_python(query: str) -> bool:
    """Whether ``query`` names a Python language concept from :data:`PYTHON_TERMS`."""
    return _PYTHON_TERMS.search(query) is not None


def _docs_query(query: str) -> str:
    text = " ".join(query.split())
    if len(text) <= MAX_DOCS_QUERY_CHARS:
        return text
    cut = text[:MAX_DOCS_QUERY_CHARS]
    space = cut.rfind(" ")
    return cut[:space] if space > 0 else cut


def plan_tools_by_rules(
    query: str, registry: ToolRegistry, *, time_limit_s: float = TIME_LIMIT_S
) -> list[ToolCall]:
    """Propose tool calls for ``query`` by the rules in this module's docstring.

    Args:
        query: the user's query.
        registry: the available tools; rules for tools it lacks propose nothing.
        time_limit_s: how long the arithmetic search may run, in seconds (see the module
            docstring); the SQL and docs rules are linear and not timed.

    Returns:
        The proposed calls with ids ``plan-1``, ``plan-2``, ... (possibly none). Deterministic
        whenever the arithmetic search finishes within ``time_limit_s`` (every query of a
        sensible size): the same query and registry then always give the same calls.
    """
    proposals: list[tuple[str, dict[str, JsonValue]]] = []
    if is_sql(query):
        sql = query.strip()
        if "sql_query" in registry and len(sql) <= MAX_SQL_CHARS:
            proposals.append(("sql_query", {"sql": sql}))
    else:
        if "calculator" in registry:
            proposals.extend(
                ("calculator", {"expression": e})
                for e in find_expressions(query, time_limit_s=time_limit_s)
            )
        if "python_docs_search" in registry and mentions_python(query):
            proposals.append(("python_docs_search", {"query": _docs_query(query)}))
    return [
        ToolCall(id=f"plan-{i}", name=name, parameters=parameters)
        for i, (name, parameters) in enumerate(proposals, start=1)
    ]
