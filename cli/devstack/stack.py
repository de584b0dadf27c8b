"""``agentflow dev``: the whole stack as child processes, for a newcomer's first run.

Started in order: a Temporal dev server (with agentflow's custom search attributes registered,
:mod:`core.search_attributes`, so ``temporal workflow list --query 'AgentStatus="..."'`` and
the Web UI's filter find jobs), Redis, the example SQLite database, the example site
(``examples/site/``, served with Python's ``http.server`` on 127.0.0.1:8088, the address the
``http_get`` lines of ``examples/requests.jsonl`` fetch), the job database's migrations (what
``agentflow db upgrade`` does), the worker and the API. The worker and the API get that one
``host:port`` allowlisted for ``http_get`` (``AGENTFLOW_HTTP_ALLOWED_HOSTS``) and 127.0.0.1/32
opened (``AGENTFLOW_HTTP_ALLOWED_NETWORKS``), added to what the environment already allows: the
API's own port stays unreachable for ``http_get``. A port that is taken (the API's, the example
site's) stops the start with a message naming it.

The children are started, watched and stopped by :class:`cli.devstack.supervisor.Supervisor`;
their logs go to ``<data_dir>/logs/``.

Each step imports what it needs when it runs (SQLAlchemy for the job database, httpx for the
API's readiness), so the first step starts within a second of ``agentflow dev``.

Servers that already run are reused rather than duplicated: the Temporal server named by
``TEMPORAL_ADDRESS`` (or one already listening on the chosen port), the Redis named by
``REDIS_URL`` or the one at ``redis://127.0.0.1:6379``.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from cli.devstack.ports import free_port, port_in_use
from cli.devstack.redis_server import find_redis_server, redis_answers, server_args
from cli.devstack.supervisor import (
    SHUTDOWN_GRACE_S,
    ChildExitedError,
    DevStackError,
    Supervisor,
)
from cli.devstack.temporal import start_or_reuse_temporal, worker_polls
from core.settings import PROJECT_ROOT, Settings

EXAMPLE_SITE_DIR = PROJECT_ROOT / "examples" / "site"
"""The static example site the ``http_get`` example requests fetch."""
EXAMPLE_SITE_PORT = 8088
"""Port the example site is served on (127.0.0.1); ``examples/requests.jsonl`` names it."""
LOCAL_REDIS_URL = "redis://127.0.0.1:6379/0"
"""The conventional local Redis, reused when it answers."""
SERVICE_START_TIMEOUT_S = 60.0
"""How long to wait for the API to report ready, in seconds."""
WORKER_POLL_TIMEOUT_S = 30.0
"""How long to wait for the worker to poll its task queue, in seconds."""

DEV_KEY_NAME = "agentflow dev"
"""Name of the API key each ``agentflow dev`` makes for its session (the previous one is
revoked)."""


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
    temporal_address: str = ""
    temporal_ui_url: str = ""
    redis_url: str = ""
    database_url: str = ""
    sql_database_path: Path = field(default_factory=Path)
    api_key: str | None = field(default=None, repr=False)
    """The key made for this run (``None`` with authentication off)."""
    supervisor: Supervisor = field(init=False, repr=False)
    """The children started so far."""

    def __post_init__(self) -> None:
        self.supervisor = Supervisor(log_dir=self.log_dir, cwd=PROJECT_ROOT, console=self.console)

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
        self._migrate_database()
        self._start_worker_and_api()
        self._example_key()

    def _start_temporal(self) -> None:
        # With payloads encrypted, the Web UI decodes them through the API's codec endpoint.
        codec = f"{self.api_url}/codec" if self.settings.payload_encryption_keys else None
        self.temporal_address, self.temporal_ui_url = start_or_reuse_temporal(
            self.supervisor,
            self.settings,
            port=self.temporal_port,
            ui_port=self.ui_port,
            db_path=self.data_dir / "temporal.db",
            codec_endpoint=codec,
        )

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
            self.supervisor.done(f"using Redis at {url} (REDIS_URL)")
            return
        if redis_answers(LOCAL_REDIS_URL) is None:
            self.redis_url = LOCAL_REDIS_URL
            self.supervisor.done(f"using the Redis already running at {LOCAL_REDIS_URL}")
            return
        port = free_port()
        url = f"redis://127.0.0.1:{port}/0"
        started = self.supervisor.step(f"Starting redis-server on 127.0.0.1:{port}")
        child = self.supervisor.spawn("redis", server_args(find_redis_server(), port))
        self.supervisor.wait_until(
            lambda: redis_answers(url) is None,
            [child],
            SERVICE_START_TIMEOUT_S,
            f"redis-server did not answer on port {port}",
        )
        self.redis_url = url
        self.supervisor.done(f"Redis is up at {url}", started)

    def _build_database(self) -> None:
        if "sql_database_path" in self.settings.model_fields_set:
            path = self.settings.sql_database_path
        else:
            path = self.data_dir / "shop.sqlite"
        from infra.tools import ensure_example_database

        ensure_example_database(path)
        self.sql_database_path = path
        self.supervisor.done(f"example shop database for sql_query at {path}")

    def _start_example_site(self) -> None:
        """Serve ``examples/site/`` on 127.0.0.1:``site_port`` with Python's ``http.server``."""
        started = self.supervisor.step(f"Serving the example site on {self.site_url}")
        child = self.supervisor.spawn(
            "site",
            [
                sys.executable, "-m", "http.server", str(self.site_port),
                "--bind", "127.0.0.1",
                "--directory", str(EXAMPLE_SITE_DIR),
            ],
        )  # fmt: skip
        self.supervisor.wait_until(
            lambda: port_in_use(self.site_port),
            [child],
            SERVICE_START_TIMEOUT_S,
            f"the example site did not answer on {self.site_url}",
        )
        self.supervisor.done(f"example site for http_get at {self.site_url}", started)

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
        from core.auth import Scope
        from infra.db import make_engine
        from infra.keys import KeyStore

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
        self.supervisor.done(
            f"API key for this session ({created.key_id}: submit, read, approve); use it as "
            f"'Authorization: Bearer <key>' or AGENTFLOW_API_KEY:\n    {created.secret}"
        )

    def _migrate_database(self) -> None:
        """Bring the job database to the newest revision (``agentflow db upgrade``, in-process).

        The worker and the API only check the schema at start, so this runs before them.

        Raises:
            DevStackError: the database is unreachable or a migration failed.
        """
        from cli.db import UpgradeFailedError, upgrade_database

        if "database_url" in self.settings.model_fields_set:
            self.database_url = self.settings.database_url
        else:
            self.database_url = f"sqlite:///{self.data_dir / 'agentflow.db'}"
        started = self.supervisor.step("Migrating the job database (agentflow db upgrade)")
        try:
            said = upgrade_database(self.database_url)
        except UpgradeFailedError as exc:
            raise DevStackError(f"{exc}; fix that, then run `agentflow db upgrade`") from exc
        self.supervisor.done(said, started)

    def _child_env(self) -> dict[str, str]:
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
        started = self.supervisor.step(f"Starting the worker and the API (logs in {self.log_dir})")
        worker = self.supervisor.spawn("worker", [sys.executable, "worker.py"], env=env)
        api = self.supervisor.spawn(
            "api",
            [
                sys.executable, "-m", "uvicorn", "api.app:create_app", "--factory",
                "--host", "127.0.0.1", "--port", str(self.api_port),
                # Open event streams must not hold a shutdown: they resume on reconnect.
                "--timeout-graceful-shutdown", str(SHUTDOWN_GRACE_S),
            ],
            env=env,
        )  # fmt: skip
        import httpx

        last: list[str] = ["no answer yet"]

        def api_ready() -> bool:
            try:
                response = httpx.get(f"{self.api_url}/readyz", timeout=5.0)
            except httpx.HTTPError as exc:
                last[0] = repr(exc)
                return False
            last[0] = f"HTTP {response.status_code}: {response.text[:300]}"
            return response.status_code == httpx.codes.OK

        self.supervisor.wait_until(
            api_ready,
            [worker, api],
            SERVICE_START_TIMEOUT_S,
            lambda: f"the API did not report ready on {self.api_url}/readyz ({last[0]})",
        )
        self.supervisor.done(f"API ready at {self.api_url}", started)
        try:
            self.supervisor.wait_until(
                lambda: worker_polls(
                    self.temporal_address,
                    self.settings.temporal_namespace,
                    self.settings.task_queue,
                    worker.proc.pid,
                ),
                [worker, api],
                WORKER_POLL_TIMEOUT_S,
                "the worker did not poll its task queue",
            )
        except ChildExitedError:
            raise
        except DevStackError as exc:
            self.supervisor.warn(f"{exc} yet; see {worker.log_path}")
        else:
            self.supervisor.done(f"worker polling task queue {self.settings.task_queue!r}")

    # ------------------------------------------------------------------ running

    def check(self) -> None:
        """Raise :class:`ChildExitedError` when any child has exited."""
        self.supervisor.check()

    def wait_forever(self, interval_s: float = 0.5) -> None:
        """Block until interrupted, checking every ``interval_s`` seconds that children live.

        Raises:
            ChildExitedError: a child exited.
        """
        self.supervisor.wait_forever(interval_s)

    def stop(self) -> None:
        """Stop every child this stack started, the last started first (:meth:`Supervisor.stop`)."""
        self.supervisor.stop()
