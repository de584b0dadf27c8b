"""The rules-based tool planner: the rules table of ``domain/planner.py``."""

from __future__ import annotations

from typing import Any

import pytest

from core.settings import Settings
from core.tools import ToolRegistry
from domain.planner import find_expressions, is_sql, mentions_python, plan_tools_by_rules
from infra.tools import builtin_registry
from infra.tools.calculator import evaluate_expression


@pytest.fixture(scope="module")
def registry() -> ToolRegistry:
    return builtin_registry(Settings())


def plan(query: str, registry: ToolRegistry) -> list[tuple[str, str, dict[str, Any]]]:
    return [(c.id, c.name, c.parameters) for c in plan_tools_by_rules(query, registry)]


# --------------------------------------------------------------------------- rule (a): arithmetic


@pytest.mark.parametrize(
    ("query", "expressions"),
    [
        ("what is 17 * (3 + 4)?", ["17 * (3 + 4)"]),
        ("compute 2**10", ["2**10"]),
        ("How much is 1.5e3 / 4?", ["1.5e3 / 4"]),
        ("please evaluate sqrt(16) + 2", ["sqrt(16) + 2"]),
        ("what is pi * 2 squared", ["pi * 2"]),
        ("max(3, 7) * 2 is what?", ["max(3, 7) * 2"]),
        ("what is 2^10 and 3 \N{MULTIPLICATION SIGN} 4?", ["2**10", "3 * 4"]),
        ("half of it (100 / 2), then 7 % 3", ["(100 / 2)", "7 % 3"]),
        ("calculate 10-3", ["10-3"]),
        ("1+1 and again 1+1", ["1+1"]),
        ("x - 2 + 3", ["2 + 3"]),
        ("-2 * 3", ["-2 * 3"]),
        (
            "a + 1 + 2 + 3 + 4, b = 5 * 6, c = 7 - 1, d = 8 // 2",
            ["1 + 2 + 3 + 4", "5 * 6", "7 - 1"],
        ),
    ],
)
def test_arithmetic_is_extracted(query: str, expressions: list[str]) -> None:
    assert find_expressions(query) == expressions
    for expression in expressions:
        evaluate_expression(expression)  # the calculator accepts what the planner extracts


@pytest.mark.parametrize(
    "query",
    [
        "hello world",
        "orders placed between 2025-01-15 and 2025-02-01",
        "see pages 10-20",
        "Python 3.11 release notes",
        "version 3.11.2",
        "it costs 5 dollars",
        "50% of people",
        "-5 degrees",
        "mp3 + mp4 files",
        "send me an e-mail",
    ],
)
def test_no_arithmetic_no_calculator(query: str) -> None:
    assert find_expressions(query) == []


def test_calculator_call(registry: ToolRegistry) -> None:
    assert plan("what is 17 * (3 + 4)?", registry) == [
        ("plan-1", "calculator", {"expression": "17 * (3 + 4)"})
    ]


# --------------------------------------------------------------------------- rule (b): python


@pytest.mark.parametrize(
    "query",
    [
        "How do Python decorators work?",
        "explain generators",
        "what does a lambda return",
        "how does the with statement close files",
        "what is a context manager",
        "how do I define a class",
        "catching an exception",
        "list comprehensions vs loops",
        "async and await in practice",
        "what does YIELD do",
        "what does __init__ do",
        "what are *args",
    ],
)
def test_python_concepts_search_the_docs(query: str, registry: ToolRegistry) -> None:
    assert mentions_python(query)
    assert plan(query, registry)[-1] == (
        f"plan-{len(plan(query, registry))}",
        "python_docs_search",
        {"query": query},
    )


@pytest.mark.parametrize(
    "query",
    ["what is the capital of France", "asynchronous replication", "a classic novel", "withdraw"],
)
def test_other_topics_do_not_search_the_docs(query: str) -> None:
    assert not mentions_python(query)


def test_long_docs_query_is_cut_to_the_tool_limit(registry: ToolRegistry) -> None:
    query = "python decorators " + "word " * 200
    (call,) = plan_tools_by_rules(query, registry)
    sent = str(call.parameters["query"])
    assert len(sent) <= 500
    assert sent.startswith("python decorators word")
    registry.validate(call)


# --------------------------------------------------------------------------- rule (c): SQL


@pytest.mark.parametrize(
    "query",
    [
        "SELECT count(*) FROM orders",
        "  select name, email from customers where country = 'FR' order by name",
        "WITH t AS (SELECT 1 AS x) SELECT x FROM t",
        "SELECT 1 + 2",
        "SELECT 1; DROP TABLE customers",  # SQL (the tool refuses it, clearly)
    ],
)
def test_sql_goes_to_sql_query_alone(query: str, registry: ToolRegistry) -> None:
    assert is_sql(query)
    assert plan(query, registry) == [("plan-1", "sql_query", {"sql": query.strip()})]


@pytest.mark.parametrize(
    "query",
    [
        "With decorators in python, what happens?",
        "Select the best python book",
        "select * from",
        "what is SELECT",
    ],
)
def test_prose_starting_like_sql_is_not_sql(query: str) -> None:
    assert not is_sql(query)


def test_prose_starting_with_with_uses_the_other_rules(registry: ToolRegistry) -> None:
    assert plan("With the with statement, what is 2 + 2?", registry) == [
        ("plan-1", "calculator", {"expression": "2 + 2"}),
        ("plan-2", "python_docs_search", {"query": "With the with statement, what is 2 + 2?"}),
    ]


# --------------------------------------------------------------------------- combined


def test_calculator_then_docs_with_sequential_ids(registry: ToolRegistry) -> None:
    query = "in python, what is 2 ** 8 and 3 * 3?"
    assert plan(query, registry) == [
        ("plan-1", "calculator", {"expression": "2 ** 8"}),
        ("plan-2", "calculator", {"expression": "3 * 3"}),
        ("plan-3", "python_docs_search", {"query": query}),
    ]


def test_at_most_three_expressions() -> None:
    assert len(find_expressions("1+1, 2+2, 3+3, 4+4, 5+5")) == 3


def test_nothing_to_plan(registry: ToolRegistry) -> None:
    assert plan_tools_by_rules("tell me a story about a dragon", registry) == []


def test_only_tools_in_the_registry() -> None:
    full = builtin_registry(Settings())
    only_docs = ToolRegistry([full.get("python_docs_search")])  # type: ignore[list-item]
    query = "in python, what is 2 ** 8?"
    assert plan(query, only_docs) == [("plan-1", "python_docs_search", {"query": query})]
    assert plan("SELECT 1", only_docs) == []
    assert plan(query, ToolRegistry()) == []


def test_every_proposal_validates(registry: ToolRegistry) -> None:
    for query in (
        "what is 17 * (3 + 4)?",
        "explain python generators and compute 2**10",
        "SELECT * FROM products",
    ):
        calls = plan_tools_by_rules(query, registry)
        assert calls
        for call in calls:
            registry.validate(call)


def test_deterministic(registry: ToolRegistry) -> None:
    query = "python: what is (1 + 2) * 3 and sqrt(2)?"
    assert plan_tools_by_rules(query, registry) == plan_tools_by_rules(query, registry)
