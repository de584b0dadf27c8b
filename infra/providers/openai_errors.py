"""Translate every exception the ``openai`` SDK can raise into a domain error.

The hazard this module guards against: an exception that escapes an activity untranslated becomes
a retryable ``ApplicationError`` named after its Python class, so a bad API key would be retried
until the activity's retry policy gives up, and a 429's Retry-After would be ignored. Every
exception the ``openai`` SDK can raise is therefore mapped deliberately here, and
``tests/test_error_mapping.py`` fails when the SDK grows an exception class this module has not
been taught about.

Mapping of ``openai`` exceptions (``openai`` 3.x, whose HTTP layer is ``httpx2``):

| SDK exception                                   | domain error                | retryable |
|-------------------------------------------------|-----------------------------|-----------|
| ``RateLimitError`` / any status 429             | ``ModelRateLimitedError``   | yes       |
| ``APITimeoutError``, ``APIConnectionError``     | ``ModelUnavailableError``   | yes       |
| ``InternalServerError`` / any status >= 500     | ``ModelUnavailableError``   | yes       |
| status 408 (request timeout)                    | ``ModelUnavailableError``   | yes       |
| ``ConflictError`` (409)                         | ``ModelUnavailableError``   | yes       |
| other 4xx (400, 401, 403, 404, 422, OAuth ...)  | ``ModelRequestRejectedError``| no       |
| ``APIResponseValidationError``                  | ``ModelOutputInvalidError`` | no        |
| ``LengthFinishReasonError``                     | ``ModelOutputInvalidError`` | no        |
| ``ContentFilterFinishReasonError``              | ``ModelOutputInvalidError`` | no        |
| ``_AmbiguousModuleClientUsageError`` (misuse)   | ``ModelRequestRejectedError``| no       |
| WebSocket errors, token-provider errors, other  | ``ModelUnavailableError``   | yes       |

409 is retryable because OpenAI uses it for transient lock conflicts and the SDK itself retries
408, 409 and 429; Temporal's retry policy takes that role here. Retry-After (``retry-after-ms`` in
milliseconds, ``retry-after`` in seconds or as an HTTP date) is honoured on 429 and 5xx answers.

Secrets: the SDK's message quotes the endpoint's error body, which may echo the API key. The
domain error's message is redacted and cut (:func:`core.providers.redact_secrets`, with
the request's own credential headers as known secrets). The SDK exception is redacted in place
too, because callers chain it (``raise ... from exc``) and Temporal serializes the whole cause
chain, messages included, into history.
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Mapping

import openai

from core.errors import (
    ModelError,
    ModelOutputInvalidError,
    ModelRateLimitedError,
    ModelRequestRejectedError,
    ModelUnavailableError,
)
from core.providers import redact_secrets

_RETRYABLE_4XX = frozenset({408, 409})
"""4xx statuses that mean "try again": request timeout and (transient) conflict."""


def parse_retry_after(
    headers: Mapping[str, str] | None, *, now: float | None = None
) -> float | None:
    """Seconds to wait before retrying, from an HTTP response's headers.

    Reads ``retry-after-ms`` (milliseconds) first, then ``retry-after`` as a number of seconds or
    as an HTTP date (RFC 9110), the same order the ``openai`` SDK uses.

    Args:
        headers: response headers (a case-insensitive mapping such as ``httpx2.Headers``; a plain
            dict must use lower-case keys), or ``None``.
        now: the current Unix time in seconds, for an HTTP-date header; defaults to the clock.

    Returns:
        The delay in seconds (never negative), or ``None`` when no header is present or none
        parses to a finite number.
    """
    if headers is None:
        return None
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        raw = headers.get(name)
        if raw is None:
            continue
        try:
            value = float(raw) / divisor
        except ValueError:
            continue
        if math.isfinite(value):
            return max(value, 0.0)
    raw_date = headers.get("retry-after")
    if raw_date is None:
        return None
    parsed = email.utils.parsedate_tz(raw_date)
    if parsed is None:
        return None
    when = email.utils.mktime_tz(parsed)
    current = time.time() if now is None else now
    return max(float(when) - current, 0.0)


_CREDENTIAL_HEADERS = ("authorization", "api-key", "x-api-key", "openai-organization")
"""Request headers whose values count as secrets when redacting an error."""


def _request_secrets(exc: openai.OpenAIError) -> list[str]:
    """The credentials the failed request carried (header values, and a Bearer's token)."""
    request = getattr(exc, "request", None)
    headers = getattr(request, "headers", None)
    found: list[str] = []
    if headers is None:
        return found
    for name in _CREDENTIAL_HEADERS:
        try:
            value = headers.get(name)
        except Exception:  # a malformed header object must not stop the translation
            continue
        if isinstance(value, str) and value:
            found.append(value)
            scheme, _, token = value.partition(" ")
            if token and scheme.lower() in ("bearer", "basic"):
                found.append(token.strip())
    return found


def redact_sdk_error(exc: openai.OpenAIError, secrets: list[str] | None = None) -> str:
    """Redact ``exc`` in place and return its safe text.

    Args:
        exc: an exception raised by the ``openai`` SDK.
        secrets: known secrets to remove besides the request's credential headers.

    Returns:
        The exception's text with secrets replaced and cut to
        :data:`core.providers.MAX_PROVIDER_MESSAGE_CHARS`; ``exc.args`` (and
        ``exc.message``, ``exc.body`` where present) now carry only that text.
    """
    safe = redact_secrets(str(exc), [*_request_secrets(exc), *(secrets or [])])
    exc.args = (safe,)
    if hasattr(exc, "message"):
        exc.message = safe
    if hasattr(exc, "body"):
        exc.body = None
    return safe


def _describe(exc: openai.OpenAIError) -> str:
    status = getattr(exc, "status_code", None)
    prefix = f"model endpoint answered {status}" if isinstance(status, int) else "model call failed"
    return f"{prefix}: {type(exc).__name__}: {redact_sdk_error(exc)}"


def map_openai_error(exc: openai.OpenAIError) -> ModelError:
    """The domain error for an exception raised by the ``openai`` SDK.

    See the module docstring for the full table. Never raises.

    Args:
        exc: any ``openai.OpenAIError`` raised by a chat-completions call.

    Returns:
        A :class:`core.errors.ModelError` subclass whose ``retryable`` flag says whether the same
        call may succeed later; ``retry_after_s`` (seconds) is set when a 429 or 5xx answer carried
        a Retry-After header. Its message holds the SDK's text redacted (no key, no credential
        header value) and cut to 300 characters; ``exc`` itself is redacted the same way.
    """
    message = _describe(exc)
    # Order matters: APIResponseValidationError carries a status code but the request succeeded;
    # APITimeoutError is a subclass of APIConnectionError.
    if isinstance(exc, openai.APIResponseValidationError):
        return ModelOutputInvalidError(message)
    if isinstance(exc, openai.APIConnectionError):
        return ModelUnavailableError(message)
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        if status == 429:
            return ModelRateLimitedError(
                message, retry_after_s=parse_retry_after(exc.response.headers)
            )
        if status >= 500:
            return ModelUnavailableError(
                message, retry_after_s=parse_retry_after(exc.response.headers)
            )
        if status in _RETRYABLE_4XX:
            return ModelUnavailableError(message)
        return ModelRequestRejectedError(message)
    if isinstance(exc, openai.LengthFinishReasonError | openai.ContentFilterFinishReasonError):
        return ModelOutputInvalidError(message)
    if type(exc).__name__ == "_AmbiguousModuleClientUsageError":
        # A programming error (module-level client used ambiguously): retrying cannot fix it.
        return ModelRequestRejectedError(message)
    # APIError without a response, WebSocket errors, credential-provider failures and anything
    # a future SDK adds: assume transient so Temporal retries (bounded by the retry policy).
    return ModelUnavailableError(message)
