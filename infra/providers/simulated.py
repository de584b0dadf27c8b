"""The offline simulated provider: labelled, deterministic, and honest about what it is.

It never pretends to know anything: its answers are labelled ``[simulated <tier> model
<model_id>]`` and only restate the question and the facts present in the context it was given.
"""

from __future__ import annotations

import asyncio
import math
import re

from core.catalog import ModelSpec
from core.providers import (
    ChatMessage,
    Completion,
    DeltaCallback,
    prompt_tokens,
    token_pieces,
)
from core.tokens import count_tokens, truncate_to_tokens
from infra.providers.prompts import CONTEXT_HEADER

_ITEM_START = re.compile(r"^(?:\[(?P<source>[^\]]*)\] )?\((?:critical|high|medium|low)\) ")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s")
_NUMBER = re.compile(r"(?<![\w.])-?\d[\d,]*(?:\.\d+)?%?")
_MAX_FACT_CHARS = 200
_MAX_QUESTION_CHARS = 300
_MAX_NUMBERS = 5

TIME_TO_FIRST_TOKEN_S = 0.05
"""Seconds of simulated latency before the first token (prompt processing), before scaling."""

MIN_DELTA_INTERVAL_S = 0.01
"""Shortest pause between two streamed pieces: faster tiers get several tokens per piece."""


