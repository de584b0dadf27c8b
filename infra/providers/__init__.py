"""Model providers behind one protocol: simulated (offline), OpenAI-compatible, and scripted.

One module per vendor adapter (:mod:`.simulated`, :mod:`.openai`), the test double
(:mod:`.scripted`), the prompts (:mod:`.prompts`) and the registry that picks one per catalog entry
(:mod:`.registry`).
"""

from core.providers import (
    ChatMessage,
    Completion,
    DeltaCallback,
    ModelProvider,
    prompt_tokens,
    token_pieces,
)
from infra.providers.openai import OpenAICompatibleProvider
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
