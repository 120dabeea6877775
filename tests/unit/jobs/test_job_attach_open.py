"""JobAttach.open when the supervisor has already forgotten a job its row still shows RUNNING."""

from __future__ import annotations

from pathlib import Path

import pytest

from capsa.errors import FailedPrecondition, NotFound
from capsa.jobs.attach import JobAttach
from capsa.jobs.model import Job, JobState


class _Supervisor:
    def input(self, job_id: str, data: bytes = b"", **_kw: object) -> object:
        raise NotFound(f"unknown job {job_id}")   # its exit was handed over; the daemon has not recorded it


class _Jobs:
    def __init__(self, home: Path) -> None:
        self.jobs_dir = home
        self.supervisor = _Supervisor()
        self.job = Job(id="a" * 32, command=["/bin/true"], state=JobState.RUNNING)

    def get(self, id_or_prefix: str) -> Job:
        return self.job


def test_a_run_i_that_attaches_after_the_supervisor_forgot_the_job_gets_its_log_and_end(tmp_path: Path) -> None:
    att = JobAttach(_Jobs(tmp_path)).open("a" * 32, allow_ended=True)   # type: ignore[arg-type]
    assert att.ended and att.next_seq == 1


def test_an_attach_to_such_a_job_says_it_has_ended(tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition, match="has ended"):
        JobAttach(_Jobs(tmp_path)).open("a" * 32)   # type: ignore[arg-type]
