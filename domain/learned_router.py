"""The learned router's features and its inference from the shipped JSON artifact.

The model is trained offline by ``agentflow router train`` (:mod:`cli.router_training`, with
scikit-learn) on the labelled corpus in ``data/routing/`` and shipped as plain JSON
(``core/data/router.json``: vocabularies, idf weights, coefficients and sigmoid calibrators), so
serving needs neither scikit-learn nor pickle. This module holds the one definition of the
features, used by training and by inference alike, and the inference arithmetic, which
reproduces scikit-learn's ``TfidfVectorizer(sublinear_tf=True, norm="l2")`` ->
``LogisticRegression`` -> ``CalibratedClassifierCV(method="sigmoid")`` (a test checks it
against scikit-learn to 1e-4).

Three heads share the features:

* ``large``: calibrated P(needs the large tier);
* ``small``: calibrated P(the small tier suffices);
* ``task``: the seed's task type (multinomial, argmax).

CPU is bounded whatever the prompt: the text the model reads is the first and last
:data:`HEAD_CHARS` / :data:`TAIL_CHARS` characters (the ask is usually at one end of a long
pasted passage), so one prediction reads at most 2,000 characters: about 6,000 character
n-grams and the cue regexes over that text. Memory is bounded too: only short words are
memoized (:data:`MEMO_WORD_CHARS`).

One module on purpose (about 640 lines): the one definition of the features and the inference
arithmetic that must match training bit for bit; training lives in :mod:`cli.router_training`.
"""

from __future__ import annotations

import itertools
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel

from core.models import TaskType
from core.tokens import estimate_tokens
from domain.selection import QueryFeatures, extract_features

ARTIFACT_PATH = Path(__file__).resolve().parent.parent / "core" / "data" / "router.json"
"""Where the shipped router artifact lives (package data of :mod:`core`)."""

FloatArray = npt.NDArray[np.float64]

ARTIFACT_FORMAT = 1
"""Bump when the artifact's layout or the features change; a loader refuses other formats."""

HEAD_CHARS = 1500
TAIL_CHARS = 500
"""The model reads at most the first 1,500 and the last 500 characters of a prompt (the corpus's
longest prompt is 1,414 characters: it has not learnt from more)."""

CHAR_MEMO_WORDS = 50_000
"""Distinct words whose vocabulary rows one model remembers (then it starts over)."""

MEMO_WORD_CHARS = 32
"""Only words this short have their rows memoized (at most about 100 small ints each): the
memo stays near 25 MB whatever the traffic, and a request's long "words" (base64, URLs,
unspaced scripts) are never kept."""

MAX_SIZE_CHARS = 1500
MAX_SIZE_TOKENS = 600
"""The size features read a prompt's length as at most this many characters and tokens: the
corpus has nothing longer (1,414 characters, 546 tokens), and the labelling policy says length
is not difficulty, so a 20,000-character extraction prompt must not look harder than the
longest prompt the model learnt from."""

MAX_ARTIFACT_BYTES = 16 * 2**20
"""The largest artifact a worker will read (the shipped one is 1.4 MB)."""

CHAR_NGRAMS = (2, 4)
"""Character n-gram sizes, inside word boundaries (padded with one space each side)."""

_SPACES = re.compile(r"\s+")
_WORD = re.compile(r"\w\w+|[^\w\s]")
_DIGIT = re.compile(r"\d")
_CODE = re.compile(r"[{}\[\]();=<>_#`|\\]")


def _words(*alternatives: str) -> re.Pattern[str]:
    """A case-insensitive pattern matching any of ``alternatives`` as whole words."""
    return re.compile(r"\b(?:" + "|".join(alternatives) + r")\b", re.IGNORECASE)


_ARTIFACTS = (
    "function|program|script|class|method|algorithm|api|endpoint|query|regex|regular expression"
    "|parser|server|cli|module|test|decorator|component|hook|stored procedure|trigger|pipeline"
)
_FORMS = (
    "story|poem|essay|blog|post|email|letter|speech|song|lyrics|haiku|limerick|article|script"
    "|dialogue|tweet|slogan|description|cover letter|bio|toast|review|ad|advert\\w*|pitch"
    "|newsletter|announcement"
)

