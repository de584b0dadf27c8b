"""Map domain and Temporal errors to HTTP responses, by type (never by message text).

Error bodies carry agentflow's own messages only: never a SQL statement, a host name, a key or a
dependency's raw error text.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from core.errors import StoreRejectedError, StoreUnavailableError
from core.tools import ToolCallInvalidError


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


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that turn agentflow errors into JSON responses."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(
            {"detail": exc.message}, status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(ToolCallInvalidError)
    async def _tool_invalid(_: Request, exc: ToolCallInvalidError) -> JSONResponse:
        index = getattr(exc, "index", None)
        loc: list[str | int] = ["body", "tool_calls"]
        if index is not None:
            loc.append(index)
        loc.append(exc.field)
        return JSONResponse(
            {"detail": [{"loc": loc, "msg": exc.message, "type": "value_error"}]},
            status_code=422,
        )

    @app.exception_handler(StoreUnavailableError)
    async def _store_down(_: Request, exc: StoreUnavailableError) -> JSONResponse:
        return JSONResponse(
            {"detail": "the job database is unavailable; try again shortly"},
            status_code=503,
            headers={"Retry-After": "5"},
        )

    @app.exception_handler(StoreRejectedError)
    async def _store_refused(_: Request, exc: StoreRejectedError) -> JSONResponse:
        return JSONResponse(
            {"detail": "the job database refused the request's data"}, status_code=422
        )
