"""Routers: who picks the tier, and the rules every choice then passes (context windows).

A :class:`Router` turns a :class:`~core.models.SelectModelInput` into a
:class:`~core.models.SelectModelResult`. Three exist:

* :class:`CueRouter`: the seed's hand-weighted cue table (:mod:`domain.selection`), kept as
  the baseline;
* :class:`LearnedRouter`: the calibrated classifier shipped in ``core/data/router.json``
  (:mod:`domain.learned_router`) with an operating point, the cost/quality knob;
* :class:`domain.llm_router.LlmRouter`: the small tier classifies the prompt itself when it
  is a real model, falling back to the learned router.

The learned router's rule, in order (``AGENTFLOW_ROUTER_*`` settings):

1. a tier pinned by the request wins;
2. **tool-answered**: when every planned tool call answers the question by itself (selection
   runs after planning), the task is not creative writing and the prompt does not ask to derive
   something the tool cannot settle (:func:`asks_to_derive`: solve, prove, probability, write
   a function, ...), the small tier reports the tool's result, unless P(needs large) is above
   ``tool_answered_max_p_large``;
3. P(needs large) > ``large_threshold`` -> large;
4. P(small suffices) > ``small_threshold`` -> small;
5. otherwise medium.

Whatever the router chose then passes :func:`fit_context_window`: a prompt whose expected size
does not fit the tier's ``context_window`` moves up to the smallest tier that holds it.
The escalation tier (the cascade's next step when the chosen tier fails) is the next larger tier
that fits, or ``None``.
"""

from __future__ import annotations

import re
from typing import Protocol

from core.catalog import ModelCatalog
from core.models import SelectModelInput, SelectModelResult, TaskType, Tier
from core.settings import Settings
from core.tokens import PROMPT_OVERHEAD_TOKENS, estimate_tokens
from domain.learned_router import RouterModel, RouterPrediction, head_features, router_head
from domain.selection import scores_from_features, select_model

DEFAULT_SMALL_THRESHOLD = 0.5
DEFAULT_TOOL_ANSWERED_MAX_P_LARGE = 1.0


class Router(Protocol):
    """Chooses a tier for a request; pure and synchronous (the LLM router wraps one).

    Attributes:
        name: ``cue``, ``learned`` or ``llm`` (recorded in :attr:`SelectModelResult.router`).
    """

    name: str

    def route(self, inp: SelectModelInput) -> SelectModelResult:
        """The tier, the escalation tier, the task type, the five scores and the reason."""
        ...


class CueRouter:
    """The seed's cue table (:func:`domain.selection.select_model`), the baseline."""

    name = "cue"

    def route(self, inp: SelectModelInput) -> SelectModelResult:
        """Route with the cue table (its rules are in :mod:`domain.selection`)."""
        return select_model(inp).model_copy(update={"router": self.name})


