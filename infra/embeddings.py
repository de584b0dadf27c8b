"""Query embeddings for the semantic cache: an OpenAI-compatible endpoint, or a lexical fallback.

Two embedders share one protocol (:class:`Embedder`): rows are float32 and L2-normalized, so the
cosine similarity of two queries is the dot product of their rows.

- :class:`OpenAIEmbedder` calls the configured endpoint's ``/v1/embeddings`` (OpenAI, vLLM,
  Ollama, llama.cpp server). It asks for ``encoding_format="float"`` (the SDK's default is
  base64, which several compatible servers do not speak), with SDK retries off: an embedding is
  an optimization, so a failure is reported at once and the caller treats it as a cache miss.
  Every failure is a :class:`core.errors.ModelError` subclass whose message names only the
  failure's kind and status, never the endpoint's text, host or key.
- :class:`LexicalEmbedder` needs no network: character n-grams and words hashed by
  scikit-learn's ``HashingVectorizer`` (MurmurHash3, so the same text gives the same row in every
  process and on every machine). It matches **wording, not meaning**: "How do I open a file?"
  and "how can I open a file" are close, "buy" and "purchase" are not. It cannot see word
  order at all ("bishop captures knight" and "knight captures bishop" are one row) and puts
  antonyms that share letters close ("inhale", "exhale"): the semantic cache's guard compares
  the queries' content-word sequences (:func:`domain.semantic_guard.content_words`), not only
  these rows. Its name says so (``lexical-hashing-v1``) wherever the semantic cache reports it.

Hazards handled here: a huge query would make the hashing (CPU) or the request (tokens) costly,
so every text is cut to :data:`MAX_EMBED_CHARS` first; the CPU work of the lexical embedder runs
in a thread (``asyncio.to_thread``) so it never blocks the event loop; an endpoint that answers
rows of the wrong count, mixed dimensions, non-finite values or zero vectors is refused rather
than poisoning the cache.

One module on purpose (about 430 lines): the two embedders implement one protocol and share its
normalization and error mapping; half of it is the documented hazards.
"""

from __future__ import annotations

import asyncio
import re
import unicodedata
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from core.errors import ModelError, ModelOutputInvalidError, ModelUnavailableError

# The guard reads as much of a query as is embedded: one limit for both.
from domain.semantic_guard.tokens import MAX_EMBED_CHARS as MAX_EMBED_CHARS

if TYPE_CHECKING:
    import openai

    from core.settings import Settings

# scikit-learn (seconds to import) and the openai SDK are imported where they are first used:
# importing this module, as every worker and API process does, stays cheap.


LEXICAL_N_FEATURES = 2**10
"""Dimension of the lexical rows (1,024 float32 = 4 KiB per row). On the semantic pair set,
2**10, 2**11 and 2**12 buckets hit the same paraphrases within one pair and no near-miss at the
default threshold; the smallest rows take the least memory and search time."""

