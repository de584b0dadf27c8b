"""Model selection: classify a query, score it, and route it to a model tier.

Pure and deterministic (no I/O, no clock, no randomness): the ``select_model`` activity calls
:func:`select_model` and its result is recorded in workflow history, so the same query always
routes the same way.

The routing table is seed 000's ``model_tiers`` (:data:`SELECTION_TABLE`): each task type has a
primary tier, a fallback tier and score thresholds. A threshold is *exceeded* when the score is
strictly greater than it, and any exceeded threshold selects the fallback tier.

Features read from the query (all case-insensitive, whole-word regular expressions):

* **tokens**: ``core.tokens.count_tokens(query)`` (cl100k_base tokens).
* **parts**: how many separate asks the query holds: the largest of the number of question marks,
  the number of numbered or lettered items (``1.``, ``2)``, ``(a)``), and the number of segments
  of at least three words between ``. ? ! ;``, newlines and "also/additionally/and then".
* **reasoning cues** (:data:`REASONING_CUES`): why, explain, compare, analyze, trade-offs,
  step by step, design, prove, pros and cons, "how does/would ...", ... with weights 1 or 2.
* **creative cues** (:data:`CREATIVE_CUES`): write, story, poem, haiku, slogan, imagine, lyrics,
  joke, rhyming, "in the style of", ...
* **tool cues** (:data:`TOOL_CUES`): calculate, compute, look up, query the database, search
  for, fetch, current weather/price, SQL, arithmetic such as ``17 * 23``.
* **factual cues** (:data:`FACTUAL_CUES`): who/what/when/where/which, capital, population,
  year, define, how many, ...; plus **named entities** (capitalized words that do not start a
  sentence) and **numbers**.
* **length cues**: terse ("one word", "yes or no"), brief ("briefly", "short", "concise"), long
  ("in detail", "comprehensive", "in depth"), explicit sizes ("300 words", "3 paragraphs",
  "list 10", "five ideas") and written forms (haiku, slogan, poem, story, essay, article, ...).

Classification (:func:`classify_task`), first rule that applies:

1. ``tool_call_names`` is non-empty -> ``tool_usage``.
2. Some cue weight is positive -> the task type with the largest weight among tool, reasoning and
   creative cues; ties go to ``complex_reasoning``, then ``tool_usage``, then
   ``creative_generation`` (when unsure, prefer the class that routes to more capacity).
3. The query has 3 or more parts (a multi-part question) -> ``complex_reasoning``.
4. Otherwise -> ``simple_factual``.

Scores (:func:`score_query`), each clamped to 1..5:

* ``complexity`` = 1, +1 for each of: tokens > 20, tokens > 60, tokens > 150, parts >= 2,
  parts >= 4, reasoning weight >= 3, ``context_items`` >= 5.
* ``reasoning_depth`` = 1 + ceil(reasoning weight / 2), +1 for parts >= 2, +1 for parts >= 4.
* ``creativity_required`` = 1 + ceil(creative weight / 2).
* ``factual_knowledge`` = 1 + min(2, factual weight), +1 when a named entity appears, +1 when
  3 or more named entities or any number appear.
* ``response_length`` (tokens, 50..1500): an explicit size wins; else a terse cue gives 50; else
  the largest estimate among the written forms asked for, or the task type's default
  (simple 150, tool 250, creative 400, reasoning 600); a brief cue caps it at 120 and a long cue
  raises it to ``max(2 * estimate, 800)``.

One module on purpose (about 580 lines): the feature extractor and the score table it feeds are one
heuristic (seed 000's), and most of the module is its documented regular expressions and
thresholds.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

from core.models import SelectionScores, SelectModelInput, SelectModelResult, TaskType, Tier
from core.tokens import count_tokens

Criterion = Literal[
    "complexity", "creativity_required", "reasoning_depth", "factual_knowledge", "response_length"
]
"""The name of one :class:`~core.models.SelectionScores` field."""


# --------------------------------------------------------------------------- routing table


@dataclass(frozen=True, slots=True)
class Threshold:
    """One routing threshold: exceeded when ``scores.<criterion> > limit``.

    Attributes:
        criterion: the score compared.
        limit: the largest value still served by the primary tier (score units; tokens for
            ``response_length``).
    """

    criterion: Criterion
    limit: int


@dataclass(frozen=True, slots=True)
class TierRule:
    """How one task type is routed.

    Attributes:
        task_type: the task class this rule serves.
        primary: the tier used while no threshold is exceeded.
        fallback: the tier used when any threshold is exceeded (``None``: always primary).
        thresholds: the limits checked, in table order.
    """

    task_type: TaskType
    primary: Tier
    fallback: Tier | None
    thresholds: tuple[Threshold, ...]


SELECTION_TABLE: Mapping[TaskType, TierRule] = MappingProxyType(
    {
        TaskType.SIMPLE_FACTUAL: TierRule(
            TaskType.SIMPLE_FACTUAL,
            primary=Tier.SMALL,
            fallback=Tier.MEDIUM,
            thresholds=(Threshold("complexity", 3), Threshold("reasoning_depth", 2)),
        ),
        TaskType.CREATIVE_GENERATION: TierRule(
            TaskType.CREATIVE_GENERATION,
            primary=Tier.MEDIUM,
            fallback=Tier.LARGE,
            thresholds=(Threshold("creativity_required", 4), Threshold("response_length", 500)),
        ),
        TaskType.COMPLEX_REASONING: TierRule(
            TaskType.COMPLEX_REASONING,
            primary=Tier.LARGE,
            fallback=None,
            thresholds=(),
        ),
        TaskType.TOOL_USAGE: TierRule(
            TaskType.TOOL_USAGE,
            primary=Tier.MEDIUM,
            fallback=Tier.LARGE,
            thresholds=(Threshold("complexity", 4), Threshold("reasoning_depth", 3)),
        ),
    }
)
"""Seed 000's ``model_tiers`` table, keyed by task type (read-only)."""


