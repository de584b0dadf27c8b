"""What the OpenAPI schema says about errors: the error bodies and each status code's meaning.

Every route lists the status codes it can answer with ``responses=error_responses(...)``, so a
client (or Schemathesis) reading the schema knows every answer it may get. Error bodies carry
agentflow's own words only (:mod:`api.errors`).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    """An error answer: ``detail`` says what went wrong, in agentflow's own words."""

    detail: str


class ValidationIssue(BaseModel):
    """One reason a request was refused (422).

    ``loc`` is where: ``["body", "context", 3, "content"]``, ``["query", "offset"]``,
    ``["header", "idempotency-key"]``. The offending value itself is never echoed.
    """

    type: str
    """A stable machine name for the problem, e.g. ``missing``, ``bool_type``,
    ``client_input``."""
    loc: list[str | int]
    msg: str
    ctx: dict[str, str | int | float | bool] | None = None
    """The limit that was broken, when there is one (``{"le": 500}``)."""


class ValidationErrorBody(BaseModel):
    """A refused request (422).

    ``detail`` lists the issues, or is one sentence for a request that is valid JSON but cannot
    be run as it is (too deeply nested for the worker, refused by the database).
    """

    detail: list[ValidationIssue] | str = Field(
        description="Each problem with its location, or one sentence."
    )


_DESCRIPTIONS: dict[int, str] = {
    400: "Malformed request: the body could not be read.",
    401: "No API key, or an unknown or revoked one (header `WWW-Authenticate: Bearer`).",
    402: "The key's daily budget cannot cover the job's estimated cost.",
    403: "The API key lacks the scope this route needs.",
    404: "No such job (or not one this key may see).",
    409: "The job is not in a state that allows this, or the Idempotency-Key was used with "
    "another request.",
    413: "The request body, or the job input it makes, is over the configured size limit.",
    422: "The request is invalid: each problem is named with its location.",
    429: "Too many requests for this key; retry after `Retry-After` seconds.",
    503: "A dependency (Temporal, the job database) is unavailable; retry after `Retry-After` "
    "seconds when given.",
}

_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before trying again.",
        "schema": {"type": "integer"},
    }
}
_HEADERS: dict[int, dict[str, Any]] = {
    401: {
        "WWW-Authenticate": {
            "description": "The authentication scheme: `Bearer`.",
            "schema": {"type": "string"},
        }
    },
    429: _RETRY_AFTER,
    503: _RETRY_AFTER,
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` argument of a route that can answer with ``codes``.

    Args:
        codes: HTTP status codes among 400, 401, 402, 403, 404, 409, 413, 422, 429 and 503.

    Returns:
        ``{code: {"description": ..., "model": ErrorBody}}`` per code (``ValidationErrorBody``
        for 422), with the ``Retry-After`` or ``WWW-Authenticate`` header documented where the
        answer carries it. A 422 given here replaces FastAPI's default 422 entry.

    Raises:
        ValueError: a code this module does not describe.
    """
    responses: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        if code not in _DESCRIPTIONS:
            raise ValueError(f"no description for status {code}; add it to api.openapi")
        entry: dict[str, Any] = {
            "description": _DESCRIPTIONS[code],
            "model": ValidationErrorBody if code == 422 else ErrorBody,
        }
        if code in _HEADERS:
            entry["headers"] = _HEADERS[code]
        responses[code] = entry
    return responses
