"""Submitting workflows to a real daemon and reading what happened from the jobs' own records."""

from __future__ import annotations

import textwrap
import time
from typing import Any

from capsa.api.client import CapsaClient
from capsa.api.gen.capsa.v1 import workflows_pb2 as wpb


def submit(client: CapsaClient, yaml_text: str) -> wpb.Workflow:
    return client.submit_workflow(textwrap.dedent(yaml_text), source="test.yaml")


def wait_workflow(client: CapsaClient, workflow_id: str, *, timeout: float = 60.0,
                  until: Any = None) -> wpb.Workflow:
    """Poll until the workflow ended (or ``until(workflow)`` holds); AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        workflow = client.get_workflow(workflow_id)
        if (until(workflow) if until is not None else workflow.ended):
            return workflow
        if time.monotonic() > deadline:
            states = {j.name: j.state for j in workflow.jobs}
            raise AssertionError(f"workflow {workflow_id[:12]} still {workflow.state} after {timeout}s: {states}")
        time.sleep(0.05)


def steps(workflow: wpb.Workflow) -> dict[str, wpb.WorkflowJob]:
    return {j.name: j for j in workflow.jobs}


def states(workflow: wpb.Workflow) -> dict[str, str]:
    return {j.name: j.state for j in workflow.jobs}


def jobs_of(client: CapsaClient, workflow_id: str) -> list[Any]:
    """Every job the daemon ran for this workflow, from JobService (not from the workflow's table)."""
    return [j for j in client.list_jobs(all=True) if j.workflow_id == workflow_id]


def interval(client: CapsaClient, job_id: str) -> tuple[int, int]:
    """(started, ended) in ns, as the supervisor recorded them for the job."""
    job = client.get_job(job_id)
    assert job.ended and job.started_at_ns and job.ended_at_ns, job
    return job.started_at_ns, job.ended_at_ns


def max_overlap(intervals: list[tuple[int, int]]) -> int:
    """The largest number of intervals open at one instant."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    best = current = 0
    for _, delta in events:
        current += delta
        best = max(best, current)
    return best
