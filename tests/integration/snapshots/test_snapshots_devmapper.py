"""devmapper backend on a real thin-pool (file-backed, on loop devices).

Runs only where /dev/mapper/control opens and dm-thin is present; elsewhere
every test but the first skips with the probe's reason.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from snapshots_harness import mounted_at, tree, write_layer

from capsa.errors import DeviceExistsError, DeviceNotFoundError, PoolFullError, Unsupported
from capsa.snapshots import DevmapperConfig, DevmapperSnapshotter, open_snapshotter, thin_pool_available
from capsa.snapshots.devmapper import DeviceState
from capsa.snapshots.devmapper.dmsetup import create_thin_message, delete_message, thin_table
from capsa.state.db import Database

MiB = 1024 * 1024
AVAILABLE, WHY = thin_pool_available()
needs_dm_thin = pytest.mark.skipif(not AVAILABLE, reason=WHY or "dm-thin available")


def config(tmp_path: Path, **over: object) -> DevmapperConfig:
    fields: dict[str, object] = {
        "pool_name": f"capsa-test-{secrets.token_hex(4)}",
        "base_image_size": 64 * MiB,
        "data_file": tmp_path / "pool-data",
        "metadata_file": tmp_path / "pool-meta",
        "data_size": 256 * MiB,
        "metadata_size": 8 * MiB,
    }
    fields.update(over)
    return DevmapperConfig(**fields)  # type: ignore[arg-type]


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(tmp_path / "capsa.db")
    yield database
    database.close()


@pytest.fixture
def sn(tmp_path: Path, db: Database) -> Iterator[DevmapperSnapshotter]:
    snapshotter = DevmapperSnapshotter(tmp_path / "dm", db, config(tmp_path))
    yield snapshotter
    for info in reversed(snapshotter.walk()):  # children were created after their parents
        snapshotter.remove(info.key)
    snapshotter.close()


def test_opening_on_a_kernel_without_device_mapper_is_unsupported(tmp_path: Path, db: Database) -> None:
    if AVAILABLE:
        pytest.skip("this host has dm-thin; the refusal path cannot be observed")
    with pytest.raises(Unsupported, match="device-mapper"):
        open_snapshotter("devmapper", tmp_path / "dm", db, config(tmp_path))
    # refused before creating the pool files or attaching loop devices
    assert not (tmp_path / "pool-data").exists() and not (tmp_path / "pool-meta").exists()


@needs_dm_thin
def test_pool_status_reflects_the_configured_files(sn: DevmapperSnapshotter) -> None:
    st = sn.pool.status()
    assert st.total_data_blocks == 256 * MiB // (128 * 512) and st.mode == "rw" and not st.full


@needs_dm_thin
def test_typed_errors_come_from_the_real_kernel(sn: DevmapperSnapshotter) -> None:
    sn.prepare("x1")
    rec = sn.pool.by_snapshot(sn._store.require("x1").id)
    assert rec is not None
    with pytest.raises(DeviceExistsError) as exists:
        sn.pool.dm.message(sn.pool.name, create_thin_message(rec.dev_id))
    assert exists.value.detail["errno"] == "EEXIST"
    with pytest.raises(DeviceExistsError) as busy:
        sn.pool.dm.create(rec.name, thin_table(sn.pool.name, rec.dev_id, rec.size))
    assert busy.value.detail["errno"] == "EBUSY"
    with pytest.raises(DeviceNotFoundError) as nodata:
        sn.pool.dm.message(sn.pool.name, delete_message(999_999))
    assert nodata.value.detail["errno"] == "ENODATA"
    with pytest.raises(DeviceNotFoundError):
        sn.pool.dm.info("capsa-no-such-device")


@needs_dm_thin
def test_a_loaded_origin_is_suspended_for_create_snap_and_resumed(
    sn: DevmapperSnapshotter, tmp_path: Path
) -> None:
    sn.prepare("x1")
    write_layer(sn, "x1", {"f": b"origin"})
    sn.commit("L1", "x1")
    origin = sn.pool.by_snapshot(sn._store.require("L1").id)
    assert origin is not None and not sn.pool.is_loaded(origin.name)  # committed devices are deactivated
    sn.pool.activate(origin)
    with mounted_at(sn.view("v", "L1"), tmp_path) as root:
        assert tree(root) == {"f": b"origin"}
    after = sn.pool.get(origin.name)
    assert after is not None and after.state is DeviceState.RESUMED
    assert not sn.pool.dm.info(origin.name)[0].suspended


@needs_dm_thin
def test_an_interrupted_creation_becomes_faulty_and_its_id_is_never_reused(
    tmp_path: Path, db: Database
) -> None:
    cfg = config(tmp_path)
    sn = DevmapperSnapshotter(tmp_path / "dm", db, cfg)
    try:
        rec = sn.pool.allocate(64 * MiB, None)
        sn.pool.mark(rec.name, DeviceState.CREATING)  # the process died inside create_thin
        sn.close()
        sn = DevmapperSnapshotter(tmp_path / "dm", db, cfg)
        faulty = sn.pool.get(rec.name)
        assert faulty is not None and faulty.state is DeviceState.FAULTY
        sn.cleanup()
        assert sn.pool.get(rec.name) is not None  # never deleted: the id may belong to someone else
        sn.prepare("x1")
        assert sn.pool.by_snapshot(sn._store.require("x1").id).dev_id != rec.dev_id  # type: ignore[union-attr]
        sn.remove("x1")
    finally:
        sn.close()


@needs_dm_thin
def test_active_devices_are_reactivated_after_a_restart(tmp_path: Path, db: Database) -> None:
    cfg = config(tmp_path)
    sn = DevmapperSnapshotter(tmp_path / "dm", db, cfg)
    try:
        sn.prepare("job")
        write_layer(sn, "job", {"f": b"kept"})
        sn.close()  # deactivates every device and removes the pool, as a reboot would
        sn = DevmapperSnapshotter(tmp_path / "dm", db, cfg)
        rec = sn.pool.by_snapshot(sn._store.require("job").id)
        assert rec is not None and sn.pool.is_activated(rec.name)
        with mounted_at(sn.mounts("job"), tmp_path) as root:
            assert tree(root) == {"f": b"kept"}
        sn.remove("job")
    finally:
        sn.close()


@needs_dm_thin
def test_a_full_pool_refuses_new_devices(tmp_path: Path, db: Database) -> None:
    cfg = config(tmp_path, data_size=32 * MiB, base_image_size=128 * MiB, error_if_no_space=True)
    sn = DevmapperSnapshotter(tmp_path / "dm", db, cfg)
    try:
        sn.prepare("filler")
        with sn.writable("filler") as root:
            fd = os.open(root / "fill", os.O_WRONLY | os.O_CREAT)
            try:
                for _ in range(64):
                    os.write(fd, os.urandom(MiB))
                    os.fsync(fd)
            except OSError:
                pass  # ENOSPC / EIO: the pool ran out of data blocks
            finally:
                os.close(fd)
        assert sn.pool.status().full
        with pytest.raises(PoolFullError):
            sn.prepare("more")
        sn.remove("filler")
    finally:
        sn.close()
