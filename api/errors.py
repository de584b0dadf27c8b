"""Map domain and Temporal errors to HTTP responses, by type (never by message text).

Error bodies carry agentflow's own messages only: never a SQL statement, a host name, a key or a
dependency's raw error text. No error becomes a bare 500 with internals: anything unexpected is
logged here and answered with a generic 500 body.

Hazard: FastAPI's default 422 handler echoes each refused value (``input``) and pydantic's
``ctx``; a NaN cannot be written as JSON and an unpaired surrogate cannot be encoded as UTF-8, so
the default handler itself failed with a 500 on exactly the inputs it was refusing. The handler
here never echoes the value, keeps only plain ``ctx`` limits, and every body is made encodable.
Some of pydantic's messages quote the value too (a discriminator's tag, a UUID's bad character
"found `x` at 3"), and a validator's message might: those parts are cut, and a message or
``ctx`` entry that still contains the refused text is replaced by a generic one. A 422 names the
field (``loc``) and the rule it broke, never what the client sent.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from temporalio.service import RPCError

from core.errors import StoreRejectedError, StoreUnavailableError, ToolCallInvalidError
from core.models import UNPAIRED_SURROGATE

log = logging.getLogger(__name__)

_MAX_CTX_TEXT = 200
"""Longest ``ctx`` string kept in a 422 (pydantic puts limits there, never the value)."""

_MIN_ECHO_CHARS = 3
"""Refused text this long or longer is looked for in a 422's messages (shorter text matches
ordinary words by chance)."""

_MAX_ECHO_SCAN = 200
"""At most this many strings and numbers of a refused value are looked for (among at most 50
times as many items)."""

_FOUND = re.compile(r",? ?found `[^`]*`(?: at \d+)?")
"""The part of a pydantic message that quotes a bad character of the value (UUIDs, URLs)."""

_SAFE_MESSAGES = {
    "union_tag_invalid": "Input tag does not match any of the expected tags",
}
"""Replacement messages for pydantic error types whose message quotes the value."""

_ECHO_CTX_KEYS = frozenset({"tag"})
"""``ctx`` entries that hold part of the value itself (a discriminated union's tag)."""

_TOOL_CALL_MESSAGES = {
    "name": "unknown tool (GET /v1/tools lists the registered tools)",
    "id": "tool call ids must be unique within a request",
}
"""What a 422 says for a refused tool call, by the field it names (never quoting the value)."""


class ApiError(Exception):
    """An error with an HTTP status and a message for the client."""

    status_code = 400

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        """Create the error; ``message`` goes to the client as ``detail``."""
        super().__init__(message)
        self.message = message
        self.headers = headers


class JobNotFoundError(ApiError):
    """No job with that id (404)."""

    status_code = 404


class JobStateConflictError(ApiError):
    """The job is not in a state that allows the operation (409)."""

    status_code = 409


class TemporalUnavailableError(ApiError):
    """The Temporal frontend cannot be reached, or no worker answered in time (503)."""

    status_code = 503


class UnprocessableRequestError(ApiError):
    """The request is well formed but cannot be run as it is (422)."""

    status_code = 422


class PayloadTooLargeError(ApiError):
    """The request is over a configured size limit (413)."""

    status_code = 413


class UnauthorizedError(ApiError):
    """No API key, or one that is unknown or revoked (401, ``WWW-Authenticate: Bearer``)."""

    status_code = 401

    def __init__(self, message: str) -> None:
        """Create the error; ``message`` goes to the client as ``detail``."""
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class ForbiddenError(ApiError):
    """The API key lacks the scope the route needs (403)."""

    status_code = 403


class PaymentRequiredError(ApiError):
    """The key's daily budget cannot cover the job's estimated cost (402)."""

    status_code = 402


class CodecNotConfiguredError(ApiError):
    """Payload encryption is off, so there is nothing to encode or decode (404)."""

    status_code = 404


class CodecRequestError(ApiError):
    """The payloads cannot be read or decrypted (400, as the codec server protocol says)."""

    status_code = 400


class TooManyRequestsError(ApiError):
    """The key is over its requests-per-minute limit (429, with ``Retry-After``)."""

    status_code = 429


def _encodable(value: Any) -> Any:
    """``value`` with every string UTF-8 encodable and every float finite (for a JSON body)."""
    if isinstance(value, str):
        return UNPAIRED_SURROGATE.sub("\ufffd", value)
    if isinstance(value, bool | int) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {_encodable(str(k)): _encodable(v) for k, v in value.items()}
    if isinstance(value, Sequence):
        return [_encodable(v) for v in value]
    return _encodable(str(value))


def error_json(
    detail: Any, status_code: int, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """A JSON error response ``{"detail": detail}`` that always encodes.

    Args:
        detail: a message, or a list of validation issues; strings are made UTF-8 encodable
            (unpaired surrogates become U+FFFD) and non-finite floats become ``null``.
        status_code: the HTTP status.
        headers: extra response headers (``Retry-After``, ``WWW-Authenticate``).
    """
    return JSONResponse(
        {"detail": _encodable(detail)},
        status_code=status_code,
        headers=dict(headers) if headers else None,
    )


def _refused_texts(value: Any) -> list[str]:
    """The strings and numbers inside a refused value, as text, that a message could quote."""
    found: list[str] = []
    stack = [value]
    visited = 0
    while stack and len(found) < _MAX_ECHO_SCAN and visited < 50 * _MAX_ECHO_SCAN:
        item = stack.pop()
        visited += 1
        if isinstance(item, str | bytes):
            text = item.decode("utf-8", "replace") if isinstance(item, bytes) else item
            if len(text.strip()) >= _MIN_ECHO_CHARS:
                found.append(text)
        elif isinstance(item, int | float) and not isinstance(item, bool):
            text = str(item)
            if len(text) >= _MIN_ECHO_CHARS:
                found.append(text)
        elif isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return found


def _quotes(text: str, refused: Sequence[str]) -> bool:
    """Whether ``text`` contains one of ``refused`` (or the start of a long one)."""
    return any(part in text or part[:24] in text for part in refused)


def validation_issues(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """FastAPI/pydantic error dicts as the 422 body's issues: ``type``, ``loc``, ``msg``, ``ctx``.

    The refused value (``input``) is dropped, and so is any ``ctx`` entry that is not a plain
    number, boolean or short string (pydantic puts the raised exception there). Messages and
    ``ctx`` strings never quote the value: known quoting parts are cut, and one that still
    contains the refused text is replaced (``msg``) or dropped (``ctx``).
    """
    issues: list[dict[str, Any]] = []
    for error in errors:
        if not isinstance(error, Mapping):
            issues.append({"type": "invalid", "loc": [], "msg": "invalid request"})
            continue
        kind = str(error.get("type", "invalid"))
        refused = _refused_texts(error.get("input"))
        msg = _SAFE_MESSAGES.get(kind) or _FOUND.sub("", str(error.get("msg", "invalid value")))
        if _quotes(msg, refused):
            msg = f"invalid value ({kind})"
        issue: dict[str, Any] = {
            "type": kind,
            "loc": [
                part if isinstance(part, int) and not isinstance(part, bool) else str(part)
                for part in error.get("loc", ())
            ],
            "msg": msg,
        }
        ctx = error.get("ctx")
        if isinstance(ctx, Mapping):
            kept: dict[str, Any] = {}
            for k, v in ctx.items():
                if str(k) in _ECHO_CTX_KEYS:
                    continue
                if isinstance(v, bool | int) or (isinstance(v, float) and math.isfinite(v)):
                    kept[str(k)] = v
                elif isinstance(v, str) and len(v) <= _MAX_CTX_TEXT:
                    text = _FOUND.sub("", v)
                    if not _quotes(text, refused):
                        kept[str(k)] = text
            if kept:
                issue["ctx"] = kept
        issues.append(issue)
    return issues


def tool_call_issue(exc: ToolCallInvalidError) -> dict[str, Any]:
    """The 422 issue for a refused tool call: where it is and why, never what was sent.

    The exception's own message quotes the tool name, and is kept for logs and workflow
    errors; here the message is chosen by the field it names, and for parameters it lists
    pydantic's issues (through :func:`validation_issues`, so without the values).
    """
    index = getattr(exc, "index", None)
    loc: list[str | int] = ["body", "tool_calls"]
    if index is not None:
        loc.append(index)
    loc.append(exc.field)
    cause = exc.__cause__
    if exc.field == "parameters" and isinstance(cause, ValidationError):
        parts = [
            f"{'.'.join(str(p) for p in issue['loc']) or '(root)'}: {issue['msg']}"
            for issue in validation_issues(cause.errors())
        ]
        msg = "invalid parameters: " + "; ".join(parts)
    else:
        msg = _TOOL_CALL_MESSAGES.get(exc.field, f"invalid {exc.field}")
    return {"loc": loc, "msg": msg, "type": "value_error"}


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that turn errors into JSON responses.

    Domain and API errors map by type; request validation becomes a 422 that never echoes the
    refused value; a Temporal RPC failure no route handled becomes a 503; anything else is logged
    with its traceback and answered with a generic 500 (no exception text).
    """

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_json(validation_issues(exc.errors()), 422)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_json(exc.message, exc.status_code, exc.headers)

    @app.exception_handler(ToolCallInvalidError)
    async def _tool_invalid(_: Request, exc: ToolCallInvalidError) -> JSONResponse:
        return error_json([tool_call_issue(exc)], 422)

    @app.exception_handler(StoreUnavailableError)
    async def _store_down(_: Request, exc: StoreUnavailableError) -> JSONResponse:
        return error_json(
            "the job database is unavailable; try again shortly", 503, {"Retry-After": "5"}
        )

    @app.exception_handler(StoreRejectedError)
    async def _store_refused(_: Request, exc: StoreRejectedError) -> JSONResponse:
        return error_json("the job database refused the request's data", 422)

    @app.exception_handler(RPCError)
    async def _temporal_failed(request: Request, exc: RPCError) -> JSONResponse:
        # A route that talks to Temporal maps the failures it expects; one that escaped is still
        # Temporal's, not the client's. Its text can name the server's address: logged only.
        log.warning(
            "Temporal RPC failed in %s %s: %s", request.method, request.url.path, exc.status
        )
        return error_json("Temporal did not answer; try again", 503, {"Retry-After": "5"})

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Starlette re-raises ``exc`` after this answer, so the server logs its traceback.
        log.error("unhandled %s in %s %s", type(exc).__name__, request.method, request.url.path)
        return error_json("internal error", 500)
