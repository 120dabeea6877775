"""Restart policies: the decision, the backoff (injected clock), and restarts through the ordinary start path."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from capsa.errors import InvalidArgument
from capsa.jobs.model import JobState, RunRequest
from capsa.jobs.restart import Backoff, RestartPolicy, RestartStore, parse_restart
from capsa.jobs.service import JobService
from capsa.logs import Stream, read_log
from tests.fixtures.fakes import FakeResource, FakeSupervisor

MakeService = Callable[..., JobService]


@pytest.mark.parametrize(("text", "policy"), [
    ("", RestartPolicy()), ("no", RestartPolicy()), ("always", RestartPolicy("always")),
    ("on-failure", RestartPolicy("on-failure")), ("on-failure:3", RestartPolicy("on-failure", 3)),
])
def test_restart_flags_parse(text: str, policy: RestartPolicy) -> None:
    assert parse_restart(text) == policy


@pytest.mark.parametrize("text", ["sometimes", "on-failure:0", "on-failure:-1", "on-failure:x", "always:3"])
def test_bad_restart_flags_are_refused(text: str) -> None:
    with pytest.raises(InvalidArgument, match="--restart"):
        parse_restart(text)


@pytest.mark.parametrize(("policy", "state", "count", "restart"), [
    (RestartPolicy(), JobState.FAILED, 0, False),
    (RestartPolicy("on-failure", 3), JobState.FAILED, 2, True),
    (RestartPolicy("on-failure", 3), JobState.FAILED, 3, False),
    (RestartPolicy("on-failure"), JobState.FAILED, 1000, True),
    (RestartPolicy("on-failure"), JobState.COMPLETED, 0, False),
    (RestartPolicy("always"), JobState.COMPLETED, 50, True),
    (RestartPolicy("always"), JobState.FAILED, 0, True),
    (RestartPolicy("always"), JobState.STOPPED, 0, False),
    (RestartPolicy("always"), JobState.TIMEOUT, 0, False),
    (RestartPolicy("on-failure"), JobState.STOPPED, 0, False),
])
def test_the_policy_decides_which_endings_restart(policy: RestartPolicy, state: JobState, count: int,
                                                  restart: bool) -> None:
    assert policy.wants_restart(state, count) is restart


def test_backoff_doubles_to_its_cap_and_resets_after_a_long_run() -> None:
    backoff, n, delays = Backoff(base_s=0.1, cap_s=30.0, reset_after_s=10.0), 0, []
    for _ in range(11):
        delay, n = backoff.next(n, ran_s=0.5)
        delays.append(delay)
    assert delays[:4] == [0.1, 0.2, 0.4, 0.8] and delays[-1] == 30.0 and max(delays) == 30.0
    assert backoff.next(n, ran_s=10.0) == (0.1, 1)


def test_the_store_schedules_with_the_injected_clock(make_service: MakeService) -> None:
    service = make_service()
    now = [1_000_000_000_000]
    store = RestartStore(service.db, clock_ns=lambda: now[0])
    with service.db.tx() as conn:
        store.add(conn, "j1", RestartPolicy("on-failure", 2), "{}", None)
    assert store.decide("j1", JobState.FAILED, ran_s=0.0) == 0.1
    assert store.due(now[0] + 99_999_999) == [] and store.due(now[0] + 100_000_000) == ["j1"]
    assert store.next_due_ns() == now[0] + 100_000_000
    assert store.decide("j1", JobState.FAILED, ran_s=0.0) is None   # already due: one decision per run
    with service.db.tx() as conn:
        assert store.claim(conn, "j1") == 1
        assert store.claim(conn, "j1") is None
    assert store.decide("j1", JobState.FAILED, ran_s=0.0) == 0.2
    with service.db.tx() as conn:
        assert store.claim(conn, "j1") == 2
    assert store.decide("j1", JobState.FAILED, ran_s=0.0) is None   # on-failure:2 used up
    assert store.info(["j1"]) == {"j1": ("on-failure:2", 2, 0)}


def _restart_due(service: JobService, job_id: str) -> None:
    assert service.claim_due_restarts(2 ** 62) == [job_id]
    service.restart_claimed(job_id)


def test_on_failure_restarts_the_same_job_until_its_limit(service: JobService, supervisor: FakeSupervisor,
                                                          network: FakeResource) -> None:
    job = service.run(RunRequest(command=("sh", "-c", "exit 1"), restart="on-failure:3", network="isolated"))
    for n in range(1, 4):
        supervisor.exit(job.id, 1)
        failed = service.get(job.id)
        assert failed.state == JobState.FAILED and failed.next_restart_ns > 0 and failed.restart_count == n - 1
        _restart_due(service, job.id)
        running = service.get(job.id)
        assert running.state == JobState.RUNNING and running.restart_count == n and running.exit_code is None
    supervisor.exit(job.id, 1)
    final = service.get(job.id)
    assert final.state == JobState.FAILED and final.restart_count == 3 and final.next_restart_ns == 0
    assert final.restart_policy == "on-failure:3"
    assert service.claim_due_restarts(2 ** 62) == []
    # Every run acquired and gave back its network, through the ordinary start path.
    assert network.acquired.count(job.id) == 4 and network.released[job.id] == 4
    notices = [c.data for c in read_log(service.jobs_dir / job.id / "logs") if c.stream == Stream.NOTICE]
    assert len(notices) == 3 and b"restart 3 (policy on-failure)" in notices[-1]


def test_an_oom_kill_counts_as_a_failure(service: JobService, supervisor: FakeSupervisor) -> None:
    job = service.run(RunRequest(command=("x",), restart="on-failure"))
    supervisor.exit(job.id, 0, oom_killed=True)
    assert service.get(job.id).next_restart_ns > 0


def test_stop_ends_the_policy_of_a_running_or_waiting_job(service: JobService, supervisor: FakeSupervisor) -> None:
    job = service.run(RunRequest(command=("x",), restart="always"))
    supervisor.exit(job.id, 0)
    assert service.get(job.id).next_restart_ns > 0
    stopped = service.stop(job.id)
    assert stopped.state == JobState.COMPLETED and stopped.next_restart_ns == 0
    assert service.claim_due_restarts(2 ** 62) == []
    other = service.run(RunRequest(command=("x",), restart="always"))
    assert service.stop(other.id).state == JobState.STOPPED
    assert service.claim_due_restarts(2 ** 62) == []


def test_a_restart_due_while_the_daemon_was_down_happens_after_it(make_service: MakeService,
                                                                  supervisor: FakeSupervisor) -> None:
    first = make_service()
    job = first.run(RunRequest(command=("x",), restart="always"))
    supervisor.exit(job.id, 3)
    again = make_service()   # the policy and the due time are in SQLite
    assert again.get(job.id).restart_policy == "always"
    _restart_due(again, job.id)
    assert again.get(job.id).state == JobState.RUNNING and again.get(job.id).restart_count == 1


def test_a_run_without_a_policy_is_never_restarted(service: JobService, supervisor: FakeSupervisor) -> None:
    job = service.run(RunRequest(command=("x",)))
    supervisor.exit(job.id, 1)
    assert service.get(job.id).restart_policy == "" and service.claim_due_restarts(2 ** 62) == []
