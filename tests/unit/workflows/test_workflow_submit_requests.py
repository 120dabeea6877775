"""Idempotent workflow submission (issue 15.4): one workflow per request id."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from capsa.errors import InvalidArgument
from capsa.fsm import Engine
from capsa.jobs.secrets import SecretBox
from capsa.jobs.service import JobService
from capsa.state import Database
from capsa.workflows import WorkflowService
from tests.fixtures.fakes import FakeSupervisor

WORKFLOW = """\
name: nightly
jobs:
  only:
    command: /bin/true
"""


@pytest.fixture
def workflows(tmp_path: Path) -> Iterator[WorkflowService]:
    db = Database(tmp_path / "capsa.db")
    home = tmp_path / "home"
    home.mkdir()
    supervisor = FakeSupervisor()
    jobs = JobService(db, home, supervisor, kill_lost=lambda job_id: None)
    jobs.attach_supervisor()
    engine = Engine(db, queues={"workflows": 2})
    service = WorkflowService(db, engine, jobs, secret_box=SecretBox(home), queue="workflows")
    engine.resume()
    yield service
    engine.shutdown(wait=True, timeout=5)
    db.close(checkpoint=False)


def test_a_retried_submit_returns_the_first_workflow(workflows: WorkflowService) -> None:
    first = workflows.submit(WORKFLOW, request_id="wf:nightly:1")
    again = workflows.submit(WORKFLOW, request_id="wf:nightly:1")
    assert again.id == first.id and len(workflows.list()) == 1


def test_submits_without_a_request_id_are_never_merged(workflows: WorkflowService) -> None:
    assert workflows.submit(WORKFLOW).id != workflows.submit(WORKFLOW).id


def test_concurrent_submits_with_one_request_id_record_one_workflow(workflows: WorkflowService) -> None:
    gate = threading.Barrier(6)
    ids: list[str] = []

    def submit() -> None:
        gate.wait()
        ids.append(workflows.submit(WORKFLOW, request_id="same").id)

    threads = [threading.Thread(target=submit) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(ids) == 6 and len(set(ids)) == 1 and len(workflows.list()) == 1


def test_a_malformed_request_id_is_refused(workflows: WorkflowService) -> None:
    with pytest.raises(InvalidArgument, match="request id"):
        workflows.submit(WORKFLOW, request_id="no spaces please")


def test_workflow_ids_resolve_by_prefix(workflows: WorkflowService) -> None:
    workflow = workflows.submit(WORKFLOW)
    assert workflows.resolve_id(workflow.id[:6].upper()) == workflow.id
    with pytest.raises(InvalidArgument, match="invalid workflow id"):
        workflows.resolve_id("xyz")
