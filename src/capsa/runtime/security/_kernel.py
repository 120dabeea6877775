"""ctypes bindings for the few process-attribute calls the security code needs.

``prctl``, ``capget`` and ``capset`` are not in Python 3.11's ``os`` module.
They are bound once at import (in the zygote), so a call in a job's stage two
costs one ctypes transition. Every wrapper raises :class:`OSError` naming the
call, as :mod:`capsa.linux` does, so stage two reports them like any other step.
"""

from __future__ import annotations

import ctypes
import os
from typing import NoReturn

__all__ = [
    "CapData",
    "CapHeader",
    "capbset_drop",
    "capget",
    "capset",
    "prctl",
]

# -- prctl(2) options (uapi linux/prctl.h; identical on every architecture) --------------
PR_SET_PDEATHSIG = 1
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_SECCOMP = 22
PR_GET_SECCOMP = 21
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_IS_SET = 1
PR_CAP_AMBIENT_CLEAR_ALL = 4
SECCOMP_MODE_FILTER = 2

_LINUX_CAPABILITY_VERSION_3 = 0x20080522

_libc = ctypes.CDLL(None, use_errno=True)  # a private handle: our argtypes stay ours
_prctl = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
    use_errno=True,
)(("prctl", _libc))


class CapHeader(ctypes.Structure):
    """``struct __user_cap_header_struct``."""

    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class CapData(ctypes.Structure):
    """One ``struct __user_cap_data_struct`` (version 3 uses two: caps 0-31 and 32-63)."""

    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


_CapPair = CapData * 2
_capget = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(CapHeader), ctypes.POINTER(CapData), use_errno=True)(
    ("capget", _libc)
)
_capset = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(CapHeader), ctypes.POINTER(CapData), use_errno=True)(
    ("capset", _libc)
)


# Allocated once at import (in the zygote): a job's stage two then writes into existing memory
# instead of allocating ctypes objects, which after fork costs page faults (measured ~3 us each).
_HEADER = CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
_HEADER_REF = ctypes.pointer(_HEADER)
_DATA = _CapPair()


def _fail(call: str) -> NoReturn:
    err = ctypes.get_errno()
    raise OSError(err, f"{call}: {os.strerror(err)}")


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    """prctl(2); returns the (non-negative) result, raises OSError on -1."""
    res = _prctl(option, arg2, arg3, arg4, arg5)
    if res < 0:
        _fail(f"prctl(option={option}, arg2={arg2:#x})")
    return int(res)


def capbset_drop(caps: tuple[int, ...]) -> None:
    """PR_CAPBSET_DROP each of ``caps``: a tight loop, since a job start pays it ~30 times."""
    call, option = _prctl, PR_CAPBSET_DROP
    for cap in caps:
        if call(option, cap, 0, 0, 0) != 0:
            _fail(f"prctl(PR_CAPBSET_DROP, {cap})")


def capget() -> tuple[int, int, int]:
    """(effective, permitted, inheritable) of the calling thread as 64-bit masks."""
    header, data = _HEADER, _DATA
    header.version, header.pid = _LINUX_CAPABILITY_VERSION_3, 0
    if _capget(_HEADER_REF, data) != 0:
        _fail("capget")
    return (
        data[0].effective | data[1].effective << 32,
        data[0].permitted | data[1].permitted << 32,
        data[0].inheritable | data[1].inheritable << 32,
    )


def capset(effective: int, permitted: int, inheritable: int) -> None:
    """Set the calling thread's three capability sets (64-bit masks)."""
    header, data = _HEADER, _DATA
    header.version, header.pid = _LINUX_CAPABILITY_VERSION_3, 0
    lo, hi = 0xFFFFFFFF, 32
    data[0].effective, data[1].effective = effective & lo, effective >> hi
    data[0].permitted, data[1].permitted = permitted & lo, permitted >> hi
    data[0].inheritable, data[1].inheritable = inheritable & lo, inheritable >> hi
    if _capset(_HEADER_REF, data) != 0:
        _fail(f"capset(effective={effective:#x}, permitted={permitted:#x}, inheritable={inheritable:#x})")
