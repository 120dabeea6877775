"""Placement as pure functions: which nodes can take a job (filter), and which is best (score).

Kept free of etcd and threads so the rules read top to bottom and unit tests cover them directly.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from capsa.cluster.model import Assignment, NodeRecord

__all__ = ["Demand", "NodeLoad", "Strategy", "choose", "demand_of", "explain", "fits"]


class Strategy(StrEnum):
    SPREAD = "spread"       # the emptiest node first: fewer jobs hurt when a node goes
    BINPACK = "binpack"     # the fullest node that fits: keeps whole nodes free for big jobs


@dataclass(frozen=True)
class Demand:
    cpu: float = 0.0
    memory_mb: int = 0
    gpus: int = 0
    image: str = ""
    pull: str = "missing"
    capsules: tuple[str, ...] = ()
    constraints: dict[str, str] = field(default_factory=dict)
    nodes: tuple[str, ...] = ()        # only these (its --secret-env is sealed to them); empty: any


@dataclass
class NodeLoad:
    """A node with what its current assignments hold."""

    node: NodeRecord
    jobs: int = 0
    cpu: float = 0.0
    memory_mb: int = 0
    gpus: int = 0

    def add(self, a: Assignment) -> None:
        self.jobs += 1
        self.cpu += a.cpu
        self.memory_mb += a.memory_mb
        self.gpus += a.gpus


def demand_of(spec: dict[str, Any], constraints: dict[str, str], nodes: Iterable[str] = ()) -> Demand:
    resources = spec.get("resources") or {}
    return Demand(cpu=int(resources.get("max_cpu", 0)) / 100.0, memory_mb=int(resources.get("max_memory_mb", 0)),
                  gpus=int(spec.get("gpus", 0)), image=str(spec.get("image", "")),
                  pull=str(spec.get("pull", "missing")), capsules=tuple(spec.get("capsules") or ()),
                  constraints=dict(constraints), nodes=tuple(nodes))


def _capsule_present(want: str, present: Iterable[str]) -> bool:
    name, _, version = want.split(":", 1)[0].partition("@")
    for have in present:
        have_name, _, have_version = have.partition("@")
        if have_name == name and (not version or version in ("*", have_version) or
                                  version.lstrip("=") == have_version):
            return True
    return False


def explain(load: NodeLoad, d: Demand) -> str | None:
    """Why ``load``'s node cannot take ``d``, or None when it can."""
    n = load.node
    if d.nodes and n.name not in d.nodes:
        return "its secret environment is sealed to other nodes"
    for key, value in d.constraints.items():
        if n.labels.get(key) != value:
            return f"label {key}={value} not set"
    if n.max_jobs and load.jobs >= n.max_jobs:
        return f"full ({load.jobs}/{n.max_jobs} jobs)"
    if d.cpu and load.cpu + d.cpu > n.cpus:
        return f"not enough CPU ({n.cpus - load.cpu:.2f} free, {d.cpu:.2f} asked)"
    if d.memory_mb and load.memory_mb + d.memory_mb > n.memory_mb:
        return f"not enough memory ({n.memory_mb - load.memory_mb} MB free)"
    if d.gpus and load.gpus + d.gpus > n.gpus:
        return f"not enough GPUs ({n.gpus - load.gpus} free, {d.gpus} asked)"
    if d.image and d.pull == "never" and d.image not in n.images:
        return f"image {d.image} not present (pull=never)"
    for capsule in d.capsules:
        if not _capsule_present(capsule, n.capsules):
            return f"capsule {capsule} not present"
    return None


def fits(load: NodeLoad, d: Demand) -> bool:
    return explain(load, d) is None


def _score(load: NodeLoad, d: Demand, strategy: Strategy) -> float:
    n = load.node
    # Utilisation after placing: jobs count against max_jobs, cores against CPUs; the larger one rules.
    slots = n.max_jobs or max(1, n.cpus) * 4
    used = max((load.jobs + 1) / slots, (load.cpu + d.cpu) / max(1, n.cpus))
    score = -used if strategy == Strategy.SPREAD else used
    if d.image and d.image in n.images:
        score += 0.5   # no pull: a start in milliseconds instead of seconds
    return score


def choose(loads: list[NodeLoad], d: Demand, strategy: Strategy) -> NodeLoad | None:
    """The best node that fits, ties broken by name so that placements are reproducible."""
    best: tuple[float, str] | None = None
    chosen: NodeLoad | None = None
    for load in loads:
        if not fits(load, d):
            continue
        key = (_score(load, d, strategy), load.node.name)
        if best is None or key[0] > best[0] or (key[0] == best[0] and key[1] < best[1]):
            best, chosen = key, load
    return chosen
