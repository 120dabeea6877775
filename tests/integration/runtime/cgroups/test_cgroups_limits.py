"""Each limit is enforced by the real kernel on this host's driver (v1 here, v2 on unified hosts)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from capsa.errors import FailedPrecondition
from capsa.runtime.cgroups import Limits, resolve_block_devices

MiB = 1 << 20

MEMORY_HOG = """
chunks = []
for _ in range(64):                      # up to 512 MiB, touched page by page
    chunks.append(b"x" * (8 << 20))
print("survived", flush=True)
"""

FORK_UNTIL_REFUSED = """
import errno, os, time
forked = 0
try:
    while forked < 100:                  # bounded, so an unenforced limit fails the test, not the host
        if os.fork() == 0:
            time.sleep(30)
            os._exit(0)
        forked += 1
    print("NO-LIMIT", forked, flush=True)
except OSError as exc:
    print(errno.errorcode[exc.errno], forked, flush=True)
"""


def test_memory_hog_is_oom_killed_at_the_limit(driver, spawn) -> None:
    limit = 64 * MiB
    cg = driver.create("mem", Limits(memory_bytes=limit))
    p = spawn(cg, [sys.executable, "-c", MEMORY_HOG], stdout=subprocess.PIPE)
    out, _ = p.communicate(timeout=60)
    assert p.returncode == -signal.SIGKILL, out
    assert b"survived" not in out
    assert cg.oom_killed()
    stats = cg.stats()
    assert stats.oom_kills is not None and stats.oom_kills >= 1
    assert stats.memory_peak is None or stats.memory_peak <= limit


def test_fork_fails_with_eagain_exactly_at_pids_max(driver, spawn, tmp_path: Path) -> None:
    cg = driver.create("forks", Limits(pids_max=16))
    out = tmp_path / "out"
    with out.open("wb") as f:  # a file, not a pipe: the forked sleepers keep it open
        p = spawn(cg, [sys.executable, "-c", FORK_UNTIL_REFUSED], stdout=f)
        assert p.wait(timeout=30) == 0
    assert out.read_text().split() == ["EAGAIN", "15"]  # 1 parent + 15 children = 16
    assert len(cg.pids()) == 15
    assert cg.stats().pids_denied >= 1


def test_shell_fork_bomb_never_exceeds_pids_max(driver, spawn, tmp_path: Path) -> None:
    limit = 16
    cg = driver.create("bomb", Limits(pids_max=limit))
    err = tmp_path / "err"
    bomb = "i=0; while [ $i -lt 200 ]; do sleep 30 & i=$((i+1)); done; echo spawned-all"
    with err.open("wb") as f:
        p = spawn(cg, ["sh", "-c", bomb], stdout=f, stderr=f)
        most = 0
        while p.poll() is None:
            most = max(most, len(cg.pids()), cg.stats().pids_current or 0)
        p.wait()
    assert "Cannot fork" in err.read_text() and "spawned-all" not in err.read_text()
    assert 0 < most <= limit
    assert len(cg.pids()) == limit - 1  # the sleeps that fit; the shell died on the refused fork
    assert cg.stats().pids_denied >= 1


def test_cpu_burner_at_20_percent_is_throttled_to_about_a_fifth_of_wall_time(driver, spawn) -> None:
    cg = driver.create("cpu", Limits(cpu_percent=20))
    spawn(cg, ["sh", "-c", "while :; do :; done"])
    time.sleep(0.2)
    before, t0 = cg.stats(), time.monotonic()
    time.sleep(1.0)
    after, t1 = cg.stats(), time.monotonic()
    share = (after.cpu_usage_ns - before.cpu_usage_ns) / 1e9 / (t1 - t0)
    assert 0.05 <= share <= 0.30, share  # loose below: other suites may share the two CPUs
    assert after.cpu_nr_throttled > before.cpu_nr_throttled > 0
    assert after.cpu_throttled_ns > 0


def _allowed_cpus(status: str) -> str:
    return next(
        line.split(":", 1)[1].strip() for line in status.splitlines() if line.startswith("Cpus_allowed_list")
    )


def test_cpuset_pins_the_job_to_the_chosen_cpu(driver) -> None:
    online = Path("/sys/devices/system/cpu/online").read_text().strip()
    if online == "0":
        pytest.skip("one CPU online: pinning cannot be told apart from the default")
    assert _allowed_cpus(Path("/proc/self/status").read_text()) != "1"  # the test itself may run anywhere
    cg = driver.create("pin", Limits(cpuset="1"))
    out = subprocess.run(
        ["cat", "/proc/self/status"], preexec_fn=cg.join_self, capture_output=True, text=True
    )
    assert _allowed_cpus(out.stdout) == "1"


def _dd(cg, args: list[str]) -> float:
    t0 = time.monotonic()
    subprocess.run(["dd", *args], preexec_fn=cg.join_self if cg else None, check=True, capture_output=True)
    return time.monotonic() - t0


def test_io_bps_throttles_direct_writes_and_reads_on_the_backing_disk(driver, tmp_path: Path) -> None:
    try:
        devices = resolve_block_devices(tmp_path)
    except FailedPrecondition as exc:
        pytest.skip(f"the disk behind {tmp_path} cannot be resolved: {exc}")
    limit, size = 2 * MiB, 3 * MiB
    blocks = [f"bs={64 << 10}", f"count={size // (64 << 10)}"]
    free = size / _dd(None, ["if=/dev/zero", f"of={tmp_path / 'control'}", *blocks, "oflag=direct"])
    if free < 4 * limit:
        pytest.skip(
            f"disk {devices} writes only {free / MiB:.1f} MiB/s unthrottled: too slow to show a limit"
        )
    cg = driver.create("io", Limits(io_bps=limit, io_path=tmp_path))
    target = tmp_path / "throttled"
    written = size / _dd(cg, ["if=/dev/zero", f"of={target}", *blocks, "oflag=direct", "conv=fsync"])
    read = size / _dd(cg, [f"if={target}", "of=/dev/null", *blocks, "iflag=direct"])
    assert 0.4 * limit <= written <= 1.3 * limit, written / MiB
    assert 0.4 * limit <= read <= 1.3 * limit, read / MiB
    stats = cg.stats()
    assert stats.io_write_bytes >= size and stats.io_read_bytes >= size
    os.unlink(target)
