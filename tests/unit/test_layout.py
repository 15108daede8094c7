"""The package's shape: no import cycle between ``proxy`` subpackages, no oversized class.

Parsed from the source (``ast``), so an import inside a function or under ``TYPE_CHECKING``
counts too: a deferred import still ties two packages together.
"""

from __future__ import annotations

import ast
from pathlib import Path

import proxy

PACKAGE = Path(proxy.__file__).parent
MAX_CLASS_LINES = 350


def _unit(module: str) -> str:
    """The layout unit of a dotted module name: ``proxy.<subpackage>``, or the top-level module."""
    parts = module.split(".")
    return ".".join(parts[:2])


def _module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every ``proxy...`` module ``path`` imports (absolute or relative)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    this = _module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "proxy")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "proxy":
                found.add(target)
    return found


def subpackage_graph() -> dict[str, set[str]]:
    """``proxy.<unit>`` -> the other units it imports."""
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        unit = _unit(_module_name(path))
        edges = graph.setdefault(unit, set())
        for target in _imports(path):
            other = _unit(target)
            if other != unit and other != "proxy":
                edges.add(other)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path that starts and ends on the same node, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle is not None:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle is not None:
                return cycle
    return None


def test_find_cycle_sees_a_cycle_and_a_clean_graph() -> None:
    # The checker itself, so a broken walk cannot pass the real test vacuously.
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_graph_sees_known_edges() -> None:
    graph = subpackage_graph()
    assert "proxy.routes" in graph["proxy.routing"]
    assert "proxy.routes" in graph["proxy.routeservice"]
    assert "proxy.delivery" in graph["proxy.publish"]


def test_no_cycle_between_subpackages() -> None:
    cycle = find_cycle(subpackage_graph())
    assert cycle is None, "import cycle between proxy subpackages: " + " -> ".join(cycle or [])


def test_no_class_over_the_limit() -> None:
    oversized = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_CLASS_LINES:
                    oversized.append(f"{_module_name(path)}.{node.name}: {lines} lines")
    assert not oversized, f"classes over {MAX_CLASS_LINES} lines: {oversized}"
