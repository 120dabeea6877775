"""dmsetup tables, messages, output parsers and error classification.

Samples marked "captured" are real dmsetup output quoted in public sources
(kernel docs, containerd tests and issues, lvm2 issues, stratis/ceph reports)
or printed by this host's dmsetup 1.02.185.
"""

from __future__ import annotations

import pytest

from capsa.errors import (
    DeviceExistsError,
    DeviceNotFoundError,
    FailedPrecondition,
    InvalidArgument,
    PoolFullError,
    Unsupported,
)
from capsa.snapshots.devmapper.dmsetup import (
    MAX_THIN_ID,
    classify_error,
    create_snap_message,
    create_thin_message,
    delete_message,
    device_path,
    info_args,
    parse_info,
    parse_ls,
    parse_pool_status,
    parse_status,
    parse_targets,
    parse_thin_status,
    thin_pool_table,
    thin_table,
)

# -- tables and messages ------------------------------------------------------------------


def test_thin_pool_table_matches_containerds_layout_for_a_16mib_data_device() -> None:
    # containerd's dmsetup test expects "0 32768 thin-pool ... 128 32768 1 skip_block_zeroing"
    # for 16 MiB loop devices; 16 MiB / 64 KiB = 256 blocks, so our low water mark is clamped
    table = thin_pool_table("/dev/loop1", "/dev/loop0", 16 * 1024 * 1024, 128, 32768)
    assert table == "0 32768 thin-pool /dev/loop1 /dev/loop0 128 255 1 skip_block_zeroing"


def test_thin_pool_table_keeps_the_low_water_mark_when_the_pool_is_large() -> None:
    table = thin_pool_table("/dev/loop1", "/dev/loop0", 100 * 1024**3, 128, 32768, skip_block_zeroing=False)
    assert table == "0 209715200 thin-pool /dev/loop1 /dev/loop0 128 32768"


def test_thin_pool_table_can_fail_writes_when_full_instead_of_queueing() -> None:
    table = thin_pool_table("/dev/loop1", "/dev/loop0", 1024**3, 128, 32768, error_if_no_space=True)
    assert table.endswith(" 128 16383 2 skip_block_zeroing error_if_no_space")


def test_thin_table_points_at_the_pool_by_path() -> None:
    # kernel thin-provisioning.rst: dmsetup create thin --table "0 2097152 thin /dev/mapper/pool 0"
    assert thin_table("pool", 0, 2097152 * 512) == "0 2097152 thin /dev/mapper/pool 0"
    assert (
        thin_table("/dev/mapper/pool", 1, 1024**3, "/dev/image")
        == "0 2097152 thin /dev/mapper/pool 1 /dev/image"
    )


def test_messages_follow_the_kernel_documentation() -> None:
    assert create_thin_message(0) == "create_thin 0"
    assert create_snap_message(1, 0) == "create_snap 1 0"
    assert delete_message(7) == "delete 7"


@pytest.mark.parametrize("bad", [-1, MAX_THIN_ID + 1])
def test_thin_ids_are_24_bit(bad: int) -> None:
    with pytest.raises(InvalidArgument):
        create_thin_message(bad)
    with pytest.raises(InvalidArgument):
        create_snap_message(1, bad)


def test_device_path_is_idempotent() -> None:
    assert device_path("pool-snap-3") == "/dev/mapper/pool-snap-3"
    assert device_path("/dev/mapper/pool-snap-3") == "/dev/mapper/pool-snap-3"


def test_info_args_keep_the_name_out_of_the_separator() -> None:
    # lvm2 issue #178: "--separator <name>" swallowed the name and listed every device
    args = info_args("pool-snap-1")
    assert args[-3:] == ["--separator", " ", "pool-snap-1"]


# -- status ------------------------------------------------------------------------------


def test_pool_status_from_a_dmsetup_status_listing() -> None:
    # captured (blog walkthrough, older kernel without the needs_check field)
    st = parse_pool_status(
        "pool: 0 20971520 thin-pool 0 280/4161600 780/163840 - rw discard_passdown queue_if_no_space "
    )
    assert (st.used_metadata_blocks, st.total_metadata_blocks) == (280, 4161600)
    assert (st.used_data_blocks, st.total_data_blocks) == (780, 163840)
    assert st.mode == "rw" and st.discard_passdown and not st.error_if_no_space
    assert not st.full


def test_pool_status_with_a_held_metadata_root() -> None:
    # captured (thin_delta under reserve_metadata_snap)
    st = parse_pool_status(
        "0 2097152 thin-pool 0 1698/16384 7257/16384 95 rw discard_passdown queue_if_no_space - 1024"
    )
    assert st.held_metadata_root == "95"
    assert st.used_data_blocks == 7257 and not st.needs_check and not st.full


def test_pool_out_of_data_space_is_full() -> None:
    st = parse_pool_status(
        "0 524288 thin-pool 0 120/2048 1024/1024 - out_of_data_space discard_passdown queue_if_no_space - 512"
    )
    assert st.mode == "out_of_data_space" and st.data_full and st.full


def test_pool_with_exhausted_metadata_is_full() -> None:
    st = parse_pool_status(
        "0 524288 thin-pool 0 2048/2048 10/1024 - ro no_discard_passdown error_if_no_space needs_check 512"
    )
    assert st.metadata_full and st.full and st.needs_check and st.error_if_no_space
    assert not st.data_full


def test_failed_pool_is_full() -> None:
    st = parse_pool_status("0 209715200 thin-pool Fail")
    assert st.mode == "Fail" and st.full


