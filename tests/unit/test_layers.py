"""The import graph: the service imports `triage`, never the reverse; no cycles; the broker stands alone."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT, env_with

LIBRARY = ROOT / "triage"
SERVICE = ("actors", "config", "middleware")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module `path` imports, anywhere in it (function-level imports included), made absolute."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def library_graph() -> dict[str, set[str]]:
    """triage module -> the triage modules it imports."""
    modules = {_module_name(p): p for p in LIBRARY.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        graph[name] = {m for m in _imports(path) if m in modules and m != name}
    return graph


def test_the_library_never_imports_the_service() -> None:
    for path in LIBRARY.rglob("*.py"):
        service = {m for m in _imports(path) if m.split(".")[0] in SERVICE}
        assert not service, f"{path.relative_to(ROOT)} imports {service}"


def test_the_broker_imports_nothing_of_the_library_outside_itself() -> None:
    for name, imported in library_graph().items():
        if name.startswith("triage.broker"):
            outside = {m for m in imported if not m.startswith("triage.broker")}
            assert not outside, f"{name} imports {outside}"


def test_settings_tiers_and_routing_sit_below_the_policies() -> None:
    graph = library_graph()
    for name in ("triage.settings", "triage.tiers", "triage.routing"):
        above = {m for m in graph[name] if m.startswith(("triage.middleware", "triage.runtime", "triage.admin"))}
        assert not above, f"{name} imports {above}"


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of `graph` as a path that ends where it starts, or None (depth-first walk)."""
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = "open"
        for child in sorted(graph.get(module, ())):
            if state.get(child) == "open":
                return [*path, module, child]
            if child not in state and (cycle := visit(child, [*path, module])):
                return cycle
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module, [])):
            return cycle
    return None


def test_no_import_cycles() -> None:
    # Given the graph of imports between library modules (function-level imports included)
    # Then it has no cycle
    assert find_cycle(library_graph()) is None


def test_the_cycle_check_can_fail() -> None:
    # Given a graph with a cycle, then the check reports it
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_importing_the_library_installs_and_connects_nothing() -> None:
    # Given a Redis URL where nothing listens
    code = (
        "import dramatiq.broker as b\n"
        "import triage, triage.admin, triage.middleware, triage.runtime, triage.testing\n"
        "import triage.admin.cli\n"
        "print(b.global_broker, triage.runtime._runtime)\n"
    )
    # When every public module of the library is imported
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env_with(REDIS_URL="redis://127.0.0.1:1/0"),
        capture_output=True,
        text=True,
    )
    # Then no broker is installed and nothing tried to connect
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["None", "None"]
