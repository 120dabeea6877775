"""Host-side views of a running job for the jobs e2e tests: its cgroup files, its /proc entry, polling.

Everything here reads what the kernel says from *outside* the job, so a test can
check that a limit is enforced rather than trusting what capsa reports.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from capsa.api.client import CapsaClient
from capsa.api.gen.capsa.v1 import jobs_pb2 as pb
from tests.fixtures.waiting import wait_for

CLK_TCK = os.sysconf("SC_CLK_TCK")


def wait_ended(client: CapsaClient, job_id: str, timeout: float = 30.0) -> pb.Job:
    def ended() -> pb.Job | None:
        job = client.get_job(job_id)
        return job if job.ended else None

    return wait_for(ended, timeout=timeout, what=f"job {job_id[:12]} to end")


def wait_running(client: CapsaClient, job_id: str, timeout: float = 10.0) -> pb.Job:
    def running() -> pb.Job | None:
        job = client.get_job(job_id)
        return job if job.state == "RUNNING" and job.pid else None

    return wait_for(running, timeout=timeout, what=f"job {job_id[:12]} to run")


def stdout_of(client: CapsaClient, job_id: str, *, follow: bool = True) -> bytes:
    return b"".join(c.data for c in client.stream_logs(job_id, follow=follow) if c.stream == 1)


def _mounts() -> list[tuple[str, str, str, set[str]]]:
    """(mount root, mount point, fs type, super options) of every cgroup mount of our mount namespace."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        sep = fields.index("-")
        fstype, super_opts = fields[sep + 1], set(fields[sep + 3].split(","))
        if fstype in ("cgroup", "cgroup2"):
            found.append((fields[3], fields[4], fstype, super_opts))
    return found


def host_cgroup_dir(pid: int, controller: str) -> Path:
    """The host directory of the cgroup that ``pid`` is in for ``controller`` (cgroup v1 or v2)."""
    lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    mounts = _mounts()
    for line in lines:
        _hid, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            for root, point, fstype, opts in mounts:
                if fstype == "cgroup" and controller in opts:
                    return Path(point) / os.path.relpath(path, root)
    for line in lines:
        hid, controllers, path = line.split(":", 2)
        if hid == "0" and controllers == "":
            for root, point, fstype, _opts in mounts:
                if fstype == "cgroup2":
                    candidate = Path(point) / os.path.relpath(path, root)
                    enabled = (
                        (candidate.parent / "cgroup.subtree_control").read_text().split()
                        if (candidate.parent / "cgroup.subtree_control").exists()
                        else []
                    )
                    if controller in enabled or controller == "cgroup":
                        return candidate
    raise AssertionError(f"no {controller} cgroup found for pid {pid}: {lines}")


def read_flat_keyed(path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition(" ")
        if value.strip().lstrip("-").isdigit():
            out[key] = int(value)
    return out


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` (and its reaped children) from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # after the ")" field 3 (state) is index 0: utime=14, stime=15, cutime=16, cstime=17
    utime, stime, cutime, cstime = (int(fields[i - 3]) for i in (14, 15, 16, 17))
    return (utime + stime + cutime + cstime) / CLK_TCK


def proc_start_ticks(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def proc_state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def processes_in_cgroup_named(name: str) -> list[int]:
    """Host pids whose /proc/<pid>/cgroup mentions ``name`` in any hierarchy."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/cgroup").read_text()
        except OSError:
            continue
        if name in text:
            pids.append(int(entry))
    return pids


def zygote_pid(supervisor_pid: int) -> int:
    """The supervisor's long-lived fork server: its child running the same interpreter in the same PID
    namespace (a standby, capsa.runtime.standby, runs it too, in a PID namespace of its own)."""
    exe = os.path.realpath(f"/proc/{supervisor_pid}/exe")
    pid_ns = os.readlink(f"/proc/{supervisor_pid}/ns/pid")
    found = []
    for task in os.listdir(f"/proc/{supervisor_pid}/task"):
        for child in Path(f"/proc/{supervisor_pid}/task/{task}/children").read_text().split():
            with contextlib.suppress(OSError):
                if (os.path.realpath(f"/proc/{child}/exe", strict=True) == exe
                        and os.readlink(f"/proc/{child}/ns/pid") == pid_ns):
                    found.append(int(child))
    assert len(found) == 1, f"expected one zygote under supervisor {supervisor_pid}, found {found}"
    return found[0]


def force_cleanup_job(job_id: str) -> None:
    """Last-resort clean-up when capsa failed to: kill the job's processes and remove its cgroups."""
    for _ in range(50):
        pids = processes_in_cgroup_named(job_id)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    for _root, point, _fstype, _opts in _mounts():
        for depth in range(4):  # capsa's cgroups sit under the supervisor's own, a few levels down
            for path in Path(point).glob("*/" * depth + f"capsa/{job_id}"):
                with contextlib.suppress(OSError):
                    path.rmdir()