def test_pool_status_rejects_other_targets() -> None:
    with pytest.raises(FailedPrecondition):
        parse_pool_status("0 2097152 thin 99840 2097151")


def test_thin_status_counts_mapped_sectors() -> None:
    # captured: "thin: 0 2097152 thin 99840 2097151"
    st = parse_thin_status("thin: 0 2097152 thin 99840 2097151")
    assert st.mapped_sectors == 99840 and st.mapped_bytes == 99840 * 512
    assert st.highest_mapped_sector == 2097151


def test_thin_status_of_an_unwritten_device() -> None:
    # containerd's dmsetup test: a fresh 1024-byte thin device reports params ["0", "-"]
    st = parse_thin_status("0 2 thin 0 -")
    assert st.mapped_bytes == 0 and st.highest_mapped_sector is None


def test_generic_status_line() -> None:
    st = parse_status("fedora-root: 0 104857600 linear ")
    assert (st.start, st.length, st.target, st.params) == (0, 104857600, "linear", ())
    with pytest.raises(FailedPrecondition):
        parse_status("")


# -- info, ls, targets ------------------------------------------------------------------


def test_parse_info_reads_attributes() -> None:
    out = "test-pool dm-0 L--w 253 0 1 1 0\ntest-device dm-1 LIsw 253 1 0 1 3\n"
    pool, dev = parse_info(out)
    assert pool.name == "test-pool" and pool.table_live and not pool.suspended and pool.open_count == 1
    assert dev.suspended and dev.table_inactive and (dev.major, dev.minor, dev.event_number) == (253, 1, 3)


def test_parse_info_no_devices() -> None:
    # captured (lvm2 issue #178): "No devices found", exit 0
    assert parse_info("No devices found\n") == []


def test_parse_info_rejects_garbage() -> None:
    with pytest.raises(FailedPrecondition):
        parse_info("Device does not exist.")


def test_parse_ls_both_number_styles() -> None:
    out = "capsa-pool\t(253:0)\ncapsa-pool-snap-1\t(253, 1)\n"
    assert parse_ls(out) == {"capsa-pool": (253, 0), "capsa-pool-snap-1": (253, 1)}
    assert parse_ls("No devices found\n") == {}


def test_parse_targets() -> None:
    out = "thin-pool        v1.23.0\nthin             v1.23.0\nstriped          v1.6.0\nlinear           v1.4.0\nerror            v1.7.0\n"
    assert parse_targets(out)["thin-pool"] == "v1.23.0"
    assert "snapshot" not in parse_targets(out)


# -- errors ------------------------------------------------------------------------------

CAPTURED_ERRORS = [
    # (output, expected class, errno)
    (
        "device-mapper: message ioctl on ember-pool failed: File exists\nCommand failed.\n",
        DeviceExistsError,
        "EEXIST",
    ),
    (
        "device-mapper: remove ioctl on synthetic-33181afa-87dd-11e3-9c3d-3085a99c4b04 failed: "
        "Device or resource busy\nCommand failed\n",
        DeviceExistsError,
        "EBUSY",
    ),
    (
        "device-mapper: remove ioctl on ocs-deviceset-thin-csi-1-data-0cg76k-block-dmcrypt  failed: "
        "No such device or address\nCommand failed.\n",
        DeviceNotFoundError,
        "ENXIO",
    ),
    ("Device does not exist.\nCommand failed.\n", DeviceNotFoundError, "ENXIO"),
    (
        "Device /dev/mapper/snapshotter-suite-pool-snap-1 not found\nCommand failed.\n",
        DeviceNotFoundError,
        "ENOENT",
    ),
    (
        "device-mapper: message ioctl on kstest  failed: No data available\nCommand failed.\n",
        DeviceNotFoundError,
        "ENODATA",
    ),
    (
        "device-mapper: message ioctl on dust1  failed: Invalid argument\nCommand failed\n",
        FailedPrecondition,
        "EINVAL",
    ),
    (  # this host: the kernel has no device-mapper
        "/dev/mapper/control: open failed: No such device\n"
        "Failure to communicate with kernel device-mapper driver.\n"
        "Check that device-mapper is available in the kernel.\n"
        "Incompatible libdevmapper 1.02.185 (2022-05-18) and kernel driver (unknown version).\n"
        "Command failed.\n",
        Unsupported,
        "ENODEV",
    ),
    (  # libdevmapper's format with strerror(ENOSPC), what dm-thin returns when metadata runs out
        "device-mapper: message ioctl on capsa-pool  failed: No space left on device\nCommand failed.\n",
        PoolFullError,
        "ENOSPC",
    ),
    (  # dm-thin refuses messages in read-only/fail mode with EOPNOTSUPP (pool_message)
        "device-mapper: message ioctl on capsa-pool  failed: Operation not supported\nCommand failed.\n",
        FailedPrecondition,
        "EOPNOTSUPP",
    ),
]


@pytest.mark.parametrize(("output", "cls", "errno_name"), CAPTURED_ERRORS)
def test_classify_error(output: str, cls: type, errno_name: str) -> None:
    err = classify_error(["message", "pool", "0", "create_thin 1"], output, 1)
    assert type(err) is cls
    assert err.detail["errno"] == errno_name
    assert err.detail["command"] == "dmsetup message pool 0 create_thin 1"
    assert output.strip().splitlines()[0] in str(err)


def test_unknown_failure_keeps_the_output() -> None:
    err = classify_error(["create", "x"], "something odd happened\n", 2)
    assert type(err) is FailedPrecondition and "something odd happened" in str(err)
    assert err.detail["returncode"] == 2
