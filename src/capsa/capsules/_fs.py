"""Small filesystem helpers for the capsule store (read-only trees, staging locks)."""

from __future__ import annotations

import fcntl
import os
import secrets
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from capsa.errors import from_os_error, is_disk_full

__all__ = ["is_stale", "remove_tree", "staging_dir", "tree_bytes"]


def remove_tree(path: Path) -> None:
    """Delete a (read-only) tree; a tree that is already gone is fine."""

    def make_writable(func: Callable[..., Any], failed: str, _exc: Any) -> None:
        parent = os.path.dirname(failed)
        try:
            os.chmod(parent, 0o700)
            func(failed)
        except FileNotFoundError:
            pass

    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
        return
    if path.exists():
        os.chmod(path, 0o700)
        shutil.rmtree(path, onerror=make_writable)


def tree_bytes(path: Path) -> int:
    """Apparent size of the regular files below ``path``, each inode counted once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for directory, _dirs, files in os.walk(path):
        for name in files:
            st = os.lstat(os.path.join(directory, name))
            if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


@contextmanager
def staging_dir(parent: Path) -> Iterator[Path]:
    """A private directory under ``parent``, flock'ed while in use and removed afterwards.

    The lock is what tells gc a leftover staging dir (from a crash) from one in use.
    A full disk met while staging (here or in the caller's block) is raised as
    ``LimitExceeded`` naming the path, after everything staged is removed.
    """
    path = parent / f"{os.getpid()}-{secrets.token_hex(8)}"
    try:
        path.mkdir(mode=0o700)
    except OSError as exc:
        raise from_os_error(exc, path, what="capsule staging") from exc
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield path
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            raise from_os_error(exc, exc.filename or path, what="capsule staging") from exc
    finally:
        try:
            remove_tree(path)
        finally:
            os.close(fd)


def is_stale(path: Path, *, min_age_s: float = 60.0) -> bool:
    """True when ``path`` is an abandoned staging dir: old enough and nobody holds its lock.

    The age check covers the instant between a staging dir's mkdir and its flock.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    if time.time() - os.fstat(fd).st_mtime < min_age_s:
        os.close(fd)
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # closing drops our lock; the caller removes the tree next
    return True