def _shorten(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _context_entries(message: ChatMessage) -> list[tuple[str | None, str]]:
    """``(source, content)`` pairs from a rendered context block, or the whole message as one."""
    if not message.content.startswith(CONTEXT_HEADER):
        return [(None, message.content)]
    entries: list[tuple[str | None, list[str]]] = []
    for line in message.content[len(CONTEXT_HEADER) :].splitlines():
        match = _ITEM_START.match(line)
        if match:
            entries.append((match.group("source"), [line[match.end() :]]))
        elif entries:
            entries[-1][1].append(line)
        else:
            entries.append((None, [line]))
    return [(source, "\n".join(lines)) for source, lines in entries]


def _key_fact(content: str) -> str:
    """The first sentence of ``content``, plus numbers that appear only later in it."""
    flat = " ".join(content.split())
    first = _SENTENCE_END.split(flat, maxsplit=1)[0]
    fact = _shorten(first, _MAX_FACT_CHARS)
    later = [n for n in _NUMBER.findall(flat[len(first) :]) if n not in fact]
    if later:
        fact += f" (figures: {', '.join(dict.fromkeys(later[:_MAX_NUMBERS]))})"
    return fact


def simulated_answer(spec: ModelSpec, messages: list[ChatMessage]) -> str:
    """The simulated provider's full (untruncated) answer to ``messages``.

    Deterministic: the same spec and messages give the same text. The text starts with the label
    ``[simulated <tier> model <model_id>] ``, states that no real model is behind it, restates the
    question (the last user message) and lists the first sentence of each context item (and the
    numbers found later in it) from the other non-system messages.
    """
    label = f"[simulated {spec.tier.value} model {spec.model_id}] "
    conversation = [m for m in messages if m.role != "system"]
    question_index = max((i for i, m in enumerate(conversation) if m.role == "user"), default=None)
    question = (
        _shorten(conversation[question_index].content, _MAX_QUESTION_CHARS)
        if question_index is not None
        else "(no question given)"
    )
    facts: list[str] = []
    for i, message in enumerate(conversation):
        if i == question_index:
            continue
        for source, content in _context_entries(message):
            if content.strip():
                prefix = f"[{source}] " if source else ""
                facts.append(f"- {prefix}{_key_fact(content)}")
    lines = [
        f"{label}This is a simulated answer: no real model is behind it, so it only restates "
        "the question and the context it was given.",
        f"Question: {question}",
    ]
    if facts:
        lines.append("Key facts in the provided context:")
        lines.extend(facts)
    else:
        lines.append("No context was provided, so there are no facts to report.")
    return "\n".join(lines)


class SimulatedProvider:
    """Offline stand-in for a model; every answer is labelled as simulated.

    The answer (see :func:`simulated_answer`) is capped at ``max_tokens`` completion tokens, except
    that the ``[simulated ...]`` label is always kept whole, even when it alone exceeds a very
    small ``max_tokens``. Latency follows the tier: the call takes
    ``latency_scale * (0.05 + completion_tokens / spec.tokens_per_second)`` seconds, streamed or
    not. Streamed, the first piece comes after the 0.05 s "time to first token" share and the
    rest at the tier's tokens/s, grouped so that pieces are at least
    :data:`MIN_DELTA_INTERVAL_S` apart.
    """

    name: str = "simulated"

    def __init__(self, latency_scale: float = 1.0) -> None:
        """Create the provider.

        Args:
            latency_scale: multiplier on the simulated latency; 0 answers at once.

        Raises:
            ValueError: ``latency_scale`` is negative.
        """
        if latency_scale < 0:
            raise ValueError(f"latency_scale must be >= 0, got {latency_scale}")
        self.latency_scale = latency_scale

    def latency_s(self, spec: ModelSpec, completion_tokens: int) -> float:
        """Seconds a call producing ``completion_tokens`` tokens takes for ``spec``'s tier."""
        return self.latency_scale * (
            TIME_TO_FIRST_TOKEN_S + completion_tokens / spec.tokens_per_second
        )

    async def complete(
        self,
        spec: ModelSpec,
        messages: list[ChatMessage],
        max_tokens: int,
        on_delta: DeltaCallback | None = None,
    ) -> Completion:
        """Answer with a labelled, deterministic synthesis of ``messages``.

        Args:
            spec: the catalog entry; its tier and model id label the answer, its
                ``tokens_per_second`` sets the latency.
            messages: the conversation, as :func:`build_messages` builds it.
            max_tokens: the most completion tokens (cl100k_base) to produce.
            on_delta: optional callback for the answer's pieces, cut at token boundaries (never
                inside a character) and paced at the tier's tokens/s; with ``latency_scale`` 0
                one piece per token, without pauses.

        Returns:
            The completion with ``simulated=True`` and cl100k_base token counts; the same with
            or without ``on_delta``.

        Raises:
            Exception: whatever ``on_delta`` raises, unchanged.
        """
        label = f"[simulated {spec.tier.value} model {spec.model_id}] "
        full = simulated_answer(spec, messages)
        body_budget = max(max_tokens - count_tokens(label), 0)
        text = label + truncate_to_tokens(full[len(label) :], body_budget)
        completion_tokens = count_tokens(text)
        if on_delta is not None:
            await self._stream(spec, text, on_delta)
        else:
            delay = self.latency_s(spec, completion_tokens)
            if delay > 0:
                await asyncio.sleep(delay)
        return Completion(
            text=text,
            prompt_tokens=prompt_tokens(messages),
            completion_tokens=completion_tokens,
            model=spec.model_id,
            simulated=True,
        )

    async def _stream(self, spec: ModelSpec, text: str, on_delta: DeltaCallback) -> None:
        """Hand ``text`` to ``on_delta`` on the tier's schedule; returns after the full latency.

        Piece ``k`` covering tokens ``[a, b)`` is due ``scale * (0.05 + a / tps)`` seconds after
        the start, on one clock, so sleeping late never accumulates into drift.
        """
        pieces = token_pieces(text)
        per_token_s = self.latency_scale / spec.tokens_per_second
        if per_token_s <= 0:
            for piece, _ in pieces:
                on_delta(piece)
            return
        tokens_per_piece = max(1, math.ceil(MIN_DELTA_INTERVAL_S / per_token_s))
        loop = asyncio.get_running_loop()
        first_s = loop.time() + self.latency_scale * TIME_TO_FIRST_TOKEN_S
        emitted_tokens = 0
        group: list[str] = []
        group_tokens = 0
        for index, (piece, tokens) in enumerate(pieces):
            group.append(piece)
            group_tokens += tokens
            if group_tokens < tokens_per_piece and index < len(pieces) - 1:
                continue
            await _sleep_until(loop, first_s + emitted_tokens * per_token_s)
            on_delta("".join(group))
            emitted_tokens += group_tokens
            group, group_tokens = [], 0
        await _sleep_until(loop, first_s + emitted_tokens * per_token_s)


async def _sleep_until(loop: asyncio.AbstractEventLoop, when: float) -> None:
    delay = when - loop.time()
    if delay > 0:
        await asyncio.sleep(delay)
