"""Real token counts, offline.

``tiktoken`` normally downloads its BPE files on first use, which cannot work on a machine without
internet. The ``cl100k_base`` ranks ship with agentflow as package data (``core/data``), verified
against tiktoken's published SHA-256 when loaded, so counting never touches the network.

``tiktoken`` itself is imported on the first count, not with this module: processes that only
need :data:`PROMPT_OVERHEAD_TOKENS` (the API's quotas) never load the tokenizer.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import tiktoken

_CL100K_PATH = Path(__file__).parent / "data" / "cl100k_base.tiktoken"
_CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"
# The split pattern and special tokens of cl100k_base, as published by tiktoken_ext.openai_public.
_CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
_CL100K_SPECIAL = {
    "<|endoftext|>": 100257,
    "<|fim_prefix|>": 100258,
    "<|fim_middle|>": 100259,
    "<|fim_suffix|>": 100260,
    "<|endofprompt|>": 100276,
}


@lru_cache(maxsize=1)
def encoding() -> tiktoken.Encoding:
    """The cl100k_base encoding, loaded once from package data.

    Raises:
        RuntimeError: the shipped file is missing or its hash does not match.
    """
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    if not _CL100K_PATH.is_file():
        raise RuntimeError(f"tokenizer file missing: {_CL100K_PATH} (reinstall agentflow)")
    try:
        ranks = load_tiktoken_bpe(str(_CL100K_PATH), expected_hash=_CL100K_SHA256)
    except ValueError as exc:
        raise RuntimeError(f"tokenizer file {_CL100K_PATH} is corrupt: {exc}") from exc
    return tiktoken.Encoding(
        name="cl100k_base",
        pat_str=_CL100K_PATTERN,
        mergeable_ranks=ranks,
        special_tokens=_CL100K_SPECIAL,
    )


FALLBACK_CHUNK_CHARS = 50_000
"""Chunk size for text the tokenizer's regex cannot take whole (see :func:`encode`)."""


def encode(text: str) -> list[int]:
    """cl100k_base tokens of ``text`` (special-token text encoded as plain text).

    tiktoken's split regex backtracks over long whitespace runs, and on about a million
    whitespace characters followed by anything else it gives up with "Max stack size exceeded
    for backtracking" (a client can send that in one context item). Such text is encoded in
    chunks of :data:`FALLBACK_CHUNK_CHARS` characters: the tokens still decode to the text, and
    the count may differ from the whole-text count by a token per chunk boundary.
    """
    enc = encoding()
    try:
        return enc.encode(text, disallowed_special=())
    except ValueError:
        tokens: list[int] = []
        for start in range(0, len(text), FALLBACK_CHUNK_CHARS):
            tokens.extend(
                enc.encode(text[start : start + FALLBACK_CHUNK_CHARS], disallowed_special=())
            )
        return tokens


def count_tokens(text: str) -> int:
    """Number of cl100k_base tokens in ``text`` (special-token text counted as plain text)."""
    return len(encode(text))


def truncate_to_tokens(text: str, max_tokens: int) -> str:
    """The longest prefix of ``text`` whose token count is at most ``max_tokens``.

    Decoding a token prefix can re-encode to more tokens at a broken UTF-8 boundary, so the result
    is re-counted and shortened until it fits.
    """
    if max_tokens <= 0:
        return ""
    enc = encoding()
    tokens = encode(text)
    if len(tokens) <= max_tokens:
        return text
    keep = max_tokens
    while keep > 0:
        candidate = enc.decode(tokens[:keep]).rstrip("\ufffd")
        if count_tokens(candidate) <= max_tokens:
            return candidate
        keep -= 1
    return ""


PROMPT_OVERHEAD_TOKENS = 500
"""Tokens a prompt holds beyond the query and the compressed context, for every estimate.

Where the number comes from: the generation templates (``infra.providers.prompts``) add a
system prompt of 48 cl100k_base tokens (final answer; 28 for the draft), the ``Context:``
header, a ``[source] (importance)`` label per context item and the chat format's few tokens per
message. 500 holds those for a context of a few dozen items. Two copies used to exist: 500 for
the budget reservation (:func:`infra.quotas.estimate_cost_usd`) and 200 for routing (the
context-window fit and the expected cost in :func:`domain.routing.prompt_tokens_estimate`).
The larger is kept because it is the conservative one for budgets: a reservation must not
under-count, and a routing estimate that is 300 tokens larger only moves a prompt to a larger
window a little earlier and raises the expected cost that the approval threshold compares.
"""

ESTIMATE_HEAD_CHARS = 1500
ESTIMATE_TAIL_CHARS = 500
""":func:`estimate_tokens` counts text up to this many characters (head plus tail) exactly;
longer text is sampled: its first 1,500 and last 500 characters (the learned router reads the
same window, so its count of that window can be reused)."""


def estimate_tokens(
    text: str,
    *,
    head_chars: int = ESTIMATE_HEAD_CHARS,
    tail_chars: int = ESTIMATE_TAIL_CHARS,
    sample_tokens: int | None = None,
) -> int:
    """cl100k_base tokens of ``text``: counted when short, else estimated from a sample.

    The one estimator beside the exact :func:`count_tokens`. Up to ``head_chars + tail_chars``
    characters the count is exact; past that the sample (``text[:head_chars] + " " +
    text[-tail_chars:]``) is counted and scaled by the length ratio, because the tokenizer's
    cost grows faster than linearly on some long runs (20,000 digits took 0.7 s) and the
    callers (routing, the context estimate) need the size, not the exact count.

    Args:
        text: the text to size.
        head_chars: characters of the sample taken from the start.
        tail_chars: characters of the sample taken from the end.
        sample_tokens: the sample's token count when the caller has it already (the learned
            router counts the same window for its features).

    Returns:
        The count or estimate, in tokens (0 for empty text).
    """
    if len(text) <= head_chars + tail_chars:
        return count_tokens(text) if sample_tokens is None else sample_tokens
    sample = text[:head_chars] + " " + text[-tail_chars:]
    counted = count_tokens(sample) if sample_tokens is None else sample_tokens
    return round(counted * len(text) / max(1, len(sample)))
