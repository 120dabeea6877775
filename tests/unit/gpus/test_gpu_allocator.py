"""Exclusive GPU allocation on a real SQLite database and a fake driver tree."""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
from pathlib import Path

import pytest

from capsa.errors import FailedPrecondition, InvalidArgument, LimitExceeded
from capsa.gpus import GpuAllocator, visible_devices
from capsa.gpus.discovery import Gpu
from capsa.state import Database

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the fake driver tree needs character device nodes (root)")


def make_tree(root: Path, count: int, *, uuids: bool = True, excluded: tuple[int, ...] = ()) -> Path:
    for minor in range(count):
        directory = root / f"proc/driver/nvidia/gpus/0000:{minor + 1:02x}:00.0"
        directory.mkdir(parents=True)
        lines = ["Model: \t\t Tesla T4", f"Device Minor: \t {minor}",
                 f"GPU Excluded:\t {'Yes' if minor in excluded else 'No'}"]
        if uuids:
            lines.append(f"GPU UUID: \t GPU-{minor:04d}-fake")
        (directory / "information").write_text("\n".join(lines) + "\n")
        (root / "dev").mkdir(exist_ok=True)
        os.mknod(root / f"dev/nvidia{minor}", stat.S_IFCHR | 0o666, os.makedev(195, minor))
    os.mknod(root / "dev/nvidiactl", stat.S_IFCHR | 0o666, os.makedev(195, 255))
    os.mknod(root / "dev/nvidia-uvm", stat.S_IFCHR | 0o666, os.makedev(509, 0))
    return root


@pytest.fixture
def db(tmp_path: Path) -> Database:
    return Database(tmp_path / "state.db")


def allocator(db: Database, root: Path, libraries: list[str] | None = None) -> GpuAllocator:
    return GpuAllocator(db, root=root, libraries=lambda: list(libraries or []))


def test_allocation_is_exclusive_and_names_what_the_job_gets(db: Database, tmp_path: Path) -> None:
    gpus = allocator(db, make_tree(tmp_path / "root", 3), libraries=["/opt/nvidia/libcuda.so.1"])
    grant = gpus.allocate("job-a", 2)
    assert [g.minor for g in grant.gpus] == [0, 1]
    assert [d.target for d in grant.devices] == ["/dev/nvidia0", "/dev/nvidia1", "/dev/nvidiactl", "/dev/nvidia-uvm"]
    assert grant.device_allow == ("c 195:0 rw", "c 195:1 rw", "c 195:255 rw", "c 509:0 rw")
    assert grant.env == {"CUDA_VISIBLE_DEVICES": "GPU-0000-fake,GPU-0001-fake",
                         "NVIDIA_VISIBLE_DEVICES": "GPU-0000-fake,GPU-0001-fake"}
    assert grant.libraries == ("/opt/nvidia/libcuda.so.1",)
    other = gpus.allocate("job-b", 1)
    assert [g.minor for g in other.gpus] == [2]
    assert gpus.allocations() == {0: "job-a", 1: "job-a", 2: "job-b"}


def test_too_few_free_gpus_is_limit_exceeded_naming_the_holder(db: Database, tmp_path: Path) -> None:
    gpus = allocator(db, make_tree(tmp_path / "root", 2))
    gpus.allocate("a" * 32, 1)
    with pytest.raises(LimitExceeded, match=r"only 1 of 2 GPUs are free \(in use by job aaaaaaaaaaaa\)"):
        gpus.allocate("job-b", 2)
    assert gpus.held_by("job-b") == []


def test_more_gpus_than_the_node_has_is_a_failed_precondition(db: Database, tmp_path: Path) -> None:
    gpus = allocator(db, make_tree(tmp_path / "root", 2, excluded=(1,)))
    with pytest.raises(FailedPrecondition, match="--gpus 2: this node has 1 usable GPU$"):
        gpus.allocate("job", 2)
    with pytest.raises(FailedPrecondition, match="has 0 usable GPUs"):
        allocator(db, tmp_path / "empty").allocate("job", 1)
    with pytest.raises(InvalidArgument):
        gpus.allocate("job", -1)


def test_release_frees_the_gpus_and_is_idempotent(db: Database, tmp_path: Path) -> None:
    gpus = allocator(db, make_tree(tmp_path / "root", 1))
    gpus.allocate("job-a", 1)
    assert gpus.release("job-a") == [0]
    assert gpus.release("job-a") == []
    assert [g.minor for g in gpus.allocate("job-b", 1).gpus] == [0]


def test_allocations_survive_a_restart_and_reconcile_drops_the_ended(db: Database, tmp_path: Path) -> None:
    root = make_tree(tmp_path / "root", 3)
    first = allocator(db, root)
    first.allocate("running", 1)
    first.allocate("ended", 2)
    db.close()
    again = allocator(Database(tmp_path / "state.db"), root)
    assert again.allocations() == {0: "running", 1: "ended", 2: "ended"}
    assert again.reconcile(["running"]) == ["ended"]
    assert again.allocations() == {0: "running"}
    with pytest.raises(LimitExceeded):
        again.allocate("new", 3)


def test_the_database_refuses_a_second_holder_of_one_gpu(db: Database, tmp_path: Path) -> None:
    allocator(db, make_tree(tmp_path / "root", 1)).allocate("job-a", 1)
    with pytest.raises(sqlite3.IntegrityError), db.tx() as conn:
        conn.execute("INSERT INTO gpu_allocations(minor, uuid, job_id, allocated_ns) VALUES(0, 'x', 'job-b', 1)")
    with pytest.raises(sqlite3.IntegrityError), db.tx() as conn:
        conn.execute("INSERT INTO gpu_allocations(minor, uuid, job_id, allocated_ns) VALUES(9, 'GPU-0000-fake', 'b', 1)")


def test_concurrent_requests_never_share_a_gpu(db: Database, tmp_path: Path) -> None:
    gpus = allocator(db, make_tree(tmp_path / "root", 4))
    won: dict[str, list[int]] = {}
    lost: list[str] = []

    def take(job: str) -> None:
        try:
            won[job] = [g.minor for g in gpus.allocate(job, 1).gpus]
        except LimitExceeded:
            lost.append(job)

    threads = [threading.Thread(target=take, args=(f"job-{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    taken = [m for minors in won.values() for m in minors]
    assert sorted(taken) == [0, 1, 2, 3] and len(lost) == 4


def test_asking_again_for_the_same_job_returns_its_gpus(db: Database, tmp_path: Path) -> None:
    gpus = allocator(db, make_tree(tmp_path / "root", 2))
    assert [g.minor for g in gpus.allocate("job", 1).gpus] == [0]
    assert [g.minor for g in gpus.allocate("job", 1).gpus] == [0]
    with pytest.raises(FailedPrecondition, match="already holds"):
        gpus.allocate("job", 2)


def test_a_missing_device_node_fails_the_grant_and_frees_the_gpu(db: Database, tmp_path: Path) -> None:
    root = make_tree(tmp_path / "root", 1)
    (root / "dev/nvidia0").unlink()
    gpus = allocator(db, root)
    with pytest.raises(FailedPrecondition, match="nvidia0"):
        gpus.allocate("job", 1)
    assert gpus.allocations() == {}


def test_visible_devices_use_uuids_else_the_jobs_own_ordinals() -> None:
    assert visible_devices([Gpu(3, "GPU-c"), Gpu(5, "GPU-e")]) == "GPU-c,GPU-e"
    assert visible_devices([Gpu(3), Gpu(5, "GPU-e")]) == "0,1"
    assert visible_devices([]) == ""
