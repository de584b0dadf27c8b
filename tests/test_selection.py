"""Model selection: the seed routing table, escalation, pinning, and realistic classifications."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.models import SelectionScores, SelectModelInput, TaskType, Tier
from domain.selection import (
    SELECTION_TABLE,
    Threshold,
    apply_table,
    classify_task,
    estimate_response_length,
    select_model,
)


def scores(**overrides: int) -> SelectionScores:
    base = {
        "complexity": 1,
        "creativity_required": 1,
        "reasoning_depth": 1,
        "factual_knowledge": 1,
        "response_length": 100,
    }
    base.update(overrides)
    return SelectionScores(**base)


# --------------------------------------------------------------------------- the table


def test_table_is_the_seed_table() -> None:
    table = {
        task: (rule.primary, rule.fallback, {t.criterion: t.limit for t in rule.thresholds})
        for task, rule in SELECTION_TABLE.items()
    }
    assert table == {
        TaskType.SIMPLE_FACTUAL: (
            Tier.SMALL,
            Tier.MEDIUM,
            {"complexity": 3, "reasoning_depth": 2},
        ),
        TaskType.CREATIVE_GENERATION: (
            Tier.MEDIUM,
            Tier.LARGE,
            {"creativity_required": 4, "response_length": 500},
        ),
        TaskType.COMPLEX_REASONING: (Tier.LARGE, None, {}),
        TaskType.TOOL_USAGE: (Tier.MEDIUM, Tier.LARGE, {"complexity": 4, "reasoning_depth": 3}),
    }
    assert set(SELECTION_TABLE) == set(TaskType)
    assert all(rule.task_type is task for task, rule in SELECTION_TABLE.items())


def test_table_is_read_only() -> None:
    with pytest.raises(TypeError):
        SELECTION_TABLE[TaskType.SIMPLE_FACTUAL] = SELECTION_TABLE[TaskType.TOOL_USAGE]  # type: ignore[index]
    with pytest.raises(AttributeError):
        SELECTION_TABLE[TaskType.TOOL_USAGE].primary = Tier.SMALL  # type: ignore[misc]


@pytest.mark.parametrize(
    ("task_type", "primary", "escalation"),
    [
        (TaskType.SIMPLE_FACTUAL, Tier.SMALL, Tier.MEDIUM),
        (TaskType.CREATIVE_GENERATION, Tier.MEDIUM, Tier.LARGE),
        (TaskType.COMPLEX_REASONING, Tier.LARGE, None),
        (TaskType.TOOL_USAGE, Tier.MEDIUM, Tier.LARGE),
    ],
)
def test_each_task_type_routes_to_its_primary(
    task_type: TaskType, primary: Tier, escalation: Tier | None
) -> None:
    routing = apply_table(task_type, scores())
    assert routing.tier is primary
    assert routing.escalation_tier is escalation
    assert not routing.used_fallback
    assert routing.exceeded == ()


THRESHOLD_CASES = [
    (task, threshold) for task, rule in SELECTION_TABLE.items() for threshold in rule.thresholds
]


@pytest.mark.parametrize(
    ("task_type", "threshold"),
    THRESHOLD_CASES,
    ids=[f"{task}-{t.criterion}" for task, t in THRESHOLD_CASES],
)
def test_exceeding_each_threshold_picks_the_fallback(
    task_type: TaskType, threshold: Threshold
) -> None:
    rule = SELECTION_TABLE[task_type]
    at_limit = apply_table(task_type, scores(**{threshold.criterion: threshold.limit}))
    assert at_limit.tier is rule.primary, "a score equal to the threshold is not exceeding it"

    over = apply_table(task_type, scores(**{threshold.criterion: threshold.limit + 1}))
    assert over.tier is rule.fallback
    assert over.used_fallback
    assert over.exceeded == ((threshold, threshold.limit + 1),)
    assert rule.fallback is not None
    assert over.escalation_tier is rule.fallback.next_up()


def test_threshold_cases_cover_the_table() -> None:
    assert len(THRESHOLD_CASES) == 6


def test_complex_reasoning_ignores_scores() -> None:
    top = scores(
        complexity=5,
        creativity_required=5,
        reasoning_depth=5,
        factual_knowledge=5,
        response_length=1500,
    )
    routing = apply_table(TaskType.COMPLEX_REASONING, top)
    assert routing.tier is Tier.LARGE
    assert routing.escalation_tier is None


def test_all_exceeded_thresholds_are_reported() -> None:
    routing = apply_table(
        TaskType.CREATIVE_GENERATION, scores(creativity_required=5, response_length=900)
    )
    assert routing.tier is Tier.LARGE
    assert [(t.criterion, v) for t, v in routing.exceeded] == [
        ("creativity_required", 5),
        ("response_length", 900),
    ]


# --------------------------------------------------------------------------- select_model


def test_reason_names_the_exceeded_threshold() -> None:
    result = select_model(
        SelectModelInput(query="Write a detailed essay on the French Revolution.")
    )
    assert result.task_type is TaskType.CREATIVE_GENERATION
    assert result.scores.response_length > 500
    assert result.tier is Tier.LARGE
    assert result.escalation_tier is None
    assert result.reason.startswith("creative_generation: ")
    assert f"response_length {result.scores.response_length} > 500 -> fallback large" in (
        result.reason
    )


def test_long_multi_sentence_factual_query_exceeds_complexity() -> None:
    # Two long sentences: more than 60 tokens and 2 parts, but no cue words and fewer than 3
    # parts, so it stays simple_factual with complexity 4.
    query = (
        "Tell me the boiling point and the freezing point of water at the standard sea level"
        " atmospheric pressure, in degrees Celsius as well as in degrees Fahrenheit, the way the"
        " values are printed in most school chemistry textbooks and reference tables. Give the"
        " units next to every number and keep the answer to the plain commonly taught values"
        " that a student in a classroom would be expected to recall from memory."
    )
    result = select_model(SelectModelInput(query=query))
    assert result.task_type is TaskType.SIMPLE_FACTUAL
    assert result.scores.complexity > 3
    assert result.tier is Tier.MEDIUM
    assert result.escalation_tier is Tier.LARGE
    assert f"complexity {result.scores.complexity} > 3" in result.reason
    assert "-> fallback medium" in result.reason


def test_primary_reason_lists_the_thresholds_checked() -> None:
    result = select_model(SelectModelInput(query="What is the capital of France?"))
    assert result.tier is Tier.SMALL
    assert result.escalation_tier is Tier.MEDIUM
    assert result.reason == (
        "simple_factual: complexity 1 <= 3, reasoning_depth 1 <= 2 -> primary small;"
        " escalation medium"
    )


def test_requested_tools_make_tool_usage() -> None:
    result = select_model(
        SelectModelInput(query="What is the capital of France?", tool_call_names=["http_get"])
    )
    assert result.task_type is TaskType.TOOL_USAGE
    assert result.tier is Tier.MEDIUM
    assert result.escalation_tier is Tier.LARGE


@pytest.mark.parametrize(
    ("pinned", "escalation"),
    [(Tier.SMALL, Tier.MEDIUM), (Tier.MEDIUM, Tier.LARGE), (Tier.LARGE, None)],
)
def test_pinned_tier_wins_but_task_and_scores_are_computed(
    pinned: Tier, escalation: Tier | None
) -> None:
    query = "Compare Raft and Paxos and explain the trade-offs step by step."
    auto = select_model(SelectModelInput(query=query))
    result = select_model(SelectModelInput(query=query, pinned_tier=pinned))
    assert result.tier is pinned
    assert result.escalation_tier is escalation
    assert result.task_type is TaskType.COMPLEX_REASONING
    assert result.scores == auto.scores
    assert "pinned" in result.reason
    assert str(pinned) in result.reason


def test_many_context_items_add_complexity() -> None:
    query = "What is the capital of France?"
    few = select_model(SelectModelInput(query=query, context_items=1))
    many = select_model(SelectModelInput(query=query, context_items=8))
    assert many.scores.complexity == few.scores.complexity + 1


# --------------------------------------------------------------------------- realistic queries


REALISTIC = [
    ("What is the capital of France?", TaskType.SIMPLE_FACTUAL, Tier.SMALL),
    ("Who wrote Pride and Prejudice?", TaskType.SIMPLE_FACTUAL, Tier.SMALL),
    ("How many moons does Jupiter have?", TaskType.SIMPLE_FACTUAL, Tier.SMALL),
    ("Define photosynthesis in one sentence.", TaskType.SIMPLE_FACTUAL, Tier.SMALL),
    ("Write a haiku about autumn leaves.", TaskType.CREATIVE_GENERATION, Tier.MEDIUM),
    (
        "Write a short story about a robot who learns to paint.",
        TaskType.CREATIVE_GENERATION,
        Tier.MEDIUM,
    ),
    ("Come up with a catchy slogan for a coffee shop.", TaskType.CREATIVE_GENERATION, Tier.MEDIUM),
    (
        "Imagine a world where people breathe underwater and write a vivid, original, funny"
        " rhyming poem about it in the style of Walt Whitman.",
        TaskType.CREATIVE_GENERATION,
        Tier.LARGE,
    ),
    ("Explain why the sky is blue.", TaskType.COMPLEX_REASONING, Tier.LARGE),
    (
        "Compare PostgreSQL and MySQL for a write-heavy workload and explain the trade-offs.",
        TaskType.COMPLEX_REASONING,
        Tier.LARGE,
    ),
    ("Prove that the square root of 2 is irrational.", TaskType.COMPLEX_REASONING, Tier.LARGE),
    (
        "Design a scalable architecture for a chat application.",
        TaskType.COMPLEX_REASONING,
        Tier.LARGE,
    ),
    (
        "What is TCP? What is UDP? When should I use each one?",
        TaskType.COMPLEX_REASONING,
        Tier.LARGE,
    ),
    ("Calculate 17 * 23.", TaskType.TOOL_USAGE, Tier.MEDIUM),
    ("Look up the current weather in Paris.", TaskType.TOOL_USAGE, Tier.MEDIUM),
    (
        "Query the database for last month's sales totals by region.",
        TaskType.TOOL_USAGE,
        Tier.MEDIUM,
    ),
    ("What is 15% of 240?", TaskType.TOOL_USAGE, Tier.MEDIUM),
]


@pytest.mark.parametrize(
    ("query", "task_type", "tier"), REALISTIC, ids=[q for q, _, _ in REALISTIC]
)
def test_realistic_queries(query: str, task_type: TaskType, tier: Tier) -> None:
    assert classify_task(query) is task_type
    result = select_model(SelectModelInput(query=query))
    assert result.task_type is task_type
    assert result.tier is tier, result.reason


@pytest.mark.parametrize(
    ("query", "task_type", "expected"),
    [
        ("Is Paris in France? Answer yes or no.", TaskType.SIMPLE_FACTUAL, 50),
        ("Answer in one word: what colour is the sky?", TaskType.SIMPLE_FACTUAL, 50),
        ("List 10 fun facts about octopuses.", TaskType.SIMPLE_FACTUAL, 400),
        ("Give me five ideas for a birthday party.", TaskType.CREATIVE_GENERATION, 200),
        ("Write 300 words on bees.", TaskType.CREATIVE_GENERATION, 400),
        ("Summarize it in 3 paragraphs.", TaskType.SIMPLE_FACTUAL, 360),
        ("Briefly explain recursion.", TaskType.COMPLEX_REASONING, 120),
        ("Explain recursion in detail.", TaskType.COMPLEX_REASONING, 1200),
        ("Write an essay about bees.", TaskType.CREATIVE_GENERATION, 1200),
        ("Write a haiku.", TaskType.CREATIVE_GENERATION, 50),
        ("What is the capital of Peru?", TaskType.SIMPLE_FACTUAL, 150),
        ("Write 5000 words on bees.", TaskType.CREATIVE_GENERATION, 1500),
    ],
)
def test_response_length_cues(query: str, task_type: TaskType, expected: int) -> None:
    assert estimate_response_length(query, task_type) == expected


@settings(max_examples=60, deadline=None)
@given(
    query=st.text(min_size=1, max_size=400),
    tools=st.lists(st.sampled_from(["calculator", "http_get"]), max_size=2),
    context_items=st.integers(0, 50),
)
def test_any_query_gives_scores_in_range_deterministically(
    query: str, tools: list[str], context_items: int
) -> None:
    inp = SelectModelInput(query=query, tool_call_names=tools, context_items=context_items)
    result = select_model(inp)
    s = result.scores
    for value in (s.complexity, s.creativity_required, s.reasoning_depth, s.factual_knowledge):
        assert 1 <= value <= 5
    assert 50 <= s.response_length <= 1500
    assert result.reason and "\n" not in result.reason
    assert result == select_model(inp)
    if tools:
        assert result.task_type is TaskType.TOOL_USAGE
    expected = apply_table(result.task_type, s)
    assert (result.tier, result.escalation_tier) == (expected.tier, expected.escalation_tier)
