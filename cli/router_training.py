"""Train the learned router with scikit-learn and write its JSON artifact, reproducibly.

``agentflow router train`` runs :func:`train_artifact` on the training split of
``data/routing/`` (:func:`core.routing_corpus.split_corpus`) and writes ``core/data/router.json``.
The same corpus and the pinned library versions (the ``train`` extra) give the same bytes: every
step is deterministic (lbfgs, fixed cross-validation folds with ``random_state=0``, BLAS on one
thread), floats are rounded to :data:`SIGNIFICANT_DIGITS` significant digits and keys are
sorted, and ``--check`` compares a fresh training with the shipped file. Nothing is left to a
sort's tie-breaking: the vocabularies are chosen by :func:`select_vocabulary` (count, then the
term), not by scikit-learn's ``max_features``, whose unstable sort kept other n-grams under
numpy's AVX-512 dispatch than under AVX2. What can still differ between machines is the BLAS
kernel: measured 2026-12-07, OpenBLAS's Haswell, SkylakeX and Sandybridge kernels gave three
different artifacts at 17 significant digits and the same bytes at 6; numpy's dispatch levels
(native AVX-512 down to X86_V2) gave the same bytes even at 17. A kernel whose last bits moved a
value across a rounding boundary would show in the tests, which then name the artifact to
retrain.

The model (the issue's recipe): word unigrams and bigrams plus character 2-4-grams inside
words, each block tf-idf with sublinear tf and l2 norm; the cue router's features and token
counts, standardized; logistic regression with balanced class weights; calibrated with
``CalibratedClassifierCV(method="sigmoid", ensemble=False)`` on five stratified folds. The
inference side is :mod:`domain.learned_router`.

scikit-learn, numpy and scipy are imported inside the functions: serving never needs them.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.canonical import canonical_json
from core.models import TaskType, Tier
from core.routing_corpus import LabelledPrompt, corpus_digest
from domain.learned_router import (
    ARTIFACT_FORMAT,
    CHAR_NGRAMS,
    DENSE_FEATURES,
    char_terms,
    dense_features,
    router_text,
    word_terms,
)

SIGNIFICANT_DIGITS = 6
"""Floats in the artifact keep this many significant digits (keeps it small and stable)."""

C = 16.0
"""Inverse regularization strength of every head (chosen by 5-fold cross-validation on the
training split among 1, 4, 16, 64; see ``data/routing/DATA_CARD.md``)."""

DENSE_WEIGHT = 0.1
"""The dense features enter at a tenth of their standardized size: at full size they dominated
the n-grams and cross-validated recall fell (AUC 0.86 against 0.90 at 0.1 and 0.896 without
them, on the training split)."""

WORD_MIN_DF, WORD_MAX_FEATURES = 2, 6000
CHAR_MIN_DF, CHAR_MAX_FEATURES = 3, 12000
"""Vocabulary limits: a term must occur in ``min_df`` training prompts; the most frequent
``max_features`` are kept, ties broken by the term itself (:func:`select_vocabulary`)."""

FOLDS = 5
TARGET_RECALL = 0.90
"""The recommended threshold is the largest whose cross-validated recall of needs-large prompts
on the training split is at least this (the issue's bar for recall of needs-large)."""


def select_vocabulary(
    documents: Sequence[Sequence[str]], *, min_df: int, max_features: int
) -> list[str]:
    """The vocabulary of one tf-idf block, chosen in an order the data alone defines.

    A term is kept when it occurs in at least ``min_df`` documents; of those, the
    ``max_features`` with the most occurrences over the whole corpus are kept (scikit-learn's
    ``min_df`` and ``max_features`` rules). Ties in that count are broken by the term, in code
    point order: scikit-learn picks the top terms with an unstable ``argsort``, and numpy's SIMD
    sorts break ties differently per instruction set (AVX2 and AVX-512 gave two vocabularies, so
    two artifacts, from one corpus), so the choice is made here instead.

    Args:
        documents: each document's terms (the analyzer's output, repeats included).
        min_df: least number of documents a term must occur in (>= 1).
        max_features: most terms kept (>= 1).

    Returns:
        The kept terms in code point order (the column order scikit-learn itself uses).
    """
    if min_df < 1 or max_features < 1:
        raise ValueError("min_df and max_features must be at least 1")
    occurrences: Counter[str] = Counter()
    document_frequency: Counter[str] = Counter()
    for terms in documents:
        occurrences.update(terms)
        document_frequency.update(set(terms))
    eligible = [term for term, df in document_frequency.items() if df >= min_df]
    eligible.sort(key=lambda term: (-occurrences[term], term))
    return sorted(eligible[:max_features])


def _round(value: float) -> float:
    return float(f"{value:.{SIGNIFICANT_DIGITS}g}")


def _rows(matrix: Any) -> list[list[float]]:
    return [[_round(float(v)) for v in row] for row in matrix]


def _features(prompts: Sequence[LabelledPrompt]) -> tuple[list[str], list[list[float]]]:
    return [router_text(p.prompt) for p in prompts], [dense_features(p.prompt) for p in prompts]


@dataclass
class FittedRouter:
    """A trained router: the artifact and the scikit-learn objects it was taken from.

    Attributes:
        artifact: the JSON-ready artifact (:class:`domain.learned_router.RouterArtifact`).
        predict_proba: ``prompts -> (P(large), P(small), task type)`` lists computed by
            scikit-learn itself (the reference the JSON inference is checked against).
    """

    artifact: dict[str, Any]
    predict_proba: Callable[[Sequence[str]], tuple[list[float], list[float], list[str]]]


def train_artifact(train: Sequence[LabelledPrompt], *, c: float = C) -> dict[str, Any]:
    """Fit the three heads on ``train`` and return the artifact as a JSON-ready dict.

    Args:
        train: the training split (never the held-out split).
        c: inverse regularization strength.

    Returns:
        The artifact (:class:`domain.learned_router.RouterArtifact` layout).

    Raises:
        ImportError: scikit-learn is not installed (``pip install -e '.[train]'``).
    """
    return fit_router(train, c=c).artifact


def fit_router(train: Sequence[LabelledPrompt], *, c: float = C) -> FittedRouter:
    """Fit the three heads on ``train`` (see :func:`train_artifact`).

    BLAS runs on one thread: a multithreaded reduction may add in another order and change the
    last bits of a coefficient, and so the artifact's bytes.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        return _fit_router(train, c=c)


def _fit_router(train: Sequence[LabelledPrompt], *, c: float) -> FittedRouter:
    import numpy as np
    import sklearn
    from scipy import sparse
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    texts, dense_raw = _features(train)
    # Fixed vocabularies: scikit-learn's own max_features choice depends on the CPU.
    word = TfidfVectorizer(
        analyzer=word_terms,
        vocabulary=select_vocabulary(
            [word_terms(t) for t in texts], min_df=WORD_MIN_DF, max_features=WORD_MAX_FEATURES
        ),
        sublinear_tf=True,
        dtype=np.float64,
    )
    char = TfidfVectorizer(
        analyzer=char_terms,
        vocabulary=select_vocabulary(
            [char_terms(t) for t in texts], min_df=CHAR_MIN_DF, max_features=CHAR_MAX_FEATURES
        ),
        sublinear_tf=True,
        dtype=np.float64,
    )
    x_word = word.fit_transform(texts)
    x_char = char.fit_transform(texts)
    dense = np.asarray(dense_raw, dtype=np.float64)
    mean = dense.mean(axis=0)
    scale = dense.std(axis=0)
    scale[scale == 0] = 1.0
    scale = scale / DENSE_WEIGHT
    x = sparse.hstack([x_word, x_char, sparse.csr_matrix((dense - mean) / scale)], format="csr")

    folds = StratifiedKFold(n_splits=FOLDS, shuffle=True, random_state=0)

    def base() -> Any:
        return LogisticRegression(C=c, class_weight="balanced", max_iter=5000)

    heads: dict[str, dict[str, Any]] = {}
    calibrated_heads: dict[str, Any] = {}
    coefficient_rows: list[Any] = []
    oof_large: Any = None
    for name, positive in (("large", Tier.LARGE), ("small", Tier.SMALL)):
        y = np.asarray([p.tier is positive for p in train], dtype=np.int64)
        calibrated = CalibratedClassifierCV(base(), method="sigmoid", cv=folds, ensemble=False).fit(
            x, y
        )
        calibrated_heads[name] = calibrated
        fitted = calibrated.calibrated_classifiers_[0]
        estimator, calibrator = fitted.estimator, fitted.calibrators[0]
        a, b = float(calibrator.a_), float(calibrator.b_)
        heads[name] = {
            "intercept": _round(float(estimator.intercept_[0])),
            "calibration": [_round(a), _round(b)],
        }
        coefficient_rows.append(estimator.coef_[0])
        if name == "large":
            decision = cross_val_predict(base(), x, y, cv=folds, method="decision_function")
            oof_large = (1.0 / (1.0 + np.exp(a * decision + b)), y)

    task_y = np.asarray([str(p.task_type) for p in train])
    task_model = base().fit(x, task_y)
    classes = [TaskType(str(label)) for label in task_model.classes_]
    coefficient_rows.extend(task_model.coef_)
    heads["task"] = {
        "classes": [str(t) for t in classes],
        "intercepts": [_round(float(v)) for v in task_model.intercept_],
    }

    weights = np.vstack(coefficient_rows).T  # one row per feature, one column per head
    n_word, n_char = x_word.shape[1], x_char.shape[1]
    word_terms_sorted = [""] * n_word
    for term, index in word.vocabulary_.items():
        word_terms_sorted[index] = term
    char_terms_sorted = [""] * n_char
    for term, index in char.vocabulary_.items():
        char_terms_sorted[index] = term

    probabilities, truth = oof_large
    threshold = recommended_threshold(list(map(float, probabilities)), list(map(bool, truth)))
    digest = corpus_digest(train)

    def predict_proba(prompts: Sequence[str]) -> tuple[list[float], list[float], list[str]]:
        texts = [router_text(p) for p in prompts]
        raw = np.asarray([dense_features(p) for p in prompts], dtype=np.float64)
        features = sparse.hstack(
            [
                word.transform(texts),
                char.transform(texts),
                sparse.csr_matrix((raw - mean) / scale),
            ],
            format="csr",
        )
        large = calibrated_heads["large"].predict_proba(features)[:, 1]
        small = calibrated_heads["small"].predict_proba(features)[:, 1]
        tasks = task_model.predict(features)
        return [float(v) for v in large], [float(v) for v in small], [str(t) for t in tasks]

    artifact = {
        "format": ARTIFACT_FORMAT,
        "version": f"router-v{ARTIFACT_FORMAT}-{digest[:12]}",
        "recommended_large_threshold": threshold,
        "large": heads["large"],
        "small": heads["small"],
        "task": heads["task"],
        "blocks": {
            "word": {
                "terms": word_terms_sorted,
                "idf": [_round(float(v)) for v in word.idf_],
                "weights": _rows(weights[:n_word]),
            },
            "char": {
                "terms": char_terms_sorted,
                "idf": [_round(float(v)) for v in char.idf_],
                "weights": _rows(weights[n_word : n_word + n_char]),
            },
        },
        "dense": {
            "names": list(DENSE_FEATURES),
            "mean": [_round(float(v)) for v in mean],
            "scale": [_round(float(v)) for v in scale],
            "weights": _rows(weights[n_word + n_char :]),
        },
        "trained_on": {"corpus_sha256": digest, "prompts": len(train), "split": "train"},
        "training": {
            "C": c,
            "folds": FOLDS,
            "char_ngrams": f"{CHAR_NGRAMS[0]}-{CHAR_NGRAMS[1]}",
            "word_max_features": WORD_MAX_FEATURES,
            "char_max_features": CHAR_MAX_FEATURES,
            "target_recall": TARGET_RECALL,
            "dense_weight": DENSE_WEIGHT,
        },
        "libraries": {
            "scikit-learn": sklearn.__version__,
            "numpy": np.__version__,
        },
    }
    return FittedRouter(artifact=artifact, predict_proba=predict_proba)


def recommended_threshold(probabilities: Sequence[float], needs_large: Sequence[bool]) -> float:
    """The largest threshold (two decimals) whose recall of needs-large is >= TARGET_RECALL.

    Routing sends a prompt to large when its probability is strictly greater than the threshold.
    """
    positives = [p for p, y in zip(probabilities, needs_large, strict=True) if y]
    if not positives:
        return 0.5
    for hundredths in range(99, 0, -1):
        t = hundredths / 100
        recall = sum(p > t for p in positives) / len(positives)
        if recall >= TARGET_RECALL:
            return t
    return 0.01


def artifact_bytes(artifact: dict[str, Any]) -> bytes:
    """The artifact's canonical serialization (sorted keys, compact, trailing newline)."""
    text = canonical_json(artifact)
    return (text + "\n").encode("utf-8")


def artifact_sha256(data: bytes) -> str:
    """SHA-256 hex digest of an artifact's bytes."""
    return hashlib.sha256(data).hexdigest()


def write_artifact(artifact: dict[str, Any], path: Path) -> str:
    """Write ``artifact`` to ``path`` canonically and return its SHA-256."""
    data = artifact_bytes(artifact)
    path.write_bytes(data)
    return artifact_sha256(data)


def log_loss(probabilities: Sequence[float], truth: Sequence[bool]) -> float:
    """Mean binary log-loss (for choosing ``C``)."""
    eps = 1e-12
    return -sum(
        math.log(max(eps, p if y else 1 - p)) for p, y in zip(probabilities, truth, strict=True)
    ) / max(1, len(truth))
