"""What pages draw: workflow DAG edges labelled with their conditions, capsule dependency edges, formats."""

from __future__ import annotations

from capsa.api.gen.capsa.v1 import capsules_pb2 as cpb
from capsa.api.gen.capsa.v1 import metrics_pb2 as mpb
from capsa.api.gen.capsa.v1 import workflows_pb2 as wpb
from capsa.web import views


def test_workflow_edges_carry_the_part_of_the_condition_about_their_source() -> None:
    wf = wpb.Workflow(jobs=[
        wpb.WorkflowJob(name="a", state="COMPLETED", requires="(none)"),
        wpb.WorkflowJob(name="ab", state="RUNNING", requires="a=COMPLETED", depends_on=["a"]),
        wpb.WorkflowJob(name="d", state="WAITING", requires="ab=COMPLETED OR (a IN (FAILED, COMPLETED) AND NOT ab=FAILED)",
                        depends_on=["a", "ab"]),
    ])
    graph = views.workflow_graph(wf)
    labels = {(e["from"], e["to"]): e["label"] for e in graph["edges"]}
    assert labels == {("a", "ab"): "a=COMPLETED", ("a", "d"): "a IN (FAILED, COMPLETED)",
                      ("ab", "d"): "ab=COMPLETED, NOT ab=FAILED"}
    assert [n["state"] for n in graph["nodes"]] == ["COMPLETED", "RUNNING", "WAITING"]
    states = views.workflow_states(wf)
    assert states["jobs"]["d"] == {"state": "WAITING", "job_id": "", "reason": "", "exit_code": None}


def test_capsule_graph_links_each_version_to_the_versions_its_specifier_allows() -> None:
    capsules = [cpb.Capsule(name="dataset", version="1.2.0"), cpb.Capsule(name="dataset", version="2.0.0"),
                cpb.Capsule(name="model", version="3.0.0", dependencies=["dataset>=1.2,<2", "tok~=1.0"])]
    graph = views.capsule_graph(capsules)
    edges = {(e["from"], e["to"], e["label"]) for e in graph["edges"]}
    assert edges == {("model@3.0.0", "dataset@1.2.0", ">=1.2,<2"), ("model@3.0.0", "tok (missing)", "~=1.0")}
    assert {n["id"]: n["state"] for n in graph["nodes"]}["tok (missing)"] == "MISSING"


def test_metrics_leave_unreported_counters_null() -> None:
    sample = views.metrics_sample(mpb.JobMetrics(timestamp_ns=2_000_000_000, memory_current_bytes=5))
    assert sample["t"] == 2.0 and sample["mem"] == 5 and sample["cpu"] is None and sample["io_r"] is None


def test_formats() -> None:
    assert views.fmt_bytes(512) == "512 B" and views.fmt_bytes(3 << 20) == "3.0 MiB"
    assert views.fmt_duration(0.25) == "250 ms" and views.fmt_duration(3700) == "1h01m"
    assert views.fmt_time(0) == "–" and views.fmt_time(86400 * 10**9).startswith("1970-01-02")
