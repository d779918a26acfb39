"""The package layering, read from the source: no import cycle, and a pure core.

Every ``import`` of ``app/`` and ``agents/`` counts (those inside functions too), except the
ones under ``if TYPE_CHECKING:``, which never run. The core (``app/core/``) must not reach,
directly or through the modules it imports, the settings or any I/O framework.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("app", "agents")
#: What the core must never import, directly or transitively.
NOT_IN_CORE = {"pydantic", "pydantic_settings", "aiokafka", "faust", "mode", "aiohttp"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {
        module_name(path): path
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    }


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node except the bodies of ``if TYPE_CHECKING:`` blocks."""
    found: list[ast.AST] = []
    pending = [tree]
    while pending:
        node = pending.pop()
        found.append(node)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            pending.extend(node.orelse)
            continue
        pending.extend(ast.iter_child_nodes(node))
    return found


def imports_of(path: Path, name: str, known: set[str]) -> tuple[set[str], set[str]]:
    """(modules of ours, top-level outside packages) that ``path`` imports at run time."""
    ours: set[str] = set()
    outside: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for target in targets:
            if target.split(".")[0] in PACKAGES:
                # `from app.x import y` is module app.x.y when that is a module, else app.x
                module = target
                while module and module not in known:
                    module = module.rpartition(".")[0]
                if module and module != name:
                    ours.add(module)
            elif target:
                outside.add(target.split(".")[0])
    return ours, outside


def graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    found = modules()
    known = set(found)
    edges: dict[str, set[str]] = {}
    outside: dict[str, set[str]] = {}
    for name, path in found.items():
        edges[name], outside[name] = imports_of(path, name, known)
    return edges, outside


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def reachable(start: str, edges: dict[str, set[str]]) -> set[str]:
    seen = {start}
    pending = [start]
    while pending:
        for target in edges.get(pending.pop(), ()):
            if target not in seen:
                seen.add(target)
                pending.append(target)
    return seen


def test_the_walk_sees_the_known_arrows() -> None:
    """The walker itself: arrows that exist are found, TYPE_CHECKING ones are not."""
    edges, outside = graph()
    assert "app.core.transform" in edges["app.core.pipeline"]
    assert "app.sink.planning" in edges["app.sink.service"]
    assert "aiokafka" in outside["app.sink.service"]
    assert "app.settings" not in edges["app.core.pipeline"]  # only under TYPE_CHECKING there


def test_there_is_no_import_cycle() -> None:
    edges, _ = graph()
    assert cycles(edges) == []


def test_the_core_reaches_neither_the_settings_nor_an_io_framework() -> None:
    edges, outside = graph()
    for name in sorted(n for n in edges if n.startswith("app.core")):
        closure = reachable(name, edges)
        assert "app.settings" not in closure, name
        frameworks = set().union(*(outside[m] for m in closure)) & NOT_IN_CORE
        assert frameworks == set(), (name, frameworks)


def test_the_sink_does_not_reach_into_the_ingest_agents() -> None:
    edges, _ = graph()
    assert not any(m.startswith("agents") for m in reachable("app.sink.service", edges))


def test_the_worker_and_the_ingress_servers_share_only_app_serving() -> None:
    """The worker's web port and the Firehose ingress are two services: what both need
    (binding the port, the bearer token check) lives in ``app.serving``, not in either."""
    edges, _ = graph()
    for service, other in (("app.web", "app.ingress"), ("app.ingress.server", "app.web")):
        assert not any(m.startswith(other) for m in reachable(service, edges)), service
    assert "app.serving" in edges["app.web"]
    assert "app.serving" in edges["app.ingress.server"]
