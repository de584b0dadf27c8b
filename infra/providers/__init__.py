"""Model providers behind one protocol: simulated (offline), OpenAI-compatible, and scripted.

One module per vendor adapter (:mod:`.simulated`, :mod:`.openai`), the test double
(:mod:`.scripted`), the prompts (:mod:`.prompts`) and the registry that picks one per catalog entry
(:mod:`.registry`).

:class:`OpenAICompatibleProvider` is imported on first use (PEP 562): the openai SDK takes about a
second to import, and a worker on the simulated provider never needs it.
"""

from typing import TYPE_CHECKING, Any

from core.providers import (
    ChatMessage,
    Completion,
    DeltaCallback,
    ModelProvider,
    prompt_tokens,
    token_pieces,
)
from infra.providers.prompts import build_messages, render_context_item
from infra.providers.registry import ProviderRegistry
from infra.providers.scripted import (
    ScriptedCall,
    ScriptedProvider,
    ScriptedStream,
    ScriptFn,
    ScriptResult,
)
from infra.providers.simulated import SimulatedProvider, simulated_answer

if TYPE_CHECKING:
    from infra.providers.openai import OpenAICompatibleProvider

__all__ = [
    "ChatMessage",
    "Completion",
    "DeltaCallback",
    "ModelProvider",
    "OpenAICompatibleProvider",
    "ProviderRegistry",
    "ScriptFn",
    "ScriptResult",
    "ScriptedCall",
    "ScriptedProvider",
    "ScriptedStream",
    "SimulatedProvider",
    "build_messages",
    "prompt_tokens",
    "render_context_item",
    "simulated_answer",
    "token_pieces",
]


def __getattr__(name: str) -> Any:
    """Import :class:`OpenAICompatibleProvider` when first asked for."""
    if name == "OpenAICompatibleProvider":
        from infra.providers.openai import OpenAICompatibleProvider

        return OpenAICompatibleProvider
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
