"""The directory that holds every job's files (``<home>/jobs``), set up so creating job files stays cheap.

Each job start creates about eight inodes there (``<id>/``, ``root/``, ``work/``, ``logs/``, two log
segments, the log's reserve, ``status.json``). ext4 puts a new directory in its parent's block group,
and a filesystem without a journal (as on this host) skips every inode freed in the last one to six
minutes while it looks for a free one in that group, reading its inode table block each time. A burst
of jobs, or the removal of earlier ones, then leaves thousands of such inodes in the one group all job
files go to, and every new inode pays for walking past them: 1.4–2.0 ms of CPU per job start here,
measured with the same directories and files outside capsa (ADR-0017).

``FS_TOPDIR_FL`` (``chattr +T``) marks a directory as the top of separate hierarchies: ext4's Orlov
allocator then spreads its subdirectories over the block groups with the most free inodes, so each
job's files land where few inodes were freed lately (0.11–0.14 ms per job in the same measurement).
The flag is a placement hint only, and it is not inherited (a job's own subdirectories stay beside it).
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
from pathlib import Path

__all__ = ["prepare_jobs_dir"]

log = logging.getLogger("capsa.jobs")

_FS_IOC_GETFLAGS = 0x80086601
_FS_IOC_SETFLAGS = 0x40086602
_FS_TOPDIR_FL = 0x00020000
_LONG = struct.Struct("l")


def prepare_jobs_dir(path: Path) -> bool:
    """Create ``path`` if missing and mark it ``FS_TOPDIR_FL``; True if the flag is set.

    Filesystems without the flag (tmpfs, btrfs, overlayfs ...) simply keep their own placement.
    """
    path.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        log.debug("jobs directory %s: %s", path, exc)
        return False
    try:
        flags = _LONG.unpack(fcntl.ioctl(fd, _FS_IOC_GETFLAGS, _LONG.pack(0)))[0]
        if not flags & _FS_TOPDIR_FL:
            fcntl.ioctl(fd, _FS_IOC_SETFLAGS, _LONG.pack(flags | _FS_TOPDIR_FL))
        return True
    except OSError as exc:   # ENOTTY / EOPNOTSUPP: no such flag here; EPERM: not ours to change
        log.debug("jobs directory %s: cannot mark it a top directory: %s", path, exc)
        return False
    finally:
        os.close(fd)