class LearnedRouter:
    """The calibrated classifier with an operating point (rules in the module docstring).

    Args:
        model: the loaded artifact.
        large_threshold: send to large when P(needs large) is above it (0..1); ``None``: the
            artifact's recommended operating point. Lower means more large calls and higher
            recall of prompts that need large (``agentflow router calibrate`` prints the curve).
        small_threshold: send to small when P(small suffices) is above it (0..1).
        tool_answered_max_p_large: the tool-answered rule yields to the model above this
            P(needs large) (1.0 turns the yield off; 0.0 turns the rule off).

    Raises:
        ValueError: a threshold outside 0..1 (or NaN).
    """

    name = "learned"

    def __init__(
        self,
        model: RouterModel,
        *,
        large_threshold: float | None = None,
        small_threshold: float = DEFAULT_SMALL_THRESHOLD,
        tool_answered_max_p_large: float = DEFAULT_TOOL_ANSWERED_MAX_P_LARGE,
    ) -> None:
        for name, value in (
            ("large_threshold", large_threshold),
            ("small_threshold", small_threshold),
            ("tool_answered_max_p_large", tool_answered_max_p_large),
        ):
            if value is not None and not 0 <= value <= 1:  # NaN fails too
                raise ValueError(f"{name} must be between 0 and 1, not {value}")
        self.model = model
        self.large_threshold = (
            model.recommended_large_threshold if large_threshold is None else large_threshold
        )
        self.small_threshold = small_threshold
        self.tool_answered_max_p_large = tool_answered_max_p_large

    def choose(
        self, prediction: RouterPrediction, *, tools_answer: bool = False, derives: bool = False
    ) -> tuple[Tier, str]:
        """Apply the operating point to a prediction: the tier and why (rules 2-5).

        Args:
            prediction: the model's probabilities and task type.
            tools_answer: every planned tool call answers the question by itself.
            derives: the prompt asks to derive something a tool result does not settle
                (:func:`asks_to_derive`); it turns the tool-answered rule off.
        """
        p_large, p_small = prediction.p_large, prediction.p_small
        t = self.large_threshold
        if (
            tools_answer
            and not derives
            and prediction.task_type is not TaskType.CREATIVE_GENERATION
            and p_large <= self.tool_answered_max_p_large
        ):
            return Tier.SMALL, f"tool-answered (P(large) {p_large:.2f}): small reports the result"
        if p_large > t:
            return Tier.LARGE, f"P(large) {p_large:.3f} > {t:.3f}"
        if p_small > self.small_threshold:
            return (
                Tier.SMALL,
                f"P(large) {p_large:.3f} <= {t:.3f}, P(small) {p_small:.3f} > "
                f"{self.small_threshold:.3f}",
            )
        return (
            Tier.MEDIUM,
            f"P(large) {p_large:.3f} <= {t:.3f}, P(small) {p_small:.3f} <= "
            f"{self.small_threshold:.3f}",
        )

    def route(self, inp: SelectModelInput) -> SelectModelResult:
        """Route ``inp`` (see the module docstring).

        The five scores come from the cue scorer, read (like the model) from the query's first
        3,000 and last 1,000 characters, with the whole query's token count.
        """
        features = head_features(inp.query)
        prediction = self.model.predict(inp.query, features)
        task_type = prediction.task_type
        if inp.tool_call_names and task_type is not TaskType.CREATIVE_GENERATION:
            task_type = TaskType.TOOL_USAGE
        if inp.pinned_tier is not None:
            tier, why = inp.pinned_tier, f"pinned to {inp.pinned_tier} by the request"
        else:
            tier, why = self.choose(
                prediction,
                tools_answer=inp.tools_answer,
                derives=inp.tools_answer and asks_to_derive(inp.query),
            )
        escalation = tier.next_up()
        return SelectModelResult(
            task_type=task_type,
            scores=scores_from_features(
                router_head(inp.query), features, task_type, inp.context_items
            ),
            tier=tier,
            escalation_tier=escalation,
            reason=f"learned: {task_type}, {why} -> {tier}; escalation "
            f"{escalation.value if escalation else 'none'}",
            router=self.name,
            router_version=self.model.version,
            p_large=round(prediction.p_large, 4),
            p_small=round(prediction.p_small, 4),
            large_threshold=self.large_threshold,
        )


DERIVE_CUES = re.compile(
    r"\b(?:solve|prove|proof|derive|derivation|derivative|integral|integrate|differentiate"
    r"|probability|remainder|how many ways|find all|equation|theorem|optimi[sz]e|algorithm"
    r"|complexity|implement|debug|bug|fix|rewrite|refactor|what'?s wrong|doesn'?t work"
    r"|fonction|funci[oó]n|funktion|funzione|fun[cç][aã]o|if we'?d|would have)\b"
    r"|\u51fd\u6570|\u95a2\u6570|\u7a0b\u5e8f|```",
    re.IGNORECASE,
)
"""Words that ask for a derivation a tool's result does not settle by itself: math to solve or
prove, code to write, fix or explain (also "function" in a few other languages, and any pasted
code block), counterfactuals."""


CODE_ASK = re.compile(
    r"\b(?:write|implement|build|code|create)\s+(?:\w+\s+){0,6}?(?:function|program|script"
    r"|class(?!\s+(?:object|definition|statement))|method|query|regex|parser|api|endpoint"
    r"|decorator|test)s?\b",
    re.IGNORECASE,
)
"""Asks for code to be written (a class *object* or *definition* is a question about Python)."""

CODE_PASTED = re.compile(r"\n[ \t]{2,}\S|\bdef \w+\(|\breturn\b|=>|[{};][ \t]*\n|```")
"""Code pasted into the prompt: indented lines, a function header, ``return``, braces."""


def asks_to_derive(query: str) -> bool:
    """Whether ``query`` asks to derive rather than to look up or compute (policy rule 1).

    True when it names a derivation (:data:`DERIVE_CUES`: solve, prove, probability, fix, ...),
    asks for code (:data:`CODE_ASK`: write a function, implement a class, ...) or pastes code
    (:data:`CODE_PASTED`: an indented line, ``def f(``, ``return``, braces at line ends). A
    calculator can evaluate "365 * 24 * 60 * 60" but not "solve dy/dx = y(1 - y)", and a
    documentation search can say what ``yield`` does but not write a Trie class, so for such
    prompts the tool-answered rule does not apply.
    """
    head = router_head(query)
    return bool(DERIVE_CUES.search(head) or CODE_ASK.search(head) or CODE_PASTED.search(head))


def prompt_tokens_estimate(inp: SelectModelInput) -> int:
    """Prompt tokens of the generation call for ``inp``.

    The query (:func:`core.tokens.estimate_tokens`), the context after compression
    (``inp.context_tokens``, at most the request's budget) and
    :data:`core.tokens.PROMPT_OVERHEAD_TOKENS`.
    """
    return estimate_tokens(inp.query) + inp.context_tokens + PROMPT_OVERHEAD_TOKENS