@dataclass(frozen=True, slots=True)
class Routing:
    """The outcome of applying :data:`SELECTION_TABLE` to a task type and its scores.

    Attributes:
        tier: the tier chosen.
        escalation_tier: the tier to use if ``tier``'s provider fails (``None``: nowhere to go).
        used_fallback: whether a threshold sent the request to the fallback tier.
        exceeded: the thresholds exceeded, with the score value that exceeded each.
    """

    tier: Tier
    escalation_tier: Tier | None
    used_fallback: bool
    exceeded: tuple[tuple[Threshold, int], ...]


def apply_table(task_type: TaskType, scores: SelectionScores) -> Routing:
    """Route ``task_type`` with ``scores`` through :data:`SELECTION_TABLE`.

    Every threshold is checked (not only the first exceeded) so the reason can name them all.
    The escalation tier is the rule's fallback when the primary tier was chosen, otherwise the
    next larger tier (``None`` above ``large``).

    Args:
        task_type: the query's task class.
        scores: its scores (1..5, ``response_length`` in tokens).

    Returns:
        The chosen tier, the escalation tier and the exceeded thresholds.
    """
    rule = SELECTION_TABLE[task_type]
    exceeded = tuple(
        (threshold, value)
        for threshold in rule.thresholds
        if (value := getattr(scores, threshold.criterion)) > threshold.limit
    )
    if exceeded and rule.fallback is not None:
        return Routing(rule.fallback, rule.fallback.next_up(), True, exceeded)
    escalation = rule.fallback if rule.fallback is not None else rule.primary.next_up()
    return Routing(rule.primary, escalation, False, exceeded)


# --------------------------------------------------------------------------- features


Cue = tuple[re.Pattern[str], int]
"""A compiled case-insensitive pattern and the weight it adds once when it matches."""


def _cues(*pairs: tuple[str, int]) -> tuple[Cue, ...]:
    return tuple((re.compile(pattern, re.IGNORECASE), weight) for pattern, weight in pairs)


