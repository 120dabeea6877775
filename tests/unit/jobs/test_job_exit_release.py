"""At a job's exit, a resource that lends only to requests asking for it is not asked to release
what the job's row shows it never borrowed (host networking: ADR-0017); every other one is."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from capsa.jobs.model import JobState, RunRequest
from capsa.jobs.service import JobService
from tests.fixtures.fakes import FakeResource, FakeSupervisor

MakeService = Callable[..., JobService]


@dataclass
class AskedNetwork(FakeResource):
    lends_only_when_asked: ClassVar[bool] = True


def test_a_host_networked_job_does_not_release_the_network_and_others_do(
        make_service: MakeService, supervisor: FakeSupervisor) -> None:
    network, volumes = AskedNetwork(serves="network"), FakeResource(serves="volumes")
    service = make_service([network, volumes])
    host = service.run(RunRequest(command=("true",))).id
    isolated = service.run(RunRequest(command=("true",), network="isolated")).id
    for job_id in (host, isolated):
        supervisor.exit(job_id, 0)
        assert service.get(job_id).state == JobState.COMPLETED
    assert network.released[host] == 0 and network.released[isolated] == 1
    assert volumes.released[host] == 1 and volumes.released[isolated] == 1   # no claim: always released
    assert supervisor.forgotten == [host, isolated]


def test_a_removed_host_networked_job_is_still_discarded_by_every_resource(make_service: MakeService,
                                                                        supervisor: FakeSupervisor) -> None:
    network = AskedNetwork(serves="network")
    service = make_service([network])
    job = service.run(RunRequest(command=("true",)))
    supervisor.exit(job.id, 0)
    service.remove(job.id)
    assert network.released[job.id] == 0 and network.discarded[job.id] == 1