def expected_tokens(inp: SelectModelInput, result: SelectModelResult) -> int:
    """Tokens one generation call must hold, prompt and completion.

    :func:`prompt_tokens_estimate` plus the expected answer (``scores.response_length``).
    """
    return prompt_tokens_estimate(inp) + result.scores.response_length


def fit_context_window(
    result: SelectModelResult, inp: SelectModelInput, catalog: ModelCatalog
) -> SelectModelResult:
    """Move ``result`` up to the smallest tier whose ``context_window`` holds the prompt.

    Args:
        result: a router's choice.
        inp: the request it chose for (query and expected context tokens).
        catalog: this worker's catalog (each entry's ``context_window``, tokens).

    Returns:
        ``result`` with ``prompt_tokens`` set; when the chosen tier cannot hold it, the
        smallest larger tier that can (or the large tier when none can), an escalation tier
        that also fits (the next larger tier that does, else ``None``), and the reason
        extended to say so. A pinned tier moves too: a model cannot take a prompt larger than
        its window. Catalog windows never shrink from small to large
        (:class:`core.catalog.ModelCatalog` checks it), so moving up never moves to less room.
    """
    need = expected_tokens(inp, result)
    order = list(Tier)
    reason, found, _ = result.reason.rpartition("; escalation ")
    if not found:
        reason = result.reason
    tier, escalation = result.tier, result.escalation_tier
    window = catalog.for_tier(tier).context_window
    if need > window:
        larger = [
            t for t in order[order.index(tier) + 1 :] if catalog.for_tier(t).context_window >= need
        ]
        tier = larger[0] if larger else order[-1]
        if larger:
            reason += f"; context {need:,} tokens > {result.tier} window {window:,} -> {tier}"
        else:
            reason += (
                f"; context {need:,} tokens fits no tier's window -> {tier} (the largest, "
                f"{catalog.for_tier(tier).context_window:,}; a smaller max_context_tokens fits)"
            )
    if escalation is not None:
        bigger = [
            t for t in order[order.index(tier) + 1 :] if catalog.for_tier(t).context_window >= need
        ]
        escalation = bigger[0] if bigger else None
    return result.model_copy(
        update={
            "tier": tier,
            "escalation_tier": escalation,
            "reason": f"{reason}; escalation {escalation.value if escalation else 'none'}",
            "prompt_tokens": need,
        }
    )


def select_with(router: Router, inp: SelectModelInput, catalog: ModelCatalog) -> SelectModelResult:
    """``router``'s choice for ``inp``, fitted to the catalog's context windows."""
    return fit_context_window(router.route(inp), inp, catalog)


def build_router(
    kind: str,
    *,
    model: RouterModel | None = None,
    large_threshold: float | None = None,
    small_threshold: float = DEFAULT_SMALL_THRESHOLD,
    tool_answered_max_p_large: float = DEFAULT_TOOL_ANSWERED_MAX_P_LARGE,
) -> Router:
    """The synchronous router the settings name (``cue`` or ``learned``).

    ``llm`` builds the learned router here; the caller wraps it in
    :class:`domain.llm_router.LlmRouter` when the small tier is a real model.

    Args:
        kind: ``AGENTFLOW_ROUTER``.
        model: the learned artifact (default: the shipped one, loaded once per process).
        large_threshold: P(needs large) above which to route to large (``None``: the
            artifact's recommendation).
        small_threshold: P(small suffices) above which to route to small.
        tool_answered_max_p_large: P(needs large) above which tool-answered yields.

    Raises:
        ValueError: an unknown kind, or an artifact that does not load (message names it).
    """
    if kind == "cue":
        return CueRouter()
    if kind not in ("learned", "llm"):
        raise ValueError(f"AGENTFLOW_ROUTER must be cue, learned or llm, not {kind!r}")
    if model is None:
        from domain.learned_router import shipped_model

        model = shipped_model()
    return LearnedRouter(
        model,
        large_threshold=large_threshold,
        small_threshold=small_threshold,
        tool_answered_max_p_large=tool_answered_max_p_large,
    )


def router_from_settings(settings: Settings) -> Router:
    """The router ``AGENTFLOW_ROUTER`` and its ``AGENTFLOW_ROUTER_*`` settings describe.

    Raises:
        ValueError: ``AGENTFLOW_ROUTER_ARTIFACT`` does not load (the message names the file).
    """
    model = None
    if settings.router != "cue" and settings.router_artifact is not None:
        from domain.learned_router import RouterModel

        model = RouterModel.from_file(settings.router_artifact)
    return build_router(
        settings.router,
        model=model,
        large_threshold=settings.router_large_threshold,
        small_threshold=settings.router_small_threshold,
        tool_answered_max_p_large=settings.router_tool_answered_max_p_large,
    )
