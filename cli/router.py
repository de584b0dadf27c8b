"""``agentflow router``: train the learned router, check it, and choose its operating point.

* ``agentflow router train [--check]`` trains on the corpus's training split and writes
  ``core/data/router.json`` (``--check`` writes nothing and fails when a fresh training does not
  reproduce the shipped file byte for byte). Needs the ``train`` extra (scikit-learn).
* ``agentflow router calibrate`` prints, for a range of thresholds, the share of prompts sent to
  the large tier against the recall of prompts that need it, accuracy and cost relative to
  always-large, on the held-out split (prompts the model never saw), so an operator can choose
  ``AGENTFLOW_ROUTER_LARGE_THRESHOLD``.

The evaluation helpers here (:func:`evaluate`, :func:`label_costs`) are shared with the routing
benchmark and the tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:  # numpy, the tokenizer and the corpus load only when a command runs
    from rich.console import Console

    from core.catalog import ModelCatalog
    from core.models import Tier
    from core.routing_corpus import LabelledPrompt
    from domain.learned_router import RouterModel, RouterPrediction

router_app = typer.Typer(name="router", help="Train, check and calibrate the learned router.")


def _console() -> Console:
    from rich.console import Console

    return Console()


@dataclass
class RouterScore:
    """How a router's tiers compare with the labels.

    Attributes:
        name: the router (and operating point) scored.
        prompts: how many prompts.
        accuracy: share whose tier equals the label (0..1).
        recall_large: share of needs-large prompts sent to large (0..1).
        large_share: share of all prompts sent to large (0..1).
        cost_ratio: expected model cost relative to sending everything to large.
        confusion: ``confusion[label][chosen]`` counts.
    """

    name: str
    prompts: int
    accuracy: float
    recall_large: float
    large_share: float
    cost_ratio: float
    confusion: dict[Tier, dict[Tier, int]] = field(default_factory=dict)


def label_costs(
    prompts: Sequence[str], task_types: Sequence[str], catalog: ModelCatalog
) -> list[dict[Tier, float]]:
    """Expected cost in USD of each prompt on each tier (draft included above small).

    The completion estimate comes from the label's task type, so it is the same whichever
    router is scored (:func:`core.catalog.ModelCatalog.estimate_remaining_cost_usd`).
    """
    from core.models import TaskType, Tier
    from core.tokens import PROMPT_OVERHEAD_TOKENS, count_tokens
    from domain.selection import estimate_response_length

    costs = []
    for prompt, task_type in zip(prompts, task_types, strict=True):
        tokens = count_tokens(prompt) + PROMPT_OVERHEAD_TOKENS
        completion = estimate_response_length(prompt, TaskType(task_type))
        costs.append(
            {
                tier: catalog.estimate_remaining_cost_usd(
                    tier, prompt_tokens=tokens, completion_tokens=completion
                )
                for tier in Tier
            }
        )
    return costs


def evaluate(
    name: str, labels: Sequence[Tier], chosen: Sequence[Tier], costs: Sequence[dict[Tier, float]]
) -> RouterScore:
    """Score ``chosen`` tiers against ``labels`` (see :class:`RouterScore`)."""
    from core.models import Tier

    n = len(labels)
    confusion = {label: dict.fromkeys(Tier, 0) for label in Tier}
    for label, tier in zip(labels, chosen, strict=True):
        confusion[label][tier] += 1
    needs_large = sum(label is Tier.LARGE for label in labels)
    spent = sum(c[t] for c, t in zip(costs, chosen, strict=True))
    always_large = sum(c[Tier.LARGE] for c in costs)
    return RouterScore(
        name=name,
        prompts=n,
        accuracy=sum(a is b for a, b in zip(labels, chosen, strict=True)) / max(1, n),
        recall_large=confusion[Tier.LARGE][Tier.LARGE] / max(1, needs_large),
        large_share=sum(t is Tier.LARGE for t in chosen) / max(1, n),
        cost_ratio=spent / always_large if always_large else 0.0,
        confusion=confusion,
    )


def tiers_at(
    model: RouterModel,
    predictions: Sequence[RouterPrediction],
    large_threshold: float,
    small_threshold: float = 0.5,
) -> list[Tier]:
    """The learned router's tiers for ``predictions`` at an operating point (no tools)."""
    from domain.routing import LearnedRouter

    router = LearnedRouter(model, large_threshold=large_threshold, small_threshold=small_threshold)
    return [router.choose(p)[0] for p in predictions]