REASONING_CUES: tuple[Cue, ...] = _cues(
    (r"\bwhy\b", 1),
    (r"\bexplain\w*\b", 1),
    (r"\bcompar(?:e|es|ed|ing|ison)\b", 2),
    (r"\banaly[sz]\w*\b", 2),
    (r"\btrade[- ]?offs?\b", 2),
    (r"\bstep[- ]by[- ]step\b", 2),
    (r"\bdesign\w*\b", 1),
    (r"\bprove\b|\bproof\b", 2),
    (r"\bderiv(?:e|ation)\b", 2),
    (r"\bpros and cons\b", 2),
    (r"\bevaluat\w*\b|\bassess\w*\b|\bcritique\b", 1),
    (r"\bimplications?\b|\bconsequences?\b", 1),
    (r"\bjustif\w*\b|\breasoning\b", 1),
    (r"\bhow (?:does|do|would|could|should|can|did)\b", 1),
    (r"\bwhat if\b", 1),
    (r"\bdifferences? between\b", 1),
    (r"\bstrateg(?:y|ies)\b|\barchitecture\b|\boptimi[sz]\w*\b|\bdebug\w*\b", 1),
)
"""Cues that the answer needs reasoning (weights add once per matching pattern)."""

CREATIVE_CUES: tuple[Cue, ...] = _cues(
    (r"\bwrite\b|\bcompose\b", 1),
    (r"\bstor(?:y|ies)\b", 2),
    (r"\bpoem\w*\b|\bpoetry\b|\bhaiku\b|\blimerick\b|\bsonnet\b", 2),
    (r"\bslogan\w*\b|\btagline\w*\b|\bjingle\w*\b", 2),
    (r"\blyrics\b|\bsong\b", 2),
    (r"\bjokes?\b|\briddles?\b|\bfairy tale\b|\bfiction\b", 2),
    (r"\bimagin\w*\b", 2),
    (r"\bbrainstorm\w*\b|\binvent\b|\bcreative\w*\b|\bcatchy\b", 1),
    (r"\bwhimsical\b|\bmetaphors?\b|\bnarrative\b|\bplot\b|\bcharacters?\b", 1),
    (r"\brhym\w*\b|\bin the style of\b|\boriginal\b|\bvivid\w*\b", 1),
    (r"\bfunny\b|\bhumou?rous\b|\bwitty\b|\bplayful\b", 1),
)
"""Cues that the answer is creative writing."""

TOOL_CUES: tuple[Cue, ...] = _cues(
    (r"\bcalculat\w*\b|\bcompute\b", 1),
    (r"\blook(?:ing)? up\b|\blookup\b", 2),
    (r"\bquery (?:the|our|my|a)\b|\brun (?:a|the) query\b|\bsql\b", 2),
    (r"\bsearch (?:for|the)\b|\bfetch\w*\b", 2),
    (r"\bin (?:the|our) database\b|\bapi\b", 1),
    (r"\bcurrent (?:weather|price|time|status|temperature)\b", 2),
    (r"\bexchange rate\b|\bstock price\b|\bconvert\b", 1),
    (
        # Numbers start only where no digit precedes: otherwise every position inside a long
        # run of digits would rescan the rest of it (quadratic: 20,000 digits took 35 s).
        # (a match found mid-run extends to the whole run, so starting there is enough).
        r"(?<![\d,.])[,.]*\d[\d,.]*+\s*(?:[-+*/\u00d7^]|\bplus\b|\bminus\b|\btimes\b"
        r"|\bdivided by\b)\s*\d"
        r"|\d\s*%\s*of\b",
        2,
    ),
)
"""Cues that the answer needs a tool: computing, looking up or querying data."""

FACTUAL_CUES: tuple[Cue, ...] = _cues(
    (r"\bwho\b|\bwhat\b|\bwhen\b|\bwhere\b|\bwhich\b", 1),
    (r"\bcapital\b|\bpopulation\b|\bheight\b|\bdistance\b", 1),
    (r"\byear\b|\bdate\b|\bcentury\b|\bhistor\w*\b", 1),
    (r"\bdefine\b|\bdefinition\b|\bmeaning of\b", 1),
    (r"\bhow (?:many|much|far|old|tall|long)\b", 1),
    (r"\binvented\b|\bdiscovered\b|\bfounded\b|\bwrote\b", 1),
)
"""Cues that the answer rests on facts (feeds ``factual_knowledge`` only)."""

