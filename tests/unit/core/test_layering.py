"""shardtrain's modules import each other one way, without cycles.

The import graph is read from the source with ``ast`` (nothing is imported, so no Ray and no
optional framework is needed). Every import counts, at module top or inside a function;
only imports under ``if TYPE_CHECKING:`` (never run) are left out. Run this file alone to
check: ``pytest tests/unit/core/test_layering.py``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3] / "core" / "src" / "shardtrain"

#: Layers, lowest first: a module may import its own layer and the ones below, never above.
#: The longest matching prefix decides a module's layer.
LAYERS: dict[str, int] = {
    "shardtrain.errors": 0,
    # What counts as a credential: used by model, integrations and jobs alike.
    "shardtrain.secrets": 0,
    "shardtrain.env": 0,
    "shardtrain.config": 0,
    "shardtrain.version": 0,
    "shardtrain.home": 0,
    # Which rank this process is: a leaf set by the runtime and read by data's get_shard().
    "shardtrain.runtime.worker_context": 0,
    "shardtrain.data": 1,
    "shardtrain.stage": 2,
    "shardtrain.model": 3,
    "shardtrain.runtime": 4,
    "shardtrain.modeling": 5,
    "shardtrain": 5,  # the package root: the public API, over the trainers
    "shardtrain.integrations": 6,
    "shardtrain.jobs": 7,
    "shardtrain.cli": 8,
    "shardtrain.demo": 8,
    "shardtrain.__main__": 8,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, module: str, is_package: bool):
    """First-party modules named by the import statements of a module (TYPE_CHECKING aside)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module if is_package else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}".strip(".")
            for alias in node.names:
                yield f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
        stack.extend(ast.iter_child_nodes(node))


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(), str(path))
        targets = set(_imports(tree, name, path.name == "__init__.py"))
        graph[name] = {t for t in targets if t in MODULES and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def layer(module: str) -> int:
    matches = [p for p in LAYERS if module == p or module.startswith(p + ".")]
    if not matches:
        pytest.fail(f"{module} has no layer: add it (or its package) to LAYERS in {__file__}")
    return LAYERS[max(matches, key=len)]


def test_the_graph_is_read_from_the_source():
    graph = import_graph()
    assert len(graph) > 30
    # Spot checks that both top-level and in-function imports are seen.
    assert "shardtrain.model.artifact" in graph["shardtrain.model.publish"]
    assert (
        "shardtrain.modeling.distributors.xgboost_worker"
        in graph["shardtrain.modeling.distributors.xgboost"]
    )


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_lower_layers_never_import_higher_ones():
    wrong = [
        f"{source} (layer {layer(source)}) imports {target} (layer {layer(target)})"
        for source, targets in import_graph().items()
        for target in sorted(targets)
        if layer(target) > layer(source)
    ]
    assert wrong == []


def test_base_modules_are_leaves_of_the_graph():
    """errors, env, config, version, home and worker_context import no other layer."""
    graph = import_graph()
    for module, targets in graph.items():
        if layer(module) == 0:
            assert {layer(t) for t in targets} <= {0}, (module, targets)
    assert graph["shardtrain.runtime.worker_context"] == set()
