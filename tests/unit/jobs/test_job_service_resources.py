"""What a job borrows is acquired in order and given back exactly once, on every way out."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from capsa.errors import InvalidArgument, LimitExceeded, NotFound, Unavailable
from capsa.jobs.model import JobState, RunRequest
from capsa.jobs.resources import Grant, acquire_all, release_all
from capsa.jobs.service import JobService
from capsa.runtime.spec import MountSpec
from tests.fixtures.fakes import FakeResource, FakeSupervisor

MakeService = Callable[..., JobService]

REQUEST = RunRequest(command=("/bin/true",), network="isolated", volumes=("data",))


def test_every_resource_is_acquired_before_the_start_and_released_once_at_exit(
        service: JobService, supervisor: FakeSupervisor, network: FakeResource, volumes: FakeResource) -> None:
    job = service.run(REQUEST)
    assert network.acquired == [job.id] and volumes.acquired == [job.id]
    assert network.held == {job.id} and volumes.held == {job.id}
    supervisor.exit(job.id, 0)
    assert network.released[job.id] == 1 and volumes.released[job.id] == 1
    assert not network.held and not volumes.held


def test_a_start_failure_releases_every_resource_exactly_once(service: JobService, supervisor: FakeSupervisor,
                                                              network: FakeResource, volumes: FakeResource) -> None:
    supervisor.fail_start = Unavailable("no supervisor")
    with pytest.raises(Unavailable):
        service.run(REQUEST)
    [job] = service.list(all=True)
    assert job.state == JobState.FAILED
    assert network.released == {job.id: 1} and volumes.released == {job.id: 1}


def test_an_acquire_failure_of_the_second_releases_the_first_and_never_touches_the_third(
        make_service: MakeService) -> None:
    first = FakeResource(serves="network")
    second = FakeResource(serves="volumes", fail_acquire=NotFound("no such volume: data"))
    third = FakeResource(serves="gpus")
    service = make_service([first, second, third])
    with pytest.raises(NotFound):
        service.run(RunRequest(command=("/bin/true",), network="isolated", volumes=("data",), gpus=1))
    [job] = service.list(all=True)
    assert job.state == JobState.FAILED and job.reason == "start failed: no such volume: data"
    assert first.released == {job.id: 1} and second.released == {job.id: 1}
    assert third.acquired == [] and third.released == {}


def test_a_failing_resource_that_shapes_the_record_leaves_no_job(make_service: MakeService,
                                                                 supervisor: FakeSupervisor) -> None:
    image = FakeResource(serves="image", before_record=True, fail_acquire=NotFound("image alpine is not present"))
    network = FakeResource(serves="network")
    service = make_service([image, network])
    with pytest.raises(NotFound):
        service.run(RunRequest(command=(), image="alpine", network="isolated"))
    assert service.list(all=True) == [] and network.acquired == [] and supervisor.specs == {}
    assert sum(image.released.values()) == 1


def test_an_image_root_sets_the_command_and_is_recorded(make_service: MakeService, supervisor: FakeSupervisor) -> None:
    image = FakeResource(serves="image", before_record=True, grant=Grant(
        root_mounts=(MountSpec("overlay", "overlay", ("lowerdir=/l",)),),
        image_config={"Entrypoint": ["/bin/sh", "-c"], "Cmd": ["echo hi"], "Env": ["PATH=/bin", "A=image"],
                      "WorkingDir": "/srv", "User": "1000"},
        recorded={"image": "docker.io/library/alpine:3", "image_digest": "sha256:abc"}))
    service = make_service([image])
    job = service.run(RunRequest(command=(), command_given=False, image="alpine", env={"A": "mine"}))
    spec = supervisor.specs[job.id]
    assert spec.argv == ("/bin/sh", "-c", "echo hi") and spec.workdir == "/srv" and spec.uid == 1000
    assert spec.env == {"PATH": "/bin", "A": "mine"} and spec.root_mounts[0].type == "overlay"
    assert (job.image, job.image_digest, job.command) == ("docker.io/library/alpine:3", "sha256:abc",
                                                          ["/bin/sh", "-c", "echo hi"])


def test_delete_discards_what_an_ended_job_kept(service: JobService, supervisor: FakeSupervisor,
                                                network: FakeResource) -> None:
    job_id = service.run(REQUEST).id
    supervisor.exit(job_id, 0)
    service.remove(job_id)
    assert network.released[job_id] == 1 and network.discarded[job_id] == 1


def test_a_lost_job_gives_back_what_it_held(make_service: MakeService, supervisor: FakeSupervisor) -> None:
    network = FakeResource()
    job_id = make_service([network]).run(REQUEST.__class__(command=("/bin/true",), network="isolated")).id
    supervisor.records.clear()   # the supervisor died with the job
    make_service([network])
    assert network.released[job_id] == 1 and not network.held


def test_a_canceled_scheduled_job_never_acquires_anything(service: JobService, network: FakeResource) -> None:
    job_id = service.run(RunRequest(command=("/bin/true",), network="isolated", schedule="1h")).id
    assert network.validated and network.acquired == []
    service.cancel(job_id)
    assert network.acquired == [] and service.get(job_id).state == JobState.CANCELED


def test_a_scheduled_job_acquires_when_it_starts(service: JobService, supervisor: FakeSupervisor,
                                                 network: FakeResource) -> None:
    job_id = service.run(RunRequest(command=("/bin/true",), network="isolated", schedule="1h")).id
    service.claim_due(service.get(job_id).scheduled_ns)
    assert service.start_claimed(job_id).state == JobState.RUNNING and network.acquired == [job_id]


def test_a_scheduled_start_that_cannot_acquire_fails_the_job_and_releases_once(
        make_service: MakeService) -> None:
    network = FakeResource()
    gpus = FakeResource(serves="gpus", fail_acquire=LimitExceeded("--gpus 1: only 0 of 1 GPUs are free"))
    service = make_service([network, gpus])
    job_id = service.run(RunRequest(command=("/bin/true",), network="isolated", gpus=1, schedule="1h")).id
    service.claim_due(service.get(job_id).scheduled_ns)
    job = service.start_claimed(job_id)
    assert job.state == JobState.FAILED and "only 0 of 1 GPUs are free" in job.reason
    assert network.released == {job_id: 1} and gpus.released == {job_id: 1}


def test_an_upload_that_cannot_be_claimed_gives_back_the_image_root(make_service: MakeService,
                                                                    tmp_path: Path) -> None:
    image = FakeResource(serves="image", before_record=True, grant=Grant(image_config={"Cmd": ["true"]}))
    service = make_service([image])
    with pytest.raises(NotFound):
        service.run(RunRequest(command=(), image="alpine", upload_session="a" * 32))
    assert service.list(all=True) == [] and sum(image.discarded.values()) == 1


def test_acquire_all_releases_in_reverse_and_release_all_survives_a_broken_adapter() -> None:
    order: list[str] = []

    class Recording(FakeResource):
        def release(self, job_id: str) -> None:
            order.append(self.serves)
            raise RuntimeError("broken adapter")

    a, b = Recording(serves="a"), Recording(serves="b", fail_acquire=NotFound("x"))
    with pytest.raises(NotFound):
        acquire_all([a, b], "j", REQUEST)
    assert order == ["b", "a"]
    release_all([a, b], "j")
    assert order == ["b", "a", "b", "a"]


def test_two_resources_cannot_both_give_a_network_namespace() -> None:
    with pytest.raises(ValueError, match="netns_path"):
        Grant(netns_path="/a").merged(Grant(netns_path="/b"))
    with pytest.raises(ValueError, match="cannot record"):
        Grant(recorded={"state": "COMPLETED"})


def test_a_request_a_resource_validates_badly_names_the_problem(make_service: MakeService) -> None:
    gpus = FakeResource(serves="gpus", fail_validate=InvalidArgument("--gpus -1 must be zero or positive"))
    with pytest.raises(InvalidArgument, match="--gpus -1"):
        make_service([gpus]).run(RunRequest(command=("/bin/true",), gpus=-1))


def test_an_image_user_that_is_not_numeric_fails_the_job_and_gives_everything_back(
        make_service: MakeService, supervisor: FakeSupervisor) -> None:
    image = FakeResource(serves="image", before_record=True, grant=Grant(image_config={"Cmd": ["true"], "User": "nginx"}))
    network = FakeResource()
    service = make_service([image, network])
    with pytest.raises(InvalidArgument, match="give a numeric UID"):
        service.run(RunRequest(command=(), image="nginx", network="isolated"))
    [job] = service.list(all=True)
    assert job.state == JobState.FAILED and supervisor.specs == {}
    assert sum(image.released.values()) == 1 and network.released == {job.id: 1}
