"""The ext4 filesystem on each base thin device."""

from __future__ import annotations

from capsa.snapshots._fsutil import run_tool

__all__ = ["mkfs_ext4"]


def mkfs_ext4(device: str, options: str) -> None:
    args = ["mkfs.ext4", "-q", "-F"]
    if options:
        args += ["-E", options]
    run_tool([*args, device], timeout=600)
