"""Workflow labels (stored, returned, given to every job of the workflow) and workflow events."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from capsa.errors import InvalidArgument
from capsa.fsm import Engine
from capsa.jobs.secrets import SecretBox
from capsa.jobs.service import JobService
from capsa.selectors import parse_filters
from capsa.state import Database
from capsa.workflows import WorkflowService
from tests.fixtures.fakes import FakeSupervisor
from tests.fixtures.waiting import wait_for

WORKFLOW = """\
name: nightly
jobs:
  only:
    command: /bin/true
"""


@pytest.fixture
def services(tmp_path: Path) -> Iterator[tuple[WorkflowService, JobService, FakeSupervisor]]:
    db = Database(tmp_path / "capsa.db")
    home = tmp_path / "home"
    home.mkdir()
    supervisor = FakeSupervisor()
    jobs = JobService(db, home, supervisor, kill_lost=lambda job_id: None)
    jobs.attach_supervisor()
    engine = Engine(db, queues={"workflows": 2})
    service = WorkflowService(db, engine, jobs, secret_box=SecretBox(home), queue="workflows")
    engine.resume()
    yield service, jobs, supervisor
    engine.shutdown(wait=True, timeout=5)
    db.close(checkpoint=False)


def test_labels_reach_the_workflow_and_its_jobs(services: tuple[WorkflowService, JobService, FakeSupervisor]) -> None:
    workflows, jobs, supervisor = services
    wf = workflows.submit(WORKFLOW, labels={"team": "ml"})
    assert workflows.get(wf.id).labels == {"team": "ml"}
    job_id = wait_for(lambda: workflows.get(wf.id).jobs[0].job_id or None, timeout=10, what="the job to start")
    assert jobs.get(job_id).labels == {"team": "ml"}
    assert [j.id for j in jobs.page(all=True, filter=parse_filters(["label=team=ml"])).jobs] == [job_id]
    supervisor.exit(job_id, 0)
    wait_for(lambda: workflows.get(wf.id).state.ended or None, timeout=10, what="the workflow to end")
    actions = [e.action for e in jobs.events.after(0, types=["workflow"]) if e.id == wf.id]
    assert actions == ["started", "finished"]
    with pytest.raises(InvalidArgument):
        workflows.submit(WORKFLOW, labels={"": "x"})
