"""Listings of mounts and loop devices under a test's tmp_path."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

__all__ = ["loops_under", "mounts_under", "wait_no_loops"]


def loops_under(path: Path) -> list[str]:
    """`losetup -a` lines whose backing file lies under ``path``."""
    out = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if str(path) in line]


def mounts_under(path: Path) -> list[str]:
    with open("/proc/mounts", encoding="utf-8") as f:
        return [line.split()[1] for line in f if line.split()[1].startswith(str(path))]


def wait_no_loops(path: Path, timeout: float = 5.0) -> list[str]:
    """Auto-clear detaches asynchronously once the last mount copy is gone: give it a moment."""
    deadline = time.monotonic() + timeout
    while (found := loops_under(path)) and time.monotonic() < deadline:
        time.sleep(0.02)
    return found
