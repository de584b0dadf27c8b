"""Every exception the openai SDK exports has a deliberate mapping to a domain error.

openai 3.x builds its HTTP layer on ``httpx2`` (not ``httpx``), so requests and responses for the
status errors are real ``httpx2`` objects.
"""

from __future__ import annotations

import email.utils
import inspect
from collections.abc import Callable
from datetime import timedelta

import httpx2
import openai
import openai._exceptions
import pytest
from openai.types.chat import ChatCompletion

from activities.errors import to_application_error
from core.errors import (
    AgentflowError,
    BlobNotFoundError,
    ErrorType,
    ModelError,
    ModelOutputInvalidError,
    ModelRateLimitedError,
    ModelRequestRejectedError,
    ModelUnavailableError,
    ToolTransientError,
)
from infra.providers.openai_errors import map_openai_error, parse_retry_after

URL = "http://127.0.0.1:1/v1/chat/completions"


def _request() -> httpx2.Request:
    return httpx2.Request("POST", URL)


def _response(status: int, headers: dict[str, str] | None = None) -> httpx2.Response:
    return httpx2.Response(status, headers=headers or {}, request=_request(), json={"error": {}})


def _status(cls: type[openai.APIStatusError], status: int) -> Callable[[], openai.OpenAIError]:
    return lambda: cls(f"status {status}", response=_response(status), body=None)


def _completion() -> ChatCompletion:
    return ChatCompletion(
        id="c1", choices=[], created=0, model="m", object="chat.completion", usage=None
    )


# class name -> (how to build one, the domain error it must map to)
EXPECTED: dict[str, tuple[Callable[[], openai.OpenAIError], type[ModelError]]] = {
    "OpenAIError": (lambda: openai.OpenAIError("boom"), ModelUnavailableError),
    "APIError": (lambda: openai.APIError("boom", _request(), body=None), ModelUnavailableError),
    "APIConnectionError": (
        lambda: openai.APIConnectionError(request=_request()),
        ModelUnavailableError,
    ),
    "APITimeoutError": (lambda: openai.APITimeoutError(_request()), ModelUnavailableError),
    "APIResponseValidationError": (
        lambda: openai.APIResponseValidationError(_response(200), body=None),
        ModelOutputInvalidError,
    ),
    "APIStatusError": (_status(openai.APIStatusError, 418), ModelRequestRejectedError),
    "BadRequestError": (_status(openai.BadRequestError, 400), ModelRequestRejectedError),
    "AuthenticationError": (_status(openai.AuthenticationError, 401), ModelRequestRejectedError),
    "OAuthError": (
        lambda: openai.OAuthError(response=_response(401), body={"error": "invalid_grant"}),
        ModelRequestRejectedError,
    ),
    "PermissionDeniedError": (
        _status(openai.PermissionDeniedError, 403),
        ModelRequestRejectedError,
    ),
    "NotFoundError": (_status(openai.NotFoundError, 404), ModelRequestRejectedError),
    "ConflictError": (_status(openai.ConflictError, 409), ModelUnavailableError),
    "UnprocessableEntityError": (
        _status(openai.UnprocessableEntityError, 422),
        ModelRequestRejectedError,
    ),
    "RateLimitError": (_status(openai.RateLimitError, 429), ModelRateLimitedError),
    "InternalServerError": (_status(openai.InternalServerError, 500), ModelUnavailableError),
    "LengthFinishReasonError": (
        lambda: openai.LengthFinishReasonError(completion=_completion()),
        ModelOutputInvalidError,
    ),
    "ContentFilterFinishReasonError": (
        lambda: openai.ContentFilterFinishReasonError(),
        ModelOutputInvalidError,
    ),
    "WebSocketConnectionClosedError": (
        lambda: openai.WebSocketConnectionClosedError("closed", unsent_messages=[]),
        ModelUnavailableError,
    ),
    "WebSocketQueueFullError": (
        lambda: openai.WebSocketQueueFullError("full"),
        ModelUnavailableError,
    ),
    "SubjectTokenProviderError": (
        lambda: openai._exceptions.SubjectTokenProviderError("token provider failed"),
        ModelUnavailableError,
    ),
    "_AmbiguousModuleClientUsageError": (
        lambda: vars(openai)["_AmbiguousModuleClientUsageError"](),
        ModelRequestRejectedError,
    ),
}


def _sdk_exception_classes() -> dict[str, type[openai.OpenAIError]]:
    found: dict[str, type[openai.OpenAIError]] = {}
    for namespace in (vars(openai), vars(openai._exceptions)):
        for name, value in list(namespace.items()):
            if inspect.isclass(value) and issubclass(value, openai.OpenAIError):
                found[name] = value
    return found


SDK_CLASSES = _sdk_exception_classes()


def test_every_sdk_exception_has_a_deliberate_mapping() -> None:
    unmapped = sorted(set(SDK_CLASSES) - set(EXPECTED))
    assert not unmapped, (
        f"openai exports exception classes without a deliberate mapping: {unmapped}; "
        "decide their retryability in infra/providers/openai_errors.py and add them to EXPECTED"
    )
    # Sanity: the walk found the classes we know of (guards against a broken walk).
    assert {"RateLimitError", "APITimeoutError", "InternalServerError"} <= set(SDK_CLASSES)


