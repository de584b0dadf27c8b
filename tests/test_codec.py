"""Encrypted payloads: the AES-GCM codec, its place in the plugin, and the codec server endpoint.

Unit tests pin the codec's stated rules (round trip, rotation, tampering, unknown key ids, strict
settings). The dev-server tests run real ``AgentWorkflow`` jobs through a client whose plugin has
the codec, then read the history with a client that has no codec and search its raw bytes and the
``payloads`` table for the job's text; a control job without the codec shows the same search
finds plaintext. The codec endpoint is tested over real HTTP against the real app.
"""

from __future__ import annotations

import base64
import sqlite3
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from google.protobuf import json_format
from google.protobuf.message import Message
from pydantic import SecretStr
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.client import Client, WorkflowHandle, WorkflowHistory
from temporalio.converter import DataConverter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from api.app import create_app
from api.routes.codec import MAX_PAYLOADS
from core.auth import Scope
from core.catalog import ModelCatalog
from core.models import (
    CURRENT_SHAPE,
    AgentRequest,
    AgentResult,
    AgentWorkflowInput,
    ContextItem,
    Importance,
    JobStatus,
    Tier,
    ToolCall,
    ToolFailure,
)
from core.settings import Settings
from infra.codec import (
    ENCODING,
    KEY_ID_METADATA,
    EncryptionCodec,
    PayloadDecryptionError,
    codec_from_settings,
    generate_key,
)
from infra.db import make_engine
from infra.keys import KeyStore
from infra.migrations import create_tables
from infra.payloads import DatabasePayloadDriver
from infra.providers import ProviderRegistry, SimulatedProvider
from infra.temporal import AgentflowPlugin
from tests.helpers import free_port, serve_asgi
from tests.stack import Stack, StackSpec
from tests.workflow_support import Harness, agent_worker
from workflows.agent import AgentWorkflow
from workflows.registry import all_workflows

UI_ORIGIN = "http://127.0.0.1:8233"
"""The Web UI origin the default ``codec_cors_origins`` allow."""

CONVERTER = DataConverter.default.payload_converter


def key_bytes() -> bytes:
    return base64.b64decode(generate_key())


def plain_payload(value: Any) -> Payload:
    return CONVERTER.to_payloads([value])[0]


def marker(label: str) -> str:
    """A string that occurs nowhere unless this test put it there."""
    return f"{label}-{uuid.uuid4().hex}"


# ------------------------------------------------------------------------------ the codec


async def test_round_trip_restores_the_payload_and_hides_it() -> None:
    codec = EncryptionCodec({"k1": key_bytes()}, "k1")
    secret = marker("round-trip")
    originals = [plain_payload(secret), plain_payload({"n": 1}), Payload()]

    encoded = await codec.encode(originals)

    assert len(encoded) == len(originals)
    for p in encoded:
        assert p.metadata["encoding"] == ENCODING
        assert p.metadata[KEY_ID_METADATA] == b"k1"
    assert secret.encode() not in encoded[0].SerializeToString()
    assert await codec.decode(encoded) == originals
    again = await codec.encode(originals[:1])
    assert again[0].data != encoded[0].data, "a fresh nonce per payload"


async def test_data_converter_with_the_codec_round_trips_values() -> None:
    from infra.temporal import data_converter

    converter = data_converter(payload_codec=EncryptionCodec({"k1": key_bytes()}, "k1"))
    values = ["a query", {"tools": [1, 2]}, None]
    payloads = await converter.encode(values)
    assert all(p.metadata["encoding"] == ENCODING for p in payloads)
    assert await converter.decode(payloads) == values


async def test_payloads_that_are_not_encrypted_pass_through() -> None:
    codec = EncryptionCodec({"k1": key_bytes()}, "k1")
    old = [plain_payload("written before encryption"), Payload()]
    assert await codec.decode(old) == old


