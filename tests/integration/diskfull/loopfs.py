"""A small loop-mounted ext4 filesystem to run out of space on (root only), always unmounted and detached."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class LoopFs:
    image: Path
    mnt: Path

    def free_bytes(self) -> int:
        st = os.statvfs(self.mnt)
        return st.f_bavail * st.f_frsize

    def fill(self, name: str = "ballast", leave: int = 0) -> Path:
        """Write a ballast file until only ``leave`` bytes (rounded to blocks) are free; returns its path."""
        path = self.mnt / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        block = bytes(1 << 20)
        try:
            while (room := self.free_bytes() - leave) > 0:
                try:
                    os.write(fd, block[: min(len(block), max(4096, room))])
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
            os.fsync(fd)
        finally:
            os.close(fd)
        return path

    def used_bytes(self) -> int:
        st = os.statvfs(self.mnt)
        return (st.f_blocks - st.f_bfree) * st.f_frsize


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True)


@contextlib.contextmanager
def loop_fs(where: Path, size_mib: int) -> Iterator[LoopFs]:
    if os.geteuid() != 0 or shutil.which("mkfs.ext4") is None:
        pytest.skip("needs root and mkfs.ext4 for a loop-mounted filesystem")
    image, mnt = where / "disk.img", where / "mnt"
    mnt.mkdir()
    with open(image, "wb") as f:
        f.truncate(size_mib << 20)
    made = _run("mkfs.ext4", "-q", "-F", "-m", "0", "-E", "lazy_itable_init=0,lazy_journal_init=0", str(image))
    if made.returncode != 0:
        pytest.skip(f"mkfs.ext4 failed: {made.stderr.strip()}")
    mounted = _run("mount", "-o", "loop", str(image), str(mnt))
    if mounted.returncode != 0:
        pytest.skip(f"cannot loop-mount here: {mounted.stderr.strip()}")
    try:
        yield LoopFs(image, mnt)
    finally:
        for _ in range(50):  # a process of the test may still be letting go of a file
            if _run("umount", str(mnt)).returncode == 0:
                break
            time.sleep(0.1)
        else:
            _run("umount", "-l", str(mnt))
        for line in _run("losetup", "-j", str(image)).stdout.splitlines():  # -o loop autoclears; be sure
            _run("losetup", "-d", line.split(":", 1)[0])
        image.unlink(missing_ok=True)
