"""Secrets stay out of errors: a model endpoint that echoes the API key in its error body.

The endpoint is a real HTTP server on a loopback port that answers every chat completion with an
error quoting the request's ``Authorization`` header (as a misconfigured proxy or a chatty 401
page would). The key must not reach the domain error, the exception chain Temporal serializes
into history, the job record, or the API; the messages that do travel are cut to about 300
characters. The end-to-end test runs a real worker and the real API on the dev server.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import ValidationError
from temporalio.api.failure.v1 import Failure
from temporalio.converter import DataConverter
from temporalio.exceptions import ApplicationError

from activities.errors import to_application_error
from core.auth import Scope
from core.catalog import ModelCatalog, ModelSpec
from core.errors import ModelError, ModelRequestRejectedError, ModelUnavailableError
from core.models import Tier
from core.providers import MAX_PROVIDER_MESSAGE_CHARS, REDACTED, redact_secrets
from core.settings import Settings
from infra.providers import ChatMessage, OpenAICompatibleProvider, ProviderRegistry
from infra.providers.simulated import SimulatedProvider
from tests.helpers import serve_asgi
from tests.stack import Stack, StackSpec
from workflows.agent import AgentWorkflow

API_KEY = "sk-proj-" + uuid.uuid4().hex + "Zq9"
"""The key the provider is configured with; it must appear nowhere downstream."""

MESSAGES = [ChatMessage(role="user", content="What is 2 + 2?")]
MAX_MESSAGE_CHARS = MAX_PROVIDER_MESSAGE_CHARS + 120
"""The domain message: our prefix (status, class name) plus the redacted, cut provider text."""


# ---------------------------------------------------------------------------- the echo endpoint


def make_echo_app() -> FastAPI:
    """An OpenAI-compatible endpoint whose every error repeats the credentials it was sent."""
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        model = (await request.json())["model"]
        auth = request.headers.get("authorization", "")
        token = auth.removeprefix("Bearer ")
        match model:
            case "echo-401":
                message = f"invalid credentials: {auth}"
                return JSONResponse({"error": {"message": message}}, status_code=401)
            case "echo-500":
                message = f"upstream failed for key {token} (header was {auth!r})"
                return JSONResponse({"error": {"message": message}}, status_code=500)
            case "echo-plain":
                return PlainTextResponse(f"forbidden: api_key={token}\x00", status_code=403)
            case _:  # "echo-long": a huge page with the key at the very end
                page = "<html>" + "lorem ipsum " * 800 + f"key: {token}</html>"
                return PlainTextResponse(page, status_code=400)

    return app


@pytest.fixture(scope="module")
def echo_url() -> Iterator[str]:
    with serve_asgi(make_echo_app(), lifespan="off") as url:
        yield f"{url}/v1"


def spec(model_id: str, tier: Tier = Tier.SMALL) -> ModelSpec:
    return ModelSpec(
        tier=tier,
        provider="openai",
        model_id=model_id,
        cost_per_1k_tokens_usd=0.001,
        tokens_per_second=1000,
        max_tokens=64,
        request_timeout_s=5,
    )


def exception_chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and every exception it was raised from or during."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


# ---------------------------------------------------------------------------- provider errors


@pytest.mark.parametrize(
    ("model", "error"),
    [
        ("echo-401", ModelRequestRejectedError),
        ("echo-500", ModelUnavailableError),
        ("echo-plain", ModelRequestRejectedError),
        ("echo-long", ModelRequestRejectedError),
    ],
)
async def test_an_echoed_key_never_reaches_the_error_or_its_chain(
    echo_url: str, model: str, error: type[ModelError]
) -> None:
    provider = OpenAICompatibleProvider(echo_url, API_KEY, timeout_s=5)
    try:
        with pytest.raises(ModelError) as caught:
            await provider.complete(spec(model), MESSAGES, max_tokens=8)
    finally:
        await provider.aclose()
    assert type(caught.value) is error
    message = caught.value.message
    assert API_KEY not in message and API_KEY[:20] not in message
    assert "\x00" not in message
    assert len(message) <= MAX_MESSAGE_CHARS
    assert "model endpoint answered" in message  # still says what happened
    for exc in exception_chain(caught.value):
        assert API_KEY not in str(exc), type(exc)
        assert API_KEY not in repr(exc.args), type(exc)

    # What Temporal writes into history for the activity's failure, causes included.
    try:
        raise to_application_error(caught.value) from caught.value
    except ApplicationError as app_error:
        failure = Failure()
        DataConverter.default.failure_converter.to_failure(
            app_error, DataConverter.default.payload_converter, failure
        )
    serialized = str(failure)
    assert API_KEY not in serialized
    assert "answered" in serialized


def test_redact_secrets_removes_what_looks_like_a_key() -> None:
    configured = "my-own-Secret-42"
    text = (
        f"auth failed for {configured}; Authorization: Bearer abc.def-ghi; "
        "key sk-live-0123456789abcdef; api_key=qwerty123; "
        '"password": "hunter2"; hex 0123456789abcdef0123456789abcdef; '
        "b64 QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVoxMjM0NTY3ODkw== "
        "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln"
    )
    redacted = redact_secrets(text, [configured])
    for secret in (
        configured,
        "abc.def-ghi",
        "sk-live-0123456789abcdef",
        "qwerty123",
        "hunter2",
        "0123456789abcdef0123456789abcdef",
        "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVoxMjM0NTY3ODkw",
        "eyJhbGciOiJIUzI1NiJ9",
    ):
        assert secret not in redacted
    assert REDACTED in redacted
    assert redacted.startswith("auth failed for")


def test_redact_secrets_keeps_ordinary_text_and_cuts_long_text() -> None:
    ordinary = "model gpt-4o-mini not found (status 404); see the docs"
    assert redact_secrets(ordinary) == ordinary
    long = redact_secrets("word " * 1000 + "sk-tail-0123456789")
    assert len(long) <= MAX_PROVIDER_MESSAGE_CHARS and long.endswith("...")
    assert redact_secrets("a\x00b\n\tc") == "a b c"


# ---------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def stack_spec() -> StackSpec:
    """The API alone: each test starts the worker it needs (``api``)."""
    return StackSpec(
        settings={"rate_limit_per_minute": 10_000, "daily_budget_usd": 1_000.0}, worker=False
    )


@pytest.fixture
async def api(stack: Stack, echo_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """An admin client of the real API, whose real worker has the echoing endpoint at every
    tier."""
    key = stack.key("redaction-test", Scope.ADMIN).secret
    # Per-spec endpoints never get the default key (the registry's rule): each spec carries it.
    endpoint = {"base_url": echo_url, "api_key": API_KEY}
    catalog = ModelCatalog(
        models=[
            spec("echo-401", Tier.SMALL).model_copy(update=endpoint),
            spec("echo-500", Tier.MEDIUM).model_copy(update=endpoint),
            spec("echo-long", Tier.LARGE).model_copy(update=endpoint),
        ]
    )
    providers = ProviderRegistry({"simulated": SimulatedProvider(0)}, openai_timeout_s=5)
    async with stack.worker(providers=providers, catalog=catalog), stack.http(key) as client:
        yield client


async def wait_terminal(api: httpx.AsyncClient, job_id: str, timeout_s: float = 60) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body = (await api.get(f"/v1/jobs/{job_id}")).json()
        if body["status"] not in ("RUNNING", "AWAITING_APPROVAL"):
            return body
        await asyncio.sleep(0.2)
    raise AssertionError(f"job {job_id} did not end")


@pytest.mark.devserver
async def test_a_job_whose_endpoint_echoes_the_key_stores_and_shows_no_key(
    api: httpx.AsyncClient, stack: Stack
) -> None:
    response = await api.post(
        "/v1/jobs", json={"query": "What is the capital of France?", "model_tier": "small"}
    )
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    job = await wait_terminal(api, job_id)
    assert job["status"] == "FAILED", job
    # Small answers 401 (not retried), its escalation tier 500 (retried, then given up).
    assert job["result"]["error_type"] in ("ModelRequestRejected", "ModelUnavailable")
    assert "model endpoint answered" in job["error"]  # the reason survives, the key does not

    texts = {
        "GET job": (await api.get(f"/v1/jobs/{job_id}")).text,
        "GET jobs": (await api.get("/v1/jobs")).text,
    }
    record = stack.store.get_job(job_id)
    assert record is not None
    texts["record"] = record.model_dump_json()
    history = await stack.temporal.get_workflow_handle_for(
        AgentWorkflow.run, job["workflow_id"]
    ).fetch_history()
    texts["history"] = history.to_json()
    for where, text in texts.items():
        assert API_KEY not in text, where
        assert API_KEY[8:40] not in text, where
    assert len(record.error or "") <= MAX_MESSAGE_CHARS


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("DATABASE_URL", "postgres://bob:S3CRETPW@127.0.0.1:5432/test"),
        ("REDIS_URL", "http://bob:S3CRETPW@cache:6379/0"),
    ],
)
def test_a_refused_url_setting_never_shows_its_password(
    field: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by a hostile probe: pydantic printed the refused value (``input_value=...``) in
    the start-up error of the API, the worker and every CLI command."""
    monkeypatch.setenv(field, value)
    with pytest.raises(ValidationError) as refused:
        Settings(_env_file=None)
    assert field in str(refused.value)
    assert "S3CRETPW" not in str(refused.value)
