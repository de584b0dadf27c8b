"""The provider protocol and the values every provider exchanges.

Every provider implements :class:`ModelProvider`: ``complete(spec, messages, max_tokens)`` returns
a :class:`Completion` or raises a :class:`core.errors.ModelError` subclass, which the generation
activity turns into an ``ApplicationError`` (see :mod:`activities.errors`). Given an ``on_delta``
callback (a :data:`DeltaCallback`), a provider also hands over the answer piece by piece while it
produces it, so the job's event stream can show the first words long before the last.

A provider's error text goes into that error's message, and from there into Temporal history,
the job record and the API. An endpoint may echo what it was sent (a misconfigured proxy that
repeats the ``Authorization`` header, a 401 page quoting the key), so every message built from a
provider's words passes through :func:`redact_secrets` first.
"""

from __future__ import annotations

import codecs
import re
import time
from collections.abc import Callable, Iterable
from typing import Literal, Protocol

from pydantic import BaseModel

from core.catalog import ModelSpec
from core.models import ModelUsage
from core.tokens import count_tokens, encode, encoding


class ChatMessage(BaseModel):
    """One chat message sent to a model."""

    role: Literal["system", "user", "assistant"]
    content: str


class Completion(BaseModel):
    """What one model call produced.

    Attributes:
        text: the answer text.
        prompt_tokens: tokens in the request, as reported by the endpoint (or our cl100k_base
            count when it reports none).
        completion_tokens: tokens in ``text``, counted the same way.
        model: the model that answered (the endpoint's name for it when it gives one).
        simulated: True when no real model produced ``text`` (simulated or scripted provider).
    """

    text: str
    prompt_tokens: int
    completion_tokens: int
    model: str
    simulated: bool


DeltaCallback = Callable[[str], None]
"""``on_delta(piece)``: receives each piece of answer text as soon as a provider has it.

Called synchronously, in order, from the provider's task; the pieces are non-empty, valid ``str``
(never half a character) and concatenate to exactly :attr:`Completion.text`. It must be quick (it
runs between reads of the answer); whatever it raises propagates out of ``complete`` unchanged.
"""


class ModelProvider(Protocol):
    """A model vendor adapter.

    Attributes:
        name: the provider's name, recorded in :class:`core.models.ModelUsage`.
    """

    name: str

    async def complete(
        self,
        spec: ModelSpec,
        messages: list[ChatMessage],
        max_tokens: int,
        on_delta: DeltaCallback | None = None,
    ) -> Completion:
        """Answer ``messages`` with the model ``spec`` names.

        Streaming is an option of the same call: with ``on_delta`` the provider calls it with each
        piece of the answer as soon as it has it, and otherwise behaves exactly as without it
        (same :class:`Completion`, same errors). A call that fails after some pieces were
        delivered raises as usual; the pieces already delivered belong to a failed attempt.

        Args:
            spec: the catalog entry (model id, temperature, speed).
            messages: the conversation, system prompt first.
            max_tokens: the most completion tokens to produce.
            on_delta: optional :data:`DeltaCallback`; the pieces it receives, in order,
                concatenate to exactly the returned ``Completion.text``.

        Returns:
            The completion with token counts.

        Raises:
            ModelRateLimitedError: the endpoint answered 429 (retryable, ``retry_after_s`` set when
                it sent Retry-After).
            ModelUnavailableError: connection failure (including a stream cut mid-way), timeout
                or 5xx (retryable).
            ModelRequestRejectedError: a 4xx other than 408/409/429 (non-retryable).
            ModelOutputInvalidError: the answer was empty or malformed (non-retryable).
            Exception: whatever ``on_delta`` raises, unchanged.
        """
        ...


MAX_PROVIDER_MESSAGE_CHARS = 300
"""Longest provider error text kept in a domain error's message (longer text is cut)."""

REDACTED = "[redacted]"
"""What a secret is replaced with."""

_SECRET_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # "Bearer <token>" and "Basic <credentials>", wherever they appear.
    (re.compile(r"(?i)\b(bearer|basic)\s+[^\s\"'`,;]+"), rf"\1 {REDACTED}"),
    # key=value and "key": "value" pairs whose name says they hold a secret.
    (
        re.compile(
            r"(?i)((?:api[_-]?key|apikey|access[_-]?token|auth[_-]?token|token|secret|password"
            r"|passwd|authorization|x-api-key|client[_-]?secret)[\"']?\s*[:=]\s*[\"']?)"
            r"[^\s\"'`,;&}]+"
        ),
        rf"\1{REDACTED}",
    ),
    # OpenAI-style keys (sk-..., sk-proj-..., sk_live_...), and other vendors' prefixed keys.
    (re.compile(r"\b(?:sk|pk|rk)[-_][A-Za-z0-9_\-]{6,}"), REDACTED),
    (re.compile(r"\b(?:xox[abprs]|ghp|gho|ghs|github_pat|glpat|hf)_[A-Za-z0-9_\-]{8,}"), REDACTED),
    (re.compile(r"\bAKIA[0-9A-Z]{16}\b"), REDACTED),
    # JSON web tokens.
    (re.compile(r"\beyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*"), REDACTED),
    # Long hex strings, and long base64 or base64url runs mixing letters and digits.
    (re.compile(r"\b[0-9a-fA-F]{32,}\b"), REDACTED),
    (
        re.compile(
            r"(?<![A-Za-z0-9+/_\-])(?=[A-Za-z0-9+/_\-]*[0-9])(?=[A-Za-z0-9+/_\-]*[A-Za-z])"
            r"[A-Za-z0-9+/_\-]{32,}={0,2}"
        ),
        REDACTED,
    ),
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f\s]+")
_MIN_SECRET_CHARS = 4
"""Shorter configured secrets are not searched for (they would match ordinary words)."""


