"""Small filesystem and process helpers shared by the backends."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from capsa.errors import CapsaError, FailedPrecondition, Timeout, Unsupported
from capsa.snapshots.base import Usage

__all__ = [
    "MountEntry",
    "diff_usage",
    "disk_usage",
    "fs_type_of",
    "mount_entries",
    "parse_mountinfo",
    "remove_tree",
    "run_tool",
]


def run_tool(
    args: Sequence[str],
    *,
    error: type[CapsaError] = FailedPrecondition,
    timeout: float = 120.0,
) -> str:
    """Run an external tool; its stdout on success, a typed error naming it otherwise."""
    try:
        proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError as exc:
        raise Unsupported(f"{args[0]} is not installed (needed for: {' '.join(args)})") from exc
    except subprocess.TimeoutExpired as exc:
        raise Timeout(f"{' '.join(args)} did not finish within {timeout} s") from exc
    if proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip()
        raise error(
            f"{' '.join(args)} failed (exit {proc.returncode}): {msg}",
            detail={"command": list(args), "output": msg, "returncode": proc.returncode},
        )
    return proc.stdout


def _walk(root: Path) -> Iterator[tuple[Path, os.stat_result]]:
    """(relative path, lstat result) of every entry below ``root``, depth first."""
    stack = [Path()]
    while stack:
        rel = stack.pop()
        try:
            with os.scandir(root / rel) as it:
                entries = list(it)
        except FileNotFoundError:
            continue
        for entry in entries:
            st = entry.stat(follow_symlinks=False)
            child = rel / entry.name
            yield child, st
            if stat.S_ISDIR(st.st_mode):
                stack.append(child)


def disk_usage(root: Path) -> Usage:
    """Allocated bytes and number of objects below ``root`` (hard links counted once)."""
    seen: set[tuple[int, int]] = set()
    size = inodes = 0
    for _rel, st in _walk(root):
        ident = (st.st_dev, st.st_ino)
        if ident in seen:
            continue
        seen.add(ident)
        inodes += 1
        size += st.st_blocks * 512
    return Usage(size=size, inodes=inodes)


def diff_usage(root: Path, parent: Path | None) -> Usage:
    """Usage of what ``root`` holds that ``parent`` does not (for full-tree snapshots).

    A btrfs snapshot keeps inode numbers and ctimes of untouched entries, so an
    entry counts as this layer's own when the parent lacks its path or has a
    different (inode, ctime) there — the same test containerd's DiffUsage makes.
    """
    if parent is None:
        return disk_usage(root)
    seen: set[tuple[int, int]] = set()
    size = inodes = 0
    for rel, st in _walk(root):
        try:
            pst = os.lstat(parent / rel)
            unchanged = pst.st_ino == st.st_ino and pst.st_ctime_ns == st.st_ctime_ns
        except (FileNotFoundError, NotADirectoryError):
            unchanged = False
        if unchanged:
            continue
        ident = (st.st_dev, st.st_ino)
        if ident in seen:
            continue
        seen.add(ident)
        inodes += 1
        size += st.st_blocks * 512
    return Usage(size=size, inodes=inodes)


def remove_tree(path: Path) -> None:
    """``rm -rf`` that tolerates a concurrent remover (cleanup may race a remove)."""

    def onerror(func: object, p: str, exc_info: tuple[type, BaseException, object]) -> None:
        if not isinstance(exc_info[1], FileNotFoundError):
            raise exc_info[1]

    if path.is_symlink() or (path.exists() and not path.is_dir()):
        path.unlink(missing_ok=True)
        return
    shutil.rmtree(path, onerror=onerror)


@dataclass(frozen=True)
class MountEntry:
    mount_point: str
    fs_type: str
    source: str
    options: str


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 4 <= len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[MountEntry]:
    """Parse /proc/self/mountinfo (proc(5)): fields, optional fields, ``-``, fs type, source, super options."""
    entries = []
    for line in text.splitlines():
        parts = line.split()
        if "-" not in parts:
            continue
        sep = parts.index("-")
        if sep < 6 or len(parts) < sep + 3:
            continue
        entries.append(
            MountEntry(
                mount_point=_unescape(parts[4]),
                fs_type=parts[sep + 1],
                source=_unescape(parts[sep + 2]),
                options=parts[5] + ("," + parts[sep + 3] if len(parts) > sep + 3 else ""),
            )
        )
    return entries


def mount_entries() -> list[MountEntry]:
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        return parse_mountinfo(f.read())


def fs_type_of(path: Path) -> str:
    """Filesystem type of the mount holding ``path`` (the innermost, last-mounted one)."""
    target = os.path.realpath(path)
    best: MountEntry | None = None
    for entry in mount_entries():
        mp = entry.mount_point
        inside = target == mp or target.startswith(mp.rstrip("/") + "/")
        if inside and (best is None or len(mp) >= len(best.mount_point)):
            best = entry
    return best.fs_type if best else ""
