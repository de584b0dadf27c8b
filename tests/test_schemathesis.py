"""Schemathesis over the whole OpenAPI schema: no 5xx, and no status code the schema omits.

The stack is real: the session's ``temporal server start-dev``, a Redis server, a SQLite job
database, a worker process (``python worker.py``, as users run it) polling the API's task queue,
and the API under uvicorn on a loopback port (the shared stack of ``tests/stack.py``, without its
in-process worker). Schemathesis reads ``/openapi.json`` from it and sends what it generates
over HTTP with a real admin API key.

Checks on every response: ``not_a_server_error`` (no 5xx), ``status_code_conformance`` (the
operation documents the status), ``content_type_conformance`` and
``response_schema_conformance`` (the body matches what the schema says for that status).

Two tests:

- every operation, three ways: inputs that fit the schema, inputs that break it (negative
  mode), and inputs that fit it sent with an invalid key;
- stateful: sequences of calls following the links Schemathesis infers from the schema (submit a
  job, read it, decide on it, cancel it), so operations see ids that exist.

Bounded so CI stays fast: :data:`FAST_EXAMPLES` examples per operation and mode, and
:data:`FAST_STATEFUL_RUNS` state-machine runs, about 30 s in all. For the longer run set
``AGENTFLOW_SCHEMATHESIS_LONG=1`` (:data:`LONG_EXAMPLES` examples, :data:`LONG_STATEFUL_RUNS`
runs; several minutes)::

    AGENTFLOW_SCHEMATHESIS_LONG=1 .venv/bin/pytest -q tests/test_schemathesis.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.middleware import BODY_METHODS
from core.auth import Scope
from tests.stack import Stack, StackSpec

LONG = os.environ.get("AGENTFLOW_SCHEMATHESIS_LONG", "") not in ("", "0")
"""Run the long, on-demand version (``AGENTFLOW_SCHEMATHESIS_LONG=1``)."""


def _import_lazy_modules() -> None:
    """Load what Schemathesis imports lazily, now, at collection.

    pytest rewrites the modules of every pytest plugin's distribution (Schemathesis is one) as
    they are imported, with ``ast.parse``; CPython 3.11's AST conversion is not thread-safe, and
    a lazy import in the middle of a test, while a server or worker thread parses too, failed
    once in CI with "SystemError: AST constructor recursion depth mismatch". Collection runs
    before any test starts a thread.
    """
    spec = {
        "openapi": "3.1.0",
        "info": {"title": "warm-up", "version": "1"},
        "paths": {
            "/x": {
                "post": {
                    "parameters": [{"name": "q", "in": "query", "schema": {"type": "integer"}}],
                    "requestBody": {
                        "content": {"application/json": {"schema": {"type": "object"}}}
                    },
                    "responses": {"200": {"description": "ok"}},
                }
            }
        },
    }
    schema = schemathesis.openapi.from_dict(spec)
    for result in schema.get_all_operations():
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            result.ok().as_strategy(generation_mode=mode)
    schema.as_state_machine()


_import_lazy_modules()

FAST_EXAMPLES = 12
LONG_EXAMPLES = 300
FAST_STATEFUL_RUNS = 15
LONG_STATEFUL_RUNS = 300
STATEFUL_STEPS = 6
"""Most calls in one state-machine run."""

EXAMPLES = LONG_EXAMPLES if LONG else FAST_EXAMPLES
STATEFUL_RUNS = LONG_STATEFUL_RUNS if LONG else FAST_STATEFUL_RUNS

pytestmark = [pytest.mark.devserver, pytest.mark.timeout(3600 if LONG else 120)]

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
REPO = Path(__file__).resolve().parent.parent
WORKER_READY_S = 60.0


def _wait_for_line(
    log: Path, text: str, process: subprocess.Popen[bytes], timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if text in log.read_text(errors="replace"):
            return
        if process.poll() is not None:
            raise AssertionError(f"worker exited early:\n{log.read_text(errors='replace')}")
        time.sleep(0.1)
    raise AssertionError(
        f"worker not ready after {timeout_s} s:\n{log.read_text(errors='replace')}"
    )


@pytest.fixture(scope="module")
def stack_spec() -> StackSpec:
    """The API without the stack's in-process worker: ``worker_process`` runs ``worker.py``."""
    return StackSpec(
        settings={
            "_env_file": None,
            "simulated_latency_scale": 0.0,
            "rate_limit_per_minute": 1_000_000,
            "daily_budget_usd": 1_000_000.0,
        },
        worker=False,
    )


@pytest.fixture(scope="module")
def admin_key(stack: Stack) -> str:
    return stack.key("schemathesis", Scope.ADMIN).secret


