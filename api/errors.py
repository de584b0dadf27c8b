"""Map domain and Temporal errors to HTTP responses, by type (never by message text).

Error bodies carry agentflow's own messages only: never a SQL statement, a host name, a key or a
dependency's raw error text. No error becomes a bare 500 with internals: anything unexpected is
logged here and answered with a generic 500 body.

Hazard: FastAPI's default 422 handler echoes each refused value (``input``) and pydantic's
``ctx``; a NaN cannot be written as JSON and an unpaired surrogate cannot be encoded as UTF-8, so
the default handler itself failed with a 500 on exactly the inputs it was refusing. The handler
here never echoes the value, keeps only plain ``ctx`` limits, and every body is made encodable.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from temporalio.service import RPCError

from core.errors import StoreRejectedError, StoreUnavailableError
from core.models import UNPAIRED_SURROGATE
from core.tools import ToolCallInvalidError

log = logging.getLogger(__name__)

_MAX_CTX_TEXT = 200
"""Longest ``ctx`` string kept in a 422 (pydantic puts limits there, never the value)."""


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


def validation_issues(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """FastAPI/pydantic error dicts as the 422 body's issues: ``type``, ``loc``, ``msg``, ``ctx``.

    The refused value (``input``) is dropped, and so is any ``ctx`` entry that is not a plain
    number, boolean or short string (pydantic puts the raised exception there).
    """
    issues: list[dict[str, Any]] = []
    for error in errors:
        if not isinstance(error, Mapping):
            issues.append({"type": "invalid", "loc": [], "msg": "invalid request"})
            continue
        issue: dict[str, Any] = {
            "type": str(error.get("type", "invalid")),
            "loc": [
                part if isinstance(part, int) and not isinstance(part, bool) else str(part)
                for part in error.get("loc", ())
            ],
            "msg": str(error.get("msg", "invalid value")),
        }
        ctx = error.get("ctx")
        if isinstance(ctx, Mapping):
            kept = {
                str(k): v
                for k, v in ctx.items()
                if isinstance(v, bool | int)
                or (isinstance(v, float) and math.isfinite(v))
                or (isinstance(v, str) and len(v) <= _MAX_CTX_TEXT)
            }
            if kept:
                issue["ctx"] = kept
        issues.append(issue)
    return issues


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
        index = getattr(exc, "index", None)
        loc: list[str | int] = ["body", "tool_calls"]
        if index is not None:
            loc.append(index)
        loc.append(exc.field)
        return error_json([{"loc": loc, "msg": exc.message, "type": "value_error"}], 422)

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