POLICY_CUES: dict[str, re.Pattern[str]] = {
    "math": _words(
        "solve",
        "equation",
        "integral",
        "integrate",
        "derivative",
        "differentiate",
        r"probabilit\w*",
        "expected value",
        "prove",
        "proof",
        "theorem",
        "remainder",
        "divisible",
        r"prime factor\w*",
        "how many ways",
        "combinations?",
        "permutations?",
        "area of",
        "volume of",
        "perimeter",
        "sum of",
        "product of",
        "ratio",
        "percent(?:age)?",
        "interest",
        "average speed",
        "rate of",
        "minimum",
        "maximum",
        "optimi[sz]e",
        "find all",
        "real numbers?",
        "integers?",
        "polynomial",
        "matrix",
        "vector",
        "geometric",
        "arithmetic sequence",
        "series",
        "limit of",
        "mod",
    ),
    "math_symbols": re.compile(
        r"\d\s*[x\u00d7*/^=+\-]\s*\d|[a-z]\^?\d|\b\d*[xyz]\b\s*[=+\-*/^]"
        r"|[=<>\u2264\u2265\u221a\u222b\u2211\u03c0]"
    ),
    "puzzle": _words(
        r"if\b[^.?!\n]{0,80}\bthen",
        "each of",
        "exactly",
        "at least",
        "at most",
        "how many",
        "who (?:is|was|must)",
        "which (?:one|of)",
        "must be",
        "cannot",
        "can't be",
        "in what order",
        "always",
        "never",
        "riddle",
        "puzzle",
        "logic",
        "deduce",
        "infer",
        "liar",
        "truth",
        "overtake",
        "older than",
        "younger than",
        "taller",
        "left of",
        "right of",
        "sits? (?:next|between)",
        "before",
        "after",
    ),
    "code_task": _words(
        r"(?:write|implement|create|build|code|develop|design)\b[^.?!\n]{0,40}\b(?:"
        + _ARTIFACTS
        + ")",
        "debug",
        "bug",
        "fix (?:this|the|my)",
        "refactor",
        "optimi[sz]e (?:this|the|my)",
        "time complexity",
        "space complexity",
        "big[- ]o",
        r"o\(n",
        "recursion",
        "recursive",
        "dynamic programming",
        "linked list",
        "binary (?:tree|search)",
        "hash ?map",
        "graph",
        "dfs",
        "bfs",
        "leetcode",
        "edge cases?",
        "unit tests?",
    ),
    "code_text": re.compile(
        r"(?m)^[ \t]{2,}\S|[{};]\s*$|\bdef |\bfunction\b|=>|\breturn\b|\bSELECT\b|\bimport\b"
        r"|#include|console\.|print\("
    ),
    "extraction": _words(
        "extract",
        "identify (?:the|all)",
        "list (?:all|the|every)",
        "pull out",
        "find (?:all|the) (?:names|dates|emails|entities)",
        "classify",
        "categori[sz]e",
        "label",
        "tag",
        "sentiment",
        "json",
        "csv",
        "yaml",
        "xml",
        "markdown table",
        "table",
        "format (?:this|the|it|as)",
        "convert (?:this|the|it) (?:to|into)",
        "reformat",
        "summari[sz]e",
        "summary",
        "tl;?dr",
        "bullet points?",
        "translate",
        "the following",
        "below",
        "above",
        "this (?:text|passage|email|paragraph|article|review|document|log|table)",
        "given (?:the|this|these)",
        "according to",
        "from the (?:text|passage|email|article|document)",
    ),
    "writing": _words(
        r"(?:write|compose|draft|craft|create|pen)\b[^.?!\n]{0,40}\b(?:" + _FORMS + ")",
        "pretend",
        "imagine",
        "act as",
        "you are a",
        "role[- ]?play",
        "in the style of",
        "as if you were",
        "persona",
        "character",
    ),
    "explain": _words(
        "explain",
        "describe",
        "discuss",
        "what (?:is|are|was|were)",
        "why (?:is|are|do|does|did)",
        "how (?:does|do|did)",
        "tell me about",
        "overview",
        "insights?",
        "implications",
        "impact of",
        "history of",
        "compare",
        "difference between",
        "pros and cons",
        "advantages",
        "advice",
        "tips",
        "recommend",
        "suggest",
    ),
}
"""Cue families that follow the labelling policy's rules (``data/routing/POLICY.md``): math and
puzzles (derive), code tasks and code text, extraction from supplied text, writing and
role-play, explanation. Each feature is the family's match count, ``log1p``-scaled."""


DENSE_FEATURES: tuple[str, ...] = (
    "log_tokens",
    "log_chars",
    "parts",
    "reasoning_cues",
    "creative_cues",
    "tool_cues",
    "factual_cues",
    "entities",
    "numbers",
    "code_symbols",
    "digit_share",
    "non_ascii_share",
    "question_marks",
    "lines",
    *(f"policy_{name}" for name in POLICY_CUES),
)
"""Names of the dense features, in vector order: token counts, the cue router's features
(:func:`domain.selection.extract_features`) and a few surface statistics, each
``log1p``-scaled where it is a count."""