@pytest.fixture(scope="module")
def worker_process(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """``python worker.py`` polling the stack's task queue, as users run it."""
    settings = stack.settings
    env = {
        **os.environ,
        "AGENTFLOW_TEMPORAL_ADDRESS": str(settings.temporal_address),
        "AGENTFLOW_REDIS_URL": settings.redis_url,
        "AGENTFLOW_DATABASE_URL": settings.database_url,
        "AGENTFLOW_TASK_QUEUE": settings.task_queue,
        "AGENTFLOW_SQL_DATABASE_PATH": str(settings.sql_database_path),
        "AGENTFLOW_SIMULATED_LATENCY_SCALE": "0",
    }
    log = tmp_path_factory.mktemp("schemathesis-worker") / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "worker.py"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        _wait_for_line(log, "worker polling task queue", worker, WORKER_READY_S)
        yield
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=15)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


@pytest.fixture(scope="module")
def api_schema(stack: Stack, worker_process: None) -> Any:
    return schemathesis.openapi.from_url(f"{stack.url}/openapi.json", timeout=30)


def _bounded(examples: int) -> Callable[[Callable[..., None]], Callable[..., None]]:
    return hypothesis_settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=not LONG,  # CI sees the same examples on every run
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )


def _examples(operation: Any, mode: GenerationMode, headers: dict[str, str]) -> Callable[[], None]:
    """A Hypothesis test sending :data:`EXAMPLES` generated cases of ``operation``."""

    @_bounded(EXAMPLES)
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        case.call_and_validate(headers=headers, checks=CHECKS, timeout=30)

    return run  # type: ignore[no-any-return]


def test_every_operation_answers_only_documented_statuses_and_no_5xx(
    admin_key: str, api_schema: Any
) -> None:
    admin = {"Authorization": f"Bearer {admin_key}"}
    invalid_key = {"Authorization": "Bearer af_not-a-real-key"}
    ways = [
        ("valid input", GenerationMode.POSITIVE, admin),
        ("invalid input", GenerationMode.NEGATIVE, admin),
        ("invalid key", GenerationMode.POSITIVE, invalid_key),
    ]
    failures: list[str] = []
    operations = 0
    for result in api_schema.get_all_operations():
        operation = result.ok()
        operations += 1
        for way, mode, headers in ways:
            try:
                _examples(operation, mode, headers)()
            except Unsatisfiable:
                pass  # nothing to break: the operation takes no input (negative mode)
            except (Exception, BaseExceptionGroup) as exc:  # Schemathesis: a FailureGroup
                failures.append(f"{operation.label} ({way}):\n{exc}")
    assert operations >= 9, "the schema lost operations"
    assert not failures, "\n\n".join(failures)


def test_stateful_sequences_answer_only_documented_statuses_and_no_5xx(
    admin_key: str, api_schema: Any
) -> None:
    admin = {"Authorization": f"Bearer {admin_key}"}
    seen: list[tuple[str, int]] = []

    # A stream of a job that waits for approval stays open until the job ends: the stateful
    # phase follows links, not streams (the stream route's statuses are checked above).
    machine = api_schema.exclude(path_regex=r"/events$").as_state_machine()

    class JobLifecycle(machine):  # type: ignore[misc,valid-type]
        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"headers": admin, "timeout": 30}

        def validate_response(self, response: Any, case: Any, **kwargs: Any) -> None:
            seen.append((case.operation.label, response.status_code))
            case.validate_response(response, checks=CHECKS, headers=admin)

    JobLifecycle.run(
        settings=hypothesis_settings(
            max_examples=STATEFUL_RUNS,
            stateful_step_count=STATEFUL_STEPS,
            deadline=None,
            database=None,
            derandomize=not LONG,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
    )
    # The links worked: some call reached a job that a previous call created.
    assert ("GET /v1/jobs/{job_id}", 200) in seen, sorted(set(seen))


def test_openapi_documents_the_errors_every_route_can_answer(api_schema: Any) -> None:
    """Stated rules, read from the schema: what each kind of route must list."""
    problems: list[str] = []
    for result in api_schema.get_all_operations():
        operation = result.ok()
        definition = operation.definition.raw
        documented = set(definition.get("responses", {}))
        if "500" in documented or "5XX" in documented:
            problems.append(f"{operation.label} documents a 500")
        if definition.get("security"):
            missing = {"401", "403", "503"} - documented
            if missing:
                problems.append(f"{operation.label} lacks {sorted(missing)} (an API key)")
        if operation.method.upper() in BODY_METHODS and "413" not in documented:
            problems.append(f"{operation.label} lacks 413 (the body limit applies to it)")
        if "requestBody" in definition:
            missing = {"400", "413", "422"} - documented
            if missing:
                problems.append(f"{operation.label} lacks {sorted(missing)} (a JSON body)")
    assert not problems, "\n".join(problems)
