"""ctypes wrappers for the Linux syscalls Python 3.11 does not expose.

Every libc entry point is resolved once, at import, into a typed ctypes
function (the glibc wrapper when glibc has one, else ``syscall(2)`` with the
number); a call therefore costs one ctypes transition and nothing else. Every
wrapper raises :class:`OSError` (so ``FileNotFoundError``, ``PermissionError``
… by errno) whose message names the call and the paths or descriptors it was
given, e.g. ``[Errno 2] open_tree: No such file or directory: '/srv/x'``.

``pidfd_open`` and ``pidfd_send_signal`` do exist in Python 3.11
(``os.pidfd_open``, ``signal.pidfd_send_signal``); they are re-exported here,
with the same error messages, so that isolation code imports one module.
"""

from __future__ import annotations

import ctypes
import os
import platform
import signal
from collections.abc import Callable
from typing import Any, NoReturn

from capsa.linux.constants import FSMOUNT_CLOEXEC, FSOPEN_CLOEXEC, MOUNT_ATTR_SIZE_VER0

__all__ = [
    "MountAttr",
    "OpenHow",
    "fsconfig",
    "fsmount",
    "fsopen",
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
]

PathArg = str | bytes | os.PathLike[str] | os.PathLike[bytes]

# Syscalls added since Linux 5.0 have one number on every architecture; only the
# old ones differ per architecture.
_NR_COMMON = {
    "open_tree": 428,
    "move_mount": 429,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "openat2": 437,
    "mount_setattr": 442,
}
_NR_BY_ARCH = {
    "x86_64": {"pivot_root": 155},
    "aarch64": {"pivot_root": 41},
}


class MountAttr(ctypes.Structure):
    """``struct mount_attr`` (MOUNT_ATTR_SIZE_VER0)."""

    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


class OpenHow(ctypes.Structure):
    """``struct open_how`` for openat2(2)."""

    _fields_ = [
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    ]


assert ctypes.sizeof(MountAttr) == MOUNT_ATTR_SIZE_VER0

_libc = ctypes.CDLL(None, use_errno=True)  # a private handle: our argtypes stay ours
_c_int, _c_uint, _c_long, _c_char_p, _c_void_p, _c_size_t = (
    ctypes.c_int,
    ctypes.c_uint,
    ctypes.c_long,
    ctypes.c_char_p,
    ctypes.c_void_p,
    ctypes.c_size_t,
)


def _missing(name: str) -> Callable[..., int]:
    def call(*_args: Any) -> int:
        ctypes.set_errno(38)  # ENOSYS: neither glibc nor a known syscall number
        return -1

    call.__name__ = name
    return call


def _resolve(name: str, restype: Any, *argtypes: Any) -> Callable[..., int]:
    """Bind ``name`` once: glibc's wrapper if exported, else ``syscall(NR, ...)``."""
    if hasattr(_libc, name):
        return ctypes.CFUNCTYPE(restype, *argtypes, use_errno=True)((name, _libc))
    nr = _NR_COMMON.get(name) or _NR_BY_ARCH.get(platform.machine(), {}).get(name)
    if nr is None:
        return _missing(name)
    # glibc's syscall() is a register shuffle in assembly, so a fixed-arity
    # prototype is safe on the ABIs we support.
    raw = ctypes.CFUNCTYPE(_c_long, _c_long, *argtypes, use_errno=True)(("syscall", _libc))
    return lambda *args: raw(nr, *args)


_unshare = _resolve("unshare", _c_int, _c_int)
_setns = _resolve("setns", _c_int, _c_int, _c_int)
_pivot_root = _resolve("pivot_root", _c_int, _c_char_p, _c_char_p)
_mount = _resolve("mount", _c_int, _c_char_p, _c_char_p, _c_char_p, ctypes.c_ulong, _c_char_p)
_umount2 = _resolve("umount2", _c_int, _c_char_p, _c_int)
_open_tree = _resolve("open_tree", _c_int, _c_int, _c_char_p, _c_uint)
_move_mount = _resolve("move_mount", _c_int, _c_int, _c_char_p, _c_int, _c_char_p, _c_uint)
_mount_setattr = _resolve(
    "mount_setattr", _c_int, _c_int, _c_char_p, _c_uint, ctypes.POINTER(MountAttr), _c_size_t
)
_fsopen = _resolve("fsopen", _c_int, _c_char_p, _c_uint)
_fsconfig = _resolve("fsconfig", _c_int, _c_int, _c_uint, _c_char_p, _c_void_p, _c_int)
_fsmount = _resolve("fsmount", _c_int, _c_int, _c_uint, _c_uint)
_openat2 = _resolve("openat2", _c_long, _c_int, _c_char_p, ctypes.POINTER(OpenHow), _c_size_t)
_madvise = _resolve("madvise", _c_int, _c_void_p, _c_size_t, _c_int)


