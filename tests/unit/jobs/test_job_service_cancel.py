"""Cancel against a scheduled start (issue 15.7b): a job is either canceled and never ran, or ran and is
not CANCELED."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from capsa.errors import CapsaError, Conflict
from capsa.jobs.model import JobState, RunRequest
from capsa.jobs.service import JobService
from tests.fixtures.fakes import FakeResource, FakeSupervisor

MakeService = Callable[..., JobService]

SCHEDULED = RunRequest(command=("/bin/true",), schedule="1h")


def _claimed(service: JobService) -> str:
    job_id = service.run(SCHEDULED).id
    assert service.claim_due(service.get(job_id).scheduled_ns) == [job_id]
    return job_id


def test_cancel_of_a_scheduled_job_drops_its_schedule_and_is_idempotent(service: JobService) -> None:
    job_id = service.run(SCHEDULED).id
    job = service.cancel(job_id[:10])
    assert job.state == JobState.CANCELED and job.reason == "canceled by user" and job.ended_ns > 0
    assert service.schedules.take(job_id) is None
    assert service.cancel(job_id).state == JobState.CANCELED
    assert service.claim_due(2**62) == []


def test_a_claimed_job_canceled_before_its_launch_never_runs(service: JobService, supervisor: FakeSupervisor,
                                                             network: FakeResource) -> None:
    job_id = service.run(RunRequest(command=("/bin/true",), schedule="1h", network="isolated")).id
    service.claim_due(service.get(job_id).scheduled_ns)
    assert service.cancel(job_id).state == JobState.CANCELED
    assert service.start_claimed(job_id).state == JobState.CANCELED
    assert job_id not in supervisor.specs and not network.held


def test_cancel_while_the_start_acquires_wins_and_gives_back_what_was_acquired(
        make_service: MakeService, supervisor: FakeSupervisor) -> None:
    service: JobService

    class CancelDuringAcquire(FakeResource):
        def acquire(self, job_id: str, request: RunRequest):  # type: ignore[no-untyped-def]
            grant = super().acquire(job_id, request)
            service.cancel(job_id)   # the user cancels while, say, the image is pulled
            return grant

    network = CancelDuringAcquire()
    service = make_service([network])
    job_id = service.run(RunRequest(command=("/bin/true",), schedule="1h", network="isolated")).id
    service.claim_due(service.get(job_id).scheduled_ns)
    assert service.start_claimed(job_id).state == JobState.CANCELED
    assert job_id not in supervisor.specs and network.released == {job_id: 1} and not network.held


def test_a_launched_job_cannot_be_canceled_and_runs(service: JobService, supervisor: FakeSupervisor) -> None:
    job_id = _claimed(service)
    assert service.start_claimed(job_id).state == JobState.RUNNING
    with pytest.raises(Conflict, match="use `capsa stop` for a running job"):
        service.cancel(job_id)
    supervisor.exit(job_id, 0)
    with pytest.raises(Conflict, match="only SCHEDULED or PENDING"):
        service.cancel(job_id)
    assert service.get(job_id).state == JobState.COMPLETED


def test_stop_of_a_scheduled_job_cancels_it(service: JobService) -> None:
    job_id = service.run(SCHEDULED).id
    assert service.stop(job_id).state == JobState.CANCELED


def test_an_immediate_job_is_launched_from_the_start(service: JobService) -> None:
    job_id = service.run(RunRequest(command=("/bin/sleep", "9"))).id
    with pytest.raises(Conflict):
        service.cancel(job_id)


def test_cancel_racing_a_scheduled_start_never_cancels_a_job_that_ran(make_service: MakeService,
                                                                      supervisor: FakeSupervisor) -> None:
    service = make_service()
    outcomes: dict[str, str] = {}
    for _ in range(60):
        job_id = _claimed(service)
        gate = threading.Barrier(2)

        def start(job_id: str = job_id, gate: threading.Barrier = gate) -> None:
            gate.wait()
            service.start_claimed(job_id)

        def cancel(job_id: str = job_id, gate: threading.Barrier = gate) -> None:
            gate.wait()
            try:
                service.cancel(job_id)
                outcomes[job_id] = "canceled"
            except CapsaError:
                outcomes[job_id] = "refused"

        threads = [threading.Thread(target=start), threading.Thread(target=cancel)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        ran = job_id in supervisor.specs
        state = service.get(job_id).state
        assert (state == JobState.CANCELED) == (not ran), (job_id, state, ran)
        assert (outcomes[job_id] == "canceled") == (state == JobState.CANCELED)
