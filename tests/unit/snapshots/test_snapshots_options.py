"""Overlay mount descriptions, depth limit, mount(2) option splitting, configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

from capsa.errors import InvalidArgument, LimitExceeded
from capsa.snapshots import open_snapshotter
from capsa.snapshots.base import Kind, Mount
from capsa.snapshots.config import BtrfsConfig, DevmapperConfig, OverlayConfig, config_from
from capsa.snapshots.mount import MAX_MOUNT_DATA, mount_data
from capsa.snapshots.overlay import OVERLAY_MAX_STACK, in_user_namespace, max_overlay_depth, overlay_mounts
from capsa.state.db import Database

R = Path("/r/snapshots")


def test_active_without_parent_is_a_writable_bind() -> None:
    assert overlay_mounts(Kind.ACTIVE, R / "1/fs", R / "1/work", [], index_off=True, userxattr=False) == [
        Mount("bind", "/r/snapshots/1/fs", ("rw", "rbind"))
    ]


def test_view_of_one_layer_binds_that_layer_read_only() -> None:
    assert overlay_mounts(
        Kind.VIEW, R / "2/fs", R / "2/work", [R / "1/fs"], index_off=True, userxattr=False
    ) == [Mount("bind", "/r/snapshots/1/fs", ("ro", "rbind"))]


def test_active_overlay_lists_lowers_nearest_first_with_upper_and_work() -> None:
    (m,) = overlay_mounts(
        Kind.ACTIVE,
        R / "4/fs",
        R / "4/work",
        [R / "3/fs", R / "2/fs", R / "1/fs"],
        index_off=True,
        userxattr=True,
    )
    assert m.type == "overlay" and m.source == "overlay"
    assert m.options == (
        "index=off",
        "userxattr",
        "workdir=/r/snapshots/4/work",
        "upperdir=/r/snapshots/4/fs",
        "lowerdir=/r/snapshots/3/fs:/r/snapshots/2/fs:/r/snapshots/1/fs",
    )


def test_view_of_a_chain_uses_only_lowerdirs() -> None:
    (m,) = overlay_mounts(
        Kind.VIEW, R / "9/fs", R / "9/work", [R / "2/fs", R / "1/fs"], index_off=False, userxattr=False
    )
    assert m.options == ("lowerdir=/r/snapshots/2/fs:/r/snapshots/1/fs",)


def test_max_depth_is_exactly_what_fits_in_one_page() -> None:
    root = Path("/var/lib/capsa/snapshots/overlay")
    depth = max_overlay_depth(root, index_off=True, userxattr=False)
    assert depth == 73  # the figure documented in capsa.snapshots.overlay
    layer = root / "snapshots" / "9999999"

    def data(n: int) -> str:
        (m,) = overlay_mounts(
            Kind.ACTIVE, layer / "fs", layer / "work", [layer / "fs"] * n, index_off=True, userxattr=False
        )
        return ",".join(m.options)

    assert len(data(depth)) <= MAX_MOUNT_DATA < len(data(depth + 1))


def test_max_depth_shrinks_with_longer_roots_and_never_passes_overlayfs_limit() -> None:
    short = max_overlay_depth(Path("/s"), index_off=False, userxattr=False, id_digits=1)
    assert 73 < short <= OVERLAY_MAX_STACK
    assert max_overlay_depth(Path("/" + "x" * 400), index_off=True, userxattr=False) < 10


def test_this_process_runs_in_the_initial_user_namespace() -> None:
    assert in_user_namespace() is False


def test_mount_options_split_into_flags_and_data() -> None:
    flags, data = mount_data(("ro", "nosuid", "index=off", "lowerdir=/a:/b"))
    assert flags == 0x1 | 0x2 and data == "index=off,lowerdir=/a:/b"


def test_mount_data_longer_than_a_page_is_refused() -> None:
    with pytest.raises(LimitExceeded):
        mount_data(("lowerdir=" + "/x" * 2100,))


def test_config_from_mapping_and_validation() -> None:
    cfg = config_from(DevmapperConfig, {"pool_name": "capsa-pool", "data_file": "/d", "metadata_file": "/m"})
    assert cfg.data_file == Path("/d") and cfg.max_device_size == 100 * 1024**3
    assert config_from(OverlayConfig, None) == OverlayConfig()
    with pytest.raises(InvalidArgument):
        config_from(DevmapperConfig, None)  # a pool name is required
    with pytest.raises(InvalidArgument):
        config_from(BtrfsConfig, {"bogus": 1})
    with pytest.raises(InvalidArgument):
        config_from(DevmapperConfig, {"pool_name": "bad/name"})
    with pytest.raises(InvalidArgument):
        config_from(DevmapperConfig, {"pool_name": "p", "data_file": "/d"})
    with pytest.raises(InvalidArgument):
        config_from(DevmapperConfig, {"pool_name": "p", "block_size_sectors": 100})


def test_devices_larger_than_the_adr_limit_are_refused() -> None:
    with pytest.raises(LimitExceeded):
        config_from(DevmapperConfig, {"pool_name": "p", "base_image_size": 101 * 1024**3})


def test_unknown_backend_is_an_invalid_argument(tmp_path: Path) -> None:
    db = Database(tmp_path / "db")
    try:
        with pytest.raises(InvalidArgument):
            open_snapshotter("zfs", tmp_path / "root", db)
    finally:
        db.close()
