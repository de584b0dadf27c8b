"""The ``python_docs_search`` tool: BM25 search over the Python Language Reference.

The corpus is ``pydoc_data.topics.topics``, the help topics that ship with every CPython (the text
of ``help("with")`` and friends: about 80 topics such as ``function``, ``class``, ``with``,
``yield``), so the tool needs no network and no download. The index is built lazily, once per
process, on the first search (:func:`docs_index`), and cached.

Tokens are lower-case identifier-like words with very common English stopwords removed (Python
keywords are never dropped) and a light plural folding (``decorators`` -> ``decorator``); the
topic's own name is counted three extra times so a query naming a topic ranks it first.
"""

from __future__ import annotations

import asyncio
import keyword
import math
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field, JsonValue

from core.tools import Tool, ToolMetadata

if TYPE_CHECKING:  # rank_bm25 loads numpy: only the worker, which searches, imports it
    from rank_bm25 import BM25Okapi

SNIPPET_MAX_CHARS = 600
"""Longest snippet returned per result, in characters."""

_TOPIC_NAME_WEIGHT = 3
_WORD = re.compile(r"[a-z_][a-z0-9_]*")
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
STOPWORDS = frozenset(
    """
    a about after all also an and any are as at be been but by can could did do does doing for
    from had has have how however i if in into is it its me my no not of on once only or other our
    out over same should so some such than that the their them then there these they this those
    through to too under until up very was we were what when where which while who whom why will
    would you your
    """.split()  # noqa: SIM905 (a word list reads better than 90 quoted lines)
) - frozenset(keyword.kwlist)
"""Very common English words that carry no meaning for the search.

Python keywords (``for``, ``if``, ``in``, ``with``, ...) are kept: they name reference topics.
"""


class PythonDocsParams(BaseModel):
    """Parameters of the ``python_docs_search`` tool."""

    query: str = Field(
        min_length=1, max_length=500, description="What to look up, e.g. 'with statement'."
    )
    top_k: int = Field(default=3, ge=1, le=10, description="Most results to return.")


def tokenize(text: str) -> list[str]:
    """Search tokens of ``text``: lower-case words, stopwords dropped, plurals folded.

    Args:
        text: any text.

    Returns:
        The tokens in order (repeats kept, as BM25 counts term frequency).
    """
    tokens: list[str] = []
    for word in _WORD.findall(text.lower()):
        if len(word) < 2 or word in STOPWORDS:
            continue
        if len(word) > 4 and word.endswith("ies"):
            word = word[:-3] + "y"
        elif len(word) > 4 and word.endswith(("sses", "xes")):
            word = word[:-2]
        elif len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
            word = word[:-1]
        tokens.append(word)
    return tokens


@dataclass(frozen=True)
class DocsIndex:
    """The BM25 index over the reference topics.

    Attributes:
        topics: topic names, in index order.
        texts: each topic's full text, in index order.
        bm25: the BM25Okapi model over the tokenized topics.
    """

    topics: list[str]
    texts: list[str]
    bm25: BM25Okapi

    def idf(self, token: str) -> float:
        """The index's inverse document frequency of ``token`` (0 when unknown)."""
        value = self.bm25.idf.get(token, 0.0)
        return float(value)


@lru_cache(maxsize=1)
def docs_index() -> DocsIndex:
    """The process-wide docs index, built on first use (about 30 ms) and cached."""
    from pydoc_data.topics import topics as all_topics

    from rank_bm25 import BM25Okapi

    names = sorted(all_topics)
    texts = [str(all_topics[name]) for name in names]
    corpus = [
        tokenize(name.replace("-", " ")) * _TOPIC_NAME_WEIGHT + tokenize(text)
        for name, text in zip(names, texts, strict=True)
    ]
    return DocsIndex(topics=names, texts=texts, bm25=BM25Okapi(corpus))


def _best_paragraph(index: DocsIndex, text: str, query_tokens: set[str]) -> str:
    """The paragraph of ``text`` matching the most query weight, cut to the snippet length."""
    best, best_score = "", -math.inf
    for raw in _PARAGRAPH_BREAK.split(text):
        paragraph = raw.strip()
        if not paragraph:
            continue
        present = set(tokenize(paragraph)) & query_tokens
        score = sum(max(index.idf(token), 0.01) for token in present)
        if score > best_score:
            best, best_score = paragraph, score
    if len(best) <= SNIPPET_MAX_CHARS:
        return best
    cut = best[: SNIPPET_MAX_CHARS - 1]
    space = cut.rfind(" ")
    if space > SNIPPET_MAX_CHARS // 2:
        cut = cut[:space]
    return cut.rstrip() + "…"


def search_python_docs(query: str, top_k: int = 3) -> list[dict[str, JsonValue]]:
    """Rank the reference topics against ``query`` with BM25.

    Args:
        query: free text; tokenized like the corpus.
        top_k: most results to return (1 or more).

    Returns:
        Up to ``top_k`` results, best first, each ``{"topic": str, "score": float,
        "snippet": str}``; results scoring <= 0 are left out, so a query with no known word
        returns ``[]``. ``snippet`` is the topic's best-matching paragraph (at most
        :data:`SNIPPET_MAX_CHARS` characters).
    """
    tokens = tokenize(query)
    if not tokens:
        return []
    index = docs_index()
    scores = index.bm25.get_scores(tokens)
    ranked = sorted(range(len(index.topics)), key=lambda i: (-float(scores[i]), index.topics[i]))
    results: list[dict[str, JsonValue]] = []
    for i in ranked[:top_k]:
        score = float(scores[i])
        if score <= 0:
            break
        results.append(
            {
                "topic": index.topics[i],
                "score": round(score, 4),
                "snippet": _best_paragraph(index, index.texts[i], set(tokens)),
            }
        )
    return results


async def python_docs_search(params: PythonDocsParams) -> dict[str, JsonValue]:
    """Run the ``python_docs_search`` tool (the search runs in a worker thread).

    Args:
        params: the validated parameters.

    Returns:
        ``{"query": str, "results": [{"topic": str, "score": float, "snippet": str}]}``.
    """
    results = await asyncio.to_thread(search_python_docs, params.query, params.top_k)
    items: list[JsonValue] = [*results]
    return {"query": params.query, "results": items}


def make_python_docs_tool() -> Tool:
    """The ``python_docs_search`` tool, ready to register (no I/O until the first search)."""
    return Tool(
        name="python_docs_search",
        description=(
            "Search the Python Language Reference (statements, expressions, data model: e.g. "
            "'with statement', 'decorator', 'yield') and return the best topics with a snippet."
        ),
        params_model=PythonDocsParams,
        fn=python_docs_search,
        metadata=ToolMetadata(
            answers_query=True,
            parallel_safe=True,
            cacheable=True,
            cache_ttl_s=86400,
            requires_approval=False,
            runs_locally=True,  # bounded CPU, in-memory: a local activity
            timeout_s=10,
        ),
    )
