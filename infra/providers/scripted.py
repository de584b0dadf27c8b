"""A test double whose answers come from a function (in the spirit of pydantic-ai FunctionModel)."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import NamedTuple

from core.catalog import ModelSpec
from core.tokens import count_tokens
from infra.providers.base import ChatMessage, Completion, prompt_tokens

ScriptResult = str | Completion
ScriptFn = Callable[[ModelSpec, list[ChatMessage], int], ScriptResult | Awaitable[ScriptResult]]
"""``fn(spec, messages, max_tokens)`` returning (or awaiting to) a text or a full Completion."""


class ScriptedCall(NamedTuple):
    """One call a :class:`ScriptedProvider` received."""

    spec: ModelSpec
    messages: list[ChatMessage]
    max_tokens: int


class ScriptedProvider:
    """Test double whose answers come from a function (in the spirit of pydantic-ai FunctionModel).

    ``fn(spec, messages, max_tokens)`` may be sync or async and returns the answer text or a full
    :class:`Completion`; whatever it raises propagates unchanged, so a test can make one tier fail
    with a :class:`core.errors.ModelError`. Every call is recorded in :attr:`calls`.
    """

    def __init__(self, fn: ScriptFn, *, simulated: bool = True, name: str = "scripted") -> None:
        """Create the double.

        Args:
            fn: the script, ``fn(spec, messages, max_tokens) -> str | Completion`` (or awaitable).
            simulated: the ``simulated`` flag of completions built from a returned text; True by
                default because no real model wrote them.
            name: the provider name recorded in usage.
        """
        self.fn = fn
        self.simulated = simulated
        self.name = name
        self.calls: list[ScriptedCall] = []

    async def complete(
        self, spec: ModelSpec, messages: list[ChatMessage], max_tokens: int
    ) -> Completion:
        """Run the script and wrap a text answer with cl100k_base token counts.

        Returns:
            The script's Completion as is, or one built from its text (not truncated).

        Raises:
            Exception: whatever the script raises.
        """
        self.calls.append(ScriptedCall(spec, list(messages), max_tokens))
        result = self.fn(spec, messages, max_tokens)
        if inspect.isawaitable(result):
            result = await result
        if isinstance(result, Completion):
            return result
        return Completion(
            text=result,
            prompt_tokens=prompt_tokens(messages),
            completion_tokens=count_tokens(result),
            model=spec.model_id,
            simulated=self.simulated,
        )
