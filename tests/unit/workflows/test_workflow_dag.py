"""The dependency graph: every cycle with every job on it, and a start order with dependencies first."""

from __future__ import annotations

import pytest

from capsa.workflows.dag import find_cycles, topological_order


def test_an_acyclic_graph_has_no_cycles() -> None:
    deps = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]}
    assert find_cycles(deps) == []


def test_a_cycle_is_written_out_starting_at_the_first_declared_job() -> None:
    deps = {"root": [], "x": ["root", "z"], "y": ["x"], "z": ["y"]}
    assert find_cycles(deps) == [(["x", "z", "y", "x"], ["x", "y", "z"])]


def test_a_job_requiring_itself_is_a_cycle() -> None:
    assert find_cycles({"a": ["a"], "b": []}) == [(["a", "a"], ["a"])]


def test_separate_cycles_are_each_reported() -> None:
    deps = {"a": ["b"], "b": ["a"], "c": [], "d": ["e"], "e": ["d"]}
    assert [path for path, _ in find_cycles(deps)] == [["a", "b", "a"], ["d", "e", "d"]]


def test_knotted_cycles_name_every_member_of_the_knot() -> None:
    # a <-> b and b <-> c: one knot, a shortest cycle through a, and all three members.
    deps = {"a": ["b"], "b": ["a", "c"], "c": ["b"]}
    [(path, members)] = find_cycles(deps)
    assert path == ["a", "b", "a"]
    assert members == ["a", "b", "c"]


def test_unknown_dependencies_are_ignored_by_the_graph() -> None:
    assert find_cycles({"a": ["ghost"]}) == []
    assert topological_order({"a": ["ghost"], "b": ["a"]}) == ["a", "b"]


def test_topological_order_puts_dependencies_first_and_keeps_declaration_order_for_ties() -> None:
    deps = {"report": ["train"], "fetch": [], "lint": [], "train": ["fetch", "lint"]}
    assert topological_order(deps) == ["fetch", "lint", "train", "report"]


def test_topological_order_refuses_a_cycle() -> None:
    with pytest.raises(ValueError, match="cycle"):
        topological_order({"a": ["b"], "b": ["a"]})


def test_long_chains_do_not_recurse() -> None:
    n = 5000
    deps = {f"j{i}": ([f"j{i - 1}"] if i else []) for i in range(n)}
    assert topological_order(deps)[-1] == f"j{n - 1}"
    deps["j0"] = [f"j{n - 1}"]
    [(path, members)] = find_cycles(deps)
    assert len(members) == n and len(path) == n + 1
