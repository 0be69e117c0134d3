"""The package's module-level imports form no cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

PACKAGE = Path(__file__).resolve().parent.parent / "helios"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_time_imports(tree: ast.Module) -> set[str]:
    """Helios modules a module imports when it is imported: its top level and class bodies,
    not the bodies of its functions (those import when called)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names if a.name.startswith("helios"))
            elif isinstance(child, ast.ImportFrom) and (child.module or "").startswith("helios"):
                found.add(child.module)
            visit(child)

    visit(tree)
    return found


def import_graph() -> nx.DiGraph:
    graph = nx.DiGraph()
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    for name, path in modules.items():
        graph.add_node(name)
        for target in _import_time_imports(ast.parse(path.read_text())):
            # `from helios.x import y` may name a submodule y: the edge goes to the module
            # that defines what is imported, which is x (its __init__) either way.
            if target in modules and target != name:
                graph.add_edge(name, target)
    return graph


def test_module_level_imports_form_no_cycle():
    graph = import_graph()
    assert graph.number_of_edges() > 50  # the walk found the package's imports
    assert list(nx.simple_cycles(graph)) == []


def test_the_cycle_check_sees_a_cycle():
    graph = import_graph()
    graph.add_edge("helios.config.schema", "helios.workload")  # as config once imported it
    assert list(nx.simple_cycles(graph))

