"""Snapshotters: where image layers and job root filesystems live on disk.

One interface (:class:`Snapshotter`, containerd's verbs), three backends:
``overlay`` (default), ``btrfs`` and ``devmapper`` (thin-pool). Open one with
:func:`open_snapshotter`; callers never need to know which they hold, except
for :attr:`Snapshotter.apply_style` when unpacking a layer::

    sn = open_snapshotter("overlay", home / "snapshots" / "overlay", db)
    sn.ensure_active("extract-1", parent=None)
    with sn.writable("extract-1") as tree:
        unpack(layer, tree, style=sn.apply_style)
    sn.commit("sha256:<chain id>", "extract-1")
    mounts = sn.prepare("job-42", parent="sha256:<chain id>")
    mount_all(mounts, rootfs)          # in the job's mount namespace
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from capsa.errors import InvalidArgument
from capsa.snapshots.base import ApplyStyle, Info, Kind, Mount, Snapshotter, Usage, WalkFn
from capsa.snapshots.config import BtrfsConfig, DevmapperConfig, OverlayConfig, config_from
from capsa.snapshots.mount import mount_all, mounted, unmount

if TYPE_CHECKING:
    from capsa.snapshots.btrfs import BtrfsPool, BtrfsSnapshotter
    from capsa.snapshots.devmapper import DevmapperSnapshotter, thin_pool_available
    from capsa.snapshots.overlay import OverlaySnapshotter
    from capsa.state.db import Database

# The backends (and SQLite) load on first use: a job's stage two needs only ``Mount`` and
# ``mount_all``, and every module the zygote imports makes each job's execve slower (ADR-0018).
_BACKENDS = {
    "BtrfsPool": "capsa.snapshots.btrfs",
    "BtrfsSnapshotter": "capsa.snapshots.btrfs",
    "DevmapperSnapshotter": "capsa.snapshots.devmapper",
    "thin_pool_available": "capsa.snapshots.devmapper",
    "OverlaySnapshotter": "capsa.snapshots.overlay",
}


def __getattr__(name: str) -> Any:
    module = _BACKENDS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value

__all__ = [
    "KINDS",
    "ApplyStyle",
    "BtrfsConfig",
    "BtrfsPool",
    "BtrfsSnapshotter",
    "DevmapperConfig",
    "DevmapperSnapshotter",
    "Info",
    "Kind",
    "Mount",
    "OverlayConfig",
    "OverlaySnapshotter",
    "Snapshotter",
    "Usage",
    "WalkFn",
    "mount_all",
    "mounted",
    "open_snapshotter",
    "thin_pool_available",
    "unmount",
]

#: accepted backend names (``overlayfs`` is containerd's spelling)
KINDS = ("overlay", "overlayfs", "btrfs", "devmapper")


def open_snapshotter(
    kind: str,
    root: Path | str,
    db: Database,
    config: OverlayConfig | BtrfsConfig | DevmapperConfig | Mapping[str, object] | None = None,
) -> Snapshotter:
    """Open (creating if needed) the ``kind`` snapshotter rooted at ``root``.

    Opening reconciles metadata with disk: storage left by a crash is removed,
    device states are repaired. ``close()`` releases what the backend set up
    (a btrfs loop filesystem, a file-backed thin-pool).
    """
    root = Path(root)
    if kind in ("overlay", "overlayfs"):
        from capsa.snapshots.overlay import OverlaySnapshotter
        return OverlaySnapshotter(root, db, config_from(OverlayConfig, config))
    if kind == "btrfs":
        from capsa.snapshots.btrfs import BtrfsSnapshotter
        return BtrfsSnapshotter(root, db, config_from(BtrfsConfig, config))
    if kind == "devmapper":
        from capsa.snapshots.devmapper import DevmapperSnapshotter
        return DevmapperSnapshotter(root, db, config_from(DevmapperConfig, config))
    raise InvalidArgument(f"unknown snapshotter {kind!r}; expected one of {', '.join(KINDS)}")
