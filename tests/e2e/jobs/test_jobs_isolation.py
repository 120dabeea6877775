"""A job is isolated: own PID namespace (command is PID 1), own hostname, read-only host root,
no private host directories, writable /work kept in the job dir and a tmpfs /tmp.

The same probe runs once through the CLI and once through the client API.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jobs_helpers import stdout_of, wait_ended, wait_for

from tests.fixtures.daemon import RunningDaemon

# Runs inside the job; argv: capsa home, host marker, token for /work. The marker is in the probe's own
# argv too, so its own pid is left out of the search.
PROBE = r"""
import errno, json, os, socket, sys
home, marker, token = sys.argv[1], sys.argv[2], sys.argv[3]
r = {"pid": os.getpid(), "ppid": os.getppid()}
r["pid1"] = open("/proc/1/cmdline", "rb").read().split(b"\0")[:2]
r["pid1"] = [a.decode() for a in r["pid1"]]
pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
r["pids"] = pids
r["marker_seen"] = any(marker.encode() in open(f"/proc/{p}/cmdline", "rb").read() for p in pids
                       if p != os.getpid() and os.path.exists(f"/proc/{p}"))
r["hostname"] = socket.gethostname()
def attempt(fn):
    try:
        fn()
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
r["write_usr"] = attempt(lambda: open("/usr/capsa-probe", "w"))
r["write_etc"] = attempt(lambda: open("/etc/passwd", "a"))
r["write_root"] = attempt(lambda: open("/capsa-probe", "w"))
r["mkdir_bin"] = attempt(lambda: os.mkdir("/bin/capsa-probe"))
r["exists"] = {p: os.path.lexists(p) for p in ("/root", "/home", "/var", "/srv", home)}
with open("/work/probe.txt", "w") as f:
    f.write(token)
r["cwd"] = os.getcwd()
with open("/tmp/probe", "w") as f:
    f.write("x")
mounts = {}
for line in open("/proc/self/mountinfo"):
    parts = line.split()
    sep = parts.index("-")
    mounts[parts[4]] = (parts[sep + 1], parts[5].split(","))
r["tmp_fs"] = mounts.get("/tmp", ("", []))[0]
r["work_opts"] = mounts.get("/work", ("", []))[1]
r["root_opts"] = mounts.get("/", ("", []))[1]
print(json.dumps(r))
"""


@pytest.fixture(scope="module")
def host_marker() -> Iterator[str]:
    """A process on the host with a unique command line that a job must not see."""
    marker = f"{9000 + secrets.randbelow(999)}.{secrets.randbelow(10**6)}"
    proc = subprocess.Popen(["sleep", marker])
    wait_for(
        lambda: marker.encode() in Path(f"/proc/{proc.pid}/cmdline").read_bytes(), what="host sleep to exec"
    )
    try:
        yield marker
    finally:
        proc.kill()
        proc.wait()


def _check_probe(daemon: RunningDaemon, job_id: str, result: dict[str, Any], marker: str, token: str) -> None:
    # The user's command is PID 1 (no init of ours in between) and sees only its own processes.
    assert result["pid"] == 1
    assert result["pid1"] == ["python3", "-c"]
    assert result["ppid"] == 0
    assert result["pids"] == [1], f"job sees processes it did not start: {result['pids']}"
    assert not result["marker_seen"], "a host process is visible inside the job"
    # Hostname is the short job id.
    assert result["hostname"] == job_id[:12]
    # Host userland is read-only, also where the host itself may write.
    for key in ("write_usr", "write_etc", "write_root", "mkdir_bin"):
        assert result[key] == "EROFS", f"{key}: {result[key]}"
    assert "ro" in result["root_opts"]
    # Nothing private of the host is there.
    assert result["exists"] == {p: False for p in result["exists"]}, result["exists"]
    # /work is writable, the default cwd, and kept in the job's directory on the host.
    assert result["cwd"] == "/work"
    assert "rw" in result["work_opts"]
    assert (daemon.home / "jobs" / job_id / "work" / "probe.txt").read_text() == token
    # /tmp is a private tmpfs.
    assert result["tmp_fs"] == "tmpfs"
    assert not Path("/usr/capsa-probe").exists()
    assert not Path("/capsa-probe").exists()


def test_host_sees_what_the_job_must_not(host_marker: str) -> None:
    """The probe would fail on the host itself, so its passing in a job means isolation."""
    for path in ("/root", "/home", "/var", "/srv"):
        assert Path(path).exists(), f"host lacks {path}: the in-job check would be vacuous"
    pids = [p for p in Path("/proc").iterdir() if p.name.isdigit()]
    assert any(host_marker.encode() in (p / "cmdline").read_bytes() for p in pids if p.exists())


def test_isolation_via_cli(daemon: RunningDaemon, host_marker: str) -> None:
    token = secrets.token_hex(8)
    res = daemon.cli("run", "--", "python3", "-c", PROBE, str(daemon.home), host_marker, token)
    assert res.returncode == 0, res.stderr.decode()
    result = json.loads(res.stdout)
    job_id = daemon.cli("ps", "-a", "-q").stdout.decode().split()[0]
    full = json.loads(daemon.cli("inspect", job_id, check=True).stdout)
    assert full["state"] == "COMPLETED" and full["exit_code"] == 0
    _check_probe(daemon, full["id"], result, host_marker, token)


def test_isolation_via_client(daemon: RunningDaemon, host_marker: str) -> None:
    token = secrets.token_hex(8)
    with daemon.client("developer") as client:
        job = client.run_job(["python3", "-c", PROBE, str(daemon.home), host_marker, token])
        out = stdout_of(client, job.id)
        final = wait_ended(client, job.id)
    assert final.state == "COMPLETED" and final.exit_code == 0, final.reason
    assert final.hostname == job.id[:12]
    _check_probe(daemon, job.id, json.loads(out), host_marker, token)


def test_work_persists_across_the_job_and_tmp_does_not(daemon: RunningDaemon) -> None:
    with daemon.client() as client:
        job = client.run_job(["/bin/sh", "-c", "echo kept > /work/a; echo gone > /tmp/b; sync"])
        assert wait_ended(client, job.id).exit_code == 0
    job_dir = daemon.home / "jobs" / job.id
    assert (job_dir / "work" / "a").read_text() == "kept\n"
    assert not list(job_dir.rglob("b")), "the job's /tmp leaked onto the host disk"
