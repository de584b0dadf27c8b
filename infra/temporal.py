"""One Temporal plugin for every client, worker and replayer, and one way to connect.

:class:`AgentflowPlugin` bundles what must be the same everywhere a payload is written or read:
the pydantic data converter with external storage of large payloads (on the job database), the
OpenTelemetry plugin, the workflow sandbox's passthrough modules, and on a worker (whose side
hands them in: :func:`worker.worker_plugin`) the workflows and activities. The API's client,
the worker, the Replayer in the tests and the benchmarks all use
it, so a history written by one can be read by the others. With payload encryption on it also
carries the codec.

**Encryption and external storage.** With ``AGENTFLOW_PAYLOAD_ENCRYPTION_KEYS`` set, the converter
also carries :class:`infra.codec.EncryptionCodec`. The SDK (``DataConverter.encode`` and
``_transform_outbound_payload(s)`` in temporalio 1.35) applies, on the way out: payload converter
-> **codec** -> ``ExternalStorage`` (payloads over the threshold go to the job database and leave
a reference) -> codec on references (off in this SDK release); on the way in the reverse:
references resolved -> ``ExternalStorage`` retrieves -> **codec** decodes -> payload converter. So
the ``payloads`` table stores ciphertext, like history; only the small reference (driver name and
SHA-256 of the ciphertext) stays in the clear. The size threshold applies to the encrypted
payload (about 85 bytes larger). With the codec, failures use Temporal's
``DefaultFailureConverterWithEncodedAttributes``: messages and stack traces move into an
encoded (so encrypted) payload and history shows "Encoded failure"; error types stay in the
clear, and clients, workers and the Replayer with the plugin restore the messages.

Connection settings come from :mod:`temporalio.envconfig` (``TEMPORAL_ADDRESS``,
``TEMPORAL_NAMESPACE``, ``TEMPORAL_API_KEY``, ``TEMPORAL_TLS*``, ``TEMPORAL_PROFILE`` and the
TOML config file it names), with agentflow's settings taking precedence for address and namespace.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from temporalio.client import Client, ClientConfig, WorkflowHistory
from temporalio.contrib.opentelemetry import OpenTelemetryPlugin
from temporalio.contrib.pydantic import PydanticJSONPlainPayloadConverter
from temporalio.converter import (
    CompositePayloadConverter,
    DataConverter,
    DefaultFailureConverterWithEncodedAttributes,
    DefaultPayloadConverter,
    ExternalStorage,
    JSONPlainPayloadConverter,
    PayloadCodec,
    StorageDriver,
)
from temporalio.envconfig import ClientConfigProfile, ClientConnectConfig
from temporalio.plugin import SimplePlugin
from temporalio.runtime import Runtime
from temporalio.worker import (
    Replayer,
    ReplayerConfig,
    UnsandboxedWorkflowRunner,
    Worker,
    WorkerConfig,
    WorkflowReplayResult,
    WorkflowRunner,
)

from core.settings import Settings
from infra.sandbox import sandboxed_runner

DEFAULT_TEMPORAL_ADDRESS = "127.0.0.1:7233"
"""Used when neither the settings nor an envconfig profile name a server."""

PASSTHROUGH_MODULES = (
    "redis",
    "infra",
    "activities",
    "core",
    "workflows.policies",
    "workflows.failures",
)
"""Modules the workflow sandbox shares with the host instead of re-importing per run.