def redact_secrets(
    text: str,
    secrets: Iterable[str | None] = (),
    *,
    max_chars: int = MAX_PROVIDER_MESSAGE_CHARS,
) -> str:
    """``text`` made safe to store and show: secrets replaced, control characters gone, cut.

    Replaces each of ``secrets`` verbatim (the configured API key, the request's
    ``Authorization`` value), then anything that looks like a credential: ``Bearer``/``Basic``
    values, ``api_key=``/``"token": ...`` values, ``sk-...`` and other vendors' prefixed keys,
    JSON web tokens, hex strings of 32+ characters and base64 runs of 32+ characters, each with
    ``[redacted]``. Runs of whitespace and control characters (NUL included) become one space.
    The result is cut to ``max_chars`` characters (ending ``...``) after redaction, so a cut
    never leaves half a secret behind.

    Args:
        text: a provider's error text (any length).
        secrets: exact strings to remove; ``None`` and strings under 4 characters are skipped.
        max_chars: longest result in characters (at least 3).

    Returns:
        The redacted, single-line text of at most ``max_chars`` characters.
    """
    for secret in sorted({s for s in secrets if s and len(s) >= _MIN_SECRET_CHARS}, key=len)[::-1]:
        text = text.replace(secret, REDACTED)
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    text = _CONTROL.sub(" ", text).strip()
    if len(text) > max_chars:
        text = text[: max(max_chars - 3, 0)].rstrip() + "..."
    return text


def prompt_tokens(messages: list[ChatMessage]) -> int:
    """Tokens in ``messages`` by our cl100k_base count (for endpoints that report none)."""
    return sum(count_tokens(m.content) for m in messages)


def token_pieces(text: str) -> list[tuple[str, int]]:
    """``text`` cut at its cl100k_base token boundaries, never inside a character.

    A token can end in the middle of a multi-byte UTF-8 character (an emoji is often two or three
    tokens); such a token is merged with the following ones until the character is whole.

    Args:
        text: any text.

    Returns:
        ``(piece, tokens)`` pairs in order: each piece is a non-empty ``str`` and ``tokens`` (at
        least 1) is how many tokens it spans. The pieces concatenate to ``text`` and the token
        counts sum to ``count_tokens(text)``.
    """
    enc = encoding()
    decoder = codecs.getincrementaldecoder("utf-8")()
    pieces: list[tuple[str, int]] = []
    pending = 0
    for token in encode(text):
        pending += 1
        piece = decoder.decode(enc.decode_single_token_bytes(token))
        if piece:
            pieces.append((piece, pending))
            pending = 0
    if "".join(piece for piece, _ in pieces) != text:
        # Cannot happen (cl100k_base is a lossless byte-level BPE and ``text`` is valid); if it
        # ever did, one whole piece is still correct.
        return [(text, count_tokens(text))] if text else []
    if pending and pieces:  # likewise impossible: trailing tokens that decode to nothing
        last, tokens = pieces[-1]
        pieces[-1] = (last, tokens + pending)
    return pieces


def usage_of(
    purpose: str, spec: ModelSpec, provider: str, completion: Completion, started: float
) -> ModelUsage:
    """The :class:`ModelUsage` of one call.

    Args:
        purpose: ``draft``, ``final`` or ``plan``.
        spec: the catalog entry that answered (its price sets ``cost_usd``).
        provider: the provider's name.
        completion: what the call produced (token counts, model, simulated flag).
        started: the call's ``time.perf_counter()`` start; latency is measured up to now.
    """
    return ModelUsage(
        purpose=purpose,
        tier=spec.tier,
        provider=provider,
        model=completion.model or spec.model_id,
        simulated=completion.simulated,
        prompt_tokens=completion.prompt_tokens,
        completion_tokens=completion.completion_tokens,
        cost_usd=spec.cost_usd(completion.prompt_tokens, completion.completion_tokens),
        latency_ms=round((time.perf_counter() - started) * 1000, 3),
    )
