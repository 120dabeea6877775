"""The Snapshotter contract, checked on every available backend with real mounts."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from snapshots_harness import Harness, mounted_at, tree, write_layer

from capsa.errors import AlreadyExists, Conflict, FailedPrecondition, InvalidArgument, NotFound
from capsa.snapshots import Info, Kind, Snapshotter

MiB = 1024 * 1024


def build_chain(sn: Snapshotter) -> None:
    """Three committed layers: L1 base, L2 modifies/adds, L3 deletes and makes d/ opaque."""
    sn.prepare("x1")
    write_layer(sn, "x1", {"a": b"a1", "b": b"b1", "keep/x": b"x1", "gone/y": b"y1", "d/old": b"old"})
    sn.commit("L1", "x1")
    sn.prepare("x2", "L1")
    write_layer(sn, "x2", {"a": b"a2", "c": b"c2"})
    sn.commit("L2", "x2")
    sn.prepare("x3", "L2")
    write_layer(sn, "x3", {"d/new": b"new"}, delete=("b", "gone"), opaque=("d",))
    sn.commit("L3", "x3")


def test_every_backend_satisfies_the_protocol(backend: Harness) -> None:
    assert isinstance(backend.sn, Snapshotter)
    assert backend.sn.name == backend.kind


def test_a_view_of_three_layers_shows_the_merged_tree(backend: Harness, tmp_path: Path) -> None:
    sn = backend.sn
    build_chain(sn)
    with mounted_at(sn.view("v3", "L3"), tmp_path) as root:
        assert tree(root) == {
            "a": b"a2",
            "c": b"c2",
            "keep": None,
            "keep/x": b"x1",
            "d": None,
            "d/new": b"new",
        }
    with mounted_at(sn.view("v1", "L1"), tmp_path) as root:
        assert tree(root)["b"] == b"b1" and tree(root)["a"] == b"a1" and "c" not in tree(root)


def test_views_are_read_only(backend: Harness, tmp_path: Path) -> None:
    sn = backend.sn
    build_chain(sn)
    for key, parent in (("v1", "L1"), ("v3", "L3")):
        with mounted_at(sn.view(key, parent), tmp_path) as root, pytest.raises(OSError) as exc:
            (root / "new-file").write_bytes(b"x")
        assert exc.value.errno == errno.EROFS


def test_writes_through_an_active_mount_land_only_in_that_snapshot(backend: Harness, tmp_path: Path) -> None:
    sn = backend.sn
    build_chain(sn)
    with mounted_at(sn.prepare("job", "L3"), tmp_path) as root:
        (root / "w").write_bytes(b"written")
        (root / "a").write_bytes(b"changed")
        (root / "c").unlink()
        assert tree(root)["w"] == b"written"
    assert sn.usage("job").inodes >= 2
    with mounted_at(sn.view("after", "L3"), tmp_path) as root:
        assert tree(root) == {
            "a": b"a2",
            "c": b"c2",
            "keep": None,
            "keep/x": b"x1",
            "d": None,
            "d/new": b"new",
        }
    sn.commit("L4", "job")
    with mounted_at(sn.view("v4", "L4"), tmp_path) as root:
        seen = tree(root)
        assert seen["w"] == b"written" and seen["a"] == b"changed" and "c" not in seen


def test_remove_refuses_snapshots_with_children(backend: Harness) -> None:
    sn = backend.sn
    build_chain(sn)
    sn.view("v", "L3")
    for key in ("L1", "L2", "L3"):
        with pytest.raises(Conflict):
            sn.remove(key)
    for key in ("v", "L3", "L2", "L1"):
        sn.remove(key)
        with pytest.raises(NotFound):
            sn.stat(key)
    assert sn.walk() == []


def test_usage_counts_the_layers_own_bytes_and_inodes(backend: Harness) -> None:
    sn = backend.sn
    slack = 2 * MiB if backend.kind == "devmapper" else 256 * 1024  # ext4 journal and bitmap blocks
    sn.prepare("x1")
    write_layer(sn, "x1", {"big": os.urandom(MiB)})
    active = sn.usage("x1")
    assert MiB <= active.size <= MiB + slack and active.inodes == 1
    sn.commit("L1", "x1")
    assert sn.usage("L1") == active or abs(sn.usage("L1").size - active.size) <= slack
    sn.prepare("x2", "L1")
    write_layer(sn, "x2", {"dir/small": b"s" * 10, "dir/other": b"o"})
    second = sn.usage("x2")
    assert second.inodes == 3 and second.size < MiB  # the parent's megabyte is not counted
    assert sn.usage("L1").size >= MiB  # unchanged by the child


def test_walk_lists_every_snapshot_with_kind_and_parent(backend: Harness) -> None:
    sn = backend.sn
    build_chain(sn)
    sn.view("v", "L2")
    sn.prepare("work", "L3", labels={"purpose": "job"})
    seen: list[Info] = []
    infos = sn.walk(seen.append)
    assert seen == infos
    by_key = {i.key: i for i in infos}
    assert set(by_key) == {"L1", "L2", "L3", "v", "work"}
    assert (by_key["L1"].parent, by_key["L1"].kind) == (None, Kind.COMMITTED)
    assert (by_key["L3"].parent, by_key["v"].parent, by_key["v"].kind) == ("L2", "L2", Kind.VIEW)
    assert by_key["work"].kind is Kind.ACTIVE and by_key["work"].labels == {"purpose": "job"}


def test_stat_update_and_errors(backend: Harness) -> None:
    sn = backend.sn
    sn.prepare("x1", labels={"a": "1"})
    info = sn.stat("x1")
    assert info.kind is Kind.ACTIVE and info.parent is None and info.labels == {"a": "1"}
    assert sn.update("x1", {"b": "2"}).labels == {"b": "2"}
    assert sn.stat("x1").updated >= info.updated
    with pytest.raises(AlreadyExists):
        sn.prepare("x1")
    with pytest.raises(FailedPrecondition):
        sn.prepare("child", "x1")  # parents must be committed
    with pytest.raises(NotFound):
        sn.view("v", "nope")
    with pytest.raises(NotFound):
        sn.stat("nope")
    with pytest.raises(InvalidArgument):
        sn.update("x1", {"k": 3})  # type: ignore[dict-item]
    sn.commit("L1", "x1")
    with pytest.raises(FailedPrecondition):
        sn.mounts("L1")  # committed snapshots are not mountable
    with pytest.raises(FailedPrecondition):
        sn.commit("L2", "L1")  # only active snapshots commit
    sn.prepare("x2", "L1")
    with pytest.raises(AlreadyExists):
        sn.commit("L1", "x2")
    sn.view("v", "L1")
    with pytest.raises(FailedPrecondition):
        sn.commit("L3", "v")
    assert sn.upper_dir("v") is None and sn.upper_dir("L1") is None


def test_ensure_active_is_idempotent(backend: Harness) -> None:
    sn = backend.sn
    sn.prepare("x1")
    sn.commit("L1", "x1")
    first = sn.ensure_active("job", "L1")
    assert sn.ensure_active("job", "L1") == first
    assert [i.key for i in sn.walk()].count("job") == 1
    with pytest.raises(AlreadyExists):
        sn.ensure_active("job", None)  # same key, different parent
    with pytest.raises(AlreadyExists):
        sn.ensure_active("L1", None)  # same key, committed
    with pytest.raises(AlreadyExists):
        sn.prepare("job", "L1")


def test_ensure_active_rebuilds_an_active_snapshot_whose_storage_vanished(
    backend: Harness, tmp_path: Path
) -> None:
    sn = backend.sn
    sn.prepare("x1")
    write_layer(sn, "x1", {"f": b"base"})
    sn.commit("L1", "x1")
    sn.prepare("job", "L1")
    backend.lose_storage(backend, "job")
    with pytest.raises(FailedPrecondition):
        sn.mounts("job")
    with mounted_at(sn.ensure_active("job", "L1"), tmp_path) as root:
        assert tree(root) == {"f": b"base"}


def test_cleanup_removes_storage_left_by_a_crash(backend: Harness, tmp_path: Path) -> None:
    sn = backend.sn
    build_chain(sn)
    present = backend.make_orphan(backend)
    assert present()
    freed = sn.cleanup()
    assert not present()
    if backend.kind != "devmapper":
        assert freed >= 64 * 1024  # the orphan's blob
    assert sn.cleanup() == 0
    with mounted_at(sn.view("v", "L3"), tmp_path) as root:
        assert tree(root)["a"] == b"a2"


def test_reopening_keeps_metadata_and_reconciles_leftovers(backend: Harness, tmp_path: Path) -> None:
    build_chain(backend.sn)
    backend.sn.prepare("job", "L3")
    before = backend.sn.walk()
    present = backend.make_orphan(backend)
    sn = backend.reopen()
    assert not present()
    assert sn.walk() == before
    with mounted_at(sn.mounts("job"), tmp_path) as root:
        assert tree(root)["d/new"] == b"new"


def test_a_process_killed_mid_prepare_leaves_nothing_behind_after_reopen(backend: Harness, tmp_path: Path) -> None:
    build_chain(backend.sn)
    assert backend.crash_during_prepare("job", "L3") == -9
    sn = backend.reopen()
    assert "job" not in {i.key for i in sn.walk()}
    assert sn.cleanup() == 0  # the reopen already reconciled
    if backend.kind != "devmapper":
        ids = {str(backend.sn._store.require(k).id) for k in ("L1", "L2", "L3")}  # type: ignore[attr-defined]
        assert {p.name for p in (backend.root / "snapshots").iterdir()} == ids
    with mounted_at(sn.prepare("job", "L3"), tmp_path) as root:
        assert tree(root)["d/new"] == b"new"
