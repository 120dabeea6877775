"""JobService's lifecycle with a fake supervisor: run, exits, stop, timeout, start failures, reconcile."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from capsa.errors import Conflict, InvalidArgument, NotFound, Unavailable
from capsa.jobs.model import JobState, RunRequest
from capsa.jobs.resources import Grant
from capsa.jobs.service import JobService
from capsa.runtime.protocol import JobRecord, ProcState, StartFailed, StartFailedError
from capsa.runtime.spec import BindSpec
from tests.fixtures.fakes import FakeResource, FakeSupervisor

MakeService = Callable[..., JobService]


def _run(service: JobService, *command: str, **fields: object) -> str:
    return service.run(RunRequest(command=command or ("/bin/true",), **fields)).id  # type: ignore[arg-type]


def test_a_started_job_is_running_with_what_the_supervisor_reported(service: JobService,
                                                                    supervisor: FakeSupervisor) -> None:
    job = service.run(RunRequest(command=("/bin/sleep", "5"), name="sleeper"))
    assert job.state == JobState.RUNNING and job.name == "sleeper"
    rec = supervisor.records[job.id]
    assert job.pid == rec.pid and job.cgroup == rec.cgroup and job.started_ns == rec.started_ns
    assert job.start_latency_ns > 0 and supervisor.specs[job.id].argv == ("/bin/sleep", "5")


@pytest.mark.parametrize(("exit_code", "signal", "oom", "state"), [
    (0, 0, False, JobState.COMPLETED),
    (3, 0, False, JobState.FAILED),
    (None, 9, False, JobState.FAILED),
    (0, 0, True, JobState.FAILED),
])
def test_an_exit_decides_the_final_state(service: JobService, supervisor: FakeSupervisor, exit_code: int | None,
                                         signal: int, oom: bool, state: JobState) -> None:
    job_id = _run(service)
    supervisor.exit(job_id, exit_code, signal=signal, oom_killed=oom)
    job = service.get(job_id)
    assert job.state == state and job.exit_code == exit_code and job.signal == signal and job.ended_ns > 0


def test_stop_ends_a_job_stopped_and_is_idempotent(service: JobService, supervisor: FakeSupervisor) -> None:
    job_id = _run(service)
    stopped = service.stop(job_id)
    assert stopped.state == JobState.STOPPED and stopped.reason == "stopped by user" and stopped.stop_requested
    assert service.stop(job_id).state == JobState.STOPPED


def test_a_job_past_its_timeout_is_stopped_and_ends_timeout(service: JobService, supervisor: FakeSupervisor) -> None:
    job_id = _run(service, timeout="1s")
    started = service.get(job_id).started_ns
    assert service.next_timeout_ns() == started + 1_000_000_000
    assert service.expired_timeouts(started + 999_999_999) == []
    assert service.expired_timeouts(started + 1_000_000_000) == [job_id]
    service.time_out(job_id)
    job = service.get(job_id)
    assert job.state == JobState.TIMEOUT and job.reason == "timed out after 1s"
    assert service.next_timeout_ns() is None


def test_an_exit_that_beats_the_start_reply_keeps_its_final_state(service: JobService,
                                                                  supervisor: FakeSupervisor) -> None:
    supervisor.exit_on_start = 0
    job = service.run(RunRequest(command=("/bin/true",)))
    assert job.state == JobState.COMPLETED and job.start_latency_ns > 0 and job.pid > 0


def test_a_command_that_cannot_be_executed_is_a_failed_job_not_an_error(service: JobService,
                                                                        supervisor: FakeSupervisor) -> None:
    supervisor.fail_start = StartFailedError(StartFailed(
        step="exec /no/such", errno=2, message="exec /no/such: No such file or directory",
        command_not_found=True, exec_failed=True))
    job = service.run(RunRequest(command=("/no/such",)))
    assert job.state == JobState.FAILED and job.exit_code == 127
    assert job.reason == "start failed: exec /no/such: No such file or directory"


def test_a_set_up_failure_that_merely_mentions_exec_is_raised(service: JobService,
                                                             supervisor: FakeSupervisor) -> None:
    # Classified by the structured reply, never by words in the message.
    supervisor.fail_start = StartFailedError(StartFailed(
        step="pivot_root", errno=22, message="pivot_root before exec: Invalid argument"))
    with pytest.raises(StartFailedError):
        service.run(RunRequest(command=("/bin/true",)))
    [job] = service.list(all=True)
    assert job.state == JobState.FAILED and job.reason.startswith("start failed: pivot_root")


def test_any_other_start_failure_is_raised_and_recorded(service: JobService, supervisor: FakeSupervisor) -> None:
    supervisor.fail_start = Unavailable("supervisor went away")
    with pytest.raises(Unavailable):
        service.run(RunRequest(command=("/bin/true",), name="doomed"))
    [job] = service.list(all=True)
    assert job.state == JobState.FAILED and job.reason == "start failed: supervisor went away"


def test_what_resources_grant_reaches_the_spec_and_the_record(make_service: MakeService,
                                                              supervisor: FakeSupervisor) -> None:
    network = FakeResource(serves="network", grant=Grant(netns_path="/run/netns/x", recorded={"ip": "10.9.0.2"}))
    gpus = FakeResource(serves="gpus", grant=Grant(
        env={"CUDA_VISIBLE_DEVICES": "0", "A": "granted"}, binds=(BindSpec("/lib/x.so", "/lib/x.so"),),
        device_allow=("c 195:0 rw",), recorded={"gpu_devices": ["GPU-1"]}))
    service = make_service([network, gpus])
    job = service.run(RunRequest(command=("/bin/true",), network="isolated", gpus=1, env={"A": "mine"}))
    spec = supervisor.specs[job.id]
    assert spec.netns_path == "/run/netns/x" and spec.device_allow == ("c 195:0 rw",)
    assert spec.env == {"CUDA_VISIBLE_DEVICES": "0", "A": "mine"}   # the user's variables win
    assert spec.binds == (BindSpec("/lib/x.so", "/lib/x.so"),)
    assert job.ip == "10.9.0.2" and job.gpu_devices == ["GPU-1"] and job.network == "isolated" and job.gpus == 1


def test_a_request_for_something_no_resource_serves_is_refused_before_a_job_exists(service: JobService) -> None:
    with pytest.raises(InvalidArgument, match="no GPU support configured"):
        service.run(RunRequest(command=("/bin/true",), gpus=1))
    with pytest.raises(InvalidArgument, match="no image support configured"):
        service.run(RunRequest(command=("/bin/true",), image="alpine"))
    assert service.list(all=True) == []


def test_a_resource_refusing_at_validation_leaves_no_job(make_service: MakeService) -> None:
    volumes = FakeResource(serves="volumes", fail_validate=NotFound("no such volume: data"))
    service = make_service([volumes])
    with pytest.raises(NotFound, match="data"):
        service.run(RunRequest(command=("/bin/true",), volumes=("data",)))
    assert service.list(all=True) == [] and volumes.acquired == []


@pytest.mark.parametrize(("fields", "message"), [
    ({"command": ()}, "no command given"),
    ({"workdir": "relative"}, "--workdir must be an absolute path"),
    ({"seccomp": "lax"}, "--seccomp 'lax'"),
    ({"user": "nobody"}, "give a numeric UID"),
    ({"env": {"A=B": "1"}}, "names must be non-empty without '='"),
    ({"timeout": "10"}, "has no unit"),
])
def test_bad_requests_are_refused_with_the_field_named(service: JobService, fields: dict[str, object],
                                                       message: str) -> None:
    request = RunRequest(**{"command": ("/bin/true",), **fields})  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match=message):
        service.run(request)


def test_delete_refuses_a_running_job_unless_forced(service: JobService, supervisor: FakeSupervisor) -> None:
    job_id = _run(service)
    with pytest.raises(Conflict, match="stop it first"):
        service.remove(job_id)
    assert service.remove(job_id[:8], force=True) == job_id
    with pytest.raises(NotFound):
        service.get(job_id)
    assert job_id in supervisor.forgotten


def test_reconcile_adopts_survivors_records_exits_and_fails_the_lost(make_service: MakeService,
                                                                     supervisor: FakeSupervisor) -> None:
    network = FakeResource()
    first = make_service([network])
    survivor, ended, lost = (_run(first) for _ in range(3))
    supervisor.records[ended].state = ProcState.EXITED    # ended while no daemon listened
    supervisor.records[ended].exit_code = 0
    del supervisor.records[lost]                           # the supervisor was restarted meanwhile
    supervisor.on_event = None
    second = make_service([network])
    assert second.get(survivor).state == JobState.RUNNING
    assert second.get(ended).state == JobState.COMPLETED
    job = second.get(lost)
    assert job.state == JobState.FAILED and job.exit_code == -1 and job.reason.startswith("lost:")
    assert second.live_job_ids() == [survivor]
    assert network.released[ended] == 1 and network.released[lost] == 1 and network.released[survivor] == 0


def test_reconcile_fails_a_job_the_daemon_died_before_starting(make_service: MakeService,
                                                               supervisor: FakeSupervisor) -> None:
    service = make_service()
    job_id = _run(service, schedule="1h")
    service.claim_due(service.get(job_id).scheduled_ns)    # claimed, then the daemon died
    restarted = make_service()
    job = restarted.get(job_id)
    assert job.state == JobState.FAILED and job.reason == "the daemon restarted before the job started"


def test_a_job_adopted_running_keeps_its_pid(make_service: MakeService, supervisor: FakeSupervisor) -> None:
    service = make_service()
    job_id = _run(service)
    supervisor.adopt(JobRecord(job_id=job_id, pid=4242, state=ProcState.RUNNING))
    assert make_service().get(job_id).pid == 4242


def test_start_claimed_without_its_schedule_fails_the_job(service: JobService) -> None:
    job_id = _run(service, schedule="1h")
    service.claim_due(service.get(job_id).scheduled_ns)
    service.schedules.drop(job_id)
    job = service.start_claimed(job_id)
    assert job.state == JobState.FAILED and job.reason == "start failed: its schedule record is missing"


def test_a_scheduled_job_keeps_its_secrets_sealed_until_it_starts(service: JobService,
                                                                  supervisor: FakeSupervisor) -> None:
    job_id = _run(service, "/bin/env", schedule="1h", secret_env={"TOKEN": "s3cr3t"})
    row = service.db.query_one("SELECT sealed_secrets FROM job_schedules WHERE job_id = ?", (job_id,))
    assert row is not None and b"s3cr3t" not in bytes(row["sealed_secrets"])
    assert service.get(job_id).secret_env_keys == ["TOKEN"]
    assert service.claim_due(service.get(job_id).scheduled_ns) == [job_id]
    assert service.start_claimed(job_id).state == JobState.RUNNING
    assert supervisor.specs[job_id].env["TOKEN"] == "s3cr3t"
    assert "s3cr3t" not in json.dumps([dict(r) for r in service.db.query("SELECT * FROM jobs")])


def test_an_exit_the_database_refuses_is_kept_and_recorded_by_the_retry(
        service: JobService, supervisor: FakeSupervisor, network: FakeResource,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlite3

    job = service.run(RunRequest(command=("/bin/true",)))
    real = service.store.record_exit

    def disk_full(rec: JobRecord) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(service.store, "record_exit", disk_full)
    supervisor.exit(job.id, 0)
    assert service.get(job.id).state == JobState.RUNNING      # not lost: pending, not released, not forgotten
    assert not network.released and job.id in supervisor.records
    assert service.retry_pending_exits() == 1                # still full
    monkeypatch.setattr(service.store, "record_exit", real)
    assert service.retry_pending_exits() == 0
    ended = service.get(job.id)
    assert ended.state == JobState.COMPLETED and ended.exit_code == 0
    assert network.released[job.id] == 1 and job.id not in supervisor.records
