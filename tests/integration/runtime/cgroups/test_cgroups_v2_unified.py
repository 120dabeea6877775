"""The v2 driver on this host's real unified hierarchy.

On a hybrid host the unified tree holds no resource controllers, but its core files (cgroup.procs,
cgroup.events, cgroup.freeze, cgroup.kill, cpu.stat usage) are the real kernel's, so joining,
freezing, killing and removing are exercised for real even where detect() picks v1.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from capsa.errors import FailedPrecondition, Unsupported
from capsa.runtime.cgroups import Limits, V2Driver, host_layout


@pytest.fixture
def v2() -> Iterator[V2Driver]:
    if os.geteuid() != 0:
        pytest.skip("creating cgroups needs root")
    parent = host_layout().v2
    if parent is None:
        pytest.skip("no cgroup2 filesystem is mounted")
    d = V2Driver(parent, prefix=f"capsa-test-{uuid.uuid4().hex[:10]}")
    try:
        d.enabled_controllers()
    except FailedPrecondition as exc:
        pytest.skip(f"this process's v2 cgroup cannot delegate controllers: {exc}")
    yield d
    for name in d.list():
        d.open(name).remove(timeout=30.0)
    d.cleanup()


def test_join_freeze_thaw_kill_and_remove_on_the_real_unified_tree(v2, spawn, eventually) -> None:
    cg = v2.create("core", Limits())
    p = spawn(cg, ["sh", "-c", "while :; do :; done"])
    time.sleep(0.1)
    assert cg.pids() == [p.pid] and not cg.is_empty()
    own = Path(f"/proc/{p.pid}/cgroup").read_text().splitlines()
    v2_line = next(x for x in own if x.startswith("0::"))
    assert v2_line.endswith(f"/{v2.prefix}/core")
    cg.freeze()
    assert "frozen 1" in (cg.path / "cgroup.events").read_text()
    frozen = cg.stats().cpu_usage_ns
    time.sleep(0.2)
    assert cg.stats().cpu_usage_ns - frozen < 5_000_000
    cg.thaw()
    assert eventually(lambda: cg.stats().cpu_usage_ns - frozen > 50_000_000)
    cg.kill_all()
    assert p.wait(timeout=5) == -signal.SIGKILL and cg.is_empty()
    cg.remove()
    assert not cg.path.exists() and v2.list() == []


def test_cgroup_kill_stops_a_forking_tree(v2, spawn, is_alive, eventually) -> None:
    cg = v2.create("tree", Limits())
    root = spawn(cg, ["sh", "-c", 'while :; do sh -c "sleep 60 & sleep 60" & sleep 0.005; done'])
    assert eventually(lambda: len(cg.pids()) > 20)
    seen = cg.pids()
    cg.kill_all()
    assert root.wait(timeout=5) == -signal.SIGKILL
    assert cg.is_empty() and [pid for pid in seen if is_alive(pid)] == []


def test_limits_for_controllers_the_host_does_not_offer_are_unsupported(v2) -> None:
    enabled = v2.enabled_controllers()
    cases = {
        "memory": Limits(memory_bytes=64 << 20),
        "pids": Limits(pids_max=5),
        "cpu": Limits(cpu_percent=50),
    }
    missing = {c: limits for c, limits in cases.items() if c not in enabled}
    if not missing:
        pytest.skip("this host's unified tree offers memory, pids and cpu")
    for controller, limits in missing.items():
        with pytest.raises(Unsupported, match=f"'{controller}' controller is not available"):
            v2.create("limited", limits)
    assert v2.list() == []


def test_remove_of_a_populated_v2_job_kills_it_first(v2, spawn) -> None:
    cg = v2.create("busy", Limits())
    p = spawn(cg, ["sleep", "30"])
    time.sleep(0.05)
    cg.remove()
    assert p.wait(timeout=5) == -signal.SIGKILL and not cg.exists()