def router_head(query: str) -> str:
    """The part of ``query`` the model reads: all of it, or its first and last characters."""
    if len(query) <= HEAD_CHARS + TAIL_CHARS:
        return query
    return query[:HEAD_CHARS] + " " + query[-TAIL_CHARS:]


def router_text(query: str) -> str:
    """The text the n-grams come from: :func:`router_head`, lower-cased, whitespace collapsed."""
    return _SPACES.sub(" ", router_head(query)).strip().lower()


def word_terms(text: str) -> list[str]:
    """Word unigrams and bigrams of ``text`` (words of 2+ word characters, and punctuation)."""
    words = _WORD.findall(text)
    return words + [f"{a} {b}" for a, b in itertools.pairwise(words)]


def word_char_grams(word: str) -> tuple[str, ...]:
    """Character n-grams (:data:`CHAR_NGRAMS`) of one word padded with a space each side."""
    low, high = CHAR_NGRAMS
    padded = f" {word} "
    size = len(padded)
    return tuple(
        padded[i : i + n] for n in range(low, min(high, size) + 1) for i in range(size - n + 1)
    )


def char_terms(text: str) -> list[str]:
    """Character n-grams of every word of ``text`` (:func:`word_char_grams`), in order."""
    return [gram for word in text.split() for gram in word_char_grams(word)]


def dense_features(query: str, cues: QueryFeatures | None = None) -> list[float]:
    """The :data:`DENSE_FEATURES` of ``query``, unscaled (the artifact standardizes them).

    Args:
        query: the prompt.
        cues: :func:`domain.selection.extract_features` of :func:`router_head` of the
            query, with ``tokens`` counted over the whole query, when the caller has them
            (:func:`head_features` computes them).
    """
    head = router_head(query)
    if cues is None:
        cues = head_features(query)
    count = cues.tokens
    size = max(1, len(head))
    return [
        math.log1p(min(count, MAX_SIZE_TOKENS)),
        math.log1p(min(len(query), MAX_SIZE_CHARS)),
        math.log1p(cues.parts),
        math.log1p(cues.reasoning),
        math.log1p(cues.creative),
        math.log1p(cues.tool),
        math.log1p(cues.factual),
        math.log1p(cues.entities),
        math.log1p(cues.numbers),
        math.log1p(len(_CODE.findall(head))),
        len(_DIGIT.findall(head)) / size,
        (len(head) - len(head.encode("ascii", "ignore"))) / size,
        math.log1p(head.count("?")),
        math.log1p(head.count("\n")),
        *(math.log1p(len(pattern.findall(head))) for pattern in POLICY_CUES.values()),
    ]


def head_features(query: str) -> QueryFeatures:
    """The cue router's features of what the model reads, counting the whole query's tokens.

    Returns:
        :func:`domain.selection.extract_features` of :func:`router_head`, with ``tokens``
        for all of ``query`` (:func:`core.tokens.estimate_tokens` over the same window, so a
        long prompt's size is not cut).
    """
    head = router_head(query)
    cues = extract_features(head)
    if head is query:
        return cues
    tokens = estimate_tokens(
        query, head_chars=HEAD_CHARS, tail_chars=TAIL_CHARS, sample_tokens=cues.tokens
    )
    return replace(cues, tokens=tokens)


@dataclass(frozen=True, slots=True)
class RouterPrediction:
    """What the learned model says about one prompt.

    Attributes:
        p_large: calibrated probability that the prompt needs the large tier (0..1).
        p_small: calibrated probability that the small tier suffices (0..1).
        task_type: the most likely task type.
    """

    p_large: float
    p_small: float
    task_type: TaskType


def _sigmoid_calibrated(decision: float, a: float, b: float) -> float:
    # scikit-learn's _SigmoidCalibration: p = 1 / (1 + exp(a * f + b)).
    z = a * decision + b
    if z >= 0:
        e = math.exp(-z)
        return e / (1.0 + e)
    return 1.0 / (1.0 + math.exp(z))


class CalibratedHead(BaseModel):
    """A binary head: intercept and scikit-learn's sigmoid calibration ``(a, b)``."""

    intercept: float
    calibration: tuple[float, float]


class TaskHead(BaseModel):
    """The multinomial task-type head: one intercept per class."""

    classes: list[TaskType]
    intercepts: list[float]


