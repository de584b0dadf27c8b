"""``/codec/encode`` and ``/codec/decode``: a Temporal codec server for the Web UI and the CLI.

With payload encryption on (:mod:`infra.codec`), the Temporal Web UI and ``temporal workflow
show`` see only ciphertext. Pointed at ``<api>/codec`` (Web UI: "Codec Server" settings; CLI:
``--codec-endpoint <api>/codec --codec-auth 'Bearer <key>'``), they send the payloads here and
show what comes back. The protocol is Temporal's: ``POST .../decode`` and ``POST .../encode`` with
a ``Payloads`` message in proto JSON (``{"payloads": [{"metadata": {name: base64}, "data":
base64}]}``) answered in the same form; the ``X-Namespace`` header is accepted and ignored (one
set of keys serves the namespace agentflow uses).

Both endpoints need an ``admin`` key: a payload carries no job owner the codec could check, so a
decode is a decryption oracle for every job's data, and an encode makes ciphertext the workers
accept as genuine. A ``read`` key may only see its own jobs, so it may not use either. Without
``AGENTFLOW_PAYLOAD_ENCRYPTION_KEYS`` both answer 404.

The Temporal CLI sends the key with ``--codec-auth``. The Web UI sends an ``Authorization``
header only with its "pass access token" option, over HTTPS, and then it carries the UI's own
OIDC access token, not an agentflow key: behind an OIDC-enabled UI the codec endpoint needs a
proxy that maps that login to a key; with ``AGENTFLOW_AUTH_DISABLED`` (local development) the UI
works as it is.

The browser calls these endpoints from the Web UI's origin with a CORS preflight, so
:class:`CodecCORSMiddleware` adds CORS headers for ``AGENTFLOW_CODEC_CORS_ORIGINS``, and only on
``/codec/...``; the rest of the API stays same-origin only.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from google.protobuf import json_format
from pydantic import BaseModel, ConfigDict, Field
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send
from temporalio.api.common.v1 import Payloads

from api.deps import AdminKey
from api.errors import CodecNotConfiguredError, CodecRequestError
from api.openapi import error_responses
from core.settings import Settings
from infra.codec import EncryptionCodec, PayloadDecryptionError, codec_from_settings

CODEC_PREFIX = "/codec"
"""Where the endpoints live; the codec endpoint to configure is ``<api base URL>/codec``."""

MAX_PAYLOADS = 1000
"""Most payloads one request may carry (the body size is bounded by the app's middleware)."""

CORS_ALLOWED_HEADERS = ("Authorization", "Content-Type", "X-Namespace")
"""Request headers the Web UI and CLI send to a codec server."""

CORS_MAX_AGE_S = 600
"""How long a browser may cache a preflight answer, in seconds."""


class CodecPayload(BaseModel):
    """One ``temporal.api.common.v1.Payload`` in proto JSON.

    Attributes:
        metadata: metadata name to base64 of its bytes (``encoding`` among them).
        data: base64 of the payload bytes; absent or empty for an empty payload.
    """

    model_config = ConfigDict(extra="allow")

    metadata: dict[str, str] = Field(default_factory=dict)
    data: str = ""


class CodecPayloads(BaseModel):
    """``temporal.api.common.v1.Payloads`` in proto JSON: the body and answer of both endpoints.

    Attributes:
        payloads: at most :data:`MAX_PAYLOADS` payloads; the answer keeps their order.
    """

    payloads: list[CodecPayload] = Field(default_factory=list, max_length=MAX_PAYLOADS)


def get_codec(request: Request) -> EncryptionCodec:
    """The API's payload codec (set by :func:`mount_codec`).

    Raises:
        CodecNotConfiguredError: payload encryption is not configured (404).
    """
    codec: EncryptionCodec | None = getattr(request.app.state, "payload_codec", None)
    if codec is None:
        raise CodecNotConfiguredError(
            "payload encryption is not configured on this server "
            "(set AGENTFLOW_PAYLOAD_ENCRYPTION_KEYS)"
        )
    return codec


CodecDep = Annotated[EncryptionCodec, Depends(get_codec)]

router = APIRouter(prefix=CODEC_PREFIX, tags=["codec"])


def _to_proto(body: CodecPayloads) -> Payloads:
    try:
        return json_format.ParseDict(
            body.model_dump(mode="json"), Payloads(), ignore_unknown_fields=True
        )
    except json_format.ParseError as exc:
        raise CodecRequestError("payloads are not valid proto JSON (bad base64?)") from exc


def _from_proto(payloads: Payloads) -> CodecPayloads:
    as_json: dict[str, Any] = json_format.MessageToDict(payloads)
    return CodecPayloads.model_validate({"payloads": as_json.get("payloads", [])})


@router.post("/encode", responses=error_responses(400, 401, 403, 404, 413, 422, 503))
async def encode_payloads(
    _principal: AdminKey, codec: CodecDep, body: CodecPayloads
) -> CodecPayloads:
    """Encrypt payloads under the active key (``admin`` key required).

    Returns the same number of payloads, in order. 401 without a key, 403 without ``admin``,
    404 when encryption is off, 400 for payloads that are not proto JSON, 422 for a body of the
    wrong shape or over :data:`MAX_PAYLOADS` payloads.
    """
    payloads = _to_proto(body)
    return _from_proto(Payloads(payloads=await codec.encode(payloads.payloads)))


@router.post("/decode", responses=error_responses(400, 401, 403, 404, 413, 422, 503))
async def decode_payloads(
    _principal: AdminKey, codec: CodecDep, body: CodecPayloads
) -> CodecPayloads:
    """Decrypt encrypted payloads; others come back unchanged (``admin`` key required).

    Returns the same number of payloads, in order. 401 without a key, 403 without ``admin``,
    404 when encryption is off, 400 for payloads that are not proto JSON or that cannot be
    decrypted (unknown key id, changed bytes), 422 for a body of the wrong shape or over
    :data:`MAX_PAYLOADS` payloads.
    """
    payloads = _to_proto(body)
    try:
        decoded = await codec.decode(payloads.payloads)
    except PayloadDecryptionError as exc:
        raise CodecRequestError(str(exc)) from exc
    return _from_proto(Payloads(payloads=decoded))


class CodecCORSMiddleware:
    """Starlette's ``CORSMiddleware``, applied only to paths under ``path_prefix``.

    Preflights (``OPTIONS`` with ``Access-Control-Request-Method``) from an allowed origin get
    200 with the allowed method, headers and credentials; from any other origin 400 and no
    ``Access-Control-Allow-Origin``. Other paths pass through untouched.
    """

    def __init__(self, app: ASGIApp, *, path_prefix: str, allow_origins: list[str]) -> None:
        """Wrap ``app``; ``allow_origins`` are exact origins (``scheme://host:port``)."""
        self.app = app
        self.prefix = path_prefix.rstrip("/")
        self.cors = CORSMiddleware(
            app,
            allow_origins=allow_origins,
            allow_methods=["POST"],
            allow_headers=list(CORS_ALLOWED_HEADERS),
            allow_credentials=True,
            max_age=CORS_MAX_AGE_S,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point."""
        path: str = scope.get("path", "") if scope["type"] == "http" else ""
        if path == self.prefix or path.startswith(self.prefix + "/"):
            await self.cors(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def mount_codec(app: FastAPI, settings: Settings) -> None:
    """Add the codec endpoints, their codec and their CORS policy to ``app``.

    Call it in ``create_app`` before the app starts (it adds a middleware), after the body-size
    middleware so that 413 answers carry CORS headers too.

    Args:
        app: the API application.
        settings: ``payload_encryption_keys``/``payload_encryption_key_id`` (the codec; none:
            the endpoints answer 404) and ``codec_cors_origins`` (none: no CORS headers).

    Raises:
        ValueError: the encryption settings are invalid (names the setting).
    """
    app.state.payload_codec = codec_from_settings(settings)
    app.include_router(router)
    if settings.codec_cors_origins:
        app.add_middleware(
            CodecCORSMiddleware,
            path_prefix=CODEC_PREFIX,
            allow_origins=list(settings.codec_cors_origins),
        )