_NUMBER_WORDS = {
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "eleven": 11,
    "twelve": 12,
    "fifteen": 15,
    "twenty": 20,
    "thirty": 30,
    "fifty": 50,
}
_COUNT = r"(?<!\d)(\d++|" + "|".join(_NUMBER_WORDS) + r")"
# (?<!\d) and the possessive \d++: a count starts where its digits start and never gives any
# back, so a long run of digits is scanned once, not once per position (quadratic).

_TERSE = re.compile(
    r"\b(?:one|single|1)[- ]word\b|\byes or no\b|\bjust (?:the|a) (?:number|name|answer)\b",
    re.IGNORECASE,
)
_BRIEF = re.compile(
    r"\bbrief(?:ly)?\b|\bshort\b(?!\s+stor)|\bconcise(?:ly)?\b|\bsuccinct(?:ly)?\b"
    r"|\bin (?:one|a single|a) sentence\b|\btl;?dr\b|\bquick(?:ly)?\b",
    re.IGNORECASE,
)
_LONG = re.compile(
    r"\bin (?:great |more |full )?detail\b|\bdetailed\b|\bcomprehensive(?:ly)?\b"
    r"|\bthorough(?:ly)?\b|\bin[- ]depth\b|\bexhaustive(?:ly)?\b|\belaborate\b|\blong\b"
    r"|\bextensive(?:ly)?\b",
    re.IGNORECASE,
)
_EXPLICIT_SIZES: tuple[tuple[re.Pattern[str], float], ...] = (
    (re.compile(_COUNT + r"[- ]words?\b", re.IGNORECASE), 4 / 3),
    (re.compile(_COUNT + r"[- ]paragraphs?\b", re.IGNORECASE), 120.0),
    (re.compile(_COUNT + r"[- ]sentences?\b", re.IGNORECASE), 25.0),
    (
        re.compile(
            _COUNT + r"\s+(?:\w+\s+)?(?:examples|ideas|ways|reasons|tips|steps|items|things"
            r"|names|options|bullet points|bullets|questions|facts)\b",
            re.IGNORECASE,
        ),
        40.0,
    ),
    (re.compile(r"\b(?:list|top)\s+(?:the\s+)?" + _COUNT + r"\b", re.IGNORECASE), 40.0),
)
_FORMS: tuple[tuple[re.Pattern[str], int], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), tokens)
    for pattern, tokens in (
        (r"\bhaiku\b|\bslogan\b|\btagline\b|\bheadline\b", 50),
        (r"\btweet\b", 60),
        (r"\bjingle\b|\blimerick\b|\bjoke\b|\briddle\b", 80),
        (r"\bsonnet\b", 200),
        (r"\bpoem\b|\bemail\b", 250),
        (r"\bsong\b|\blyrics\b|\bletter\b", 350),
        (r"\bstory\b", 450),
        (r"\bblog post\b", 900),
        (r"\barticle\b|\breport\b", 1000),
        (r"\bessay\b", 1200),
        (r"\bchapter\b|\bscreenplay\b", 1500),
    )
)
_DEFAULT_LENGTH = {
    TaskType.SIMPLE_FACTUAL: 150,
    TaskType.TOOL_USAGE: 250,
    TaskType.CREATIVE_GENERATION: 400,
    TaskType.COMPLEX_REASONING: 600,
}
_MIN_LENGTH, _MAX_LENGTH = 50, 1500
_BRIEF_CAP, _LONG_FLOOR = 120, 800

_SEGMENT_SPLIT = re.compile(
    r"[?!;\n]+|\.(?:\s+|$)|\b(?:also|additionally|and then)\b", re.IGNORECASE
)
_NUMBERED_ITEM = re.compile(r"(?:^|\s)(?:\d{1,2}[.)]|\([a-z0-9]\)|[a-h]\))\s", re.IGNORECASE)
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+|\n+")
_WORD = re.compile(r"[A-Za-z][\w'-]*")
_NUMBER = re.compile(r"\b\d+(?:[.,]\d+)?\b")


