"""The first-party import graph and its cycles, for ``tests/test_imports.py``.

Run as ``python -m tests.import_graph``: it prints the cycles and the imports that break the
layering as JSON. The test runs it in a
fresh interpreter because CPython 3.11 can fail ``ast.parse`` with "AST constructor recursion
depth mismatch" after a RecursionError elsewhere in the same process (the hostile-input tests
raise some on purpose).
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PACKAGES = ("api", "activities", "cli", "core", "domain", "infra", "workflows", "migrations")

FORBIDDEN_IMPORTS: dict[str, tuple[str, ...]] = {
    # Contracts shared by every layer: they depend on nothing first-party above them.
    "core": ("domain", "infra", "activities", "workflows", "api", "cli", "worker"),
    # Domain logic: pure Python over contracts, no Temporal, Redis or model client.
    "domain": (
        "infra",
        "activities",
        "workflows",
        "api",
        "cli",
        "worker",
        "temporalio",
        "redis",
        "openai",
        "httpx",
    ),
    # Infrastructure serves activities and the API; it never reaches up into them.
    "infra": ("activities", "workflows", "api", "cli", "worker"),
    # Activities are called by workflows, never the other way round.
    "activities": ("workflows", "api", "cli", "worker"),
    # Workflows orchestrate: no I/O layer and no process code.
    "workflows": ("infra", "api", "cli", "worker"),
    # The API starts workflows by name and never loads workflow or activity code.
    "api": ("activities", "workflows", "domain", "cli", "worker"),
}
"""Per top-level package, the packages its modules may not import (lazy imports included)."""


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path, name: str) -> set[str]:
    """Every module ``path`` imports, anywhere in it (functions too), except under
    ``if TYPE_CHECKING``: a lazy import inside a function still forms a cycle when it runs."""
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


def _modules() -> dict[str, Path]:
    modules = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    modules["worker"] = ROOT / "worker.py"
    return modules


def find_upward_imports() -> list[str]:
    """Every import that breaks :data:`FORBIDDEN_IMPORTS`, as ``"importer -> imported"``."""
    found = []
    for name, path in sorted(_modules().items()):
        forbidden = FORBIDDEN_IMPORTS.get(name.split(".")[0], ())
        for imported in sorted(_imports(path, name)):
            if imported.split(".")[0] in forbidden:
                found.append(f"{name} -> {imported}")
    return found


def find_cycles() -> list[list[str]]:
    """Every import cycle among first-party modules (each as its sorted members)."""
    modules = _modules()
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
    return cycles


if __name__ == "__main__":
    print(json.dumps({"cycles": find_cycles(), "upward": find_upward_imports()}))
