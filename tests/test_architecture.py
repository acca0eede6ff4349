"""The house's shape, checked on the source: every import points down the data path, and none loops.

    common -> data_prep -> trainables -> search_spaces -> sweeps        (bench/ may use them all)

Every ``import`` counts, at module level or inside a function: a late import that climbs back up is still a
loop a reader has to untangle. ``python tests/test_architecture.py`` prints the package graph.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["common", "data_prep", "trainables", "search_spaces", "sweeps"]  # each may import only those before it


def project_modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the layered packages."""
    modules = {}
    for package in LAYERS:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imports_of(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """The project modules that the file at ``path`` (module ``name``) imports, anywhere in it."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # "pkg.mod.func" -> "pkg.mod"
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(path, name, modules) for name, path in modules.items()}


def layer(module: str) -> int:
    return LAYERS.index(module.split(".")[0])


def test_every_import_points_down_the_layers():
    upward = [f"{source} imports {target}" for source, targets in import_graph().items() for target in targets
              if layer(target) > layer(source)]
    assert not upward, "imports that climb back up the data path:\n" + "\n".join(upward)


def test_no_module_imports_itself_through_others():
    graph = import_graph()
    cycles, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                cycles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import loops:\n" + "\n".join(cycles)


def test_the_ground_floor_imports_nothing_of_the_project_and_data_code_no_model_or_ray():
    graph = import_graph()
    for module, targets in graph.items():
        if module.startswith("common"):
            assert all(t.startswith("common") for t in targets), (module, targets)
    for module, path in project_modules().items():
        if module.startswith("data_prep"):
            assert not external_roots(path) & {"ray", "torch", "sam3"}, module


def external_roots(path: Path) -> set[str]:
    """The top-level names of the absolute imports in a file (``ray`` for ``from ray.tune import x``)."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def package_graph() -> dict[str, set[str]]:
    """Package -> the packages it imports (subpackages such as trainables.checkpoints kept apart)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for source, targets in import_graph().items():
        for target in targets:
            a, b = _package(source), _package(target)
            if a != b:
                graph[a].add(b)
    return graph


def _package(module: str) -> str:
    return "trainables.checkpoints" if module.startswith("trainables.checkpoints") else module.split(".")[0]


if __name__ == "__main__":
    for package, targets in sorted(package_graph().items(), key=lambda kv: (layer(kv[0]), kv[0])):
        print(f"{package:24s} -> {', '.join(sorted(targets, key=lambda t: (layer(t), t)))}")
    sys.exit(0)
