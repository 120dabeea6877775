"""Running the escape probes (probes.py) inside a job through a real daemon, and on the host.

Both sides run the very same source with the same arguments; only ``host`` differs, which
makes the few attempts that would change the host harmless (see probes.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.fixtures.daemon import RunningDaemon

PROBE_SOURCE = (Path(__file__).with_name("probes.py")).read_text()
JOB_SCRATCH = "/tmp/probe"


def run_in_job(daemon: RunningDaemon, probes: list[str], params: dict[str, Any], *cli: str,
               timeout: float = 120) -> dict[str, dict[str, Any]]:
    """``capsa run [cli...] -- python3 -c <probes.py> REQUEST``; the probes' JSON report."""
    request = json.dumps({"probes": probes, "params": {"scratch": JOB_SCRATCH, **params}, "host": False})
    done = daemon.cli("run", *cli, "--", "python3", "-c", PROBE_SOURCE, request, timeout=timeout)
    assert done.returncode == 0, f"probe job exited {done.returncode}: {done.stderr.decode()[-2000:]}"
    return _report(done.stdout, done.stderr)


def run_on_host(probes: list[str], params: dict[str, Any], *, scratch: Path,
                user: int | None = None) -> dict[str, dict[str, Any]]:
    """The same probes in a subprocess on the host, outside any job (``user``: run as that uid)."""
    request = json.dumps({"probes": probes, "params": {"scratch": str(scratch), **params}, "host": True})
    done = subprocess.run(["/usr/bin/python3", "-c", PROBE_SOURCE, request], capture_output=True, timeout=120,
                          user=user, group=user, extra_groups=[] if user is not None else None)
    assert done.returncode == 0, f"host probe exited {done.returncode}: {done.stderr.decode()[-2000:]}"
    return _report(done.stdout, done.stderr)


def _report(stdout: bytes, stderr: bytes) -> dict[str, dict[str, Any]]:
    lines = [line for line in stdout.decode().splitlines() if line.startswith("{")]
    assert lines, f"no probe report: stdout={stdout[-500:]!r} stderr={stderr[-2000:]!r}"
    return json.loads(lines[-1])


@contextlib.contextmanager
def loop_disk(image: Path, content: bytes) -> Iterator[tuple[int, int]]:
    """A block device holding ``content`` (a loop device over ``image``), detached afterwards.

    Stands in for "a host disk": this host refuses even root a read of its root disk, and a
    probe must show the read working on the host.
    """
    image.write_bytes(content.ljust(1 << 20, b"\0"))
    device = subprocess.run(["losetup", "--find", "--show", str(image)], capture_output=True, text=True,
                            check=True).stdout.strip()
    try:
        rdev = os.stat(device).st_rdev
        yield os.major(rdev), os.minor(rdev)
    finally:
        subprocess.run(["losetup", "--detach", device], check=False)


def _own_cgroup_dir(controller: str) -> Path | None:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        hid, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return Path(f"/sys/fs/cgroup/{controller}") / path.lstrip("/")
        unified = Path("/sys/fs/cgroup/cgroup.controllers")
        if hid == "0" and not controllers and unified.exists() and controller in unified.read_text().split():
            return Path("/sys/fs/cgroup") / path.lstrip("/")
    return None


@contextlib.contextmanager
def scratch_cgroup(controller: str, name: str) -> Iterator[Path]:
    """A cgroup of ``controller`` created for a host probe, removed afterwards."""
    parent = _own_cgroup_dir(controller)
    if parent is None or not parent.is_dir():
        raise AssertionError(f"no {controller} cgroup hierarchy to create a scratch cgroup in")
    path = parent / name
    path.mkdir()
    try:
        yield path
    finally:
        for _ in range(100):
            try:
                path.rmdir()
                break
            except OSError:   # the probe's last process may still be exiting
                time.sleep(0.02)


def job_cgroup_view(controller: str) -> str:
    """Where a job sees its own cgroup of ``controller`` (the read-only mount at /sys/fs/cgroup)."""
    from capsa.runtime.cgroups import detect

    return "/sys/fs/cgroup" if detect().version == 2 else f"/sys/fs/cgroup/{controller}"


def host_python_probe(code: str, *, timeout: float = 60, user: int | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, user=user)