async def test_rotation_old_payloads_still_decode_new_ones_use_the_new_key() -> None:
    k1, k2 = key_bytes(), key_bytes()
    before = EncryptionCodec({"k1": k1}, "k1")
    after = EncryptionCodec({"k1": k1, "k2": k2}, "k2")
    original = plain_payload("encrypted under k1")
    [old] = await before.encode([original])

    assert await after.decode([old]) == [original]
    [new] = await after.encode([original])
    assert new.metadata[KEY_ID_METADATA] == b"k2"
    with pytest.raises(PayloadDecryptionError, match="unknown key id 'k2'"):
        await before.decode([new])


@pytest.mark.parametrize("where", ["nonce", "ciphertext", "tag"])
async def test_changed_bytes_fail_authentication(where: str) -> None:
    codec = EncryptionCodec({"k1": key_bytes()}, "k1")
    [sealed] = await codec.encode([plain_payload("do not touch")])
    data = bytearray(sealed.data)
    index = {"nonce": 0, "ciphertext": 14, "tag": len(data) - 1}[where]
    data[index] ^= 0x01
    tampered = Payload(metadata=dict(sealed.metadata), data=bytes(data))
    with pytest.raises(PayloadDecryptionError, match="failed authentication"):
        await codec.decode([tampered])


async def test_the_key_id_is_authenticated_too() -> None:
    """Relabelling a payload to another key id fails even when both ids hold the same key."""
    shared = key_bytes()
    codec = EncryptionCodec({"a": shared, "b": shared}, "a")
    [sealed] = await codec.encode([plain_payload("labelled a")])
    relabelled = Payload(metadata={**sealed.metadata, KEY_ID_METADATA: b"b"}, data=sealed.data)
    with pytest.raises(PayloadDecryptionError, match="failed authentication"):
        await codec.decode([relabelled])


async def test_unknown_or_missing_key_id_and_truncated_data_are_clear_errors() -> None:
    codec = EncryptionCodec({"k1": key_bytes()}, "k1")
    [sealed] = await codec.encode([plain_payload("x")])
    unknown = Payload(metadata={**sealed.metadata, KEY_ID_METADATA: b"gone"}, data=sealed.data)
    with pytest.raises(PayloadDecryptionError, match="unknown key id 'gone'") as info:
        await codec.decode([unknown])
    assert "AGENTFLOW_PAYLOAD_ENCRYPTION_KEYS" in str(info.value)
    with pytest.raises(PayloadDecryptionError, match="no encryption key id"):
        await codec.decode([Payload(metadata={"encoding": ENCODING}, data=sealed.data)])
    with pytest.raises(PayloadDecryptionError, match="truncated"):
        await codec.decode([Payload(metadata=dict(sealed.metadata), data=sealed.data[:20])])


def test_generate_key_is_base64_of_32_random_bytes() -> None:
    keys = {generate_key() for _ in range(8)}
    assert len(keys) == 8
    assert all(len(base64.b64decode(k, validate=True)) == 32 for k in keys)


def settings_with(keys: dict[str, str], active: str | None = None) -> Settings:
    return Settings(
        payload_encryption_keys={k: SecretStr(v) for k, v in keys.items()},
        payload_encryption_key_id=active,
    )


def test_codec_from_settings_picks_the_active_key() -> None:
    assert codec_from_settings(Settings()) is None
    single = codec_from_settings(settings_with({"only": generate_key()}))
    assert single is not None and single.active_key_id == "only"
    two = codec_from_settings(settings_with({"k1": generate_key(), "k2": generate_key()}, "k2"))
    assert two is not None and two.active_key_id == "k2" and two.key_ids == {"k1", "k2"}


