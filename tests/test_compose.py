"""docker-compose.yml stays valid and wired to the settings the code reads (no engine needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from core.settings import Settings

COMPOSE = Path(__file__).parent.parent / "docker-compose.yml"


def test_compose_file_describes_the_stack() -> None:
    doc = yaml.safe_load(COMPOSE.read_text())
    services = doc["services"]
    assert {"temporal", "postgres", "redis", "worker", "api"} <= set(services)
    for name in ("worker", "api"):
        env = services[name]["environment"]
        assert env["DATABASE_URL"].startswith("postgresql+psycopg://")
        assert env["TEMPORAL_ADDRESS"] == "temporal:7233"
        assert env["REDIS_URL"].startswith("redis://redis:")
    assert "7233:7233" in services["temporal"]["ports"]
    assert "8233:8233" in services["temporal"]["ports"]


def test_compose_environment_is_read_by_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    env = yaml.safe_load(COMPOSE.read_text())["services"]["worker"]["environment"]
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    s = Settings()
    assert s.temporal_address == "temporal:7233"
    assert s.redis_url == env["REDIS_URL"]
    assert s.database_url == env["DATABASE_URL"]
    assert str(s.sql_database_path) == env["AGENTFLOW_SQL_DATABASE_PATH"]
    assert s.temporal_ui_url == env["AGENTFLOW_TEMPORAL_UI_URL"]


def test_compose_migrates_once_before_the_api_and_the_worker_start() -> None:
    """The API and the worker only check the schema (infra.migrations.require_schema), so the
    stack runs ``agentflow db upgrade`` in a one-off service both wait for."""
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    assert "agentflow db upgrade" in " ".join(services["migrate"]["command"])
    for name in ("api", "worker"):
        assert services[name]["depends_on"]["migrate"] == {
            "condition": "service_completed_successfully"
        }


def test_compose_commands_import_modules_that_exist() -> None:
    """Every ``from X import Y`` in a service's shell command names a module and a name that
    exist (a moved function would otherwise fail only inside the container)."""
    import importlib
    import re

    services = yaml.safe_load(COMPOSE.read_text())["services"]
    found = 0
    for service in services.values():
        command = " ".join(service.get("command") or [])
        for module, name in re.findall(r"from ([\w.]+) import (\w+)", command):
            assert hasattr(importlib.import_module(module), name), (module, name)
            found += 1
    assert found >= 1


def test_compose_api_does_not_wait_for_open_event_streams_to_stop() -> None:
    """Open SSE streams would hold uvicorn's shutdown until the engine kills it (found by a
    hostile probe); readers resume with Last-Event-ID, so the API stops after a short grace."""
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    assert "--timeout-graceful-shutdown" in " ".join(services["api"]["command"])
