"""Mask and freeze the kernel interfaces a job can see under /proc and /sys (runc's defaults).

Called by stage two inside the job's mount namespace, after the job's ``/proc``
is mounted at ``root/proc`` and before ``pivot_root`` (host paths such as
``/dev/null`` and ``/sys`` are still reachable then). Order:
:func:`mount_sys_readonly`, :func:`mask_proc`, :func:`readonly_paths`.

* **Masked** (:data:`MASKED_PATHS`): a file gets the host's ``/dev/null``
  bound over it (reads are empty); a directory gets an empty read-only tmpfs.
  These leak kernel memory (``kcore``), keys, timers and scheduler internals
  of the host, hardware details, or power counters usable as a side channel
  (``powercap``, the PLATYPUS attack). The ``/dev/null`` used is checked to be
  the real null device first (runc's CVE-2025-31133 was binding a substitute).
* **Read-only** (:data:`READONLY_PATHS`): bound onto themselves and remounted
  read-only: ``/proc/sys`` (kernel tunables), ``/proc/sysrq-trigger`` (reboot
  the host by a write), ``/proc/irq``, ``/proc/bus``, ``/proc/fs``.

Paths that do not exist on this kernel are skipped; symlinks are never
followed (none of these paths is one on a real /proc).
"""

from __future__ import annotations

import errno
import os
import stat

from capsa import linux

__all__ = [
    "MASKED_PATHS",
    "READONLY_PATHS",
    "bind_sys_readonly",
    "mask_proc",
    "mount_sys_readonly",
    "readonly_paths",
]

MASKED_PATHS: tuple[str, ...] = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
    "/sys/devices/virtual/tpm",
)
READONLY_PATHS: tuple[str, ...] = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")

_KERNEL_FS_FLAGS = linux.MS_RDONLY | linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC
_NULL_DEVICE = os.makedev(1, 3)


def _lstat(path: str) -> os.stat_result | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return None if stat.S_ISLNK(st.st_mode) else st


def _open_null() -> int:
    fd = os.open("/dev/null", os.O_PATH | os.O_CLOEXEC)
    st = os.fstat(fd)
    if not stat.S_ISCHR(st.st_mode) or st.st_rdev != _NULL_DEVICE:
        os.close(fd)
        raise OSError(errno.EINVAL, "mask_proc: /dev/null is not the null device (char 1:3)", "/dev/null")
    return fd


def mask_proc(root: str, paths: tuple[str, ...] = MASKED_PATHS) -> tuple[str, ...]:
    """Mask ``paths`` (job paths such as ``/proc/kcore``) under ``root``; returns those masked."""
    masked: list[str] = []
    null_fd: int | None = None
    try:
        for path in paths:
            target = root + path
            st = _lstat(target)
            if st is None:
                continue
            if stat.S_ISDIR(st.st_mode):
                linux.mount("tmpfs", target, "tmpfs", _KERNEL_FS_FLAGS, "mode=0555,size=4k,nr_inodes=2")
            else:
                if null_fd is None:
                    null_fd = _open_null()
                # Clone the verified inode's mount, not a path that could be swapped meanwhile.
                tree = linux.open_tree(
                    null_fd, "", linux.OPEN_TREE_CLONE | linux.OPEN_TREE_CLOEXEC | linux.AT_EMPTY_PATH
                )
                try:
                    linux.move_mount(tree, "", linux.AT_FDCWD, target, linux.MOVE_MOUNT_F_EMPTY_PATH)
                finally:
                    os.close(tree)
            masked.append(path)
    finally:
        if null_fd is not None:
            os.close(null_fd)
    return tuple(masked)


def readonly_paths(root: str, paths: tuple[str, ...] = READONLY_PATHS) -> tuple[str, ...]:
    """Make ``paths`` under ``root`` read-only (bind onto itself, then remount); returns those done."""
    done: list[str] = []
    for path in paths:
        target = root + path
        if _lstat(target) is None:
            continue
        linux.mount(target, target, None, linux.MS_BIND | linux.MS_REC, None)
        linux.mount(None, target, None, linux.MS_BIND | linux.MS_REMOUNT | _KERNEL_FS_FLAGS, None)
        done.append(path)
    return tuple(done)


def mount_sys_readonly(root: str) -> str:
    """Mount a read-only sysfs at ``root/sys``; returns ``"sysfs"`` or ``"bind"`` (the fallback).

    A fresh sysfs shows the network devices of the caller's network namespace, so call this
    once the job is in its final one. The kernel refuses a new sysfs when the caller lacks
    CAP_SYS_ADMIN over that namespace's owning user namespace (a job in a user namespace
    sharing the host network); then the host's /sys is bound instead, recursively (a
    non-recursive bind is refused there when submounts are locked) and read-only on every
    submount at once. Its submounts (cgroup, debugfs, tracing, securityfs ...) stay visible
    read-only in that case, as with rootless runc.
    """
    target = root + "/sys"
    try:
        linux.mount("sysfs", target, "sysfs", _KERNEL_FS_FLAGS, None)
        return "sysfs"
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EACCES, errno.EINVAL):
            raise
    bind_sys_readonly(target)
    return "bind"


def bind_sys_readonly(target: str, source: str = "/sys") -> None:
    """Attach a recursive, read-only, nosuid/nodev/noexec, private copy of ``source`` at ``target``.

    The copy is made read-only while still detached, so it is never visible writable.
    """
    tree = linux.open_tree(
        linux.AT_FDCWD, source, linux.OPEN_TREE_CLONE | linux.OPEN_TREE_CLOEXEC | linux.AT_RECURSIVE
    )
    try:
        linux.mount_setattr(
            tree, "", linux.AT_EMPTY_PATH | linux.AT_RECURSIVE,
            attr_set=linux.MOUNT_ATTR_RDONLY | linux.MOUNT_ATTR_NOSUID | linux.MOUNT_ATTR_NODEV
            | linux.MOUNT_ATTR_NOEXEC,
            propagation=linux.MS_PRIVATE,
        )
        linux.move_mount(tree, "", linux.AT_FDCWD, target, linux.MOVE_MOUNT_F_EMPTY_PATH)
    finally:
        os.close(tree)
