"""Loop devices over regular files (btrfs images, thin-pool data/metadata files)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from capsa.errors import FailedPrecondition, Unavailable
from capsa.snapshots._fsutil import run_tool

__all__ = ["attach", "create_sparse", "detach", "devices_for"]


def create_sparse(path: Path, size_bytes: int) -> None:
    """Create ``path`` (which must not exist) as a sparse, all-zero file of ``size_bytes``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "xb") as f:
        f.truncate(size_bytes)
        os.fsync(f.fileno())


def devices_for(path: Path) -> list[str]:
    """Loop devices currently backed by ``path``."""
    out = run_tool(["losetup", "--list", "--noheadings", "--output", "NAME", "--associated", str(path)])
    return [line.strip() for line in out.splitlines() if line.strip()]


def attach(path: Path) -> str:
    """Attach ``path`` to a free loop device and return the device (reusing an existing one)."""
    existing = devices_for(path)
    if existing:
        return existing[0]
    dev = run_tool(["losetup", "--find", "--show", str(path)], error=Unavailable).strip()
    if not dev.startswith("/dev/"):
        raise FailedPrecondition(f"losetup returned an unexpected device name {dev!r} for {path}")
    return dev


def detach(device: str, *, timeout: float = 5.0) -> None:
    """Detach ``device`` and wait until the kernel has let go of the backing file.

    A loop device still held (a filesystem being torn down) only gets
    auto-clear set and is released on its last close, asynchronously.
    """
    run_tool(["losetup", "--detach", device])
    backing = Path("/sys/block") / os.path.basename(device) / "loop" / "backing_file"
    deadline = time.monotonic() + timeout
    while backing.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