def _path(p: PathArg | None) -> bytes | None:
    return None if p is None else os.fsencode(p)


def _fail(call: str, first: object = None, second: object = None) -> NoReturn:
    err = ctypes.get_errno()
    message = f"{call}: {os.strerror(err)}"
    if first is None:
        raise OSError(err, message)
    if second is None:
        raise OSError(err, message, first)
    raise OSError(err, message, first, None, second)


def _at(dfd: int, path: PathArg) -> str:
    """Describe a (dirfd, path) pair for an error message."""
    text = os.fsdecode(path)
    if text.startswith("/"):
        return text
    return f"<fd {dfd}>/{text}" if text else f"<fd {dfd}>"


# -- namespaces ------------------------------------------------------------------------
def unshare(flags: int) -> None:
    """Move the calling thread into new namespaces (``CLONE_NEW*``)."""
    if _unshare(flags) != 0:
        _fail(f"unshare(flags={flags:#x})")


def setns(fd: int, nstype: int = 0) -> None:
    """Join the namespace(s) of ``fd``: a ``/proc/PID/ns/*`` fd or a pidfd (5.8+).

    The caller must be single-threaded to join a mount or user namespace.
    """
    if _setns(fd, nstype) != 0:
        _fail(f"setns(fd={fd}, nstype={nstype:#x})")


# -- classic mount API -------------------------------------------------------------------
def pivot_root(new_root: PathArg, put_old: PathArg) -> None:
    if _pivot_root(_path(new_root), _path(put_old)) != 0:
        _fail("pivot_root", os.fsdecode(new_root), os.fsdecode(put_old))


def mount(
    source: PathArg | None,
    target: PathArg,
    fstype: str | None = None,
    flags: int = 0,
    data: str | bytes | None = None,
) -> None:
    """mount(2). ``data`` is the filesystem option string (e.g. ``"size=1m,mode=755"``)."""
    raw_data = data.encode() if isinstance(data, str) else data
    fs = fstype.encode() if fstype is not None else None
    if _mount(_path(source), _path(target), fs, flags, raw_data) != 0:
        what = f"mount(type={fstype!r}, flags={flags:#x})"
        _fail(what, os.fsdecode(source) if source is not None else "none", os.fsdecode(target))


def umount2(target: PathArg, flags: int = 0) -> None:
    if _umount2(_path(target), flags) != 0:
        _fail(f"umount2(flags={flags:#x})", os.fsdecode(target))


# -- new mount API (5.2+) ----------------------------------------------------------------
def open_tree(dfd: int, path: PathArg, flags: int) -> int:
    """Return an O_PATH fd on ``path``; with OPEN_TREE_CLONE, on a detached copy of its mount.

    Add ``AT_RECURSIVE`` to copy the submounts too (``mount --rbind``).
    """
    fd = _open_tree(dfd, _path(path), flags)
    if fd < 0:
        _fail(f"open_tree(flags={flags:#x})", _at(dfd, path))
    return int(fd)


def move_mount(from_dfd: int, from_path: PathArg, to_dfd: int, to_path: PathArg, flags: int = 0) -> None:
    """Attach or move a mount. Use ``MOVE_MOUNT_F_EMPTY_PATH``/``T_EMPTY_PATH`` with fds."""
    if _move_mount(from_dfd, _path(from_path), to_dfd, _path(to_path), flags) != 0:
        _fail(f"move_mount(flags={flags:#x})", _at(from_dfd, from_path), _at(to_dfd, to_path))


