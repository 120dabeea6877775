"""overlay backend specifics: whiteouts, mount shapes, depth limit, crash leftovers, nesting."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from snapshots_harness import mounted_at, tree, write_layer

from capsa.errors import InvalidArgument, LimitExceeded, Unsupported
from capsa.snapshots import Kind, Mount, OverlaySnapshotter, mount_all, unmount
from capsa.snapshots._fsutil import mount_entries
from capsa.state.db import Database


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(tmp_path / "capsa.db")
    yield database
    database.close()


@pytest.fixture
def sn(tmp_path: Path, db: Database) -> OverlaySnapshotter:
    return OverlaySnapshotter(tmp_path / "overlay", db)


def layers(sn: OverlaySnapshotter) -> None:
    sn.prepare("x1")
    write_layer(sn, "x1", {"a": b"1", "b": b"1", "etc/conf": b"c"})
    sn.commit("L1", "x1")
    sn.prepare("x2", "L1")
    write_layer(sn, "x2", {"c": b"2"})
    sn.commit("L2", "x2")
    sn.prepare("x3", "L2")
    upper = sn.upper_dir("x3")
    assert upper is not None
    os.mknod(upper / "b", stat.S_IFCHR | 0o000, os.makedev(0, 0))  # what an unpacker writes for .wh.b
    sn.commit("L3", "x3")


def test_a_whiteout_char_device_in_layer_3_hides_the_lower_file(
    sn: OverlaySnapshotter, tmp_path: Path
) -> None:
    layers(sn)
    l3 = sn.snapshots_dir / str(sn._store.require("L3").id) / "fs"
    st = os.lstat(l3 / "b")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    with mounted_at(sn.view("v", "L3"), tmp_path) as root:
        assert not (root / "b").exists() and not os.path.lexists(root / "b")
        assert sorted(os.listdir(root)) == ["a", "c", "etc"]


def test_deleting_through_the_mount_records_a_whiteout_in_the_upper_only(
    sn: OverlaySnapshotter, tmp_path: Path
) -> None:
    layers(sn)
    with mounted_at(sn.prepare("job", "L3"), tmp_path) as root:
        (root / "a").unlink()
        (root / "etc" / "new").write_bytes(b"n")
    upper = sn.upper_dir("job")
    assert upper is not None
    st = os.lstat(upper / "a")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert (upper / "etc" / "new").read_bytes() == b"n"
    l1 = sn.snapshots_dir / str(sn._store.require("L1").id) / "fs"
    assert (l1 / "a").read_bytes() == b"1" and not (l1 / "etc" / "new").exists()


def test_mount_shapes(sn: OverlaySnapshotter) -> None:
    layers(sn)
    fs = {k: str(sn.snapshots_dir / str(sn._store.require(k).id) / "fs") for k in ("L1", "L2", "L3")}
    assert sn.view("one", "L1") == [Mount("bind", fs["L1"], ("ro", "rbind"))]
    (view,) = sn.view("three", "L3")
    assert view.type == "overlay" and view.options[-1] == f"lowerdir={fs['L3']}:{fs['L2']}:{fs['L1']}"
    assert not any(o.startswith(("upperdir=", "workdir=")) for o in view.options)
    (active,) = sn.prepare("job", "L3")
    job = sn.snapshots_dir / str(sn._store.require("job").id)
    assert f"upperdir={job}/fs" in active.options and f"workdir={job}/work" in active.options
    assert ("index=off" in active.options) == os.path.exists("/sys/module/overlay/parameters/index")
    assert "userxattr" not in active.options  # not in a user namespace here


def test_chains_deeper_than_one_page_of_options_are_refused_up_front(tmp_path: Path, db: Database) -> None:
    root = tmp_path / ("r" * 200) / ("o" * 200)
    sn = OverlaySnapshotter(root, db)
    depth = sn.max_depth
    assert 3 <= depth < 15
    parent = None
    for i in range(depth):
        sn.prepare(f"x{i}", parent)
        write_layer(sn, f"x{i}", {f"f{i}": str(i).encode()})
        sn.commit(f"L{i}", f"x{i}")
        parent = f"L{i}"
    mounts = sn.prepare("deepest", parent)  # exactly max_depth lower layers: must mount
    with mounted_at(mounts, tmp_path) as merged:
        assert tree(merged) == {f"f{i}": str(i).encode() for i in range(depth)}
    sn.commit(f"L{depth}", "deepest")
    with pytest.raises(LimitExceeded):
        sn.prepare("too-deep", f"L{depth}")
    assert "too-deep" not in {i.key for i in sn.walk()}
    assert not [p for p in sn.snapshots_dir.iterdir() if not p.name.isdigit()]


def test_an_id_left_on_disk_by_a_rolled_back_transaction_is_replaced(sn: OverlaySnapshotter) -> None:
    sn.prepare("x1")
    next_id = sn._store.require("x1").id + 1
    stale = sn.snapshots_dir / str(next_id) / "fs"
    stale.mkdir(parents=True)
    (stale / "junk").write_bytes(b"j")
    sn.prepare("x2")
    assert sn._store.require("x2").id == next_id
    upper = sn.upper_dir("x2")
    assert upper is not None and list(upper.iterdir()) == []


def test_a_probe_mount_left_by_a_crash_is_cleared_on_open(tmp_path: Path, db: Database) -> None:
    root = tmp_path / "overlay"
    OverlaySnapshotter(root, db)
    probe = root / "probe-dead"
    for d in ("l", "u", "w", "merged"):
        (probe / d).mkdir(parents=True)
    described = Mount(
        "overlay", "overlay", (f"lowerdir={probe}/l", f"upperdir={probe}/u", f"workdir={probe}/w")
    )
    mount_all([described], probe / "merged")
    OverlaySnapshotter(root, db)
    assert not probe.exists()
    assert str(probe / "merged") not in {e.mount_point for e in mount_entries()}


def test_a_root_on_overlayfs_is_refused_with_the_reason(tmp_path: Path, db: Database) -> None:
    base = tmp_path / "outer"
    for d in ("l", "u", "w", "m"):
        (base / d).mkdir(parents=True)
    mount_all(
        [Mount("overlay", "overlay", (f"lowerdir={base}/l", f"upperdir={base}/u", f"workdir={base}/w"))],
        base / "m",
    )
    try:
        with pytest.raises(Unsupported, match="on overlay"):
            OverlaySnapshotter(base / "m" / "snapshotter", db)
        assert not list((base / "m" / "snapshotter").glob("probe-*"))
    finally:
        unmount(base / "m")


def test_committed_usage_is_recorded_at_commit(sn: OverlaySnapshotter) -> None:
    sn.prepare("x1")
    write_layer(sn, "x1", {"f": b"x" * 10000})
    sn.commit("L1", "x1")
    recorded = sn.usage("L1")
    l1 = sn.snapshots_dir / str(sn._store.require("L1").id) / "fs"
    (l1 / "sneaked-in").write_bytes(
        b"y" * 50000
    )  # nobody may write a committed layer; usage is not re-walked
    assert sn.usage("L1") == recorded and sn.stat("L1").kind is Kind.COMMITTED


def test_overlay_rejects_roots_that_break_lowerdir_syntax(tmp_path: Path, db: Database) -> None:
    with pytest.raises(InvalidArgument):
        OverlaySnapshotter(tmp_path / "a:b", db)
