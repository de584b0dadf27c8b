"""Checks on client text and free-form JSON, shared by the request and approval contracts.

Text and JSON from clients are checked more strictly than the durable contracts decode them:
a NUL character cannot be stored in PostgreSQL text (the worker's record write would fail), an
unpaired UTF-16 surrogate (``"\ud800"`` sent as a JSON escape) cannot be encoded as UTF-8
at all, and NaN or an infinity is not JSON. The checks run on the client-facing classes only
(``client_input = True``); the durable subclasses turn them off, so a history recorded before
them still decodes.
"""

from __future__ import annotations

import math
import re
from typing import Annotated

from pydantic import AfterValidator, JsonValue, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

MAX_JSON_DEPTH = 64
"""Deepest nesting of free-form JSON in a request (``metadata``, tool ``parameters``).

The worker decodes a job's input with pydantic's JSON parser, which refuses more than 200 levels
in all; a request nested deeper than the API's parser minded would fail its first workflow task
forever. 64 leaves room for the contract's own levels around these fields."""


UNPAIRED_SURROGATE = re.compile("[\ud800-\udfff]")
"""Matches a UTF-16 surrogate that no pair completes (such text cannot be encoded as UTF-8)."""


def text_problem(value: str) -> str | None:
    """Why ``value`` cannot be accepted from a client, or ``None`` when it can.

    Returns:
        A short message (never quoting ``value``) when it holds a NUL character or an unpaired
        UTF-16 surrogate; ``None`` otherwise.
    """
    if "\x00" in value:
        return "must not contain NUL characters (U+0000)"
    if UNPAIRED_SURROGATE.search(value) is not None:
        return "must not contain unpaired UTF-16 surrogates (U+D800 to U+DFFF)"
    return None


def check_client_text(value: str) -> str:
    """Return ``value`` unchanged when a client may send it (see :func:`text_problem`).

    Raises:
        ValueError: it holds a NUL character or an unpaired surrogate (a pydantic validator
            turns this into a 422 naming the field).
    """
    problem = text_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


ClientText = Annotated[str, AfterValidator(check_client_text)]
"""A string field of a client-facing model: NUL characters and unpaired surrogates refused."""


def refused_at(loc: tuple[str | int, ...], message: str) -> ValidationError:
    """A validation error at ``loc`` (relative to the field being validated).

    Raised inside a field validator, pydantic prefixes ``loc`` with the field's own location, so
    the 422 names the exact place, e.g. ``["body", "metadata", "tags", 2]``.
    """
    detail = InitErrorDetails(
        type=PydanticCustomError("client_input", message), loc=loc, input=None
    )
    return ValidationError.from_exception_data("client input", [detail])


def check_client_json(
    value: JsonValue, loc: tuple[str | int, ...] = (), limit: int = MAX_JSON_DEPTH
) -> JsonValue:
    """Return free-form client JSON unchanged when every part of it can be carried and stored.

    Refuses strings and object keys holding NUL characters or unpaired surrogates, floats that
    are NaN or infinite, and nesting deeper than ``limit`` levels of lists and objects.

    Args:
        value: decoded JSON (``metadata`` or a tool call's ``parameters``).
        loc: where ``value`` sits, prefixed to the error's location.
        limit: deepest nesting allowed (:data:`MAX_JSON_DEPTH`).

    Raises:
        pydantic.ValidationError: with the location of the first offending value (a key's
            problem is reported at the object holding it); raised inside a field validator it
            becomes a 422 naming that place.
    """
    _walk_json(value, loc, limit, client=True)
    return value


def _walk_json(value: JsonValue, loc: tuple[str | int, ...], limit: int, *, client: bool) -> None:
    """Check nesting depth, and with ``client`` also text and numbers (see the callers)."""
    stack: list[tuple[JsonValue, tuple[str | int, ...], int]] = [(value, loc, 1)]
    while stack:
        item, where, depth = stack.pop()
        if isinstance(item, str):
            problem = text_problem(item) if client else None
            if problem is not None:
                raise refused_at(where, problem)
        elif isinstance(item, float):
            if client and not math.isfinite(item):
                raise refused_at(where, "must be a finite number (NaN and infinities are not JSON)")
        elif isinstance(item, dict):
            if depth > limit:
                raise refused_at(where, f"nested deeper than {limit} levels")
            for key, child in item.items():
                problem = text_problem(key) if client else None
                if problem is not None:
                    raise refused_at(where, f"an object key {problem}")
                stack.append((child, (*where, key), depth + 1))
        elif isinstance(item, list):
            if depth > limit:
                raise refused_at(where, f"nested deeper than {limit} levels")
            stack.extend((child, (*where, i), depth + 1) for i, child in enumerate(item))


def check_json_depth(value: JsonValue, limit: int = MAX_JSON_DEPTH) -> JsonValue:
    """Return ``value`` unchanged when it nests at most ``limit`` levels of lists and objects.

    Raises:
        pydantic.ValidationError: it nests deeper, located at the first object or list past
            the limit (raised inside a field validator it becomes a 422 naming that place).
    """
    _walk_json(value, (), limit, client=False)
    return value
