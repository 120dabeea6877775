"""Kernel ABI constants for the syscalls wrapped in :mod:`capsa.linux`.

Values are the uapi ones (``linux/sched.h``, ``linux/mount.h``, ``linux/fcntl.h``,
``linux/openat2.h``); they are identical on every architecture capsa runs on
(x86_64, aarch64). Plain ``int`` so they combine with ``|`` and cross ctypes
without conversion.
"""

from __future__ import annotations

import os

# -- namespaces: unshare(2) / setns(2) / clone(2) ---------------------------------------
CLONE_NEWTIME = 0x00000080
CLONE_FS = 0x00000200
CLONE_FILES = 0x00000400
CLONE_NEWNS = 0x00020000
CLONE_SYSVSEM = 0x00040000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# -- mount(2) flags -------------------------------------------------------------------
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_SYNCHRONOUS = 16
MS_REMOUNT = 32
MS_MANDLOCK = 64
MS_DIRSYNC = 128
MS_NOSYMFOLLOW = 256
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_SILENT = 32768
MS_POSIXACL = 1 << 16
MS_UNBINDABLE = 1 << 17
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MS_LAZYTIME = 1 << 25

# -- umount2(2) -----------------------------------------------------------------------
MNT_FORCE = 1
MNT_DETACH = 2
MNT_EXPIRE = 4
UMOUNT_NOFOLLOW = 8

# -- *at() flags ----------------------------------------------------------------------
AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
AT_REMOVEDIR = 0x200
AT_SYMLINK_FOLLOW = 0x400
AT_NO_AUTOMOUNT = 0x800
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000

# -- open_tree(2) ---------------------------------------------------------------------
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC

# -- move_mount(2) --------------------------------------------------------------------
MOVE_MOUNT_F_SYMLINKS = 0x001
MOVE_MOUNT_F_AUTOMOUNTS = 0x002
MOVE_MOUNT_F_EMPTY_PATH = 0x004
MOVE_MOUNT_T_SYMLINKS = 0x010
MOVE_MOUNT_T_AUTOMOUNTS = 0x020
MOVE_MOUNT_T_EMPTY_PATH = 0x040
MOVE_MOUNT_SET_GROUP = 0x100
MOVE_MOUNT_BENEATH = 0x200  # Linux 6.5

# -- mount_setattr(2) / fsmount(2) attributes -----------------------------------------
MOUNT_ATTR_RDONLY = 0x00000001
MOUNT_ATTR_NOSUID = 0x00000002
MOUNT_ATTR_NODEV = 0x00000004
MOUNT_ATTR_NOEXEC = 0x00000008
MOUNT_ATTR__ATIME = 0x00000070
MOUNT_ATTR_RELATIME = 0x00000000
MOUNT_ATTR_NOATIME = 0x00000010
MOUNT_ATTR_STRICTATIME = 0x00000020
MOUNT_ATTR_NODIRATIME = 0x00000080
MOUNT_ATTR_IDMAP = 0x00100000
MOUNT_ATTR_NOSYMFOLLOW = 0x00200000
MOUNT_ATTR_SIZE_VER0 = 32

# -- fsopen(2) / fsconfig(2) / fsmount(2) ---------------------------------------------
FSOPEN_CLOEXEC = 0x1
FSMOUNT_CLOEXEC = 0x1
FSCONFIG_SET_FLAG = 0
FSCONFIG_SET_STRING = 1
FSCONFIG_SET_BINARY = 2
FSCONFIG_SET_PATH = 3
FSCONFIG_SET_PATH_EMPTY = 4
FSCONFIG_SET_FD = 5
FSCONFIG_CMD_CREATE = 6
FSCONFIG_CMD_RECONFIGURE = 7
FSCONFIG_CMD_CREATE_EXCL = 8

# -- openat2(2) resolve flags ---------------------------------------------------------
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10
RESOLVE_CACHED = 0x20

# -- pidfd ----------------------------------------------------------------------------
PIDFD_NONBLOCK = os.O_NONBLOCK

# madvise(2): fault a range in writable now (CoW pages copied), in one call instead of a fault per page (5.14+).
MADV_POPULATE_WRITE = 23
