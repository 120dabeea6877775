"""Small polling and inspection helpers for the job-feature e2e tests."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tests.fixtures.daemon import RunningDaemon
from tests.fixtures.waiting import wait_for


def inspect(daemon: RunningDaemon, job_id: str) -> dict[str, Any]:
    return json.loads(daemon.cli("inspect", job_id, check=True).stdout)


def wait_state(daemon: RunningDaemon, job_id: str, *states: str, timeout: float = 20.0) -> dict[str, Any]:
    return wait_for(lambda: (info := inspect(daemon, job_id))["state"] in states and info,
                    timeout=timeout, what=f"job {job_id[:12]} to reach {'/'.join(states)}")


def staged_sessions(daemon: RunningDaemon) -> list[str]:
    root = daemon.home / "tmp" / "uploads"
    return sorted(os.listdir(root)) if root.exists() else []


def files_containing(root: Path, needle: bytes) -> list[Path]:
    """Every regular file under ``root`` whose bytes contain ``needle`` (symlinks are not followed)."""
    found = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            if path.is_symlink() or not path.is_file():
                continue
            try:
                if needle in path.read_bytes():
                    found.append(path)
            except OSError:
                continue
    return found