@dataclass(frozen=True, slots=True)
class QueryFeatures:
    """What :func:`extract_features` reads from a query.

    Attributes:
        tokens: cl100k_base tokens in the query.
        parts: separate asks in the query (at least 1).
        reasoning: summed weight of matching :data:`REASONING_CUES`.
        creative: summed weight of matching :data:`CREATIVE_CUES`.
        tool: summed weight of matching :data:`TOOL_CUES`.
        factual: summed weight of matching :data:`FACTUAL_CUES`.
        entities: capitalized words that do not start a sentence.
        numbers: numbers in the query.
    """

    tokens: int
    parts: int
    reasoning: int
    creative: int
    tool: int
    factual: int
    entities: int
    numbers: int


def _weight(cues: Sequence[Cue], text: str) -> int:
    return sum(weight for pattern, weight in cues if pattern.search(text))


def _count_parts(query: str) -> int:
    segments = sum(1 for s in _SEGMENT_SPLIT.split(query) if len(_WORD.findall(s)) >= 3)
    return max(1, query.count("?"), len(_NUMBERED_ITEM.findall(query)), segments)


def _count_entities(query: str) -> int:
    count = 0
    for sentence in _SENTENCE_SPLIT.split(query.strip()):
        words = _WORD.findall(sentence)
        count += sum(1 for w in words[1:] if w[0].isupper() and w != "I")
    return count


def extract_features(query: str) -> QueryFeatures:
    """Read the routing features from ``query`` (see the module docstring).

    Args:
        query: the user's question, any length.

    Returns:
        The features; weights are non-negative integers, ``parts`` is at least 1.
    """
    return QueryFeatures(
        tokens=count_tokens(query),
        parts=_count_parts(query),
        reasoning=_weight(REASONING_CUES, query),
        creative=_weight(CREATIVE_CUES, query),
        tool=_weight(TOOL_CUES, query),
        factual=_weight(FACTUAL_CUES, query),
        entities=_count_entities(query),
        numbers=len(_NUMBER.findall(query)),
    )


# --------------------------------------------------------------------------- classify & score


def _classify(features: QueryFeatures, tool_call_names: Sequence[str]) -> TaskType:
    if tool_call_names:
        return TaskType.TOOL_USAGE
    # Order is the tie-break: max() keeps the first of equal weights.
    weighted = (
        (features.reasoning, TaskType.COMPLEX_REASONING),
        (features.tool, TaskType.TOOL_USAGE),
        (features.creative, TaskType.CREATIVE_GENERATION),
    )
    best_weight, best_type = max(weighted, key=lambda pair: pair[0])
    if best_weight > 0:
        return best_type
    if features.parts >= 3:
        return TaskType.COMPLEX_REASONING
    return TaskType.SIMPLE_FACTUAL


def classify_task(query: str, tool_call_names: Sequence[str] = ()) -> TaskType:
    """Classify ``query`` into a :class:`~core.models.TaskType` (rules in the module docstring).

    Args:
        query: the user's question.
        tool_call_names: names of the tools the request asks to run (any non-empty list makes
            the task ``tool_usage``).

    Returns:
        The task type.
    """
    return _classify(extract_features(query), tool_call_names)


def _clamp(value: int, low: int = 1, high: int = 5) -> int:
    return max(low, min(high, value))


def _explicit_size(query: str) -> int | None:
    for pattern, tokens_per_unit in _EXPLICIT_SIZES:
        match = pattern.search(query)
        if match:
            word = match.group(1).lower()
            count = int(word) if word.isdigit() else _NUMBER_WORDS[word]
            return round(count * tokens_per_unit)
    return None


def estimate_response_length(query: str, task_type: TaskType) -> int:
    """Expected answer length in tokens (50..1500), from the length cues in ``query``.

    Args:
        query: the user's question.
        task_type: its task class (sets the default when the query gives no size cue).

    Returns:
        The estimate in cl100k_base tokens.
    """
    explicit = _explicit_size(query)
    if explicit is not None:
        return _clamp(explicit, _MIN_LENGTH, _MAX_LENGTH)
    if _TERSE.search(query):
        return _MIN_LENGTH
    forms = [tokens for pattern, tokens in _FORMS if pattern.search(query)]
    estimate = max(forms) if forms else _DEFAULT_LENGTH[task_type]
    if _LONG.search(query):
        estimate = max(2 * estimate, _LONG_FLOOR)
    elif _BRIEF.search(query):
        estimate = min(estimate, _BRIEF_CAP)
    return _clamp(estimate, _MIN_LENGTH, _MAX_LENGTH)


