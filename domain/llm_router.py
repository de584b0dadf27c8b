"""The LLM router: the small tier classifies the prompt itself, the learned router backs it up.

Used when ``AGENTFLOW_ROUTER=llm`` and the small tier is a real model (a simulated model's
"classification" would be made up, so with the simulated provider the learned router decides and
the reason says so). The model sees the labelling policy in short and the prompt's head and tail
(at most :data:`MAX_PROMPT_CHARS` characters) and answers with one JSON object, validated by
:class:`LlmVerdict`. Any failure (provider error, timeout, text that is not such an object)
falls back to the learned router's choice, which is always computed first, and the reason
records why. The model's own words never reach the reason or the API: only the validated tier
and task type do.
"""

from __future__ import annotations

import asyncio
import json
import re
import time

from pydantic import BaseModel, ConfigDict, ValidationError

from core.catalog import ModelSpec
from core.errors import AgentflowError, ErrorType
from core.models import SelectModelInput, SelectModelResult, TaskType, Tier
from core.providers import ChatMessage, Completion, ModelProvider, usage_of
from domain.routing import LearnedRouter

MAX_PROMPT_CHARS = 2500
"""The most prompt characters the classifier sees (first 2,000 and last 500)."""

MAX_VERDICT_CHARS = 2000
"""A verdict is one small JSON object; a longer answer is refused unparsed."""

VERDICT_MAX_TOKENS = 64
"""Completion tokens the classifier may use: one small JSON object."""

_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$", re.MULTILINE)

SYSTEM_PROMPT = (
    "You route requests to the smallest model tier that answers them well.\n"
    "large: the answer must be derived: multi-step reasoning or logic puzzles (even short "
    "ones), math beyond one step, writing/debugging/reviewing non-trivial code or SQL, design "
    "under constraints.\n"
    "small: the answer is in the prompt or a tool result, or is one well-known fact: "
    "extraction, classification, reformatting, translation, short summaries of given text, a "
    "definition, one-step arithmetic, how one documented API behaves.\n"
    "medium: everything else: open-ended writing, role-play, explanations, advice.\n"
    "A multi-part request gets the tier of its hardest part; length and language do not matter."
    "\nAnswer with only a JSON object: "
    '{"tier": "small|medium|large", "task_type": '
    '"simple_factual|creative_generation|complex_reasoning|tool_usage"}'
)


class LlmVerdict(BaseModel):
    """The classifier's answer (extra keys are ignored, missing or invalid ones refused)."""

    model_config = ConfigDict(extra="ignore")

    tier: Tier
    task_type: TaskType


class VerdictParseError(AgentflowError, ValueError):
    """The classifier's answer is not a JSON object with a valid tier and task type."""

    type = ErrorType.ROUTER_VERDICT_INVALID
    retryable = False


def routing_messages(inp: SelectModelInput) -> list[ChatMessage]:
    """The classification prompt for ``inp`` (policy in short, planned tools, the prompt)."""
    query = inp.query
    if len(query) > MAX_PROMPT_CHARS:
        query = query[:2000] + "\n[...]\n" + query[-500:]
    tools = ", ".join(inp.tool_call_names) or "none"
    user = f"Planned tool calls: {tools}.\nRequest:\n{query}"
    return [
        ChatMessage(role="system", content=SYSTEM_PROMPT),
        ChatMessage(role="user", content=user),
    ]


def parse_verdict(text: str) -> LlmVerdict:
    """The validated verdict in ``text``.

    Raises:
        VerdictParseError: longer than :data:`MAX_VERDICT_CHARS`, not JSON (or nested too
            deep to parse), not an object, or a tier/task type outside the enums.
    """
    if len(text) > MAX_VERDICT_CHARS:
        raise VerdictParseError(f"longer than {MAX_VERDICT_CHARS} characters")
    try:
        data = json.loads(_FENCE.sub("", text.strip()))
        return LlmVerdict.model_validate(data)
    except (json.JSONDecodeError, ValidationError, RecursionError) as exc:
        raise VerdictParseError(type(exc).__name__) from exc


class LlmRouter:
    """Ask ``spec``'s model for the tier; fall back to ``fallback`` on any failure.

    Args:
        provider: the small tier's provider.
        spec: the small tier's catalog entry.
        fallback: the learned router (always run first; its probabilities are reported).
        timeout_s: how long the classifier may take, in seconds.
    """

    name = "llm"

    def __init__(
        self,
        provider: ModelProvider,
        spec: ModelSpec,
        fallback: LearnedRouter,
        timeout_s: float,
    ) -> None:
        self.provider = provider
        self.spec = spec
        self.fallback = fallback
        self.timeout_s = timeout_s

    async def aroute(self, inp: SelectModelInput) -> SelectModelResult:
        """The LLM's tier for ``inp``, or the learned router's when the LLM fails.

        Returns:
            A result with ``router="llm"`` and the call's ``usage`` when the verdict was used;
            otherwise the learned result with the failure in its reason (and the call's
            ``usage`` when the model answered with something unusable: it was paid for).
            Never raises for a model failure.
        """
        learned = await asyncio.to_thread(self.fallback.route, inp)
        if inp.pinned_tier is not None:
            return learned
        started = time.perf_counter()
        completion: Completion | None = None
        try:
            completion = await asyncio.wait_for(
                self.provider.complete(self.spec, routing_messages(inp), VERDICT_MAX_TOKENS),
                self.timeout_s,
            )
            verdict = parse_verdict(completion.text)
        except TimeoutError:
            why = f"no answer within {self.timeout_s:g} s"
        except VerdictParseError as exc:
            why = f"answer is not a valid verdict ({exc})"
        except AgentflowError as exc:
            why = type(exc).__name__
        except Exception as exc:  # any other failure of the classifier falls back as well
            why = type(exc).__name__
        else:
            tier = verdict.tier
            task_type = verdict.task_type
            if inp.tool_call_names and task_type is not TaskType.CREATIVE_GENERATION:
                task_type = TaskType.TOOL_USAGE
            escalation = tier.next_up()
            return learned.model_copy(
                update={
                    "tier": tier,
                    "escalation_tier": escalation,
                    "task_type": task_type,
                    "router": self.name,
                    "reason": f"llm ({self.spec.model_id}): {task_type} -> {tier} (learned: "
                    f"{learned.tier}, P(large) {learned.p_large:.2f}); escalation "
                    f"{escalation.value if escalation else 'none'}",
                    "usage": usage_of("route", self.spec, self.provider.name, completion, started),
                }
            )
        # A model that answered with something unusable was still paid for.
        usage = (
            usage_of("route", self.spec, self.provider.name, completion, started)
            if completion is not None
            else None
        )
        return learned.model_copy(
            update={
                "reason": f"llm router failed ({why}), fell back to {learned.reason}",
                "usage": usage,
            }
        )