def mount_setattr(
    dfd: int,
    path: PathArg,
    flags: int,
    attr_set: int = 0,
    attr_clr: int = 0,
    propagation: int = 0,
    userns_fd: int = 0,
) -> None:
    """Change mount attributes (``MOUNT_ATTR_*``), with ``AT_RECURSIVE`` on a whole tree.

    ``propagation`` is one of ``MS_PRIVATE``/``MS_SLAVE``/``MS_SHARED``/
    ``MS_UNBINDABLE`` or 0 to leave it; ``userns_fd`` only matters with
    ``MOUNT_ATTR_IDMAP``. ``flags`` takes ``AT_EMPTY_PATH`` to act on ``dfd`` itself.
    """
    attr = MountAttr(attr_set, attr_clr, propagation, userns_fd)
    if _mount_setattr(dfd, _path(path), flags, ctypes.byref(attr), ctypes.sizeof(attr)) != 0:
        _fail(
            f"mount_setattr(set={attr_set:#x}, clr={attr_clr:#x}, propagation={propagation:#x})",
            _at(dfd, path),
        )


def fsopen(fsname: str, flags: int = FSOPEN_CLOEXEC) -> int:
    """Open a filesystem context (e.g. ``"tmpfs"``); configure it with :func:`fsconfig`."""
    fd = _fsopen(fsname.encode(), flags)
    if fd < 0:
        _fail(f"fsopen({fsname!r})")
    return int(fd)


def fsconfig(
    fd: int, cmd: int, key: str | None = None, value: str | bytes | None = None, aux: int = 0
) -> None:
    """Set one parameter on (or create/reconfigure) a filesystem context."""
    raw = value.encode() if isinstance(value, str) else value
    if _fsconfig(fd, cmd, key.encode() if key is not None else None, raw, aux) != 0:
        _fail(f"fsconfig(fd={fd}, cmd={cmd}, key={key!r})")


def fsmount(fs_fd: int, flags: int = FSMOUNT_CLOEXEC, attr_flags: int = 0) -> int:
    """Turn a created filesystem context into a detached mount; returns its fd."""
    fd = _fsmount(fs_fd, flags, attr_flags)
    if fd < 0:
        _fail(f"fsmount(fd={fs_fd}, attr={attr_flags:#x})")
    return int(fd)


# -- path resolution (5.6+) ----------------------------------------------------------------
def openat2(dirfd: int, path: PathArg, flags: int, mode: int = 0, resolve: int = 0) -> int:
    """openat2(2): ``resolve`` takes ``RESOLVE_IN_ROOT``, ``RESOLVE_NO_SYMLINKS`` …"""
    how = OpenHow(flags, mode, resolve)
    fd = _openat2(dirfd, _path(path), ctypes.byref(how), ctypes.sizeof(how))
    if fd < 0:
        _fail(f"openat2(flags={flags:#x}, resolve={resolve:#x})", _at(dirfd, path))
    return int(fd)


# -- pidfds (stdlib calls, capsa-style errors) ---------------------------------------------
def madvise(address: int, length: int, advice: int) -> None:
    """``madvise(2)`` on ``[address, address + length)`` of this process (e.g. ``MADV_POPULATE_WRITE``)."""
    if _madvise(address, length, advice) != 0:
        _fail("madvise", hex(address))


def pidfd_open(pid: int, flags: int = 0) -> int:
    """A pidfd for ``pid``: a handle that can never refer to a recycled PID."""
    try:
        return os.pidfd_open(pid, flags)
    except OSError as exc:
        raise OSError(exc.errno, f"pidfd_open(pid={pid}): {os.strerror(exc.errno or 0)}") from None


def pidfd_send_signal(pidfd: int, sig: int, flags: int = 0) -> None:
    """Signal the process behind ``pidfd``; ``sig=0`` only checks it is still alive."""
    try:
        signal.pidfd_send_signal(pidfd, sig, None, flags)
    except OSError as exc:
        raise OSError(
            exc.errno, f"pidfd_send_signal(pidfd={pidfd}, sig={sig}): {os.strerror(exc.errno or 0)}"
        ) from None