def scores_from_features(
    query: str, features: QueryFeatures, task_type: TaskType, context_items: int
) -> SelectionScores:
    """:func:`score_query` for features already extracted from ``query``."""
    complexity = 1 + sum(
        (
            features.tokens > 20,
            features.tokens > 60,
            features.tokens > 150,
            features.parts >= 2,
            features.parts >= 4,
            features.reasoning >= 3,
            context_items >= 5,
        )
    )
    reasoning_depth = (
        1 + math.ceil(features.reasoning / 2) + (features.parts >= 2) + (features.parts >= 4)
    )
    factual = (
        1
        + min(2, features.factual)
        + (features.entities >= 1)
        + (features.entities >= 3 or features.numbers > 0)
    )
    return SelectionScores(
        complexity=_clamp(complexity),
        creativity_required=_clamp(1 + math.ceil(features.creative / 2)),
        reasoning_depth=_clamp(reasoning_depth),
        factual_knowledge=_clamp(factual),
        response_length=estimate_response_length(query, task_type),
    )


def score_query(query: str, task_type: TaskType, context_items: int = 0) -> SelectionScores:
    """Score ``query`` for routing (formulas in the module docstring).

    Args:
        query: the user's question.
        task_type: its task class (only ``response_length``'s default depends on it).
        context_items: how many context items the request carries (5 or more adds complexity).

    Returns:
        Scores from 1 to 5, and ``response_length`` in tokens (50..1500).
    """
    return scores_from_features(query, extract_features(query), task_type, context_items)


# --------------------------------------------------------------------------- select


def _reason(task_type: TaskType, scores: SelectionScores, routing: Routing) -> str:
    rule = SELECTION_TABLE[task_type]
    escalation = routing.escalation_tier.value if routing.escalation_tier else "none"
    if routing.used_fallback:
        why = ", ".join(f"{t.criterion} {value} > {t.limit}" for t, value in routing.exceeded)
        return f"{task_type}: {why} -> fallback {routing.tier}; escalation {escalation}"
    if not rule.thresholds:
        return f"{task_type}: no thresholds -> primary {routing.tier}; escalation {escalation}"
    within = ", ".join(
        f"{t.criterion} {getattr(scores, t.criterion)} <= {t.limit}" for t in rule.thresholds
    )
    return f"{task_type}: {within} -> primary {routing.tier}; escalation {escalation}"


def select_model(inp: SelectModelInput) -> SelectModelResult:
    """Choose the tier that answers ``inp.query``, and the tier to escalate to if it fails.

    The task type and scores are always computed (they are reported even when the tier is
    pinned). Pure: the same input always gives the same result.

    Args:
        inp: the query, the names of requested tools, the number of context items and an
            optional pinned tier.

    Returns:
        Task type, scores, tier, escalation tier (``None`` when there is nowhere larger to go)
        and a one-line reason such as
        ``"simple_factual: complexity 4 > 3 -> fallback medium; escalation large"``.
    """
    features = extract_features(inp.query)
    task_type = _classify(features, inp.tool_call_names)
    scores = scores_from_features(inp.query, features, task_type, inp.context_items)
    if inp.pinned_tier is not None:
        tier = inp.pinned_tier
        escalation_tier = tier.next_up()
        escalation = escalation_tier.value if escalation_tier else "none"
        reason = (
            f"pinned to {tier} by the request ({task_type} not routed); escalation {escalation}"
        )
    else:
        routing = apply_table(task_type, scores)
        tier, escalation_tier = routing.tier, routing.escalation_tier
        reason = _reason(task_type, scores, routing)
    return SelectModelResult(
        task_type=task_type,
        scores=scores,
        tier=tier,
        escalation_tier=escalation_tier,
        reason=reason,
    )