@pytest.mark.parametrize("name", sorted(SDK_CLASSES))
def test_sdk_exception_maps_to_intended_domain_error(name: str) -> None:
    if name not in EXPECTED:
        pytest.fail(f"no expected mapping for openai.{name}")
    build, expected = EXPECTED[name]
    exc = build()
    assert type(exc) is SDK_CLASSES[name], "the factory must build exactly that class"
    mapped = map_openai_error(exc)
    assert type(mapped) is expected
    assert mapped.retryable is expected.retryable
    assert name in mapped.message
    assert mapped.retry_after_s is None  # none of the factories sends Retry-After


@pytest.mark.parametrize(
    ("status", "expected", "retryable"),
    [
        (400, ModelRequestRejectedError, False),
        (401, ModelRequestRejectedError, False),
        (404, ModelRequestRejectedError, False),
        (408, ModelUnavailableError, True),
        (409, ModelUnavailableError, True),
        (413, ModelRequestRejectedError, False),
        (418, ModelRequestRejectedError, False),
        (429, ModelRateLimitedError, True),
        (500, ModelUnavailableError, True),
        (502, ModelUnavailableError, True),
        (503, ModelUnavailableError, True),
        (529, ModelUnavailableError, True),
    ],
)
def test_generic_status_error_maps_by_status_code(
    status: int, expected: type[ModelError], retryable: bool
) -> None:
    mapped = map_openai_error(openai.APIStatusError("x", response=_response(status), body=None))
    assert type(mapped) is expected
    assert mapped.retryable is retryable
    assert str(status) in mapped.message


def test_rate_limit_reads_retry_after_seconds() -> None:
    exc = openai.RateLimitError(
        "slow down", response=_response(429, {"Retry-After": "7"}), body=None
    )
    mapped = map_openai_error(exc)
    assert isinstance(mapped, ModelRateLimitedError)
    assert mapped.retry_after_s == 7.0


def test_rate_limit_prefers_retry_after_ms() -> None:
    headers = {"retry-after-ms": "1500", "retry-after": "9"}
    exc = openai.RateLimitError("slow down", response=_response(429, headers), body=None)
    assert map_openai_error(exc).retry_after_s == 1.5


def test_server_error_honours_retry_after() -> None:
    exc = openai.InternalServerError(
        "busy", response=_response(503, {"Retry-After": "2"}), body=None
    )
    mapped = map_openai_error(exc)
    assert isinstance(mapped, ModelUnavailableError)
    assert mapped.retry_after_s == 2.0


def test_retry_after_http_date() -> None:
    now = 1_800_000_000.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after(httpx2.Headers({"Retry-After": date}), now=now) == 30.0
    # A date in the past means "now", never a negative delay.
    past = email.utils.formatdate(now - 30, usegmt=True)
    assert parse_retry_after(httpx2.Headers({"Retry-After": past}), now=now) == 0.0


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": "-4"}, 0.0),
        ({"Retry-After": "0.25"}, 0.25),
        ({"Retry-After": "nan"}, None),
        ({"retry-after-ms": "oops", "Retry-After": "3"}, 3.0),
    ],
)
def test_parse_retry_after_edge_cases(headers: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after(httpx2.Headers(headers)) == expected


def test_parse_retry_after_without_headers() -> None:
    assert parse_retry_after(None) is None


@pytest.mark.parametrize(
    ("error", "type_", "non_retryable", "delay"),
    [
        (
            ModelRateLimitedError("429", retry_after_s=7),
            ErrorType.MODEL_RATE_LIMITED,
            False,
            timedelta(seconds=7),
        ),
        (
            ModelUnavailableError("503", retry_after_s=1.5),
            ErrorType.MODEL_UNAVAILABLE,
            False,
            timedelta(seconds=1.5),
        ),
        (ModelUnavailableError("down"), ErrorType.MODEL_UNAVAILABLE, False, None),
        (ModelRequestRejectedError("401"), ErrorType.MODEL_REQUEST_REJECTED, True, None),
        (ModelOutputInvalidError("empty"), ErrorType.MODEL_OUTPUT_INVALID, True, None),
        (ToolTransientError("net"), ErrorType.TOOL_TRANSIENT, False, None),
        (BlobNotFoundError("gone"), ErrorType.BLOB_NOT_FOUND, True, None),
    ],
)
def test_to_application_error_fields(
    error: AgentflowError, type_: ErrorType, non_retryable: bool, delay: timedelta | None
) -> None:
    app_error = to_application_error(error)
    assert app_error.message == error.message
    assert app_error.type == str(type_) == type_.value
    assert app_error.non_retryable is non_retryable
    assert app_error.next_retry_delay == delay


def test_mapped_sdk_error_round_trips_to_application_error() -> None:
    exc = openai.RateLimitError("slow", response=_response(429, {"Retry-After": "7"}), body=None)
    app_error = to_application_error(map_openai_error(exc))
    assert app_error.type == "ModelRateLimited"
    assert app_error.non_retryable is False
    assert app_error.next_retry_delay == timedelta(seconds=7)
