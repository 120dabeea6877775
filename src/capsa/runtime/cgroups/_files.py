"""Small, fast file operations on cgroupfs, with OS errors turned into capsa errors that name the file."""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from capsa.errors import CapsaError, FailedPrecondition, InvalidArgument, Unsupported

__all__ = [
    "KernelTree",
    "TreeOps",
    "make_dir",
    "read_int",
    "read_text",
    "try_read",
    "wait_until",
    "write_file",
]


class TreeOps(Protocol):
    """How cgroup directories are made and removed.

    On cgroupfs the kernel fills a new directory with its control files and rmdir removes them; a fake
    tree for tests (a plain directory in tmp_path) supplies functions that do the same.
    """

    def mkdir(self, path: Path) -> None: ...

    def rmdir(self, path: Path) -> None: ...


class KernelTree:
    def mkdir(self, path: Path) -> None:
        os.mkdir(path, 0o755)

    def rmdir(self, path: Path) -> None:
        os.rmdir(path)


def make_dir(tree: TreeOps, path: Path) -> None:
    """mkdir through ``tree``; FileExistsError and FileNotFoundError pass through for the caller to judge."""
    try:
        tree.mkdir(path)
    except (FileExistsError, FileNotFoundError):
        raise  # the caller judges: a name clash, or a parent removed under it (recreated and retried)
    except OSError as exc:
        # e.g. EACCES, or ENOSPC/EAGAIN from cgroup.max.descendants / cgroup.max.depth
        raise FailedPrecondition(f"cannot create cgroup directory {path}: {exc.strerror or exc}") from None


def write_file(path: Path, value: str, *, what: str) -> None:
    """Write one value to a control file; ``what`` names the limit or action for the error message."""
    data = value.encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
    except OSError as exc:
        raise _error(exc, path, value, what) from None
    try:
        os.write(fd, data)
    except OSError as exc:
        raise _error(exc, path, value, what) from None
    finally:
        os.close(fd)


def _error(exc: OSError, path: Path, value: str, what: str) -> CapsaError:
    reason = exc.strerror or str(exc)
    if exc.errno == errno.ENOENT:
        return Unsupported(
            f"cannot apply {what}: {path} does not exist (kernel or cgroup lacks this interface)"
        )
    if exc.errno in (errno.EINVAL, errno.ERANGE, errno.EOVERFLOW):
        return InvalidArgument(f"cannot apply {what}: the kernel rejected {value!r} in {path}: {reason}")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return FailedPrecondition(f"cannot apply {what}: no permission to write {path}: {reason}")
    return FailedPrecondition(f"cannot apply {what}: writing {value!r} to {path} failed: {reason}")


def read_text(path: Path) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode()


def try_read(path: Path) -> str | None:
    """The file's text, or None when this kernel/cgroup does not have it."""
    try:
        return read_text(path)
    except FileNotFoundError:
        return None


def read_int(path: Path) -> int | None:
    text = try_read(path)
    if text is None:
        return None
    text = text.strip()
    return int(text) if text.lstrip("-").isdigit() else None


def procs_recursive(directory: Path) -> list[int]:
    """cgroup.procs of ``directory`` and every nested cgroup (a job may make its own sub-cgroups)."""
    pids: list[int] = []
    stack = [directory]
    while stack:
        d = stack.pop()
        try:
            text = read_text(d / "cgroup.procs")
        except FileNotFoundError:
            continue
        pids.extend(int(x) for x in text.split())
        try:
            with os.scandir(d) as it:
                stack.extend(Path(e.path) for e in it if e.is_dir(follow_symlinks=False))
        except FileNotFoundError:
            continue
    return pids


def remove_tree(tree: TreeOps, directory: Path, deadline: float) -> None:
    """rmdir ``directory`` and nested cgroups bottom-up; absent is fine; EBUSY is retried until ``deadline``."""
    try:
        with os.scandir(directory) as it:
            children = [Path(e.path) for e in it if e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return
    for child in children:
        remove_tree(tree, child, deadline)
    while True:
        try:
            tree.rmdir(directory)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            # A task killed a moment ago may still be detaching from the cgroup.
            if exc.errno != errno.EBUSY or time.monotonic() >= deadline:
                raise FailedPrecondition(f"cannot remove cgroup {directory}: {exc.strerror}") from None
            time.sleep(0.005)


def wait_until(predicate: Callable[[], bool], deadline: float) -> bool:
    """Poll ``predicate`` with a short, growing interval until it holds or ``deadline`` passes."""
    interval = 0.0002
    while True:
        if predicate():
            return True
        now = time.monotonic()
        if now >= deadline:
            return False
        time.sleep(min(interval, deadline - now))
        interval = min(interval * 2, 0.02)
