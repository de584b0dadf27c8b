"""Import boundaries: the API process loads no workflow or activity code, nor what only they need.

The API starts and reads jobs by name (``core.ids.AGENT_WORKFLOW_TYPE`` and its query and update
names) with a client-only plugin, so neither importing it nor starting it may pull in the
workflow modules, the activities, the model client, the tokenizer or numpy (seconds of start-up
and tens of MB per API process).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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


PACKAGES = ("api", "activities", "cli", "core", "infra", "workflows", "migrations")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path, name: str) -> set[str]:
    """Every module ``path`` imports, anywhere in it (functions too), except under
    ``if TYPE_CHECKING``: a lazy import inside a function still forms a cycle when it runs."""
    import ast

    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []  # ast.walk has not entered it yet
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def test_no_import_cycles_between_first_party_modules() -> None:
    modules = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    modules["worker"] = ROOT / "worker.py"
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for imported in _imports(path, name):
            parts = imported.split(".")
            for i in range(len(parts), 0, -1):  # the longest first-party module it names
                candidate = ".".join(parts[:i])
                if candidate in modules:
                    if candidate != name:
                        targets.add(candidate)
                    break
        graph[name] = targets
    # Tarjan's strongly connected components: any component of two or more is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    assert cycles == [], f"import cycles: {cycles}"
