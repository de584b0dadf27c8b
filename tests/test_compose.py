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