``AgentWorkflow`` imports ``activities.*`` (for activity references) and ``core.models`` (its
contracts); those pull in ``infra`` and redis-py, whose submodules import lazily and would
otherwise land inside the sandbox on first use. ``workflows.policies`` holds constants and
``workflows.failures`` pure functions. None of them is called by workflow code in a way that
touches the world or keeps per-workflow state, so sharing them is safe and saves re-importing
them for every workflow run. The workflow modules themselves (``workflows.agent`` and its v1
path) stay sandboxed, so the sandbox still catches a non-deterministic call in them.
``opentelemetry`` is passed through by the OpenTelemetry plugin itself.
"""

ACTIVITY_THREADS = 16
"""Threads for synchronous activities (selection, compression) when the worker brings none."""


def workflow_runner(*, sandboxed: bool = True) -> WorkflowRunner:
    """The sandboxed runner with :data:`PASSTHROUGH_MODULES` passed through (or no sandbox).

    The sandboxed one is :func:`infra.sandbox.sandboxed_runner`: the SDK's sandbox, minus the
    recompilation of its glue code on every call into it.

    Args:
        sandboxed: False runs workflow code without the sandbox: faster, but a non-deterministic
            call in workflow code is no longer caught at run time (the replay tests still catch
            changes to the code). Operators opt in with ``AGENTFLOW_WORKFLOW_SANDBOX=false``.
    """
    if not sandboxed:
        return UnsandboxedWorkflowRunner()
    return sandboxed_runner(PASSTHROUGH_MODULES)


_SHARED_JSON_CONVERTER = PydanticJSONPlainPayloadConverter()
"""One pydantic JSON converter per process, so its TypeAdapter cache is built once."""


class SharedPydanticPayloadConverter(CompositePayloadConverter):
    """Temporal's pydantic payload converter, sharing one TypeAdapter cache per process.

    The SDK builds a new payload converter for every serialization context (each workflow
    activation and activity), and each new ``PydanticPayloadConverter`` starts with an empty
    TypeAdapter cache: 38 converter and 11 TypeAdapter rebuilds per job, about 5 ms of worker CPU.
    This one reuses a single JSON converter; it holds no per-context state and its cache is a
    bounded, thread-safe LRU. Payloads are byte for byte what ``pydantic_data_converter`` makes.
    """

    def __init__(self) -> None:
        super().__init__(
            *(
                _SHARED_JSON_CONVERTER if isinstance(c, JSONPlainPayloadConverter) else c
                for c in DefaultPayloadConverter.default_encoding_payload_converters
            )
        )


def data_converter(
    payload_driver: StorageDriver | None = None,
    *,
    payload_threshold_bytes: int = 32 * 1024,
    payload_codec: PayloadCodec | None = None,
) -> DataConverter:
    """The pydantic data converter, storing payloads over the threshold through the driver.

    Args:
        payload_driver: where large payloads go; ``None`` keeps every payload inline.
        payload_threshold_bytes: payloads of at least this many bytes (after the codec) are
            stored externally.
        payload_codec: applied to every payload before external storage (and undone after
            retrieval), e.g. :class:`infra.codec.EncryptionCodec`; with a codec, failure messages
            and stack traces are encoded too. ``None``: payloads as the converter makes them.
    """
    converter = DataConverter(payload_converter_class=SharedPydanticPayloadConverter)
    if payload_codec is not None:
        converter = dataclasses.replace(
            converter,
            payload_codec=payload_codec,
            failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
        )
    if payload_driver is None:
        return converter
    storage = ExternalStorage(
        drivers=[payload_driver], payload_size_threshold=payload_threshold_bytes
    )
    return dataclasses.replace(converter, external_storage=storage)


class AgentflowPlugin(SimplePlugin):
    """The agentflow plugin for ``Client.connect``, ``Worker`` and ``Replayer``.

    On a client it sets the data converter and OpenTelemetry's client interceptor; workers built
    from that client inherit it and get the workflows, the activities (when given), the sandbox
    passthrough and a thread pool for synchronous activities; a ``Replayer`` gets the converter,
    the workflows and the sandbox.

    Args:
        payload_driver: external storage for large payloads (``None``: all inline).
        payload_threshold_bytes: size from which payloads are stored externally.
        payload_codec: codec for every payload, before external storage (``None``: none); see
            :func:`data_converter`. Every client, worker and replayer of a namespace needs the
            same keys.
        activities: activity callables to register on workers (``AgentActivities.all()``).
        sandboxed: run workflows in the sandbox (default) or not (see :func:`workflow_runner`).
        tracing: add Temporal's ``OpenTelemetryPlugin`` (spans for every workflow, activity and
            client call through the global tracer provider, which must be replay-safe: see
            :func:`core.telemetry.configure_tracing`). Off, it is left out: spans that no
            exporter reads cost about 12 ms of worker CPU per job.
        workflows: workflow classes to register on workers and replayers built from a client
            with this plugin (the worker side passes :func:`workflows.registry.all_workflows`);
            none for a client that only starts and reads workflows by name (the API), which
            then never imports workflow code. Infrastructure never imports workflows itself.
    """

    def __init__(
        self,
        *,
        payload_driver: StorageDriver | None = None,
        payload_threshold_bytes: int = 32 * 1024,
        payload_codec: PayloadCodec | None = None,
        activities: Sequence[Callable[..., Any]] | None = None,
        sandboxed: bool = True,
        tracing: bool = True,
        workflows: Sequence[type] = (),
    ) -> None:
        self._otel = OpenTelemetryPlugin(add_temporal_spans=True) if tracing else None
        runner = workflow_runner(sandboxed=sandboxed)
        super().__init__(
            "agentflow.AgentflowPlugin",
            data_converter=data_converter(
                payload_driver,
                payload_threshold_bytes=payload_threshold_bytes,
                payload_codec=payload_codec,
            ),
            activities=list(activities) if activities else None,
            workflows=list(workflows) or None,
            workflow_runner=lambda _existing: runner,
        )

    def configure_client(self, config: ClientConfig) -> ClientConfig:
        """Apply OpenTelemetry's client settings (when tracing), then agentflow's."""
        if self._otel is not None:
            config = self._otel.configure_client(config)
        return super().configure_client(config)

    def configure_worker(self, config: WorkerConfig) -> WorkerConfig:
        """Apply agentflow's worker settings, then OpenTelemetry's (interceptor, passthrough)."""
        config = super().configure_worker(config)
        if self._otel is not None:
            config = self._otel.configure_worker(config)
        if config.get("activity_executor") is None:
            config["activity_executor"] = ThreadPoolExecutor(
                max_workers=ACTIVITY_THREADS, thread_name_prefix="agentflow-activity"
            )
        return config

    def configure_replayer(self, config: ReplayerConfig) -> ReplayerConfig:
        """Apply agentflow's replayer settings, then OpenTelemetry's."""
        config = super().configure_replayer(config)
        return self._otel.configure_replayer(config) if self._otel is not None else config

    async def run_worker(self, worker: Worker, next: Callable[[Worker], Awaitable[None]]) -> None:
        """Run the worker inside OpenTelemetry's run context (when tracing)."""

        async def inner(w: Worker) -> None:
            await super(AgentflowPlugin, self).run_worker(w, next)

        if self._otel is None:
            await inner(worker)
        else:
            await self._otel.run_worker(worker, inner)

    @asynccontextmanager
    async def run_replayer(
        self,
        replayer: Replayer,
        histories: AsyncIterator[WorkflowHistory],
        next: Callable[[Replayer, AsyncIterator[WorkflowHistory]], Any],
    ) -> AsyncIterator[AsyncIterator[WorkflowReplayResult]]:
        """Run the replayer inside OpenTelemetry's run context (when tracing)."""
        if self._otel is None:
            async with super().run_replayer(replayer, histories, next) as results:
                yield results
        else:
            async with self._otel.run_replayer(replayer, histories, next) as results:
                yield results