Vectors = npt.NDArray[np.float32]
"""A float32 matrix of shape ``(n, dim)`` whose rows have unit L2 norm."""


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into unit-length float32 rows.

    Attributes:
        name: stable identity of the embedding space (``lexical-hashing-v1``,
            ``openai:<model>``); rows from embedders with different names are never compared.
        lexical: ``True`` when similarity reflects wording only, not meaning.
        dim: row length; ``0`` while unknown (an endpoint's dimension is learnt on first use).
    """

    name: str
    lexical: bool

    @property
    def dim(self) -> int:
        """Row length, or ``0`` while unknown."""
        ...

    async def embed(self, texts: list[str]) -> Vectors:
        """Embed ``texts`` (each cut to :data:`MAX_EMBED_CHARS` characters).

        Returns:
            float32 array of shape ``(len(texts), dim)``, rows L2-normalized.

        Raises:
            ModelError: the embedding backend failed (only remote embedders raise).
        """
        ...


def _unit_rows(matrix: npt.NDArray[np.floating]) -> Vectors:
    """``matrix`` as float32 with each row scaled to unit L2 norm (all-zero rows stay zero)."""
    rows = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return np.ascontiguousarray(rows / norms, dtype=np.float32)


# --------------------------------------------------------------------------- lexical


_CONTRACTIONS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"\bwon't\b", "will not"),
        (r"\bcan't\b", "can not"),
        (r"\bcannot\b", "can not"),
        (r"\bain't\b", "is not"),
        (r"\bshan't\b", "shall not"),
        (r"n't\b", " not"),
        (r"\b(what|who|where|when|how|why|that|there|here|it|he|she)'s\b", r"\1 is"),
        (r"\b(what|who|where|when|how|why|that|there|it)s\b(?=\s)", r"\1 is"),
        (r"'re\b", " are"),
        (r"'ve\b", " have"),
        (r"'ll\b", " will"),
        (r"\bi'm\b", "i am"),
        (r"\bi'd\b", "i would"),
        (r"'d\b", " would"),
        (r"'s\b", ""),  # possessive: "python's" -> "python"
    )
)
"""Applied in order to case-folded text with ASCII apostrophes."""

_FILLER = re.compile(
    r"\b(?:quick question|just wondering|i would like to know|i want to know|do you know"
    r"|i wonder|could you|can you|would you|will you|thank you|please|pls|kindly|hey|hi"
    r"|hello|thanks|okay|ok|so|just)\b|(?<=show |give |tell )me\b"
)
"""Politeness and filler that do not change what is asked (dropped before hashing only; the
wrong-hit guard reads the original query)."""

_LOOSE_PUNCTUATION = re.compile(r"(?<!\w)[^\w\s*+/=<>%$€£¥^-]+|[^\w\s*+/=<>%$€£¥^-]+(?!\w)")
"""Punctuation not inside a token: "orders?" loses its "?", "os.path" and "1,200" keep theirs."""

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "`": "'"})

_STOPWORDS = re.compile(
    r"\b(?:a|an|the|is|are|was|were|be|been|am|do|does|did|can|could|would|should|will|shall"
    r"|may|might|i|you|we|me|my|your|our|there)\b"
)
"""Articles, auxiliaries and pronouns: "How do I open a file" and "how can I open a file" differ
only in them. Negations, numbers and comparison words stay."""

_NUMBER_WORDS = {
    word: str(value)
    for value, word in enumerate(
        re.findall(
            r"\w+",
            "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
            "fifteen sixteen seventeen eighteen nineteen twenty",
        )
    )
}
_NUMBER_WORD = re.compile(r"\b(?:" + "|".join(_NUMBER_WORDS) + r")\b")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_DECIMAL = re.compile(r"\b(\d+)\.(\d+)\b")
_WORD_OPERATOR = re.compile(
    r"(?<=\d)\s+(times|x|multiplied by|divided by|over|plus|minus|mod|modulo)\s+(?=\d)"
)
_OPERATOR_SYMBOLS = {
    "times": "*",
    "x": "*",
    "multiplied by": "*",
    "divided by": "/",
    "over": "/",
    "plus": "+",
    "minus": "-",
    "mod": "%",
    "modulo": "%",
}
_SYMBOL = re.compile(r"(?<=[\d)])\s*(\*\*|[*/+^\u00d7\u00f7%-])\s*(?=[\d(])")


def _decimal(match: re.Match[str]) -> str:
    fraction = match.group(2).rstrip("0")
    return f"{match.group(1)}.{fraction}" if fraction else match.group(1)


def lexical_normalize(text: str) -> str:
    """The text the lexical embedder hashes.

    NFKC, case-folded, cut to :data:`MAX_EMBED_CHARS`; contractions expanded ("what's" and
    "whats" -> "what is", "don't" -> "do not"), possessive "'s" dropped; numbers written one way
    ("seven" -> "7", "1,200" -> "1200", "3.50" -> "3.5"); arithmetic written one way ("12 times
    7", "12*7" -> "12 * 7"); politeness, filler, articles, auxiliaries and pronouns dropped;
    punctuation outside tokens removed; whitespace collapsed.
    """
    normalized = unicodedata.normalize("NFKC", text[:MAX_EMBED_CHARS]).casefold()
    normalized = normalized.translate(_APOSTROPHES)
    for pattern, replacement in _CONTRACTIONS:
        normalized = pattern.sub(replacement, normalized)
    normalized = _NUMBER_WORD.sub(lambda m: _NUMBER_WORDS[m.group(0)], normalized)
    normalized = _THOUSANDS.sub("", normalized)
    normalized = _DECIMAL.sub(_decimal, normalized)
    normalized = _WORD_OPERATOR.sub(lambda m: f" {_OPERATOR_SYMBOLS[m.group(1)]} ", normalized)
    normalized = _SYMBOL.sub(lambda m: f" {m.group(1)} ", normalized)
    normalized = _LOOSE_PUNCTUATION.sub(" ", normalized)
    normalized = _FILLER.sub(" ", normalized)
    normalized = _STOPWORDS.sub(" ", normalized)
    return " ".join(normalized.split())


class LexicalEmbedder:
    """Offline, deterministic **lexical** embedding: it matches wording, not meaning.

    Character n-grams (3 to 5, within word boundaries) and word unigrams of
    :func:`lexical_normalize`'s output, hashed by scikit-learn's ``HashingVectorizer`` into
    :data:`LEXICAL_N_FEATURES` buckets (no fitting, no vocabulary, no Python ``hash()``), each
    part L2-normalized, the word part weighted by ``word_weight``, the sum L2-normalized again.
    Robust to casing, punctuation, contractions and filler; blind to synonyms and to word
    order (a bag of n-grams), which is why the semantic cache never serves a hit on this
    similarity alone (:func:`domain.semantic_guard.guard_allows`).
    """

    name: str = "lexical-hashing-v1"
    lexical: bool = True

    def __init__(self, *, n_features: int = LEXICAL_N_FEATURES, word_weight: float = 0.5) -> None:
        """Build the (stateless) vectorizers.

        Args:
            n_features: row length; a power of two between 2**8 and 2**16.
            word_weight: weight of the word-unigram part relative to the character part.

        Raises:
            ValueError: ``n_features`` or ``word_weight`` out of range.
        """
        if n_features < 2**8 or n_features > 2**16 or n_features & (n_features - 1):
            raise ValueError(f"n_features must be a power of two in 2**8..2**16, got {n_features}")
        if not 0 <= word_weight <= 4:
            raise ValueError(f"word_weight must be in 0..4, got {word_weight}")
        import sklearn
        from sklearn.feature_extraction.text import HashingVectorizer

        self._config_context = sklearn.config_context

        self._dim = n_features
        self._word_weight = word_weight
        if n_features != LEXICAL_N_FEATURES or word_weight != 0.5:
            self.name = f"lexical-hashing-v1-{n_features}-{word_weight:g}"
        common = {
            "n_features": n_features,
            "alternate_sign": False,
            "norm": None,  # normalized below in numpy: sklearn's normalize() validates a lot
            "lowercase": False,  # lexical_normalize has case-folded already
            "dtype": np.float32,
        }
        self._chars = HashingVectorizer(analyzer="char_wb", ngram_range=(3, 5), **common)
        self._words = HashingVectorizer(
            analyzer="word", token_pattern=r"(?u)[^\s]+", ngram_range=(1, 1), **common
        )

    @property
    def dim(self) -> int:
        """Row length (``n_features``)."""
        return self._dim

    def embed_sync(self, texts: list[str]) -> Vectors:
        """Embed in the calling thread (for benchmarks and batch jobs; see :meth:`embed`).

        Returns:
            float32 array of shape ``(len(texts), dim)``, rows L2-normalized; a text with no
            characters left after normalization is an all-zero row (similar to nothing).
        """
        if not texts:
            return np.zeros((0, self._dim), dtype=np.float32)
        normalized = [lexical_normalize(text) for text in texts]
        # The inputs are plain strings built here: sklearn's parameter and finiteness checks
        # would cost more than the hashing (config_context is thread-local).
        with self._config_context(skip_parameter_validation=True, assume_finite=True):
            chars = self._chars.transform(normalized).toarray()
            words = self._words.transform(normalized).toarray()
        combined = _unit_rows(chars) + _unit_rows(words) * np.float32(self._word_weight)
        return _unit_rows(combined)

    async def embed(self, texts: list[str]) -> Vectors:
        """Embed ``texts`` in a worker thread.

        Returns:
            float32 array of shape ``(len(texts), dim)``, rows L2-normalized.
        """
        return await asyncio.to_thread(self.embed_sync, texts)


# --------------------------------------------------------------------------- OpenAI-compatible


class OpenAIEmbedder:
    """Embeddings from an OpenAI-compatible ``/v1/embeddings`` endpoint (semantic, not lexical).

    The client should be built with ``max_retries=0`` (:func:`embedder_from_settings` does):
    one call is one HTTP request, and a failure is a cache miss, not a wait.
    """

    lexical: bool = False

    def __init__(self, client: openai.AsyncOpenAI, model: str, timeout_s: float = 5.0) -> None:
        """Wrap ``client`` for ``model``.

        Args:
            client: an ``openai.AsyncOpenAI`` for the endpoint (base URL including ``/v1``).
            model: the embeddings model id.
            timeout_s: the most one ``embed`` call may take, in seconds.

        Raises:
            ValueError: empty ``model`` or non-positive ``timeout_s``.
        """
        if not model:
            raise ValueError("model must be a non-empty embeddings model id")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self._client = client
        self.model = model
        self.name = f"openai:{model}"
        self.timeout_s = timeout_s
        self._dim = 0

    @property
    def dim(self) -> int:
        """Row length learnt from the first answer; ``0`` before."""
        return self._dim

    async def embed(self, texts: list[str]) -> Vectors:
        """Embed ``texts`` (each cut to :data:`MAX_EMBED_CHARS`) with one request.

        Returns:
            float32 array of shape ``(len(texts), dim)``, rows L2-normalized.

        Raises:
            ModelRateLimitedError: the endpoint answered 429 (retryable; ``retry_after_s`` set
                from its Retry-After when given).
            ModelUnavailableError: connection failure, timeout (``timeout_s``) or 5xx
                (retryable).
            ModelRequestRejectedError: another 4xx: unknown model, bad key (not retryable).
            ModelOutputInvalidError: the answer is not a valid embeddings response: not JSON,
                wrong number of rows, mixed or zero dimensions, non-finite or all-zero rows
                (not retryable).
        """
        import openai

        if not texts:
            return np.zeros((0, self._dim), dtype=np.float32)
        inputs = [text[:MAX_EMBED_CHARS] or " " for text in texts]  # the API refuses ""
        try:
            async with asyncio.timeout(self.timeout_s):
                response = await self._client.embeddings.create(
                    model=self.model, input=inputs, encoding_format="float"
                )
        except TimeoutError:
            raise ModelUnavailableError(
                f"embeddings endpoint timed out after {self.timeout_s:g}s"
            ) from None
        except openai.OpenAIError as exc:
            raise _safe_error(exc) from None
        except Exception as exc:  # a body the SDK could not parse (not JSON, wrong shape)
            raise ModelOutputInvalidError(
                f"embeddings endpoint answered an unreadable body ({type(exc).__name__})"
            ) from None
        rows = _rows_of(response, len(inputs))
        self._dim = rows.shape[1]
        return rows


def _safe_error(exc: openai.OpenAIError) -> ModelError:
    """The domain error for ``exc`` with a message holding only its kind and HTTP status."""
    from infra.providers.openai_errors import map_openai_error

    mapped = map_openai_error(exc)
    status = getattr(exc, "status_code", None)
    detail = f"answered {status}" if isinstance(status, int) else "failed"
    return type(mapped)(
        f"embeddings endpoint {detail} ({type(exc).__name__})", retry_after_s=mapped.retry_after_s
    )


def _rows_of(response: object, expected: int) -> Vectors:
    """The unit rows of an embeddings response, in input order.

    Raises:
        ModelOutputInvalidError: see :meth:`OpenAIEmbedder.embed`.
    """
    data = getattr(response, "data", None)
    if not isinstance(data, list) or len(data) != expected:
        got = len(data) if isinstance(data, list) else type(data).__name__
        raise ModelOutputInvalidError(
            f"embeddings endpoint answered {got} rows for {expected} inputs"
        )
    ordered: list[list[float] | None] = [None] * expected
    for position, item in enumerate(data):
        index = getattr(item, "index", position)
        vector = getattr(item, "embedding", None)
        if not isinstance(index, int) or not 0 <= index < expected or ordered[index] is not None:
            raise ModelOutputInvalidError("embeddings endpoint answered bad row indexes")
        if not isinstance(vector, list) or not vector:
            raise ModelOutputInvalidError("embeddings endpoint answered a row that is not a list")
        ordered[index] = vector
    lengths = {len(vector) for vector in ordered if vector is not None}
    if len(lengths) != 1:
        raise ModelOutputInvalidError("embeddings endpoint answered rows of mixed dimensions")
    try:
        matrix = np.array(ordered, dtype=np.float64)
    except (TypeError, ValueError):
        raise ModelOutputInvalidError("embeddings endpoint answered non-numeric values") from None
    if not np.all(np.isfinite(matrix)):
        raise ModelOutputInvalidError("embeddings endpoint answered non-finite values")
    if np.any(np.linalg.norm(matrix, axis=1) == 0):
        raise ModelOutputInvalidError("embeddings endpoint answered an all-zero row")
    return _unit_rows(matrix)


# --------------------------------------------------------------------------- settings


def embedder_from_settings(settings: Settings) -> Embedder:
    """The embedder the settings ask for.

    ``embeddings_model`` and ``openai_base_url`` both set: :class:`OpenAIEmbedder` on that
    endpoint (its own client, ``max_retries=0``, timeout ``min(model_timeout_s, 10)`` seconds);
    otherwise :class:`LexicalEmbedder`.
    """
    if settings.embeddings_model and settings.openai_base_url:
        import openai

        timeout_s = min(settings.model_timeout_s, 10.0)
        client = openai.AsyncOpenAI(
            base_url=settings.openai_base_url,
            api_key=settings.openai_api_key or "not-needed",
            max_retries=0,
            timeout=timeout_s,
        )
        return OpenAIEmbedder(client, settings.embeddings_model, timeout_s=timeout_s)
    return LexicalEmbedder()
