"""Real-kernel fixtures: a driver under a unique prefix that is removed afterwards, and child processes
put into job cgroups the way the launcher does it (the child joins itself between fork and exec)."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from capsa.runtime.cgroups import CgroupDriver, JobCgroup, detect
from tests.fixtures.waiting import wait_for

Spawn = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
def driver() -> Iterator[CgroupDriver]:
    if os.geteuid() != 0:
        pytest.skip("creating cgroups needs root")
    d = detect(prefix=f"capsa-test-{uuid.uuid4().hex[:10]}")
    yield d
    # Generous: after a failed test there may be many processes to kill.
    for name in d.list():
        d.open(name).remove(timeout=30.0)
    d.cleanup()


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Start a process, inside ``cg`` when one is given; every process started is killed and reaped after."""
    procs: list[subprocess.Popen[bytes]] = []

    def _spawn(cg: JobCgroup | None, argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        kwargs.setdefault("stdout", subprocess.DEVNULL)
        p = subprocess.Popen(argv, preexec_fn=cg.join_self if cg is not None else None, **kwargs)
        procs.append(p)
        return p

    yield _spawn
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


def alive(pid: int) -> bool:
    """True while ``pid`` is a live (not zombie) process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


@pytest.fixture
def is_alive() -> Callable[[int], bool]:
    return alive


@pytest.fixture
def eventually() -> Callable[..., bool]:
    return wait_for
