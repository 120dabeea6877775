"""Loop devices through their ioctls, always with auto-clear.

``LOOP_CONFIGURE`` (Linux 5.8) binds a file to a free loop device in one call;
older kernels get ``LOOP_SET_FD`` + ``LOOP_SET_STATUS64``. The device is set up
with ``LO_FLAGS_AUTOCLEAR``: the kernel detaches it by itself when its last
user goes — i.e. when the filesystem on it is unmounted — so a crash between
``umount`` and ``losetup -d`` cannot leak a loop device, and "unmounted" implies
"detached" (not instantly: a mount copied into another mount namespace keeps
the superblock, hence the device, alive until that copy goes).
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import time
from pathlib import Path

from capsa.errors import FailedPrecondition, Unsupported

__all__ = ["attach", "devices_for"]

_LOOP_SET_FD = 0x4C00
_LOOP_CLR_FD = 0x4C01
_LOOP_SET_STATUS64 = 0x4C04
_LOOP_CONFIGURE = 0x4C0A
_LOOP_CTL_GET_FREE = 0x4C82
_LO_FLAGS_AUTOCLEAR = 4
_LO_NAME_SIZE = 64


def _loop_info64(path: Path, flags: int) -> bytes:
    # struct loop_info64: 5 x u64, 4 x u32, file_name[64], crypt_name[64], encrypt_key[32], 2 x u64 (232 bytes)
    name = os.fsencode(path)[: _LO_NAME_SIZE - 1]
    return struct.pack("=QQQQQIIII64s64s32sQQ", 0, 0, 0, 0, 0, 0, 0, 0, flags, name, b"", b"", 0, 0)


def devices_for(path: Path) -> list[str]:
    """Loop devices currently backed by ``path`` (from sysfs)."""
    want = os.fsdecode(path)
    found = []
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        try:
            if backing.read_text().strip() == want:
                found.append("/dev/" + backing.parent.parent.name)
        except OSError:
            continue  # detached while we looked
    return sorted(found)


def attach(path: Path, *, read_only: bool = False) -> tuple[str, int]:
    """Bind ``path`` to a free loop device; returns ``(device, fd)``.

    Keep ``fd`` open until the device is mounted, then close it: with auto-clear
    set, closing it before anything else holds the device detaches it.
    """
    mode = os.O_RDONLY if read_only else os.O_RDWR
    backing = os.open(path, mode | os.O_CLOEXEC)
    try:
        for _ in range(64):  # another process may grab the free device first
            device = _free_device()
            try:
                fd = os.open(device, mode | os.O_CLOEXEC)
            except FileNotFoundError:
                time.sleep(0.005)  # udev/devtmpfs has not created the node yet
                continue
            try:
                _configure(fd, backing, path)
                return device, fd
            except OSError as exc:
                os.close(fd)
                if exc.errno == errno.EBUSY:
                    continue
                raise FailedPrecondition(f"cannot bind {path} to {device}: {exc.strerror}") from exc
        raise FailedPrecondition(f"no free loop device for {path} after 64 attempts")
    finally:
        os.close(backing)


def _free_device() -> str:
    try:
        ctl = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise Unsupported("/dev/loop-control is missing: the kernel has no loop device support") from exc
    try:
        return f"/dev/loop{fcntl.ioctl(ctl, _LOOP_CTL_GET_FREE)}"
    except OSError as exc:
        raise FailedPrecondition(f"no free loop device: {exc.strerror}") from exc
    finally:
        os.close(ctl)


def _configure(fd: int, backing: int, path: Path) -> None:
    info = _loop_info64(path, _LO_FLAGS_AUTOCLEAR)
    try:
        # struct loop_config: u32 fd, u32 block_size, loop_info64, u64 reserved[8]
        fcntl.ioctl(fd, _LOOP_CONFIGURE, struct.pack("=II", backing, 0) + info + bytes(64))
        return
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTTY):
            raise
    fcntl.ioctl(fd, _LOOP_SET_FD, backing)
    try:
        fcntl.ioctl(fd, _LOOP_SET_STATUS64, info)
    except OSError:
        fcntl.ioctl(fd, _LOOP_CLR_FD, 0)
        raise