def plugin_from_settings(
    settings: Settings,
    engine: Any,
    *,
    activities: Sequence[Callable[..., Any]] | None = None,
    workflows: Sequence[type] = (),
) -> AgentflowPlugin:
    """The plugin the settings describe, storing large payloads through ``engine``.

    Args:
        settings: ``large_payload_threshold_bytes``, ``workflow_sandbox``, ``tracing_enabled``
            and the payload encryption keys (``payload_encryption_keys``,
            ``payload_encryption_key_id``).
        engine: the job database's SQLAlchemy engine (payloads live beside job records).
        activities: activity callables, for a worker.
        workflows: workflow classes, for a worker or replayer (see ``AgentflowPlugin``); the
            worker side builds its plugin with :func:`worker.worker_plugin`.

    Raises:
        ValueError: the encryption settings are invalid (the message names the setting; see
            :func:`infra.codec.codec_from_settings`).
    """
    from infra.codec import codec_from_settings
    from infra.payloads import DatabasePayloadDriver

    return AgentflowPlugin(
        payload_driver=DatabasePayloadDriver(engine),
        payload_threshold_bytes=settings.large_payload_threshold_bytes,
        payload_codec=codec_from_settings(settings),
        activities=activities,
        sandboxed=settings.workflow_sandbox,
        tracing=settings.tracing_enabled,
        workflows=workflows,
    )


def connect_config(settings: Settings) -> ClientConnectConfig:
    """``Client.connect`` keyword arguments from envconfig, overridden by ``settings``.

    The envconfig profile (``TEMPORAL_PROFILE``, default ``default``, from the TOML file that
    ``TEMPORAL_CONFIG_FILE`` names or the user's config folder, then ``TEMPORAL_*`` variables)
    supplies the API key, TLS and gRPC metadata; ``settings.temporal_address`` and
    ``settings.temporal_namespace`` win when set.
    """
    config = ClientConfigProfile.load().to_client_connect_config()
    if settings.temporal_address:
        config["target_host"] = settings.temporal_address
    config.setdefault("target_host", DEFAULT_TEMPORAL_ADDRESS)
    if settings.temporal_namespace:
        config["namespace"] = settings.temporal_namespace
    return config


def temporal_target(settings: Settings) -> str:
    """The ``host:port`` agentflow connects to (for messages and links)."""
    return connect_config(settings)["target_host"]


async def connect(
    settings: Settings, plugin: AgentflowPlugin, *, runtime: Runtime | None = None
) -> Client:
    """Connect to the Temporal frontend with ``plugin``.

    Args:
        settings: address, namespace and envconfig profile (see :func:`connect_config`).
        plugin: the agentflow plugin.
        runtime: the SDK runtime the client (and workers built on it) use; the worker passes
            :func:`core.metrics.temporal_runtime` to export the SDK's Prometheus metrics. It
            must outlive the client. ``None``: the SDK's default runtime (the API's case).

    Raises:
        RuntimeError: from the SDK when the server cannot be reached (the message names the
            address).
    """
    return await Client.connect(**connect_config(settings), plugins=[plugin], runtime=runtime)
