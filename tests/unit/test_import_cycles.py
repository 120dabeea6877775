"""No import cycles between capsa's modules, and the job service imports none of the resources it is given.

The graph is read from the source (module-level imports; ``if TYPE_CHECKING:`` blocks and imports
inside functions are not cycles at import time), so a cycle is found even when the order in which
today's code happens to import things hides it. One fresh interpreter per entry point confirms it.
"""

from __future__ import annotations

import ast
import functools
import subprocess
import sys
from pathlib import Path

import capsa

SRC = Path(capsa.__file__).parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.stmt) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _top_level_imports(tree: ast.Module, module: str, is_package: bool) -> set[str]:
    found: set[str] = set()
    pending: list[ast.stmt] = list(tree.body)
    while pending:
        node = pending.pop()
        if _is_type_checking(node):
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            for field in ("body", "orelse", "finalbody", "handlers"):
                for child in getattr(node, field, []):
                    pending.extend(child.body if isinstance(child, ast.ExceptHandler) else [child])
    return found


@functools.cache
def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in SRC.rglob("*.py") if "/gen/" not in str(p)}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        imported = _top_level_imports(ast.parse(path.read_text()), name, path.name == "__init__.py")
        edges = {m for m in imported if m in modules and m != name}
        # Importing a.b.c runs a/__init__ and a/b/__init__ first.
        edges |= {".".join(m.split(".")[:i]) for m in set(edges) for i in range(2, m.count(".") + 1)} & set(modules)
        graph[name] = edges - {name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    sys.setrecursionlimit(10_000)

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _reaches(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    pending = [start]
    while pending:
        for nxt in graph.get(pending.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                pending.append(nxt)
    return seen


def _packages(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The graph between capsa's top-level packages (capsa.jobs -> capsa.runtime, ...)."""
    top = {m: ".".join(m.split(".")[:2]) for m in graph}
    packages: dict[str, set[str]] = {}
    for module, edges in graph.items():
        packages.setdefault(top[module], set()).update(top[e] for e in edges if top[e] != top[module])
    return packages


def test_packages_depend_on_each_other_without_cycles() -> None:
    packages = _packages(_graph())
    assert {"capsa.jobs", "capsa.capsules", "capsa.gpus", "capsa.daemon"} <= set(packages)
    assert _cycles(packages) == []


def test_a_cycle_between_packages_would_be_found() -> None:
    assert _cycles({"capsa.jobs": {"capsa.capsules"}, "capsa.capsules": {"capsa.jobs"}}) == [
        ["capsa.capsules", "capsa.jobs"]]


def test_the_job_service_imports_none_of_the_resources_it_is_given() -> None:
    reached = _reaches(_graph(), "capsa.jobs.service")
    lenders = ("capsa.networks", "capsa.volumes", "capsa.gpus", "capsa.capsules", "capsa.images")
    assert sorted(m for m in reached if m.startswith(lenders)) == []


def test_the_job_service_and_the_capsule_manager_import_first_in_a_fresh_interpreter() -> None:
    for name in ("capsa.jobs", "capsa.capsules.manager"):
        done = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr[-2000:]
