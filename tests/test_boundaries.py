"""The two wings never import each other: nothing in ``cmo_rl.meta`` imports the baseline wing
(``cmo_rl.training``) or the recipes, nothing in ``cmo_rl.training`` imports ``cmo_rl.meta``;
the program layer (``cmo_rl/cli.py``, ``cmo_rl/meta_baselines.py``, ``cmo_rl/meta_es.py``) joins
them. Imports inside
functions count too (read from the source, nothing is imported)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cmo_rl"
FORBIDDEN = {
    "meta": ("cmo_rl.training", "recipes"),
    "training": ("cmo_rl.meta",),
}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("wing", sorted(FORBIDDEN))
def test_a_wing_does_not_import_the_other(wing):
    files = sorted((PACKAGE / wing).rglob("*.py"))
    assert files
    wrong = {
        str(path.relative_to(PACKAGE)): sorted(
            name
            for name in _imports(path)
            if any(name == bad or name.startswith(f"{bad}.") for bad in FORBIDDEN[wing])
        )
        for path in files
    }
    assert not {k: v for k, v in wrong.items() if v}


def test_collection_and_parallel_depend_one_way():
    """``collection`` hands worker collection to ``parallel``; ``parallel`` needs nothing back."""
    parallel = _imports(PACKAGE / "training" / "parallel.py")
    assert "cmo_rl.training.collection" not in parallel
    assert "cmo_rl.training.parallel" in _imports(PACKAGE / "training" / "collection.py")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph() -> dict[str, set[str]]:
    """Module -> the ``cmo_rl`` modules it imports (module level and inside functions)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for imported in _imports(path):
            while imported and imported not in modules:  # `from pkg.mod import name`
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                targets.add(imported)
        graph[name] = targets
    return graph


def test_no_import_cycle():
    """No chain of imports leads from a module back to itself (a package's ``__init__`` that
    re-exports its own submodules is the one allowed back edge: submodule -> package)."""
    graph = _graph()

    def is_parent(package: str, module: str) -> bool:
        return module.startswith(f"{package}.")

    cycles = []
    for start in graph:
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if is_parent(nxt, node) or is_parent(nxt, start):
                    continue  # importing one's own package (its __init__ re-exports us)
                if nxt == start:
                    cycles.append(" -> ".join([*path, nxt]))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
    assert not cycles, cycles[:5]


def test_no_package_module_loads_a_program_script():
    """The package never reaches into ``recipes/`` for code (it used to ``importlib`` them)."""
    offenders = [
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        if "spec_from_file_location" in p.read_text() or "import recipes" in p.read_text()
    ]
    assert not offenders


def test_no_file_over_600_lines():
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 600
    }
    assert not long
