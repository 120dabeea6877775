"""Thin ctypes wrappers for the Linux syscalls Python 3.11 lacks, and their constants.

Nothing else lives here: policy (what to mount where, in which namespace)
belongs to ``capsa.runtime``. Import the calls and the named constants from
this package::

    from capsa import linux
    fd = linux.open_tree(linux.AT_FDCWD, "/srv/data", linux.OPEN_TREE_CLONE | linux.AT_RECURSIVE)
"""

from capsa.linux import constants as _constants
from capsa.linux.constants import *  # noqa: F403 - the constants are the public surface
from capsa.linux.syscalls import (
    MountAttr,
    OpenHow,
    fsconfig,
    fsmount,
    fsopen,
    madvise,
    mount,
    mount_setattr,
    move_mount,
    open_tree,
    openat2,
    pidfd_open,
    pidfd_send_signal,
    pivot_root,
    setns,
    umount2,
    unshare,
)

__all__ = [
    "MountAttr",
    "OpenHow",
    "fsconfig",
    "fsmount",
    "fsopen",
    "madvise",
    "mount",
    "mount_setattr",
    "move_mount",
    "open_tree",
    "openat2",
    "pidfd_open",
    "pidfd_send_signal",
    "pivot_root",
    "setns",
    "umount2",
    "unshare",
] + sorted(name for name in vars(_constants) if name.isupper())