class SparseBlock(BaseModel):
    """One tf-idf block: its terms, their idf and one weight row per term.

    Each row holds the term's coefficient for every head, in the order large, small, then the
    task types.
    """

    terms: list[str]
    idf: list[float]
    weights: list[list[float]]


class DenseBlock(BaseModel):
    """The dense features' standardization and weight rows (same head order)."""

    names: list[str]
    mean: list[float]
    scale: list[float]
    weights: list[list[float]]


class RouterArtifact(BaseModel):
    """The shipped artifact's layout (``core/data/router.json``).

    Attributes:
        format: :data:`ARTIFACT_FORMAT`.
        version: ``router-v<format>-<first 12 hex of the training set's SHA-256>``.
        recommended_large_threshold: the operating point chosen at training time on the
            training split's cross-validated probabilities (never the held-out split).
        trained_on / training / libraries: provenance (corpus digest and size, parameters,
            library versions).
    """

    format: int
    version: str
    recommended_large_threshold: float
    large: CalibratedHead
    small: CalibratedHead
    task: TaskHead
    blocks: dict[str, SparseBlock]
    dense: DenseBlock
    trained_on: dict[str, str | int] = {}
    training: dict[str, str | int | float] = {}
    libraries: dict[str, str] = {}


class RouterModel:
    """The shipped router artifact, ready to predict.

    Attributes:
        artifact: the validated artifact (its provenance fields describe the model).
        version: the artifact's version string.
        recommended_large_threshold: the training-time operating point.
    """

    def __init__(self, artifact: RouterArtifact) -> None:
        if artifact.format != ARTIFACT_FORMAT:
            raise ValueError(
                f"router artifact format {artifact.format}; this code reads {ARTIFACT_FORMAT}"
            )
        if tuple(artifact.dense.names) != DENSE_FEATURES:
            raise ValueError("router artifact was trained on other dense features")
        heads = 2 + len(artifact.task.classes)
        if not artifact.task.classes:
            raise ValueError("router artifact has no task classes")
        if not 0 < artifact.recommended_large_threshold < 1:
            raise ValueError("router artifact's recommended threshold is not between 0 and 1")
        if len(artifact.version) > 100:
            raise ValueError("router artifact's version is longer than 100 characters")
        if any(v <= 0 for block in artifact.blocks.values() for v in block.idf):
            raise ValueError("router artifact has an idf that is not positive")
        if len(artifact.task.intercepts) != len(artifact.task.classes):
            raise ValueError("router artifact has one task intercept per class")
        dense = artifact.dense
        if not len(dense.mean) == len(dense.scale) == len(dense.weights) == len(DENSE_FEATURES):
            raise ValueError("router artifact's dense block does not match its feature names")
        if any(v == 0 for v in dense.scale):
            raise ValueError("router artifact has a zero dense scale")
        self.artifact = artifact
        self.version = artifact.version
        self.recommended_large_threshold = artifact.recommended_large_threshold
        self.task_types = tuple(artifact.task.classes)
        # Head order in every weight row: large, small, then one per task type.
        self.intercepts = [
            artifact.large.intercept,
            artifact.small.intercept,
            *artifact.task.intercepts,
        ]
        self.blocks: dict[str, tuple[dict[str, int], FloatArray, FloatArray]] = {}
        for name, block in artifact.blocks.items():
            if len(block.idf) != len(block.terms) or len(block.weights) != len(block.terms):
                raise ValueError(f"router artifact block {name!r} has columns of unequal length")
            if any(len(row) != heads for row in block.weights):
                raise ValueError(f"router artifact block {name!r} has rows of the wrong width")
            self.blocks[name] = (
                {term: i for i, term in enumerate(block.terms)},
                np.asarray(block.idf, dtype=np.float64),
                np.asarray(block.weights, dtype=np.float64).reshape(len(block.terms), heads),
            )
        self._char_memo: dict[str, tuple[int, ...]] = {}
        self.dense_mean = np.asarray(dense.mean, dtype=np.float64)
        self.dense_scale = np.asarray(dense.scale, dtype=np.float64)
        self.dense_weights = np.asarray(dense.weights, dtype=np.float64).reshape(-1, heads)
        if self.dense_weights.shape[0] != len(DENSE_FEATURES):
            raise ValueError("router artifact has the wrong number of dense weight rows")
        if set(self.blocks) != {"word", "char"}:
            raise ValueError("router artifact needs exactly the word and char blocks")
        arrays = [self.dense_mean, self.dense_scale, self.dense_weights]
        arrays += [array for _, idf, weights in self.blocks.values() for array in (idf, weights)]
        scalars = [
            *self.intercepts,
            *artifact.large.calibration,
            *artifact.small.calibration,
            artifact.recommended_large_threshold,
        ]
        if not all(np.isfinite(a).all() for a in arrays) or not np.isfinite(scalars).all():
            raise ValueError("router artifact holds a value that is not finite")

    def decision(self, query: str, cues: QueryFeatures | None = None) -> list[float]:
        """Raw decision values, one per head (large, small, each task type).

        Each tf-idf block: counts of the known terms, ``(1 + ln count) * idf``, l2-normalized,
        times the block's weight rows; then the standardized dense features times theirs.
        """
        text = router_text(query)
        scores = np.asarray(self.intercepts, dtype=np.float64)
        word_index, word_idf, word_weights = self.blocks["word"]
        counts: dict[int, int] = {}
        for term, count in Counter(word_terms(text)).items():
            row = word_index.get(term)
            if row is not None:
                counts[row] = count
        scores += self._block_scores(counts, word_idf, word_weights)
        # Character n-grams are counted per distinct word (a word's known n-gram rows are
        # memoized), which gives the same counts as n-gramming the whole text.
        char_counts: dict[int, int] = {}
        for word, count in Counter(text.split()).items():
            for row in self._char_rows(word):
                char_counts[row] = char_counts.get(row, 0) + count
        _, char_idf, char_weights = self.blocks["char"]
        scores += self._block_scores(char_counts, char_idf, char_weights)
        dense = np.asarray(dense_features(query, cues), dtype=np.float64)
        scores += ((dense - self.dense_mean) / self.dense_scale) @ self.dense_weights
        return [float(v) for v in scores]

    @staticmethod
    def _block_scores(counts: dict[int, int], idf: FloatArray, weights: FloatArray) -> FloatArray:
        """One tf-idf block's contribution: sublinear tf times idf, l2-normalized, times rows."""
        if not counts:
            return np.zeros(weights.shape[1])
        rows = list(counts)
        values = (1.0 + np.log(np.fromiter(counts.values(), dtype=np.float64))) * idf[rows]
        values /= math.sqrt(float(values @ values))
        result: FloatArray = values @ weights[rows]
        return result

    def _char_rows(self, word: str) -> tuple[int, ...]:
        """The char block's rows of ``word``'s n-grams in the vocabulary (short words memoized)."""
        rows = self._char_memo.get(word)
        if rows is None:
            index = self.blocks["char"][0]
            rows = tuple(r for g in word_char_grams(word) if (r := index.get(g)) is not None)
            if len(word) <= MEMO_WORD_CHARS:
                if len(self._char_memo) >= CHAR_MEMO_WORDS:
                    self._char_memo.clear()
                self._char_memo[word] = rows
        return rows

    def predict(self, query: str, cues: QueryFeatures | None = None) -> RouterPrediction:
        """P(needs large), P(small suffices) and the task type of ``query``.

        Args:
            query: the prompt, any length (only its head and tail are read).
            cues: :func:`head_features` of ``query`` when the caller already has them.
        """
        scores = self.decision(query, cues)
        task_scores = scores[2:]
        best = max(range(len(task_scores)), key=task_scores.__getitem__)
        return RouterPrediction(
            p_large=_sigmoid_calibrated(scores[0], *self.artifact.large.calibration),
            p_small=_sigmoid_calibrated(scores[1], *self.artifact.small.calibration),
            task_type=self.task_types[best],
        )

    @classmethod
    def from_file(cls, path: Path) -> RouterModel:
        """Load an artifact (plain JSON; never pickle).

        Raises:
            ValueError: the file is missing, not JSON, or another format (message names it).
        """
        try:
            if not path.is_file():
                raise ValueError("not a regular file")
            if path.stat().st_size > MAX_ARTIFACT_BYTES:
                raise ValueError(f"larger than {MAX_ARTIFACT_BYTES // 2**20} MiB")
            return cls(RouterArtifact.model_validate_json(path.read_bytes()))
        except (OSError, ValueError, MemoryError) as exc:
            raise ValueError(f"router artifact {path}: {exc}") from exc


@cache
def shipped_model(path: Path = ARTIFACT_PATH) -> RouterModel:
    """The artifact at ``path``, loaded once per process."""
    return RouterModel.from_file(path)


def predict_many(model: RouterModel, queries: Sequence[str]) -> list[RouterPrediction]:
    """:meth:`RouterModel.predict` over ``queries`` (for evaluation and calibration)."""
    return [model.predict(q) for q in queries]
