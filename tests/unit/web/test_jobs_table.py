"""Filtering, sorting and paging of the jobs table (capsa.web.jobs_table), over real Job messages."""

from __future__ import annotations

import time

from capsa.api.gen.capsa.v1 import jobs_pb2 as pb
from capsa.web.jobs_table import FILTERS, JobQuery, job_labels, select


def _jobs(n: int) -> list[pb.Job]:
    states = ["RUNNING", "COMPLETED", "FAILED", "PENDING"]
    return [pb.Job(id=f"{i:032x}", name=f"Task-{i}", state=states[i % 4], created_at_ns=1000 + i,
                   command=["/bin/sh", "-c", f"work {i}"], image="busybox:1" if i % 3 == 0 else "",
                   started_at_ns=2000 + i, ended_at_ns=(3000 + 2 * i) if i % 4 in (1, 2) else 0,
                   ended=i % 4 in (1, 2), workflow_id="wf123" if i % 10 == 0 else "") for i in range(n)]


def test_defaults_are_newest_first_fifty_a_page() -> None:
    page = select(_jobs(120), JobQuery())
    assert [j.name for j in page.jobs[:2]] == ["Task-119", "Task-118"]
    assert len(page.jobs) == 50 and page.total == 120 and page.pages == 3 and page.page == 1


def test_filters_combine_and_are_case_insensitive() -> None:
    jobs = _jobs(40)
    page = select(jobs, JobQuery.parse({"state": "completed", "name": "task-1"}))
    assert {j.name for j in page.jobs} == {"Task-1", "Task-13", "Task-17"}
    assert {j.state for j in select(jobs, JobQuery.parse({"state": "ACTIVE"})).jobs} == {"RUNNING", "PENDING"}
    assert all(j.image == "busybox:1" for j in select(jobs, JobQuery.parse({"image": "BUSY"})).jobs)
    assert select(jobs, JobQuery.parse({"command": "work 7"})).total == 1
    assert select(jobs, JobQuery.parse({"workflow": "wf1"})).total == 4


def test_sort_and_order_and_paging_clamp() -> None:
    jobs = _jobs(30)
    by_name = select(jobs, JobQuery.parse({"sort": "name", "order": "asc", "per_page": "25"}))
    assert [j.name for j in by_name.jobs[:3]] == ["Task-0", "Task-1", "Task-10"]
    last = select(jobs, JobQuery.parse({"page": "99", "per_page": "25"}))
    assert last.page == 2 and len(last.jobs) == 5
    ran = select(jobs, JobQuery.parse({"sort": "duration"}))
    assert ran.jobs[0].ended and ran.jobs[0].name == "Task-29"


def test_malformed_parameters_fall_back_to_defaults() -> None:
    query = JobQuery.parse({"sort": "evil", "page": "x", "per_page": "7", "order": "sideways", "unknown": "1"})
    assert (query.sort, query.page, query.per_page, query.descending) == ("created", 1, 50, True)
    assert query.filters == {}


def test_params_keep_the_view_and_apply_changes() -> None:
    query = JobQuery.parse({"state": "FAILED", "sort": "name", "order": "asc", "page": "2"})
    assert query.params(page=3) == {"state": "FAILED", "sort": "name", "order": "asc", "page": "3", "per_page": "50"}


def test_labels_filter_appears_only_when_jobs_have_labels() -> None:
    has_labels = "labels" in pb.Job.DESCRIPTOR.fields_by_name
    assert ("label" in FILTERS) is has_labels
    assert job_labels(pb.Job(id="x")) == {}


def test_five_thousand_jobs_filter_sort_and_page_in_milliseconds() -> None:
    jobs = _jobs(5000)
    t0 = time.perf_counter()
    for query in ({"sort": "name"}, {"state": "FAILED", "sort": "duration"}, {"name": "task-4", "page": "3"}):
        select(jobs, JobQuery.parse(query))
    assert time.perf_counter() - t0 < 0.5


def test_the_label_filter_is_ready_for_when_jobs_have_labels(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from capsa.web import jobs_table

    labels = {"a" * 32: {"team": "ml", "gpu": ""}, "b" * 32: {"team": "web"}}
    monkeypatch.setattr(jobs_table, "job_labels", lambda job: labels.get(job.id, {}))
    jobs = [pb.Job(id="a" * 32), pb.Job(id="b" * 32), pb.Job(id="c" * 32)]
    match = jobs_table._label
    assert [j.id[0] for j in jobs if match("team=ml")(j)] == ["a"]
    assert [j.id[0] for j in jobs if match("team")(j)] == ["a", "b"]
    assert [j.id[0] for j in jobs if match("team, gpu")(j)] == ["a"]