@pytest.mark.parametrize(
    ("keys", "active", "setting"),
    [
        ({"k1": "not base64 !!"}, None, "AGENTFLOW_PAYLOAD_ENCRYPTION_KEYS['k1']"),
        (
            {"k1": base64.b64encode(b"sixteen byte key").decode()},
            None,
            "AGENTFLOW_PAYLOAD_ENCRYPTION_KEYS['k1']",
        ),
        ({"k1": "KEY", "k2": "KEY"}, None, "AGENTFLOW_PAYLOAD_ENCRYPTION_KEY_ID"),
        ({"k1": "KEY"}, "k9", "AGENTFLOW_PAYLOAD_ENCRYPTION_KEY_ID"),
        ({}, "k1", "AGENTFLOW_PAYLOAD_ENCRYPTION_KEY_ID"),
        ({"bad id/": "KEY"}, None, "AGENTFLOW_PAYLOAD_ENCRYPTION_KEYS"),
    ],
)
def test_bad_key_settings_fail_at_start_up_naming_the_setting(
    keys: dict[str, str], active: str | None, setting: str
) -> None:
    good = generate_key()
    keys = {k: good if v == "KEY" else v for k, v in keys.items()}
    with pytest.raises(ValueError) as info:
        codec_from_settings(settings_with(keys, active))
    assert setting in str(info.value)
    for value in keys.values():
        assert value not in str(info.value), "no key material in the message"


# ------------------------------------------------------------------------------ on the dev server


@dataclass
class FakeOpenAI:
    """An OpenAI-compatible endpoint that answers only requests carrying a known key."""

    keys: set[str]
    seen: list[str] = field(default_factory=list)

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Any:
            body = await request.json()
            auth = request.headers.get("authorization", "")
            self.seen.append(auth)
            if auth.removeprefix("Bearer ") not in self.keys:
                return JSONResponse(
                    {"error": {"message": "bad key", "type": "auth"}}, status_code=401
                )
            return {
                "id": "chatcmpl-codec",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "An answer."},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13},
            }

        return app


@dataclass
class CodecStack:
    """A client of the dev server that encrypts, a client that does not, and where payloads go."""

    client: Client
    codec: EncryptionCodec
    plugin: AgentflowPlugin
    payload_db: Path
    plain_client: Client


@pytest.fixture(scope="module")
def stack_spec() -> StackSpec:
    """The API alone, with a payload encryption key (its codec endpoint is on)."""
    return StackSpec(
        settings={"payload_encryption_keys": {"k1": SecretStr(generate_key())}}, worker=False
    )


