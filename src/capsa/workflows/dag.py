"""The dependency graph of a workflow: cycles (every job on each one) and a start order.

``deps`` maps each job to the jobs its ``requires`` reads. Both functions are iterative, so a
thousand-job chain does not hit Python's recursion limit.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence

__all__ = ["find_cycles", "topological_order"]


def _sccs(deps: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Strongly connected components (Tarjan), each in discovery order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in deps:
        if root in index:
            continue
        work: list[tuple[str, int]] = [(root, 0)]
        while work:
            node, child_i = work.pop()
            if child_i == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            children = [d for d in deps.get(node, ()) if d in deps]
            if child_i < len(children):
                work.append((node, child_i + 1))
                child = children[child_i]
                if child not in index:
                    work.append((child, 0))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                out.append(component)
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return out


def _cycle_through(start: str, members: set[str], deps: Mapping[str, Sequence[str]]) -> list[str]:
    """A simple cycle from ``start`` back to it inside one component (BFS: shortest)."""
    previous: dict[str, str] = {}
    frontier = [start]
    seen = {start}
    while frontier:
        nxt: list[str] = []
        for node in frontier:
            for dep in deps.get(node, ()):
                if dep == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if dep in members and dep not in seen:
                    seen.add(dep)
                    previous[dep] = node
                    nxt.append(dep)
        frontier = nxt
    return [start, start]  # unreachable for a real component


def find_cycles(deps: Mapping[str, Sequence[str]]) -> list[tuple[list[str], list[str]]]:
    """Every dependency cycle, as ``(path, members)``.

    ``path`` is one cycle written out, ``a -> b -> a`` as ``[a, b, a]``, starting at the member
    declared first; ``members`` is every job of that strongly connected component in declaration
    order (more than the path when several cycles are knotted together). Self-requirements
    count (``[a, a]``). Dependencies on unknown jobs are ignored here.
    """
    order = {name: i for i, name in enumerate(deps)}
    cycles: list[tuple[list[str], list[str]]] = []
    for component in _sccs(deps):
        members = sorted(component, key=order.__getitem__)
        if len(members) == 1 and members[0] not in deps.get(members[0], ()):
            continue
        cycles.append((_cycle_through(members[0], set(members), deps), members))
    cycles.sort(key=lambda c: order[c[1][0]])
    return cycles


def topological_order(deps: Mapping[str, Sequence[str]]) -> list[str]:
    """Jobs with every dependency before its dependents, ties in declaration order (Kahn).

    Raises ValueError if the graph has a cycle (validation rejects those first).
    """
    order = {name: i for i, name in enumerate(deps)}
    waiting = {name: len({d for d in deps[name] if d in deps}) for name in deps}
    dependents: dict[str, list[str]] = {name: [] for name in deps}
    for name in deps:
        for dep in {d for d in deps[name] if d in deps}:
            dependents[dep].append(name)
    out: list[str] = []
    heap = [(order[n], n) for n, count in waiting.items() if count == 0]
    heapq.heapify(heap)
    while heap:
        _, node = heapq.heappop(heap)
        out.append(node)
        for child in dependents[node]:
            waiting[child] -= 1
            if waiting[child] == 0:
                heapq.heappush(heap, (order[child], child))
    if len(out) != len(deps):
        raise ValueError("the dependency graph has a cycle")
    return out
