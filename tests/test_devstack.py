"""End to end: ``agentflow dev --run ... --exit-after-run`` on free ports, as a newcomer runs it.

Starts a real Temporal dev server, the worker and the API as child processes (Redis is the one at
127.0.0.1:6379 when it answers, else one the command starts). Queries carry a per-run nonce so a
developer's long-lived Redis cannot answer them from an earlier run's response cache.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from rich.console import Console

from cli.devstack import DevStack
from cli.devstack.ports import port_in_use, wait_for_port
from core.auth import Scope
from core.settings import PROJECT_ROOT, Settings
from infra.db import make_engine
from infra.keys import KeyStore
from infra.migrations import baseline_schema, create_tables, current_revision, head_revision
from tests.helpers import free_port

EXAMPLES = PROJECT_ROOT / "examples" / "requests.jsonl"


def pick(lines: list[dict[str, object]], predicate: str) -> dict[str, object]:
    """The first example whose JSON text contains ``predicate``."""
    return next(line for line in lines if predicate in json.dumps(line))


@pytest.mark.devserver
@pytest.mark.timeout(300)
def test_dev_runs_examples_end_to_end(tmp_path: Path) -> None:
    temporal_port, ui_port, api_port = free_port(), free_port(), free_port()
    site_port = free_port()
    examples = [json.loads(line) for line in EXAMPLES.read_text().splitlines() if line.strip()]
    python_q = pick(examples, "yield keyword")
    arithmetic = pick(examples, "17 * (3 + 4)")
    sql = pick(examples, "revenue by product category")
    approval = pick(examples, "/healthz")
    rejected = pick(examples, '"expect_approval": "reject"')
    nonce = uuid.uuid4().hex[:8]
    chosen = [python_q, arithmetic, sql, approval, rejected]
    requests = []
    for line in chosen:
        line = json.loads(json.dumps(line).replace("127.0.0.1:8088", f"127.0.0.1:{site_port}"))
        line["query"] = f"{line['query']} (run {nonce})"
        requests.append(line)
    repeat = dict(requests[0])
    # The same question modulo case, spacing and a trailing '?': the response level's exact
    # normalization serves it (the semantic level is off by default). The run tag keeps its
    # case: a token mixing letters and digits is pattern-like, and its case counts.
    repeat["query"] = "  " + str(python_q["query"]).upper() + f" (run {nonce})?"
    requests.append(repeat)
    request_file = tmp_path / "requests.jsonl"
    request_file.write_text("".join(json.dumps(r) + "\n" for r in requests))
    out = tmp_path / "results.jsonl"

    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("REDIS_URL", "TEMPORAL_ADDRESS", "DATABASE_URL")
        and not k.startswith("AGENTFLOW_")
    }
    env.update(
        DATABASE_URL=f"sqlite:///{tmp_path / 'jobs.db'}",
        AGENTFLOW_DATA_DIR=str(tmp_path),
        AGENTFLOW_SIMULATED_LATENCY_SCALE="0",
        COLUMNS="160",
    )
    # One request at a time, so the repeat starts after the first answer is cached. A port
    # free_port() chose may be taken by another process before the stack binds it (the suite
    # runs servers in parallel): the stack refuses it by name, and the run takes new ports.
    for _ in range(3):
        proc = subprocess.run(
            [
                sys.executable, "-m", "cli.main", "dev",
                "--run", str(request_file), "--out", str(out), "--exit-after-run",
                "--concurrency", "1",
                "--temporal-port", str(temporal_port),
                "--ui-port", str(ui_port),
                "--api-port", str(api_port),
                "--site-port", str(site_port),
            ],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=280,
        )  # fmt: skip
        output = proc.stdout + proc.stderr
        if proc.returncode == 0 or "is in use by something" not in output:
            break
        temporal_port, ui_port, api_port = free_port(), free_port(), free_port()
    assert proc.returncode == 0, output

    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["line"] for r in results] == [1, 2, 3, 4, 5, 6]
    assert [r["status"] for r in results] == [
        "COMPLETED", "COMPLETED", "COMPLETED", "COMPLETED", "REJECTED", "COMPLETED",
    ]  # fmt: skip
    assert all(r["expected"] for r in results)
    assert results[0]["job"]["result"]["tool_results"][0]["name"] == "python_docs_search"
    assert results[3]["job"]["result"]["approval"]["approved"] is True
    assert results[3]["job"]["result"]["tool_results"][0]["value"]["status_code"] == 200
    assert results[4]["job"]["result"]["approval"]["approved"] is False
    assert results[5]["job"]["response_cache_hit"] is True
    assert "response-cache hit rate" in output
    assert "20% (1/5 completed)" in output
    assert "Stack is up" not in output
    # The run used the key the stack made for it (printed once), and no other.
    key_line = next(li for li in output.splitlines() if li.strip().startswith("af_"))
    assert key_line.strip().count(".") == 1
    assert "AUTHENTICATION IS OFF" not in output
    assert (tmp_path / "logs" / "worker.log").is_file()
    assert (tmp_path / "logs" / "api.log").is_file()


def test_dev_says_loudly_when_authentication_is_off(tmp_path: Path) -> None:
    console = Console(record=True, width=200)
    stack = DevStack(settings=Settings(auth_disabled=True, data_dir=tmp_path), console=console)
    stack._example_key()
    assert "AUTHENTICATION IS OFF" in console.export_text()
    assert stack.api_key is None


def test_each_dev_session_gets_a_fresh_key_and_revokes_the_last(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    engine = make_engine(url)
    create_tables(engine)
    keys = KeyStore(engine)
    other = keys.create("someone else", [Scope.READ])
    sessions = []
    for _ in range(2):
        stack = DevStack(settings=Settings(data_dir=tmp_path), console=Console(quiet=True))
        stack.database_url = url
        stack._example_key()
        assert stack.api_key is not None
        sessions.append(stack.api_key)
    assert keys.authenticate(sessions[0]) is None
    fresh = keys.authenticate(sessions[1])
    assert fresh is not None and fresh.scopes == {Scope.SUBMIT, Scope.READ, Scope.APPROVE}
    assert keys.authenticate(other.secret) is not None
    engine.dispose()


def test_dev_migrates_the_job_database_before_the_worker_and_api(tmp_path: Path) -> None:
    """The stack runs `agentflow db upgrade`'s upgrade: a database from before migrations is
    migrated with its rows (the worker and the API would refuse it)."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = make_engine(url)
    old = baseline_schema()
    old.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            old.tables["blobs"]
            .insert()
            .values(blob_id="kept", size_bytes=1, content="x", created_at=datetime.now(UTC))
        )
    console = Console(record=True, width=200)
    stack = DevStack(settings=Settings(database_url=url, data_dir=tmp_path), console=console)
    stack._migrate_database()
    assert stack.database_url == url
    assert current_revision(url) == head_revision()
    output = console.export_text()
    assert "agentflow db upgrade" in output
    assert f"empty -> {head_revision()}" in output
    with engine.connect() as conn:
        assert conn.execute(old.tables["blobs"].select()).one().blob_id == "kept"
    engine.dispose()


def test_port_helpers_see_a_listener_and_time_out_without_one() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert port_in_use(port)
        wait_for_port(port, timeout_s=1.0)
    free = free_port()
    assert not port_in_use(free)
    with pytest.raises(TimeoutError, match=f"127.0.0.1:{free}"):
        wait_for_port(free, timeout_s=0.2)
