"""Prompts: how a query and its compressed context become chat messages."""

from __future__ import annotations

from typing import Literal

from core.models import ContextItem
from core.providers import ChatMessage

_SYSTEM_DRAFT = (
    "You are a concise assistant. Give a quick, short first answer to the question in two or "
    "three sentences; a fuller answer will follow."
)
_SYSTEM_FINAL = (
    "You are a concise assistant. Answer the question using the context provided. When a context "
    "item names a source, cite it in square brackets, for example [source]. If the context does "
    "not contain the answer, say so rather than guessing."
)
CONTEXT_HEADER = "Context:\n"


def render_context_item(item: ContextItem) -> str:
    """One context item as the prompt shows it: ``[source] (importance) content``.

    The ``[source] `` part is left out when the item names no source.
    """
    source = f"[{item.source}] " if item.source else ""
    return f"{source}({item.importance.value}) {item.content}"


def build_messages(
    query: str, context: list[ContextItem], purpose: Literal["draft", "final"]
) -> list[ChatMessage]:
    """The chat messages for one generation call.

    Args:
        query: the user's question.
        context: context items, already compressed to the token budget. Items whose content was
            moved to the blob store must be resolved first; items with empty ``content`` are left
            out.
        purpose: ``draft`` asks for a quick, short first answer; ``final`` asks for an answer
            grounded in the context, citing sources in brackets.

    Returns:
        ``[system, user(context block), user(question)]``; the context message is omitted when
        there is no non-empty context.
    """
    system = _SYSTEM_DRAFT if purpose == "draft" else _SYSTEM_FINAL
    messages = [ChatMessage(role="system", content=system)]
    rendered = [render_context_item(item) for item in context if item.content.strip()]
    if rendered:
        messages.append(ChatMessage(role="user", content=CONTEXT_HEADER + "\n".join(rendered)))
    messages.append(ChatMessage(role="user", content=query))
    return messages
