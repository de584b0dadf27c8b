"""A test double whose answers come from a function (in the spirit of pydantic-ai FunctionModel)."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import NamedTuple

from core.catalog import ModelSpec
from core.providers import ChatMessage, Completion, DeltaCallback, prompt_tokens, token_pieces
from core.tokens import count_tokens


class ScriptedStream(NamedTuple):
    """A scripted answer given as its streamed pieces, optionally failing after them.

    Attributes:
        pieces: the answer in the pieces ``on_delta`` receives (empty strings are skipped); the
            completion's text is their concatenation.
        error: raised after every piece was delivered (a stream that breaks mid-way), with or
            without ``on_delta``; ``None`` completes normally.
    """

    pieces: list[str]
    error: BaseException | None = None


ScriptResult = str | Completion | ScriptedStream
ScriptFn = Callable[[ModelSpec, list[ChatMessage], int], ScriptResult | Awaitable[ScriptResult]]
"""``fn(spec, messages, max_tokens)`` returning (or awaiting to) a text, a full Completion or a
:class:`ScriptedStream`."""


class ScriptedCall(NamedTuple):
    """One call a :class:`ScriptedProvider` received (``streamed``: it was given ``on_delta``)."""

    spec: ModelSpec
    messages: list[ChatMessage]
    max_tokens: int
    streamed: bool = False


class ScriptedProvider:
    """Test double whose answers come from a function (in the spirit of pydantic-ai FunctionModel).

    ``fn(spec, messages, max_tokens)`` may be sync or async and returns the answer text, a full
    :class:`Completion` or a :class:`ScriptedStream`; whatever it raises propagates unchanged, so
    a test can make one tier fail with a :class:`core.errors.ModelError`. Every call is recorded
    in :attr:`calls`. Given ``on_delta``, a text (or a Completion's text) is streamed in up to
    ``stream_pieces`` pieces cut at token boundaries, ``delta_interval_s`` seconds apart.
    """

    def __init__(
        self,
        fn: ScriptFn,
        *,
        simulated: bool = True,
        name: str = "scripted",
        stream_pieces: int = 3,
        delta_interval_s: float = 0.0,
    ) -> None:
        """Create the double.

        Args:
            fn: the script, ``fn(spec, messages, max_tokens) -> str | Completion | ScriptedStream``
                (or awaitable).
            simulated: the ``simulated`` flag of completions built from a returned text; True by
                default because no real model wrote them.
            name: the provider name recorded in usage.
            stream_pieces: the most pieces a streamed text is cut into (at least 1).
            delta_interval_s: real seconds slept before every streamed piece after the first
                (0: none), so a test can act while a stream is under way.

        Raises:
            ValueError: ``stream_pieces`` < 1 or ``delta_interval_s`` < 0.
        """
        if stream_pieces < 1:
            raise ValueError(f"stream_pieces must be >= 1, got {stream_pieces}")
        if delta_interval_s < 0:
            raise ValueError(f"delta_interval_s must be >= 0, got {delta_interval_s}")
        self.fn = fn
        self.simulated = simulated
        self.name = name
        self.stream_pieces = stream_pieces
        self.delta_interval_s = delta_interval_s
        self.calls: list[ScriptedCall] = []

    async def complete(
        self,
        spec: ModelSpec,
        messages: list[ChatMessage],
        max_tokens: int,
        on_delta: DeltaCallback | None = None,
    ) -> Completion:
        """Run the script and wrap a text answer with cl100k_base token counts.

        Args:
            spec: the catalog entry passed to the script.
            messages: the conversation passed to the script.
            max_tokens: passed to the script (the text is not truncated).
            on_delta: optional callback for the answer's pieces (see the class docstring).

        Returns:
            The script's Completion as is, or one built from its text (not truncated).

        Raises:
            Exception: whatever the script raises, a :class:`ScriptedStream`'s ``error``, or
                whatever ``on_delta`` raises.
        """
        self.calls.append(ScriptedCall(spec, list(messages), max_tokens, on_delta is not None))
        result = self.fn(spec, messages, max_tokens)
        if inspect.isawaitable(result):
            result = await result
        if isinstance(result, ScriptedStream):
            pieces = [p for p in result.pieces if p]
        else:
            pieces = self._split(result.text if isinstance(result, Completion) else result)
        if on_delta is not None:
            for index, piece in enumerate(pieces):
                if index and self.delta_interval_s:
                    await asyncio.sleep(self.delta_interval_s)
                on_delta(piece)
        if isinstance(result, ScriptedStream) and result.error is not None:
            raise result.error
        if isinstance(result, Completion):
            return result
        text = "".join(pieces)
        return Completion(
            text=text,
            prompt_tokens=prompt_tokens(messages),
            completion_tokens=count_tokens(text),
            model=spec.model_id,
            simulated=self.simulated,
        )

    def _split(self, text: str) -> list[str]:
        """``text`` in at most :attr:`stream_pieces` pieces of about equal token counts."""
        tokens = token_pieces(text)
        size = -(-len(tokens) // self.stream_pieces) or 1
        return ["".join(p for p, _ in tokens[i : i + size]) for i in range(0, len(tokens), size)]
