"""Prune selection and removal: ended jobs older than the cutoff go with their files; live ones, jobs whose
restart is due and filtered-out states stay; the retention policy does the same on its own."""

from __future__ import annotations

import time

import pytest

from capsa.errors import InvalidArgument, NotFound
from capsa.housekeeping import Housekeeper, RetentionPolicy, parse_state_filter
from capsa.jobs.model import JobState, RunRequest
from capsa.jobs.service import JobService
from tests.fixtures.fakes import FakeResource, FakeSupervisor


def _ended(service: JobService, supervisor: FakeSupervisor, code: int, ended_ago_s: float = 0.0) -> str:
    job_id = service.run(RunRequest(command=("x",))).id
    (service.jobs_dir / job_id / "work").mkdir(parents=True, exist_ok=True)
    (service.jobs_dir / job_id / "work" / "out").write_bytes(b"x" * 1000)
    supervisor.exit(job_id, code)
    service.db.execute("UPDATE jobs SET ended_ns = ? WHERE id = ?", (time.time_ns() - int(ended_ago_s * 1e9), job_id))
    return job_id


def test_selection_by_age_and_state(service: JobService, supervisor: FakeSupervisor) -> None:
    old_ok = _ended(service, supervisor, 0, ended_ago_s=7200)
    old_failed = _ended(service, supervisor, 1, ended_ago_s=3600 * 3)
    recent = _ended(service, supervisor, 0)
    running = service.run(RunRequest(command=("x",))).id
    keeper = Housekeeper(service, None)
    assert keeper.select_jobs(older_than_s=3600) == [old_failed, old_ok]          # oldest first
    assert keeper.select_jobs(older_than_s=3600, states=("FAILED",)) == [old_failed]
    assert set(keeper.select_jobs(older_than_s=0)) == {old_ok, old_failed, recent}
    assert running not in keeper.select_jobs(older_than_s=0)


def test_a_job_waiting_for_its_restart_is_not_pruned(service: JobService, supervisor: FakeSupervisor) -> None:
    job_id = service.run(RunRequest(command=("x",), restart="always")).id
    supervisor.exit(job_id, 0)
    assert Housekeeper(service, None).select_jobs(older_than_s=0) == []


def test_prune_removes_rows_and_files_and_a_dry_run_nothing(service: JobService, supervisor: FakeSupervisor,
                                                            network: FakeResource) -> None:
    old = _ended(service, supervisor, 0, ended_ago_s=100)
    running = service.run(RunRequest(command=("x",))).id
    keeper = Housekeeper(service, None)
    preview = keeper.prune(older_than_s=10, dry_run=True)
    assert preview.jobs == [old] and preview.bytes_freed >= 1000 and service.get(old)
    done = keeper.prune(older_than_s=10)
    assert done.jobs == [old] and done.bytes_freed == preview.bytes_freed
    with pytest.raises(NotFound):
        service.get(old)
    assert not (service.jobs_dir / old).exists() and network.discarded[old] == 1   # through JobService.remove
    assert service.get(running).state == JobState.RUNNING


def test_state_filters_must_name_ended_states() -> None:
    assert parse_state_filter(["failed", "Completed", "failed"]) == ("FAILED", "COMPLETED")
    with pytest.raises(InvalidArgument, match="RUNNING"):
        parse_state_filter(["running"])


def test_the_retention_policy_prunes_old_jobs(service: JobService, supervisor: FakeSupervisor) -> None:
    old = _ended(service, supervisor, 1, ended_ago_s=100)
    recent = _ended(service, supervisor, 1)
    policy = RetentionPolicy(Housekeeper(service, None), interval_s=3600, jobs_older_than_s=50,
                             fsm_runs_older_than_s=None)
    assert policy.run_once().jobs == [old]
    assert service.get(recent).state == JobState.FAILED


def test_the_retention_thread_prunes_on_its_own_and_closes(service: JobService, supervisor: FakeSupervisor) -> None:
    old = _ended(service, supervisor, 0, ended_ago_s=100)
    policy = RetentionPolicy(Housekeeper(service, None), interval_s=0.05, jobs_older_than_s=50,
                             fsm_runs_older_than_s=None)
    policy.start()
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and Housekeeper(service, None).select_jobs(older_than_s=50):
            time.sleep(0.02)
    finally:
        policy.close()
    with pytest.raises(NotFound):
        service.get(old)
    assert not policy._thread.is_alive()
