"""Benchmark: the learned router against the cue table and fixed tiers, on labelled prompts.

Two sets, both labelled by ``data/routing/POLICY.md``: the corpus's held-out split (a quarter of
``data/routing/prompts``, stratified by domain and tier, never trained on) and the 68 shipped
example requests (``examples/requests.jsonl``, labels in ``data/routing/examples.jsonl``).

Variants: the learned router at its recommended operating point and at P(large) > 0.5; the old
cue router (the seed's keyword table); always-small; always-large (the baseline). For the
examples, and for a second pass over the held-out split, every router sees what selection sees in
a job: the request's tool calls plus the rules planner's, so the learned router's tool-answered
rule applies (a pinned ``model_tier`` is ignored: routers are compared, not the file's pins).

Per variant: tier accuracy against the labels, recall of needs-large prompts, share of prompts
sent to large, and expected cost relative to always-large (each prompt's cost on its tier from
the default catalog, draft included, with the completion length estimated from the label's task
type so every router is charged the same tokens). Row values are per-prompt costs in USD.
A last case times inference on the same prompts, alternating, in one process: the learned
model's ``predict``, the learned selection a job runs (route and context-window fit) and the cue
table's selection (the baseline), in ms per prompt.

The notes give the confusion matrix and the ten worst misroutes of the recommended point.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from benchmarks.context import BenchContext
from benchmarks.report import BenchResult
from cli.router import RouterScore, evaluate, label_costs
from core.catalog import ModelCatalog
from core.models import SelectModelInput, Tier
from core.routing_corpus import load_corpus, load_examples, split_corpus
from core.settings import PROJECT_ROOT, Settings
from core.stats import percentile
from core.tools import ToolRegistry
from domain.learned_router import RouterPrediction, shipped_model
from domain.planner import plan_tools_by_rules
from domain.routing import CueRouter, LearnedRouter, select_with
from infra.tools import builtin_registry

SECOND_THRESHOLD = 0.5


@dataclass
class Case:
    """One labelled prompt with what selection would see."""

    ident: str
    prompt: str
    label: Tier
    task_type: str
    inp: SelectModelInput


def _heldout_cases(*, with_tools: bool = False) -> list[Case]:
    _, held = split_corpus(load_corpus())
    registry = builtin_registry(Settings())
    cases = []
    for p in held:
        inp = SelectModelInput(query=p.prompt)
        if with_tools:
            inp = _with_planned_tools(p.prompt, [], registry)
        cases.append(Case(p.id, p.prompt, p.tier, str(p.task_type), inp))
    return cases


def _with_planned_tools(
    query: str, names: list[str], registry: ToolRegistry, *, context: Sequence[dict[str, str]] = ()
) -> SelectModelInput:
    """What selection sees in a job: the request's tools plus the rules planner's."""
    names = names + [c.name for c in plan_tools_by_rules(query, registry)]
    return SelectModelInput(
        query=query,
        tool_call_names=names,
        context_items=len(context),
        context_tokens=sum(len(c["content"]) for c in context) // 4,
        tools_answer=registry.all_answer_query(names),
    )


def _example_cases() -> list[Case]:
    registry = builtin_registry(Settings())
    lines = (PROJECT_ROOT / "examples" / "requests.jsonl").read_text().splitlines()
    cases = []
    for label in load_examples():
        request = json.loads(lines[label.line - 1])
        inp = _with_planned_tools(
            request["query"],
            [c["name"] for c in request.get("tool_calls", [])],
            registry,
            context=request.get("context", []),
        )
        cases.append(
            Case(f"line {label.line}", request["query"], label.tier, str(label.task_type), inp)
        )
    return cases


def _confusion(score: RouterScore) -> str:
    header = "label \\ routed: " + " / ".join(t.value for t in Tier)
    rows = [
        f"{label.value}: " + " / ".join(str(score.confusion[label][t]) for t in Tier)
        for label in Tier
    ]
    return f"{header}; " + "; ".join(rows)


def _worst(
    cases: list[Case], chosen: list[Tier], predictions: list[RouterPrediction], k: int = 10
) -> list[str]:
    order = list(Tier)
    misses = []
    for case, tier, p in zip(cases, chosen, predictions, strict=True):
        if tier is case.label:
            continue
        distance = abs(order.index(tier) - order.index(case.label))
        wrong_confidence = p.p_large if case.label is not Tier.LARGE else 1 - p.p_large
        misses.append((distance, wrong_confidence, case, tier, p))
    misses.sort(key=lambda m: (-m[0], -m[1]))
    lines = []
    for _, _, case, tier, p in misses[:k]:
        text = " ".join(case.prompt.split())
        text = text if len(text) <= 90 else text[:87] + "..."
        lines.append(
            f"{case.ident} label {case.label} -> {tier} (P(large) {p.p_large:.2f}, "
            f"P(small) {p.p_small:.2f}): {text}"
        )
    return lines


async def run(ctx: BenchContext) -> BenchResult:
    """Score every router on both labelled sets and time inference."""
    model = shipped_model()
    catalog = ModelCatalog.default()
    recommended = LearnedRouter(model)
    second = LearnedRouter(model, large_threshold=SECOND_THRESHOLD)
    cue = CueRouter()
    result = BenchResult(
        name="routing",
        title="Model routing: learned router vs cue table vs fixed tiers on labelled prompts",
        baseline="always large: every prompt on the large tier (the cost of never trusting a "
        "smaller model)",
        unit="USD",
        params={
            "artifact": model.version,
            "recommended_threshold": recommended.large_threshold,
            "second_threshold": SECOND_THRESHOLD,
            "small_threshold": recommended.small_threshold,
        },
    )
    for case_name, cases in (
        ("held-out split", _heldout_cases()),
        ("held-out split, with the rules planner's tools", _heldout_cases(with_tools=True)),
        ("shipped examples", _example_cases()),
    ):
        if ctx.smoke:
            cases = cases[:20]
        title = f"{case_name}, {len(cases)} prompts"
        labels = [c.label for c in cases]
        costs = label_costs([c.prompt for c in cases], [c.task_type for c in cases], catalog)
        predictions = [model.predict(c.inp.query) for c in cases]
        variants: list[tuple[str, list[Tier]]] = [
            (
                f"learned, t={recommended.large_threshold:.2f}",
                [recommended.route(c.inp).tier for c in cases],
            ),
            (f"learned, t={SECOND_THRESHOLD:.2f}", [second.route(c.inp).tier for c in cases]),
            ("cue table (old)", [cue.route(c.inp).tier for c in cases]),
            ("always small", [Tier.SMALL] * len(cases)),
            ("always large", [Tier.LARGE] * len(cases)),
        ]
        scores = {}
        for name, chosen in variants:
            score = evaluate(name, labels, chosen, costs)
            scores[name] = score
            result.add(
                title,
                name,
                [c[t] for c, t in zip(costs, chosen, strict=True)],
                baseline=name == "always large",
                accuracy=round(score.accuracy, 3),
                recall_needs_large=round(score.recall_large, 3),
                large_share=round(score.large_share, 3),
                cost_vs_always_large=round(score.cost_ratio, 3),
                tiers=" / ".join(f"{t} {sum(x is t for x in chosen)}" for t in Tier),
            )
        best = scores[variants[0][0]]
        old = scores["cue table (old)"]
        short = {
            "held-out split": "held-out",
            "shipped examples": "examples",
        }.get(case_name, "held-out with tools")
        result.headline(f"{short}: learned accuracy", best.accuracy * 100, "%")
        result.headline(f"{short}: cue table accuracy", old.accuracy * 100, "%")
        result.headline(f"{short}: learned recall of needs-large", best.recall_large, "")
        result.headline(f"{short}: learned share sent to large", best.large_share * 100, "%")
        result.headline(f"{short}: learned cost, fraction of always-large", best.cost_ratio)
        result.notes.append(f"{title}, {variants[0][0]}: confusion {_confusion(best)}.")
        result.notes.append(f"{title}, cue table: confusion {_confusion(old)}.")
        worst = _worst(cases, variants[0][1], predictions)
        if worst:
            result.notes.append(
                f"{title}: the {len(worst)} worst misroutes of {variants[0][0]} (two tiers off "
                "first, then the most confident): " + " | ".join(worst)
            )

    # Inference latency, alternating on the same prompts: the learned model's predict, the
    # whole learned selection (route + context-window fit, what a job runs), and the cue
    # table's selection (the baseline).
    prompts = [c.prompt for c in _heldout_cases()]
    if ctx.smoke:
        prompts = prompts[:20]
    timings: dict[str, list[float]] = {"predict": [], "learned": [], "cue": []}
    calls: dict[str, Callable[[str], object]] = {
        "predict": lambda p: model.predict(p),
        "learned": lambda p: select_with(recommended, SelectModelInput(query=p), catalog),
        "cue": lambda p: select_with(cue, SelectModelInput(query=p), catalog),
    }
    for p in prompts[:50]:
        for call in calls.values():
            call(p)  # warm-up: tokenizer, memo
    for _ in range(max(1, ctx.repeats // 10)):
        for p in prompts:
            for name, call in calls.items():
                t0 = time.perf_counter()
                call(p)
                timings[name].append((time.perf_counter() - t0) * 1000)
    case = "inference, ms per prompt"
    result.add(case, "cue table selection", timings["cue"], baseline=True)
    result.add(case, "learned selection (route + fit)", timings["learned"])
    result.add(case, "learned model predict only", timings["predict"])
    for name, label in (("predict", "model predict"), ("learned", "learned selection")):
        ordered = sorted(timings[name])
        result.headline(f"{label} p50", statistics.median(ordered), "ms")
        p95 = percentile(ordered, 95, method="nearest-rank")
        result.headline(f"{label} p95", p95 if p95 is not None else math.nan, "ms")
    result.headline(
        "learned selection vs cue table (p50)",
        statistics.median(timings["learned"]) / statistics.median(timings["cue"]),
    )
    lengths = sorted(len(p) for p in prompts)
    result.notes.append(
        "Inference rows are in ms, not USD, on the held-out prompts (median "
        f"{lengths[len(lengths) // 2]} characters, longest {lengths[-1]}). Both selections "
        "compute the cue table's features (regular expressions) and the five scores; the "
        "learned one adds the n-grams, the policy cues and the linear model."
    )
    return result
