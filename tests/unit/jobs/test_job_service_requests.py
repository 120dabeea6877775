"""Idempotent submission (issue 15.4): one job per request id, whatever the retries and restarts."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from capsa.errors import Conflict, InvalidArgument
from capsa.jobs.model import JobState, RunRequest
from capsa.jobs.service import JobService
from tests.fixtures.fakes import FakeResource, FakeSupervisor

MakeService = Callable[..., JobService]


def test_a_retried_run_returns_the_first_job_and_runs_nothing(service: JobService, supervisor: FakeSupervisor,
                                                              network: FakeResource) -> None:
    request = RunRequest(command=("/bin/true",), network="isolated", request_id="cli:4f2a-1")
    first = service.run(request)
    again = service.run(request)
    assert again.id == first.id and supervisor.started_ids() == [first.id] and network.acquired == [first.id]


def test_the_request_id_holds_after_the_job_ended(service: JobService, supervisor: FakeSupervisor) -> None:
    first = service.run(RunRequest(command=("/bin/true",), request_id="r-1"))
    supervisor.exit(first.id, 0)
    again = service.run(RunRequest(command=("/bin/false",), request_id="r-1"))
    assert again.id == first.id and again.state == JobState.COMPLETED and len(supervisor.started_ids()) == 1


def test_a_retried_scheduled_run_returns_the_scheduled_job(service: JobService) -> None:
    request = RunRequest(command=("/bin/true",), schedule="1h", request_id="nightly.2030-01-01")
    assert service.run(request).id == service.run(request).id
    assert len(service.list(all=True)) == 1 and len(service.schedules.due(2**62)) == 1


def test_the_request_id_survives_a_daemon_restart(make_service: MakeService, supervisor: FakeSupervisor) -> None:
    first = make_service().run(RunRequest(command=("/bin/sleep", "9"), request_id="after-kill-9"))
    restarted = make_service()
    assert restarted.run(RunRequest(command=("/bin/sleep", "9"), request_id="after-kill-9")).id == first.id


def test_concurrent_runs_with_one_request_id_make_one_job(make_service: MakeService,
                                                          supervisor: FakeSupervisor) -> None:
    network = FakeResource()
    service = make_service([network])
    request = RunRequest(command=("/bin/true",), network="isolated", request_id="same")
    gate = threading.Barrier(8)
    ids: list[str] = []

    def submit() -> None:
        gate.wait()
        ids.append(service.run(request).id)

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(set(ids)) == 1 and len(ids) == 8 and supervisor.started_ids() == ids[:1]
    assert network.held == set(ids[:1])   # losers gave back what they took


def test_different_request_ids_run_different_jobs(service: JobService) -> None:
    assert service.run(RunRequest(command=("/bin/true",), request_id="a")).id != service.run(
        RunRequest(command=("/bin/true",), request_id="b")).id


@pytest.mark.parametrize("bad", ["has space", "x" * 129, "slash/y", "ünicode"])
def test_a_malformed_request_id_is_refused(service: JobService, bad: str) -> None:
    with pytest.raises(InvalidArgument, match="request id"):
        service.run(RunRequest(command=("/bin/true",), request_id=bad))


def _lost_before_start(make_service: MakeService, supervisor: FakeSupervisor, request: RunRequest) -> JobService:
    """Records ``request``'s job, 'kills' the daemon before the supervisor has it, and restarts (the
    restarted service reconciles: the supervisor never had the job)."""
    class DaemonKilled(BaseException):
        """Stands for kill -9 between recording the job and handing it to the supervisor."""

    supervisor.fail_start = DaemonKilled()
    with pytest.raises(DaemonKilled):
        make_service().run(request)
    supervisor.fail_start = None
    return make_service()


def test_a_retry_after_the_daemon_died_before_the_start_runs_the_job_once(make_service: MakeService,
                                                                         supervisor: FakeSupervisor) -> None:
    restarted = _lost_before_start(make_service, supervisor, RunRequest(command=("/bin/true",),
                                                                        request_id="burst-17"))
    [lost] = restarted.list(all=True)
    assert lost.state == JobState.FAILED and lost.reason == "the daemon restarted before the job started"
    again = restarted.run(RunRequest(command=("/bin/true",), request_id="burst-17"))
    assert again.id != lost.id and again.state == JobState.RUNNING and supervisor.started_ids() == [again.id]
    assert restarted.run(RunRequest(command=("/bin/true",), request_id="burst-17")).id == again.id


def test_a_named_retry_after_the_daemon_died_before_the_start_takes_the_name(make_service: MakeService,
                                                                            supervisor: FakeSupervisor) -> None:
    request = RunRequest(command=("/bin/true",), name="idem-147", request_id="cli:idem-147")
    restarted = _lost_before_start(make_service, supervisor, request)
    [lost] = restarted.list(all=True)
    assert lost.name == "idem-147" and lost.state == JobState.FAILED   # the name stays until a retry
    again = restarted.run(request)
    assert again.id != lost.id and again.name == "idem-147" and supervisor.started_ids() == [again.id]
    before = restarted.get(lost.id)
    assert before.name == "" and before.reason == (
        f"the daemon restarted before the job started; retried as job {again.id[:12]}, which took its name")
    assert restarted.get("idem-147").id == again.id
    assert restarted.run(request).id == again.id   # and the retry is idempotent in its turn


def test_only_the_retry_of_the_lost_request_may_take_its_name(make_service: MakeService,
                                                              supervisor: FakeSupervisor) -> None:
    request = RunRequest(command=("/bin/true",), name="web", request_id="cli:first")
    restarted = _lost_before_start(make_service, supervisor, request)
    [lost] = restarted.list(all=True)
    for other in (RunRequest(command=("/bin/true",), name="web", request_id="cli:second"),
                  RunRequest(command=("/bin/true",), name="web")):
        with pytest.raises(Conflict, match=f"the name 'web' is already taken by job {lost.id[:12]}"):
            restarted.run(other)
    assert restarted.get("web").id == lost.id and supervisor.started_ids() == []


def test_a_job_that_ran_keeps_its_name_from_a_retry_of_its_request(make_service: MakeService,
                                                                    supervisor: FakeSupervisor) -> None:
    first = make_service().run(RunRequest(command=("/bin/true",), name="ran", request_id="r-ran"))
    supervisor.exit(first.id, 0)
    restarted = make_service()
    assert restarted.run(RunRequest(command=("/bin/true",), name="ran", request_id="r-ran")).id == first.id
    with pytest.raises(Conflict):
        restarted.run(RunRequest(command=("/bin/true",), name="ran", request_id="r-other"))
