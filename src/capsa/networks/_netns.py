"""Named network namespaces, and running code inside one without forking.

A network namespace is kept alive, with no process in it, by bind-mounting its
nsfs file onto a regular file (``<netns_dir>/<job_id>``), as ``ip netns add``
does; the launcher's stage one joins it with ``setns(fd, CLONE_NEWNET)``.

Why a thread and not a fork: the network namespace is a *per-thread* attribute.
``unshare(CLONE_NEWNET)`` and ``setns(fd, CLONE_NEWNET)`` are allowed in a
multi-threaded process and change only the calling thread (unlike the mount
and user namespaces, which need a single-threaded caller — that is why
:mod:`capsa.runtime.mounts` forks). So every namespace operation here runs in a
fresh, short-lived OS thread that enters the namespace, does its work and
*ends*: it never returns to a pool, so no other code ever runs in the wrong
namespace. Sockets (netlink included) stay bound to the namespace they were
created in, whichever thread uses them later. This is the pattern of the CNI
plugins' ``ns.Do``; it costs a thread start (~0.1 ms) instead of a fork of the
daemon (which holds gRPC threads and must not fork) or an interpreter start.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from capsa import linux

__all__ = ["bind_current", "enter", "is_netns", "remove", "spawn"]

T = TypeVar("T")

_NS_GET_NSTYPE = 0xB703  # _IO(NSIO, 0x3): which namespace type an nsfs fd is


def spawn(fn: Callable[[], T], *, name: str = "capsa-netns") -> T:
    """Run ``fn`` in a new OS thread that dies afterwards; return its result or raise its exception."""
    box: dict[str, object] = {}

    def target() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:  # handed to the caller, who re-raises it
            box["error"] = exc

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["result"]  # type: ignore[return-value]


def enter(path: Path | str) -> None:
    """Move the *calling thread* into the namespace at ``path`` (only from a :func:`spawn` thread)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        linux.setns(fd, linux.CLONE_NEWNET)
    finally:
        os.close(fd)


def bind_current(path: Path) -> None:
    """Give the calling thread a new namespace and pin it at ``path`` (only from a :func:`spawn` thread).

    ``path`` must not exist; on failure nothing is left behind.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
    os.close(fd)
    try:
        linux.unshare(linux.CLONE_NEWNET)
        linux.mount("/proc/thread-self/ns/net", path, None, linux.MS_BIND, None)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        raise


def is_netns(path: Path | str) -> bool:
    """True if ``path`` is a pinned network namespace (not merely a leftover file)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        return fcntl.ioctl(fd, _NS_GET_NSTYPE) == linux.CLONE_NEWNET
    except OSError:
        return False
    finally:
        os.close(fd)


def remove(path: Path | str) -> bool:
    """Unpin and delete ``path``; the namespace dies with its last user. False if nothing was there."""
    found = False
    # A crash between two creations could have stacked binds: unmount until the file is bare.
    for _ in range(8):
        try:
            linux.umount2(path, linux.MNT_DETACH | linux.UMOUNT_NOFOLLOW)
            found = True
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.ENOENT):
                break
            raise
    try:
        os.unlink(path)
        found = True
    except FileNotFoundError:
        pass
    return found
