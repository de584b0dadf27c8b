"""Import boundaries: the API process loads no workflow or activity code, nor what only they need.

The API starts and reads jobs by name (``core.ids.AGENT_WORKFLOW_TYPE`` and its query and update
names) with a client-only plugin, so neither importing it nor starting it may pull in the
workflow modules, the activities, the model client, the tokenizer or numpy (seconds of start-up
and tens of MB per API process).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ROOT

FORBIDDEN = ("workflows", "activities", "numpy", "tiktoken", "openai", "sklearn")

_SCRIPT = """
import json, sys
import api.app
from fastapi.testclient import TestClient
from core.settings import Settings

loaded = lambda: sorted({{m.split('.')[0] for m in sys.modules}} & set({forbidden!r}))
after_import = loaded()
settings = Settings(
    database_url="sqlite:///{db}", auth_disabled=True, temporal_address="127.0.0.1:9"
)
with TestClient(api.app.create_app(settings)) as client:  # runs the lifespan
    client.get("/healthz")
print(json.dumps({{"import": after_import, "started": loaded()}}))
"""


def test_the_api_loads_no_workflow_activity_or_model_code(tmp_path: Path) -> None:
    script = _SCRIPT.format(forbidden=FORBIDDEN, db=tmp_path / "jobs.db")
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr[-2000:]
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert loaded == {"import": [], "started": []}


@pytest.fixture(scope="module")
def import_graph() -> dict[str, list[Any]]:
    """:mod:`tests.import_graph`'s findings, computed once in a fresh interpreter."""
    out = subprocess.run(
        [sys.executable, "-m", "tests.import_graph"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    found: dict[str, list[Any]] = json.loads(out.stdout.strip().splitlines()[-1])
    return found


def test_no_import_cycles_between_first_party_modules(import_graph: dict[str, list[Any]]) -> None:
    """No cycle among first-party imports, lazy ones in functions included
    (:mod:`tests.import_graph`, in a fresh interpreter)."""
    cycles = import_graph["cycles"]
    assert cycles == [], f"import cycles: {cycles}"


def test_no_layer_imports_a_layer_above_it(import_graph: dict[str, list[Any]]) -> None:
    """Each package imports only what :data:`tests.import_graph.FORBIDDEN_IMPORTS` allows:
    domain logic without Temporal, Redis or a model client, infrastructure never reaching up
    into activities or workflows, the API never loading workflow or activity code."""
    upward = import_graph["upward"]
    assert upward == [], "imports against the layering:\n" + "\n".join(upward)


_CLI_SCRIPT = """
import json, sys
from typer.testing import CliRunner
from cli.main import app

result = CliRunner().invoke(app, {args!r})
heavy = {heavy!r}
loaded = sorted({{h for h in heavy for m in sys.modules if m == h or m.startswith(h + ".")}})
print(json.dumps({{"exit": result.exit_code, "loaded": loaded}}))
"""


@pytest.mark.parametrize(
    ("args", "heavy"),
    [
        (["--help"], ("temporalio", "sqlalchemy", "numpy", "workflows", "activities")),
        (
            ["retention", "run", "--dry-run"],
            ("temporalio.client", "temporalio.worker", "numpy", "workflows", "activities"),
        ),
    ],
    ids=["help", "retention-dry-run"],
)
def test_cli_commands_import_only_what_they_use(
    tmp_path: Path, args: list[str], heavy: tuple[str, ...]
) -> None:
    """Commands import where they use a module (start-up under 1.5 s): ``--help`` loads no
    Temporal or database code, and a dry retention run reads the database without Temporal's
    client (the payload tables name its protobuf ``Payload``, which is cheap)."""
    script = _CLI_SCRIPT.format(args=args, heavy=heavy)
    env = {**os.environ, "AGENTFLOW_DATABASE_URL": f"sqlite:///{tmp_path / 'jobs.db'}"}
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, env=env
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"exit": 0, "loaded": []}