@pytest.fixture(scope="module")
async def codec_stack(
    stack: Stack, dev_env: WorkflowEnvironment, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[CodecStack]:
    """Clients of the session's dev server, one with the API's codec: nothing here stops the
    server, so no private one is needed."""
    payload_db = tmp_path_factory.mktemp("codec") / "payloads.db"
    engine = make_engine(f"sqlite:///{payload_db}")
    create_tables(engine)
    codec = codec_from_settings(stack.settings)
    assert codec is not None
    plugin = AgentflowPlugin(
        payload_driver=DatabasePayloadDriver(engine), payload_codec=codec, workflows=all_workflows()
    )
    address = dev_env.client.service_client.config.target_host
    namespace = dev_env.client.namespace
    client = await Client.connect(address, namespace=namespace, plugins=[plugin])
    plain = await Client.connect(address, namespace=namespace)
    yield CodecStack(client, codec, plugin, payload_db, plain)
    engine.dispose()


@asynccontextmanager
async def worker(
    client: Client, redis_url: str, settings: Settings, tmp: Path, **kwargs: Any
) -> AsyncIterator[Harness]:
    async with agent_worker(
        client,
        redis_url=redis_url,
        database_url=f"sqlite:///{tmp / f'jobs-{uuid.uuid4().hex[:6]}.db'}",
        settings=settings,
        **kwargs,
    ) as h:
        yield h


async def start_like_the_api(
    h: Harness, request: AgentRequest
) -> WorkflowHandle[AgentWorkflow, AgentResult]:
    """Start the job as ``POST /v1/jobs`` does: the query also in the memo and the summary."""
    job_id = uuid.uuid4().hex
    return await h.client.start_workflow(
        AgentWorkflow.run,
        AgentWorkflowInput(job_id=job_id, request=request, shape=CURRENT_SHAPE),
        id=f"agent-{job_id}",
        task_queue=h.task_queue,
        memo={"query": request.query[:200]},
        static_summary=request.query[:200],
    )


def raw_history_bytes(history: WorkflowHistory) -> bytes:
    return b"".join(e.SerializeToString() for e in history.events)


def stored_payload_rows(path: Path) -> list[bytes]:
    with sqlite3.connect(path) as db:
        return [bytes(row[0]) for row in db.execute("SELECT data FROM payloads")]


def payloads_in(message: Message) -> Iterator[Payload]:
    """Every ``Payload`` anywhere inside a proto message (repeated, map and nested fields)."""
    if isinstance(message, Payload):
        yield message
        return
    for descriptor, value in message.ListFields():
        if descriptor.message_type is None:
            continue
        if isinstance(value, Message):
            yield from payloads_in(value)
        else:  # a repeated field, or a map (whose values may be messages)
            items = value.values() if hasattr(value, "values") else value
            for item in items:
                if isinstance(item, Message):
                    yield from payloads_in(item)


def decrypted_corpus(codec_stack: CodecStack, history: WorkflowHistory) -> bytes:
    """All history payloads and stored payloads, decrypted: what the job put at rest."""
    parts = [
        codec_stack.codec.decrypt(p).SerializeToString()
        for event in history.events
        for p in payloads_in(event)
    ]
    parts += [
        codec_stack.codec.decrypt(Payload.FromString(row)).SerializeToString()
        for row in stored_payload_rows(codec_stack.payload_db)
    ]
    return b"".join(parts)


@pytest.mark.devserver
async def test_history_and_payload_table_hold_no_plaintext(
    codec_stack: CodecStack, redis_url: str, settings: Settings, tmp_path: Path
) -> None:
    """The query, a large context item and a failing tool's message stay encrypted at rest,
    while the client with the codec reads the result and the Replayer replays the history."""
    secret = marker("encrypted-query")
    big = (f"Confidential background {secret}. " * 2000)[:60_000]
    request = AgentRequest(
        query=f"What does {secret} mean?",
        context=[ContextItem(content=big, importance=Importance.LOW)],
        tool_calls=[ToolCall(id="t1", name="always_down", parameters={"target": secret})],
    )
    rows_before = len(stored_payload_rows(codec_stack.payload_db))
    async with worker(codec_stack.client, redis_url, settings, tmp_path) as h:
        handle = await start_like_the_api(h, request)
        result = await handle.result()

    assert result.status is JobStatus.COMPLETED, result.error
    [failure] = [r for r in result.tool_results if isinstance(r, ToolFailure)]
    assert secret in failure.error, "the failure message is restored for codec clients"
    assert await (await handle.describe()).static_summary() == request.query

    plain_handle = codec_stack.plain_client.get_workflow_handle(handle.id)
    history = await plain_handle.fetch_history()
    raw = raw_history_bytes(history)
    assert secret.encode() not in raw
    assert b"Confidential background" not in raw
    assert b"unreachable" not in raw, "failure messages are encrypted too"
    rows = stored_payload_rows(codec_stack.payload_db)
    assert len(rows) > rows_before, "the large input went to the payloads table"
    for row in rows:
        assert secret.encode() not in row
        assert Payload.FromString(row).metadata["encoding"] == ENCODING
    assert secret.encode() in decrypted_corpus(codec_stack, history), "the search would find it"

    with pytest.raises(Exception, match=r"(?i)encoding"):
        await plain_handle.result()

    await Replayer(workflows=[], plugins=[codec_stack.plugin]).replay_workflow(history)


@pytest.mark.devserver
async def test_without_the_codec_the_same_search_finds_plaintext(
    codec_stack: CodecStack, redis_url: str, settings: Settings, tmp_path: Path
) -> None:
    """Control: the same job through a plugin without the codec leaves the query in history."""
    engine = make_engine(f"sqlite:///{tmp_path / 'plain-payloads.db'}")
    create_tables(engine)
    plain_plugin = AgentflowPlugin(
        payload_driver=DatabasePayloadDriver(engine), workflows=all_workflows()
    )
    client = await Client.connect(
        codec_stack.plain_client.service_client.config.target_host,
        namespace=codec_stack.plain_client.namespace,
        plugins=[plain_plugin],
    )
    secret = marker("plain-query")
    async with worker(client, redis_url, settings, tmp_path) as h:
        handle = await start_like_the_api(h, AgentRequest(query=f"What does {secret} mean?"))
        assert (await handle.result()).status is JobStatus.COMPLETED
    history = await codec_stack.plain_client.get_workflow_handle(handle.id).fetch_history()
    assert secret.encode() in raw_history_bytes(history)
    engine.dispose()


@pytest.mark.devserver
async def test_provider_keys_never_enter_workflow_history(
    codec_stack: CodecStack, redis_url: str, settings: Settings, tmp_path: Path
) -> None:
    """Real model calls with distinctive keys (the default endpoint's and a per-model one):
    the keys reach the model endpoint, and appear nowhere in the history, decrypted or not."""
    default_key = marker("sk-default-key")
    model_key = marker("sk-model-key")
    fake = FakeOpenAI(keys={default_key, model_key})
    with serve_asgi(fake.app(), lifespan="off") as url:
        catalog = ModelCatalog.default(openai_base_url=f"{url}/v1")
        models = [
            m.model_copy(update={"base_url": f"{url}/v1", "api_key": model_key})
            if m.tier is Tier.LARGE
            else m
            for m in catalog.models
        ]
        providers = ProviderRegistry(
            {"simulated": SimulatedProvider(latency_scale=0)},
            openai_base_url=f"{url}/v1",
            openai_api_key=default_key,
        )
        async with worker(
            codec_stack.client,
            redis_url,
            settings,
            tmp_path,
            catalog=ModelCatalog(models=models),
            providers=providers,
        ) as h:
            secret = marker("keyed-query")
            request = AgentRequest(query=f"Explain {secret}", model_tier="large")
            handle = await start_like_the_api(h, request)
            result = await handle.result()

    assert result.status is JobStatus.COMPLETED, result.error
    assert {f"Bearer {default_key}", f"Bearer {model_key}"} <= set(fake.seen), "both keys used"
    history = await codec_stack.plain_client.get_workflow_handle(handle.id).fetch_history()
    corpus = decrypted_corpus(codec_stack, history)
    assert secret.encode() in corpus, "the decrypted history is searchable"
    for key in (default_key, model_key):
        assert key.encode() not in raw_history_bytes(history)
        assert key.encode() not in corpus


# ------------------------------------------------------------------------------ codec endpoint


@dataclass
class CodecApi:
    url: str
    admin: str
    reader: str


@pytest.fixture(scope="module")
def codec_api(stack: Stack) -> CodecApi:
    """The module's API (the codec endpoint on, keyed as ``codec_stack``'s client)."""
    admin = stack.key("codec admin", Scope.ADMIN).secret
    reader = stack.key("reader", Scope.READ, Scope.SUBMIT).secret
    return CodecApi(stack.url, admin, reader)


def as_json(payloads: list[Payload]) -> dict[str, Any]:
    return json_format.MessageToDict(Payloads(payloads=payloads))


def from_json(body: dict[str, Any]) -> list[Payload]:
    return list(json_format.ParseDict(body, Payloads()).payloads)


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


@pytest.mark.devserver
async def test_codec_endpoint_decodes_a_real_history_for_an_admin_key_only(
    codec_stack: CodecStack, codec_api: CodecApi, redis_url: str, settings: Settings, tmp_path: Path
) -> None:
    secret = marker("ui-query")
    async with worker(codec_stack.client, redis_url, settings, tmp_path) as h:
        handle = await start_like_the_api(h, AgentRequest(query=f"Show {secret} in the UI"))
        await handle.result()
    history = await codec_stack.plain_client.get_workflow_handle(handle.id).fetch_history()
    started = history.events[0].workflow_execution_started_event_attributes
    body = as_json(list(started.input.payloads))
    assert secret not in str(body)

    async with httpx.AsyncClient(base_url=codec_api.url, timeout=10) as http:
        ok = await http.post(
            "/codec/decode",
            json=body,
            headers={**bearer(codec_api.admin), "X-Namespace": "default"},
        )
        assert ok.status_code == 200, ok.text
        [decoded] = from_json(ok.json())
        assert decoded.metadata["encoding"] == b"json/plain"
        assert secret.encode() in decoded.data

        assert (await http.post("/codec/decode", json=body)).status_code == 401
        forbidden = await http.post("/codec/decode", json=body, headers=bearer(codec_api.reader))
        assert forbidden.status_code == 403
        assert secret not in forbidden.text
        assert (
            await http.post("/codec/encode", json=body, headers=bearer(codec_api.reader))
        ).status_code == 403


@pytest.mark.devserver
async def test_codec_endpoint_encode_round_trips_and_refuses_bad_input(
    codec_stack: CodecStack, codec_api: CodecApi
) -> None:
    original = plain_payload("typed into the Web UI")
    async with httpx.AsyncClient(base_url=codec_api.url, timeout=10) as http:
        headers = bearer(codec_api.admin)
        encoded = await http.post("/codec/encode", json=as_json([original]), headers=headers)
        assert encoded.status_code == 200, encoded.text
        [sealed] = from_json(encoded.json())
        assert sealed.metadata["encoding"] == ENCODING
        assert await codec_stack.codec.decode([sealed]) == [original]

        passthrough = await http.post("/codec/decode", json=as_json([original]), headers=headers)
        assert from_json(passthrough.json()) == [original]

        data = bytearray(sealed.data)
        data[-1] ^= 1
        tampered = Payload(metadata=dict(sealed.metadata), data=bytes(data))
        refused = await http.post("/codec/decode", json=as_json([tampered]), headers=headers)
        assert refused.status_code == 400
        assert "failed authentication" in refused.json()["detail"]

        bad_b64 = {"payloads": [{"metadata": {"encoding": "!!!"}, "data": "x"}]}
        assert (await http.post("/codec/decode", json=bad_b64, headers=headers)).status_code == 400
        too_many: dict[str, Any] = {"payloads": [{} for _ in range(MAX_PAYLOADS + 1)]}
        assert (await http.post("/codec/decode", json=too_many, headers=headers)).status_code == 422


@pytest.mark.devserver
async def test_codec_cors_preflight_allows_the_ui_origin_only(codec_api: CodecApi) -> None:
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type,x-namespace",
    }
    async with httpx.AsyncClient(base_url=codec_api.url, timeout=10) as http:
        ui = await http.options("/codec/decode", headers={"Origin": UI_ORIGIN, **preflight})
        assert ui.status_code == 200
        assert ui.headers["access-control-allow-origin"] == UI_ORIGIN
        assert ui.headers["access-control-allow-credentials"] == "true"
        allowed = ui.headers["access-control-allow-headers"].lower()
        assert {"authorization", "content-type", "x-namespace"} <= {
            h.strip() for h in allowed.split(",")
        }
        assert "POST" in ui.headers["access-control-allow-methods"]

        foreign = await http.options(
            "/codec/decode", headers={"Origin": "https://evil.example", **preflight}
        )
        assert "access-control-allow-origin" not in foreign.headers

        post = await http.post(
            "/codec/decode",
            json={"payloads": []},
            headers={"Origin": UI_ORIGIN, **bearer(codec_api.admin)},
        )
        assert post.status_code == 200
        assert post.headers["access-control-allow-origin"] == UI_ORIGIN

        other_route = await http.options("/v1/jobs", headers={"Origin": UI_ORIGIN, **preflight})
        assert "access-control-allow-origin" not in other_route.headers, "codec routes only"


async def test_codec_endpoint_is_404_without_keys(redis_url: str, tmp_path: Path) -> None:
    database_url = f"sqlite:///{tmp_path / 'api.db'}"
    engine = make_engine(database_url)
    create_tables(engine)
    admin = KeyStore(engine).create("admin", [Scope.ADMIN]).secret
    engine.dispose()
    settings = Settings(
        database_url=database_url, redis_url=redis_url, temporal_address=f"127.0.0.1:{free_port()}"
    )
    with serve_asgi(create_app(settings)) as url:
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            answer = await http.post("/codec/decode", json={"payloads": []}, headers=bearer(admin))
    assert answer.status_code == 404
    assert "AGENTFLOW_PAYLOAD_ENCRYPTION_KEYS" in answer.json()["detail"]
