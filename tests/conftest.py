"""Session fixtures: a real Redis per session, database URLs for SQLite and PostgreSQL."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.helpers import redis_server

POSTGRES_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a real redis-server started for this test session on a free port."""
    with redis_server() as url:
        yield url
