"""The wrong-hit guard of the semantic cache: whether a cached query asks what a new one asks.

Similarity alone cannot tell "What is 12 * 7?" from "What is 12 * 8?" (one character apart),
nor, with the lexical embedding (a bag of character n-grams and words), "bishop captures knight"
from "knight captures bishop" (the same row) or "inhale" from "exhale"; the guard can. It is pure
Python over the two query texts (no Redis, no embedder), and runs for every embedder: a real
model's vectors put antonyms and swapped roles close together too.

One module per part: :mod:`~domain.semantic_guard.vocabulary` (the word tables),
:mod:`~domain.semantic_guard.tokens` (reading a query), :mod:`~domain.semantic_guard.content`
and its tables :mod:`~domain.semantic_guard.content_vocabulary` (the content-word sequence),
:mod:`~domain.semantic_guard.facts` (the facts and their comparison).

The guard's rules (:func:`guard_signature` extracts the facts, :func:`guard_allows` compares
them; both queries are read as written, not as embedded):

- **Content words, in order** (:func:`content_words`): after dropping request framing at the
  start ("could you tell me", "I'd like to know", a leading "what is"), articles, present-tense
  ``is``/``are``/``do``/``does``, politeness, casing (identifiers and acronyms such as ``IT``
  keep theirs) and punctuation that only separates, the two word sequences must be equal.
  Every other difference refuses: an antonym, another entity, a modifier added or dropped, a
  changed tense or modal, words in another order, another script (NFC only, never
  transliterated), a symbol (``C#`` is not ``C``). Numbers stay as written (``3.10`` is not
  ``3.1``); only number words, operator spellings and unit spellings right after a number are
  written one way. A query with no content word left (a greeting) never hits. The rules below
  say why in more detail and also compare what the sequence writes one way.
- **Numbers**: digits and number words, canonical (``12``, ``12.0``, ``twelve`` -> ``12``;
  ``1,200`` -> ``1200``; ``.5`` -> ``0.5``; a leading minus is a sign; ``3rd``, ``third`` ->
  ``#3``). The two multisets must be equal, and in the same order when a non-commutative
  operator (``-``, ``/``, power, ``mod``) is present: "12 - 7" never matches "7 - 12".
- **Operators**: ``*``, the multiplication sign, ``x`` between numbers, ``times``,
  ``multiplied``, ``product`` -> ``mul``; ``+ plus add`` -> ``add``; ``- minus subtract`` ->
  ``sub``; ``/``, the division sign, ``divided``, ``quotient`` -> ``div``; ``** ^ power`` ->
  ``pow``; ``squared``, ``cubed``, ``sqrt``/``root``, ``mod``/``modulo``/``remainder``/``%`` between
  numbers, ``log``, ``sin`` and other functions: counted only when the query holds a number (and a
  symbol only between operands). The aggregates ``average``/``mean``/``avg``, ``median`` and
  ``sum`` count always. The sets must be equal.
- **Units and currencies**: ``km``/``kilometres``, ``mi``/``miles``, ``°C``/``celsius``, ``h``/
  ``hours``, ``GB``, ``%``/``percent``, ``$``/``USD``/``dollars``, ``€``/``EUR``/``euros``, ...
  (one- and two-letter abbreviations only right after a number). The sequences (first
  appearances, in order) must be equal: "5 km to miles" never matches "5 miles to km".
- **Named entities**: capitalized words (not function words; at a sentence start only when not a
  common sentence opener), ALL-CAPS acronyms, quoted strings, identifiers with digits,
  underscores or dots (``Q4``, ``order_items``, ``os.path.join``, ``config.yaml``), dotted or
  dashed number groups (``3.12.1``, ``2024-01-05``), URLs, e-mail addresses, and a short list of
  well-known lowercase technology names (``python``, ``numpy``, ``postgresql``, ...). Each
  entity of either query must occur, case-insensitively, among the other query's words, so a
  casing paraphrase ("france" vs "France") still matches and "Tokyo" never matches "Kyoto".
- **Negations**: ``not``/``n't``/``cannot``, ``never``, ``no``/``none``/``nothing``/``neither``/
  ``nor``, ``without``/``except``/``excluding``/``outside``/``other than`` (and ``nicht``,
  ``kein``, ``pas``, ``jamais``, ``sans``, ``ohne``, ``nunca``, ``niet``, ``geen``, ...). The
  sets must be equal. A word in one query that is another word of the other query with a
  negating prefix (``unpaid``/``paid``, ``inactive``/``active``, ``non-null``/``null``) is a
  negation difference too.
- **Comparisons and directions**: more/less (``over``/``under``/``above``/``below`` before a
  number), at least/at most, max/min (``largest``, ``cheapest``, ``top``, ``bottom``, ...),
  first/last (``oldest``, ``newest``, ``most recent``), before/after, ascending/descending,
  increase/decrease (``up``/``down``), older/younger, today/yesterday/tomorrow, true/false,
  enabled/disabled, success/failure, ``<``, ``>``, ``<=``, ``>=``. The sets must be equal.
- A query longer than :data:`MAX_EMBED_CHARS` characters is neither stored
  nor matched: the guard reads only that much, so two long queries that differ later could
  otherwise pass.

The guard errs on the side of a miss: "What is the capital of France?", "what's the capital of
france" and "Tell me the capital of France" hit one another; "Convert 5 km to miles" and
"convert 5 kilometres to miles" too; a synonym ("purchase" for "buy"), a reordering or "WWII"
for "World War II" does not.

Storage, shared by every worker and API process through Redis: one Redis stream per namespace
"""

from __future__ import annotations

from domain.semantic_guard.content import content_words
from domain.semantic_guard.facts import QueryFacts, guard_allows, guard_signature
from domain.semantic_guard.tokens import MAX_EMBED_CHARS

__all__ = ["MAX_EMBED_CHARS", "QueryFacts", "content_words", "guard_allows", "guard_signature"]
