"""`present` (storage really there) on every backend; detached layers and `attach` on overlay."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from snapshots_harness import Harness

from capsa.errors import FailedPrecondition, Unsupported
from capsa.snapshots import Kind
from capsa.snapshots.mount import mount_all, unmount


def test_present_is_false_once_storage_is_lost_behind_the_backends_back(backend: Harness) -> None:
    sn = backend.sn
    sn.prepare("a", None)
    assert sn.present("a")
    backend.lose_storage(backend, "a")
    assert sn.stat("a").kind is Kind.ACTIVE and not sn.present("a")  # the row alone proves nothing
    sn.remove("a")


def test_only_detached_layer_backends_attach(backend: Harness) -> None:
    sn = backend.sn
    sn.prepare("base", None)
    sn.commit("BASE", "base")
    sn.prepare("top", None)
    if not sn.detached_layers:
        with pytest.raises(Unsupported):
            sn.attach("top", "BASE")
        return
    sn.attach("top", "BASE")
    assert sn.stat("top").parent == "BASE"
    with pytest.raises(FailedPrecondition):
        sn.attach("top", "BASE")  # already has its parent


def test_an_overlay_layer_unpacked_detached_mounts_like_one_prepared_on_its_parent(backend: Harness,
                                                                                  tmp_path: Path) -> None:
    if backend.kind != "overlay":
        pytest.skip("detached layers are an overlay feature")
    sn = backend.sn
    sn.prepare("base", None)
    with sn.writable("base") as tree:
        os.chmod(tree, 0o750)
        (Path(tree) / "lower.txt").write_text("lower")
    sn.commit("BASE", "base")
    sn.prepare("top", None)  # unpacked without its parent, e.g. while the parent still downloads
    with sn.writable("top") as tree:
        (Path(tree) / "upper.txt").write_text("upper")
    sn.attach("top", "BASE")  # inherits the parent's root metadata, as prepare on BASE would have
    sn.commit("TOP", "top")
    target = tmp_path / "view"
    target.mkdir()
    mount_all(sn.view("v", "TOP"), target)
    try:
        assert (target / "lower.txt").read_text() == "lower" and (target / "upper.txt").read_text() == "upper"
        assert stat.S_IMODE(target.stat().st_mode) == 0o750
    finally:
        unmount(target)
        sn.remove("v")
