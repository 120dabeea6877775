"""The ext4 filesystem on each base thin device: mkfs, inode accounting."""

from __future__ import annotations

from capsa.snapshots._fsutil import run_tool

__all__ = ["mkfs_ext4", "parse_tune2fs", "used_inodes"]


def mkfs_ext4(device: str, options: str) -> None:
    args = ["mkfs.ext4", "-q", "-F"]
    if options:
        args += ["-E", options]
    run_tool([*args, device], timeout=600)


def parse_tune2fs(text: str) -> dict[str, str]:
    """``tune2fs -l`` / ``dumpe2fs -h`` → {"Inode count": "65536", ...}."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip():
            out[key.strip()] = value.strip()
    return out


def used_inodes(device: str) -> int:
    """Inodes in use according to the superblock (exact once unmounted, approximate while mounted)."""
    fields = parse_tune2fs(run_tool(["tune2fs", "-l", device]))
    return int(fields["Inode count"]) - int(fields["Free inodes"])
