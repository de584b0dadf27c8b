"""Real token counts, offline.

``tiktoken`` normally downloads its BPE files on first use, which cannot work on a machine without
internet. The ``cl100k_base`` ranks ship with agentflow as package data (``core/data``), verified
against tiktoken's published SHA-256 when loaded, so counting never touches the network.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import tiktoken
from tiktoken.load import load_tiktoken_bpe

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
