"""CapsuleManager's bookkeeping with a real store, a fake supervisor and a fake job lookup (no root)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from capsa.capsules import CapsuleStore
from capsa.capsules.manager import CapsuleManager
from capsa.capsules.resource import CapsuleResource
from capsa.errors import (
    ChecksumMismatch,
    Conflict,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from capsa.jobs.model import Job, JobState, RunRequest
from capsa.runtime.protocol import JobRecord, ProcState
from capsa.runtime.spec import BindSpec
from capsa.state import Database
from tests.fixtures.fakes import FakeSupervisor, MountCall

JOB = "a" * 32


class FakeJobs:
    """The one-method job lookup the manager depends on."""

    def __init__(self) -> None:
        self.states: dict[str, JobState] = {}

    def get(self, id_or_prefix: str) -> Job:
        for job_id, state in self.states.items():
            if job_id.startswith(id_or_prefix):
                return Job(id=job_id, command=["/bin/sleep"], state=state)
        raise NotFound(f"no such job: {id_or_prefix}")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[CapsuleStore]:
    db = Database(tmp_path / "capsa.db")
    store = CapsuleStore(tmp_path / "capsules", db)
    for name, version, deps in (("model", "1.0.0", ()), ("model", "2.0.0", ()), ("data", "1.0.0", ()),
                                ("data", "2.0.0", ()), ("tool", "1.0.0", ("data>=1,<2",))):
        source = tmp_path / "src" / f"{name}-{version}"
        source.mkdir(parents=True)
        (source / "README").write_text(f"{name} {version}\n")
        store.create(name, version, source, deps=deps)
    yield store
    db.close(checkpoint=False)


@pytest.fixture
def supervisor() -> FakeSupervisor:
    sup = FakeSupervisor()
    sup.adopt(JobRecord(job_id=JOB, pid=1234, state=ProcState.RUNNING))
    return sup


@pytest.fixture
def jobs() -> FakeJobs:
    lookup = FakeJobs()
    lookup.states[JOB] = JobState.RUNNING
    return lookup


@pytest.fixture
def manager(store: CapsuleStore, supervisor: FakeSupervisor, jobs: FakeJobs) -> CapsuleManager:
    return CapsuleManager(store, supervisor, jobs)


def held(store: CapsuleStore) -> set[tuple[str, str, str]]:
    return {(a.name, a.version, a.target) for a in store.attachments(JOB)}


def test_attach_records_then_mounts_read_only_at_the_default_target(manager: CapsuleManager, store: CapsuleStore,
                                                                    supervisor: FakeSupervisor) -> None:
    change = manager.attach(JOB[:12], "model@1.0.0")
    assert [(a.name, a.version, a.target) for a in change.added] == [("model", "1.0.0", "/capsules/model")]
    assert held(store) == {("model", "1.0.0", "/capsules/model")}
    [call] = supervisor.mounts
    assert (call.action, call.target) == ("attach", "/capsules/model")
    assert call.source == str(store.get("model", "1.0.0").path)


def test_attach_brings_dependencies_and_is_idempotent(manager: CapsuleManager, store: CapsuleStore,
                                                      supervisor: FakeSupervisor) -> None:
    manager.attach(JOB, "tool", at="/opt/tool")
    assert held(store) == {("tool", "1.0.0", "/opt/tool"), ("data", "1.0.0", "/capsules/data")}
    again = manager.attach(JOB, "tool", at="/opt/tool")
    assert again.added == () and {a.name for a in again.kept} == {"tool", "data"}
    assert len(supervisor.mounts) == 2


def test_attach_to_a_job_that_is_not_running_is_refused(manager: CapsuleManager, jobs: FakeJobs) -> None:
    jobs.states[JOB] = JobState.COMPLETED
    with pytest.raises(FailedPrecondition, match="capsules attach to running jobs only"):
        manager.attach(JOB, "model")


def test_attach_of_another_version_of_a_held_capsule_is_a_conflict(manager: CapsuleManager) -> None:
    manager.attach(JOB, "model@1.0.0")
    with pytest.raises(Conflict, match="use `capsa capsule swap`"):
        manager.attach(JOB, "model@2.0.0")


def test_a_failed_mount_leaves_no_record(manager: CapsuleManager, store: CapsuleStore,
                                         supervisor: FakeSupervisor) -> None:
    supervisor.fail_mount = Unavailable("zygote busy")
    with pytest.raises(Unavailable):
        manager.attach(JOB, "tool")
    assert held(store) == set()


def test_swap_replaces_the_version_at_each_target(manager: CapsuleManager, store: CapsuleStore,
                                                  supervisor: FakeSupervisor) -> None:
    manager.attach(JOB, "model@1.0.0")
    change = manager.swap(JOB, "model@2.0.0")
    assert [a.version for a in change.removed] == ["1.0.0"] and [a.version for a in change.added] == ["2.0.0"]
    assert held(store) == {("model", "2.0.0", "/capsules/model")}
    assert supervisor.mounts[-1] == MountCall(JOB, "swap", "/capsules/model", str(store.get("model", "2.0.0").path))
    assert manager.swap(JOB, "model@2.0.0").kept   # swapping to what is there changes nothing


def test_swap_that_would_break_a_dependency_is_refused(manager: CapsuleManager, store: CapsuleStore) -> None:
    manager.attach(JOB, "tool")
    with pytest.raises(Conflict, match="requires 'data"):
        manager.swap(JOB, "data@2.0.0")
    assert ("data", "1.0.0", "/capsules/data") in held(store)


def test_swap_of_a_capsule_the_job_does_not_hold_is_not_found(manager: CapsuleManager) -> None:
    with pytest.raises(NotFound, match="use `capsa capsule attach`"):
        manager.swap(JOB, "model@2.0.0")


def test_detach_unmounts_and_forgets(manager: CapsuleManager, store: CapsuleStore,
                                     supervisor: FakeSupervisor) -> None:
    manager.attach(JOB, "model")
    change = manager.detach(JOB, "model")
    assert [a.name for a in change.removed] == ["model"] and held(store) == set()
    assert supervisor.mounts[-1].action == "detach"


def test_detach_of_a_dependency_still_needed_is_refused(manager: CapsuleManager) -> None:
    manager.attach(JOB, "tool")
    with pytest.raises(Conflict, match="detach tool first"):
        manager.detach(JOB, "data")


def test_an_attach_that_races_the_job_end_is_released(manager: CapsuleManager, store: CapsuleStore,
                                                      jobs: FakeJobs, supervisor: FakeSupervisor) -> None:
    original = supervisor.mount

    def mount_then_end(*args: object, **kwargs: object) -> None:
        original(*args, **kwargs)  # type: ignore[arg-type]
        jobs.states[JOB] = JobState.COMPLETED   # the exit event released before this attach recorded

    supervisor.mount = mount_then_end  # type: ignore[method-assign]
    manager.attach(JOB, "model")
    assert held(store) == set()


def test_start_binds_are_recorded_and_released_through_the_job_resource(manager: CapsuleManager,
                                                                        store: CapsuleStore) -> None:
    resource = CapsuleResource(manager)
    request = RunRequest(command=("/bin/true",), capsules=("tool:/capsules/t",))
    resource.validate(request)
    grant = resource.acquire(JOB, request)
    assert set(grant.binds) == {BindSpec(str(store.get("tool", "1.0.0").path), "/capsules/t", True),
                                BindSpec(str(store.get("data", "1.0.0").path), "/capsules/data", True)}
    assert len(held(store)) == 2
    resource.release(JOB)
    resource.release(JOB)   # idempotent
    assert held(store) == set()


def test_start_targets_outside_capsules_are_refused_at_validation(manager: CapsuleManager) -> None:
    resource = CapsuleResource(manager)
    with pytest.raises(InvalidArgument, match="cannot be mounted under /usr"):
        resource.validate(RunRequest(command=("/bin/true",), capsules=("model:/usr/model",)))
    with pytest.raises(InvalidArgument, match="in a job with an image"):
        resource.validate(RunRequest(command=(), image="alpine", capsules=("model:/opt/model",)))


def test_a_start_request_with_conflicting_capsules_is_refused(manager: CapsuleManager) -> None:
    with pytest.raises(Conflict):
        manager.plan_start(["tool", "data@2.0.0"], image=False)


def test_reconcile_releases_jobs_that_are_not_live_without_asking_the_supervisor(
        manager: CapsuleManager, store: CapsuleStore, supervisor: FakeSupervisor) -> None:
    manager.attach(JOB, "model")
    store.record_attach("b" * 32, "data", "1.0.0", "/capsules/data")
    supervisor.records.clear()   # gone at shutdown
    report = manager.reconcile(())
    assert report.released == 2 and store.attachments() == []


def test_reconcile_keeps_a_starting_job_and_releases_an_exited_one(manager: CapsuleManager, store: CapsuleStore,
                                                                   supervisor: FakeSupervisor) -> None:
    starting, exited = "c" * 32, "d" * 32
    supervisor.adopt(JobRecord(job_id=starting, pid=0, state=ProcState.STARTING))
    supervisor.adopt(JobRecord(job_id=exited, pid=0, state=ProcState.EXITED))
    store.record_attach(starting, "model", "1.0.0", "/capsules/model")
    store.record_attach(exited, "model", "1.0.0", "/capsules/model")
    report = manager.reconcile([starting, exited])
    assert report.released == 1 and {a.job_id for a in store.attachments()} == {starting}


def _make_writable(path: Path) -> None:
    # Stored trees are read-only; a test damaging one behind capsa's back must lift that first (as non-root too).
    for item in (path.parent, path, *path.rglob("*")):
        if item.is_dir() and not item.is_symlink():
            item.chmod(0o755)


def test_a_start_on_a_deleted_capsule_tree_is_refused_and_records_nothing(
        manager: CapsuleManager, store: CapsuleStore) -> None:
    import shutil

    path = store.get("data", "1.0.0").path
    _make_writable(path)
    shutil.rmtree(path)
    resource = CapsuleResource(manager)
    # tool depends on data: the dependency's tree is checked as well as the named capsule's.
    with pytest.raises(ChecksumMismatch, match=r"data@1\.0\.0: its stored tree .* is gone; repair it with `capsa capsule verify --repair"):
        resource.validate(RunRequest(command=("/bin/true",), capsules=("tool",)))
    with pytest.raises(ChecksumMismatch, match="is gone"):
        manager.prepare_start(JOB, ["tool"], image=False)
    assert held(store) == set()
    assert manager.prepare_start(JOB, ["model@1.0.0"], image=False)   # intact capsules still start


@pytest.mark.parametrize("damage", ["added", "truncated", "removed"])
def test_a_start_on_a_changed_capsule_tree_is_refused(manager: CapsuleManager, store: CapsuleStore,
                                                      damage: str) -> None:
    path = store.get("model", "2.0.0").path
    _make_writable(path)
    readme = path / "README"
    readme.chmod(0o644)
    if damage == "added":
        (path / "extra").write_text("x")
    elif damage == "truncated":
        readme.write_text("")
    else:
        readme.unlink()
    with pytest.raises(ChecksumMismatch, match=r"model@2\.0\.0: its stored tree was changed behind capsa's back"):
        manager.prepare_start(JOB, ["model@2.0.0"], image=False)
    assert held(store) == set()
