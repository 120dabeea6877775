"""device-mapper thin-pool snapshotter (containerd's devmapper, driven through dmsetup)."""

from __future__ import annotations

import os
from pathlib import Path

from capsa.errors import CapsaError
from capsa.snapshots.devmapper.dmsetup import Dmsetup, PoolStatus, ThinStatus
from capsa.snapshots.devmapper.pool import DeviceRecord, DeviceState, ThinPool
from capsa.snapshots.devmapper.snapshotter import DevmapperSnapshotter

__all__ = [
    "DeviceRecord",
    "DeviceState",
    "DevmapperSnapshotter",
    "Dmsetup",
    "PoolStatus",
    "ThinPool",
    "ThinStatus",
    "thin_pool_available",
]


def thin_pool_available(dmsetup: Dmsetup | None = None) -> tuple[bool, str]:
    """Whether this kernel can run thin pools, and if not, why (a test skip reason)."""
    try:
        fd = os.open("/dev/mapper/control", os.O_RDWR)
    except OSError as exc:
        return False, f"device-mapper unavailable: cannot open /dev/mapper/control ({exc.strerror})"
    os.close(fd)
    try:
        targets = (dmsetup or Dmsetup()).targets()
    except CapsaError as exc:
        return False, f"device-mapper unavailable: dmsetup targets failed ({exc})"
    if "thin-pool" not in targets and not _thin_module_present():
        return False, "dm-thin unavailable: `dmsetup targets` lists no thin-pool target"
    return True, ""


def _thin_module_present() -> bool:
    """dm-thin as a not-yet-loaded module still works: the kernel loads it on first use."""
    release = os.uname().release
    moddir = Path("/lib/modules") / release / "kernel" / "drivers" / "md"
    return Path("/sys/module/dm_thin_pool").exists() or any(moddir.glob("dm-thin-pool.ko*"))
