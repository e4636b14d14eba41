"""The package's import structure: no import cycles, no module uses another's private names.

Imports are read from the source (module level and inside functions alike); an import of a
submodule does not count as an import of its parent package's ``__init__``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import bench

PACKAGE_ROOT = Path(bench.__file__).resolve().parent


@dataclass(frozen=True)
class Module:
    """A module of the ``bench`` package and what it imports from the package."""

    name: str
    imports: frozenset[str]
    private_uses: tuple[str, ...]


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE_ROOT.rglob("*.py"))}


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The longest known module that ``name`` (a dotted import path) is or lies in."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base[: len(base) - node.level + (1 if is_package else 0)]
    return ".".join([*base, node.module] if node.module else base)


def _scan(name: str, path: Path, known: dict[str, Path]) -> Module:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_package = path.name == "__init__.py"
    imports: set[str] = set()
    private: list[str] = []
    aliases: dict[str, str] = {}  # local name -> bench module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _resolve(alias.name, known)
                if target is not None:
                    imports.add(target)
                    if alias.asname:
                        aliases[alias.asname] = target
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(node, name, is_package)
            if _resolve(source, known) is None:
                continue
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                if submodule in known:
                    imports.add(submodule)
                    aliases[alias.asname or alias.name] = submodule
                else:
                    imports.add(_resolve(source, known) or source)
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        private.append(f"from {source} import {alias.name}")
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            private.append(f"{aliases[node.value.id]}.{node.attr}")
    imports.discard(name)
    return Module(name, frozenset(imports), tuple(private))


def _graph(prefix: str) -> dict[str, Module]:
    known = _modules()
    return {
        name: _scan(name, path, known)
        for name, path in known.items()
        if name == prefix or name.startswith(prefix + ".")
    }


def _cycles(graph: dict[str, Module]) -> list[list[str]]:
    """One example cycle per strongly connected component of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node].imports & graph.keys()):
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


def _private_uses(graph: dict[str, Module]) -> list[str]:
    return [f"{module.name}: {use}" for module in graph.values() for use in module.private_uses]


def test_backbones_package_has_no_cycle_and_no_private_imports() -> None:
    graph = _graph("bench.backbones")
    assert {"bench.backbones.base", "bench.backbones.registry"} <= graph.keys()
    assert _cycles(graph) == []
    assert _private_uses(graph) == []


def test_bench_package_has_no_cycle_and_no_private_imports() -> None:
    graph = _graph("bench")
    assert _cycles(graph) == []
    assert _private_uses(graph) == []


def test_the_checks_see_a_cycle_and_a_private_import() -> None:
    graph = {
        "a": Module("a", frozenset({"b"}), ()),
        "b": Module("b", frozenset({"c"}), ("from a import _x",)),
        "c": Module("c", frozenset({"a"}), ()),
        "d": Module("d", frozenset({"a"}), ()),
    }
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _private_uses(graph) == ["b: from a import _x"]


#: Imports each module of bench.backbones first, then the others in reverse order, with
#: every bench module forgotten in between (torch and the other dependencies stay loaded).
_IMPORT_EACH_FIRST = """
import importlib, sys
names = sys.argv[1:]
for first in names:
    for name in [n for n in sys.modules if n == "bench" or n.startswith("bench.")]:
        del sys.modules[name]
    for name in [first, *sorted(set(names) - {first}, reverse=True)]:
        importlib.import_module(name)
"""


def test_each_backbones_module_can_be_imported_first() -> None:
    names = sorted(_graph("bench.backbones"))
    done = subprocess.run(
        [sys.executable, "-c", _IMPORT_EACH_FIRST, *names],
        capture_output=True,
        text=True,
        cwd=PACKAGE_ROOT.parent,
    )
    assert done.returncode == 0, done.stderr[-2000:]
