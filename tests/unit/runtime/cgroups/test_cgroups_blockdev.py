"""Finding the whole disk(s) behind a path, on a fake sysfs and mountinfo."""

from __future__ import annotations

from pathlib import Path

import pytest

from capsa.errors import FailedPrecondition
from capsa.runtime.cgroups import BlockResolver


def _link_block(sysfs: Path, disk_dir: Path, dev: str) -> None:
    (disk_dir / "dev").write_text(dev + "\n")
    (sysfs / "dev/block" / dev).symlink_to(disk_dir)


@pytest.fixture
def sysfs(fake_sysfs: Path) -> Path:
    """Adds to the fake: dm-0 (253:0) over sda1 and sdb (8:16); loop0 (7:0) backed by /img/disk.img; nvme."""
    virt = fake_sysfs / "devices/virtual/block"
    sdb = fake_sysfs / "devices/pci0000:00/block/sdb"
    sdb.mkdir(parents=True)
    _link_block(fake_sysfs, sdb, "8:16")
    dm = virt / "dm-0"
    (dm / "slaves").mkdir(parents=True)
    _link_block(fake_sysfs, dm, "253:0")
    (dm / "slaves/sda1").symlink_to(fake_sysfs / "devices/pci0000:00/block/sda/sda1")
    (dm / "slaves/sdb").symlink_to(sdb)
    loop = virt / "loop0"
    (loop / "loop").mkdir(parents=True)
    (loop / "slaves").mkdir()
    (loop / "loop/backing_file").write_text("/img/disk.img\n")
    _link_block(fake_sysfs, loop, "7:0")
    nvme = fake_sysfs / "devices/pci0000:00/nvme/nvme0/nvme0n1"
    (nvme / "nvme0n1p3").mkdir(parents=True)
    _link_block(fake_sysfs, nvme, "259:0")
    (nvme / "nvme0n1p3/partition").write_text("3\n")
    _link_block(fake_sysfs, nvme / "nvme0n1p3", "259:3")
    return fake_sysfs


MOUNTINFO = """\
22 1 259:3 / / rw - ext4 /dev/nvme0n1p3 rw
30 22 0:45 / /var/lib/capsa/job1/rootfs rw - overlay overlay rw,lowerdir=/img/l1:/img/l2,upperdir=/data/up,workdir=/data/wk
31 22 0:46 / /var/lib/capsa/ro rw - overlay overlay ro,lowerdir=/srv/lower1:/srv/lower2
32 22 0:47 / /mnt/btrfs rw - btrfs /dev/loop0 rw,subvolid=5
33 22 0:48 / /tmp rw - tmpfs tmpfs rw
"""


def _resolver(sysfs: Path, devs: dict[str, tuple[int, int]]) -> BlockResolver:
    def dev_of(path: Path) -> tuple[int, int]:
        for prefix in sorted(devs, key=len, reverse=True):
            if str(path).startswith(prefix):
                return devs[prefix]
        raise FileNotFoundError(2, "No such file or directory", str(path))

    nodes = {"/dev/loop0": (7, 0), "/dev/nvme0n1p3": (259, 3)}
    return BlockResolver(
        sysfs=sysfs,
        mountinfo=lambda: MOUNTINFO,
        dev_of=dev_of,
        block_node=lambda p: nodes.get(str(p)),
    )


def test_a_partition_resolves_to_its_whole_disk(sysfs: Path) -> None:
    assert _resolver(sysfs, {"/": (8, 1)}).for_path(Path("/data/f")) == ((8, 0),)


def test_a_whole_disk_resolves_to_itself(sysfs: Path) -> None:
    assert _resolver(sysfs, {"/": (8, 16)}).for_path(Path("/f")) == ((8, 16),)


def test_device_mapper_resolves_to_every_disk_under_its_slaves(sysfs: Path) -> None:
    assert _resolver(sysfs, {"/": (253, 0)}).for_path(Path("/f")) == ((8, 0), (8, 16))


def test_loop_device_resolves_to_the_disk_holding_its_backing_file(sysfs: Path) -> None:
    resolver = _resolver(sysfs, {"/": (7, 0), "/img": (259, 3)})
    assert resolver.for_path(Path("/mnt/x")) == ((259, 0),)
    assert resolver.for_device((7, 0)) == ((259, 0),)


def test_overlay_resolves_through_its_upper_directory(sysfs: Path) -> None:
    resolver = _resolver(sysfs, {"/var/lib/capsa/job1/rootfs": (0, 45), "/data": (8, 1), "/": (259, 3)})
    assert resolver.for_path(Path("/var/lib/capsa/job1/rootfs/etc/passwd")) == ((8, 0),)


def test_read_only_overlay_resolves_through_its_top_lower_layer(sysfs: Path) -> None:
    resolver = _resolver(sysfs, {"/var/lib/capsa/ro": (0, 46), "/srv/lower1": (8, 16), "/": (259, 3)})
    assert resolver.for_path(Path("/var/lib/capsa/ro/a")) == ((8, 16),)


def test_btrfs_subvolume_with_an_anonymous_device_resolves_through_the_mount_source(sysfs: Path) -> None:
    # The subvolume's device (0:99) is not in mountinfo: the innermost mount containing it decides.
    resolver = _resolver(sysfs, {"/mnt/btrfs/sub": (0, 99), "/img": (8, 16), "/": (259, 3)})
    assert resolver.for_path(Path("/mnt/btrfs/sub/file")) == ((8, 16),)


def test_tmpfs_has_no_disk_and_says_so(sysfs: Path) -> None:
    with pytest.raises(FailedPrecondition, match=r"io_path /tmp/x is on tmpfs .* no backing block device"):
        _resolver(sysfs, {"/tmp": (0, 48), "/": (259, 3)}).for_path(Path("/tmp/x"))


def test_missing_io_path_names_the_path(sysfs: Path) -> None:
    resolver = _resolver(sysfs, {})
    with pytest.raises(FailedPrecondition, match="cannot stat io_path /nope"):
        resolver.for_path(Path("/nope"))


def test_a_cycle_of_loop_devices_is_cut(sysfs: Path) -> None:
    (sysfs / "devices/virtual/block/loop0/loop/backing_file").write_text("/loopy/img\n")
    with pytest.raises(FailedPrecondition, match="deeper than"):
        _resolver(sysfs, {"/loopy": (7, 0), "/": (7, 0)}).for_path(Path("/x"))
