"""Placement rules: filter by labels, capacity, GPUs, images and capsules; score spread vs bin-pack."""

from __future__ import annotations

from capsa.cluster.model import Assignment, NodeRecord
from capsa.cluster.placement import Demand, NodeLoad, Strategy, choose, demand_of, explain


def node(name: str, *, cpus: int = 4, memory_mb: int = 8192, gpus: int = 0, labels: dict[str, str] | None = None,
         images: list[str] | None = None, capsules: list[str] | None = None, max_jobs: int = 16) -> NodeRecord:
    return NodeRecord(name=name, address="127.0.0.1:1", lease=1, cpus=cpus, memory_mb=memory_mb, gpus=gpus,
                      labels=labels or {}, images=images or [], capsules=capsules or [], max_jobs=max_jobs)


def loaded(record: NodeRecord, jobs: int = 0, cpu: float = 0.0) -> NodeLoad:
    load = NodeLoad(record)
    for _ in range(jobs):
        load.add(Assignment(job_id="x", attempt=1, cpu=cpu / max(jobs, 1), memory_mb=0, gpus=0))
    return load


def test_spread_picks_the_emptiest_node_and_binpack_the_fullest_that_fits() -> None:
    loads = [loaded(node("a"), jobs=3), loaded(node("b"), jobs=1), loaded(node("c"), jobs=2)]
    assert choose(loads, Demand(), Strategy.SPREAD).node.name == "b"
    assert choose(loads, Demand(), Strategy.BINPACK).node.name == "a"


def test_ties_are_broken_by_name_so_placement_is_reproducible() -> None:
    assert choose([loaded(node("b")), loaded(node("a"))], Demand(), Strategy.SPREAD).node.name == "a"


def test_constraints_must_all_match_the_node_labels() -> None:
    loads = [loaded(node("a", labels={"disk": "hdd"})), loaded(node("b", labels={"disk": "ssd", "zone": "1"}))]
    assert choose(loads, Demand(constraints={"disk": "ssd"}), Strategy.SPREAD).node.name == "b"
    assert choose(loads, Demand(constraints={"disk": "ssd", "zone": "2"}), Strategy.SPREAD) is None
    assert explain(loads[0], Demand(constraints={"disk": "ssd"})) == "label disk=ssd not set"


def test_cpu_memory_gpus_and_job_slots_are_filtered_on_what_assignments_hold() -> None:
    busy = loaded(node("a", cpus=2), jobs=2, cpu=1.5)
    assert "not enough CPU" in (explain(busy, Demand(cpu=1.0)) or "")
    assert explain(busy, Demand(cpu=0.5)) is None
    assert "not enough memory" in (explain(loaded(node("a", memory_mb=100)), Demand(memory_mb=200)) or "")
    assert "not enough GPUs" in (explain(loaded(node("a", gpus=1)), Demand(gpus=2)) or "")
    assert "full" in (explain(loaded(node("a", max_jobs=2), jobs=2), Demand()) or "")


def test_an_image_with_pull_never_needs_a_node_that_holds_it_and_holding_it_scores_higher() -> None:
    without, holder = loaded(node("a")), loaded(node("b", images=["alpine:3"]), jobs=2)
    assert choose([without, holder], Demand(image="alpine:3", pull="never"), Strategy.SPREAD).node.name == "b"
    # pull=missing could go anywhere, yet the node that has the image wins despite its load.
    assert choose([without, holder], Demand(image="alpine:3"), Strategy.SPREAD).node.name == "b"


def test_required_capsules_must_be_present_in_a_matching_version() -> None:
    d = Demand(capsules=("tools@1.2:/opt/tools",))
    assert explain(loaded(node("a", capsules=["tools@1.1"])), d) == "capsule tools@1.2:/opt/tools not present"
    assert explain(loaded(node("a", capsules=["tools@1.2"])), d) is None


def test_demand_reads_the_run_request_spec() -> None:
    d = demand_of({"resources": {"max_cpu": 150, "max_memory_mb": 512}, "gpus": 1, "image": "x", "pull": "never",
                   "capsules": ["c@1"]}, {"k": "v"})
    assert (d.cpu, d.memory_mb, d.gpus, d.image, d.pull, d.capsules, d.constraints) == \
        (1.5, 512, 1, "x", "never", ("c@1",), {"k": "v"})