def heldout() -> list[LabelledPrompt]:
    """The held-out split of the shipped corpus."""
    from core.routing_corpus import load_corpus, split_corpus

    return split_corpus(load_corpus())[1]


@router_app.command("train")
def train_command(
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Where to write the artifact (default: core/data/router.json)."),
    ] = None,
    check: Annotated[
        bool,
        typer.Option(
            "--check", help="Write nothing; fail unless training reproduces the file at --out."
        ),
    ] = False,
) -> None:
    """Train on the corpus's training split and write (or check) the artifact."""
    from cli.router_training import artifact_bytes, artifact_sha256, train_artifact
    from core.routing_corpus import load_corpus, split_corpus
    from domain.learned_router import ARTIFACT_PATH

    out = out or ARTIFACT_PATH
    console = _console()
    train, held = split_corpus(load_corpus())
    console.print(f"training on {len(train)} prompts ({len(held)} held out) ...")
    data = artifact_bytes(train_artifact(train))
    digest = artifact_sha256(data)
    if check:
        shipped = out.read_bytes() if out.exists() else b""
        if shipped != data:
            console.print(
                f"[red]{out} differs from a fresh training[/] (fresh {digest[:16]}, shipped "
                f"{artifact_sha256(shipped)[:16]}): retrain with `agentflow router train`"
            )
            raise typer.Exit(1)
        console.print(f"{out} reproduced exactly: sha256 {digest}")
        return
    out.write_bytes(data)
    console.print(f"wrote {out} ({len(data) / 1024:.0f} KiB), sha256 {digest}")


@router_app.command("calibrate")
def calibrate_command(
    small_threshold: Annotated[
        float, typer.Option("--small-threshold", min=0.01, max=0.99, help="P(small) cut-off.")
    ] = 0.5,
    artifact: Annotated[
        Path | None,
        typer.Option(
            "--artifact",
            help="Artifact to calibrate (default: AGENTFLOW_ROUTER_ARTIFACT, else the shipped "
            "one).",
        ),
    ] = None,
) -> None:
    """Print large share vs recall (and accuracy, cost) per threshold on the held-out split."""
    from rich.table import Table

    from core.catalog import ModelCatalog
    from core.models import Tier
    from core.settings import get_settings
    from domain.learned_router import RouterModel, shipped_model

    path = artifact or get_settings().router_artifact
    model = RouterModel.from_file(path) if path is not None else shipped_model()
    prompts = heldout()
    predictions = [model.predict(p.prompt) for p in prompts]
    labels = [p.tier for p in prompts]
    costs = label_costs(
        [p.prompt for p in prompts], [p.task_type for p in prompts], ModelCatalog.default()
    )
    table = Table(
        title=f"{model.version} on {len(prompts)} held-out prompts "
        f"({sum(t is Tier.LARGE for t in labels)} need large); route to large when "
        "P(large) > threshold"
    )
    for column in ("threshold", "large share", "recall needs-large", "accuracy", "cost vs large"):
        table.add_column(column, justify="right")
    recommended = model.recommended_large_threshold
    grid = sorted({round(h / 100, 2) for h in range(5, 100, 5)} | {recommended})
    for t in grid:
        score = evaluate(
            f"{t:.2f}", labels, tiers_at(model, predictions, t, small_threshold), costs
        )
        mark = " (recommended)" if abs(t - recommended) < 1e-9 else ""
        table.add_row(
            f"{t:.2f}{mark}",
            f"{score.large_share:.1%}",
            f"{score.recall_large:.1%}",
            f"{score.accuracy:.1%}",
            f"{score.cost_ratio:.2f}",
        )
    console = _console()
    console.print(table)
    console.print(
        f"recommended threshold {recommended:.2f} (chosen on the training split); set "
        "AGENTFLOW_ROUTER_LARGE_THRESHOLD to move along the curve"
    )
