"""The real daemon with CAPSA_HOME on a small, full filesystem (issue 15, items 1-6)."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.daemon import RunningDaemon, free_port
from tests.integration.diskfull.loopfs import LoopFs, loop_fs

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (loop mounts, cgroups)")


@pytest.fixture(scope="module")
def fs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopFs]:
    with loop_fs(tmp_path_factory.mktemp("diskfull"), 128) as mounted:
        yield mounted


@pytest.fixture(scope="module")
def daemon(fs: LoopFs) -> Iterator[RunningDaemon]:
    home = fs.mnt / "home"
    home.mkdir()
    # The daemon's own log goes outside the full filesystem, so that it can say what happened.
    d = RunningDaemon(home=home, port=free_port(), log_path=fs.image.parent / "daemon.log")
    d.start()
    try:
        yield d
    finally:
        d.stop()
        d.kill_supervisor()
        _wait_no_processes(home, 10)


@pytest.fixture
def ballast(fs: LoopFs) -> Iterator[Path]:
    path = fs.mnt / "ballast"
    yield path
    path.unlink(missing_ok=True)


def capsa_processes(home: Path) -> list[int]:
    """PIDs of processes (daemon, supervisor, zygote, jobs' helpers) started for this CAPSA_HOME."""
    needle = f"CAPSA_HOME={home}\0".encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            environ = Path(f"/proc/{name}/environ").read_bytes()
        except OSError:
            continue
        if needle in environ + b"\0" and int(name) != os.getpid():
            found.append(int(name))
    return found


def _wait_no_processes(home: Path, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := capsa_processes(home)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def _inspect(d: RunningDaemon, job_id: str) -> dict[str, object]:
    result = d.cli("inspect", job_id, check=True)
    return dict(json.loads(result.stdout))


def _wait_state(d: RunningDaemon, job_id: str, states: set[str], timeout: float) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        job = _inspect(d, job_id)
        if job["state"] in states or time.monotonic() > deadline:
            return job
        time.sleep(0.2)


def _allocated(path: Path) -> int:
    """Bytes of disk the tree at ``path`` holds (st_blocks, directories included)."""
    total = path.lstat().st_blocks * 512
    for root, dirs, files in os.walk(path):
        total += sum(os.lstat(os.path.join(root, name)).st_blocks * 512 for name in dirs + files)
    return total


def _database_bytes(home: Path) -> int:
    """The database's files: its WAL, and the spare file it gives up (or takes back) to write on a full disk."""
    return sum(p.lstat().st_blocks * 512 for p in home.glob("capsa.db*"))


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def _wait_full(fs: LoopFs, timeout: float = 20) -> None:
    """Until the job's output has taken all the space it can: less than one record (1 MiB) free, no change."""
    deadline = time.monotonic() + timeout
    last = -1
    while (free := fs.free_bytes()) > 2 << 20 or free != last:
        assert time.monotonic() < deadline, f"the job never filled the disk ({free} bytes free)"
        last = free
        time.sleep(0.3)


def test_back_pressure_holds_the_job_and_its_output_resumes_when_space_returns(
    fs: LoopFs, daemon: RunningDaemon, ballast: Path
) -> None:
    supervisor = daemon.supervisor_pid()
    assert supervisor
    baseline = _rss_kib(supervisor)
    fs.fill(ballast.name, leave=6 << 20)
    total = 40_000_000
    job_id = daemon.cli(
        "run", "-d", "--", "sh", "-c", f"head -c {total} /dev/zero | tr '\\0' a; echo done", check=True
    ).stdout.decode().strip()
    _wait_full(fs)
    peak = max(_rss_kib(supervisor) for _ in range(15) if time.sleep(0.1) is None)
    # ~34 MB of output has nowhere to go; the supervisor holds at most its 8 MiB job backlog (+ a read).
    assert peak - baseline < 20 << 10, f"supervisor RSS grew by {(peak - baseline) >> 10} MiB"
    assert _inspect(daemon, job_id)["state"] == "RUNNING"

    ballast.unlink()
    job = _wait_state(daemon, job_id, {"COMPLETED", "FAILED", "STOPPED"}, 30)
    assert job["state"] == "COMPLETED" and job["reason"] == ""
    logs = daemon.cli("logs", job_id, check=True)
    assert len(logs.stdout) == total + len("done\n") and logs.stdout.count(b"a") == total
    assert logs.stdout.endswith(b"aadone\n")
    assert logs.stderr == b""
    daemon.cli("rm", job_id, check=True)


def test_job_ending_on_a_full_disk_has_its_log_marked_incomplete_and_rm_frees_it(
    fs: LoopFs, daemon: RunningDaemon, ballast: Path
) -> None:
    fs.fill(ballast.name, leave=1 << 20)
    job_id = daemon.cli(
        "run", "-d", "--", "sh", "-c", "echo start; head -c 30000000 /dev/zero | tr '\\0' b", check=True
    ).stdout.decode().strip()
    _wait_full(fs)
    time.sleep(0.5)  # let the persister fail a few writes: the backlog is held, the job blocked
    daemon.cli("stop", "-t", "1", job_id, check=True)
    job = _wait_state(daemon, job_id, {"STOPPED", "FAILED", "COMPLETED"}, 20)
    # The exit record was written to SQLite on a full disk (its spare file makes room).
    assert job["state"] == "STOPPED", job
    m = re.fullmatch(r"stopped by user; log incomplete: (\d+) bytes not written \(No space left on device\)",
                     str(job["reason"]))
    assert m, job["reason"]
    lost = int(m.group(1))
    assert lost > 1 << 20
    logs = daemon.cli("logs", job_id, check=True)
    out = logs.stdout  # whatever fit before the disk filled: a prefix of the job's output, never garbage
    assert b"start\n".startswith(out[:6]) and out[6:] == b"b" * max(0, len(out) - 6)
    assert f"log incomplete: {lost} bytes not written (No space left on device)".encode() in logs.stderr

    # What rm must give back: every block of the job's files. The database's own growth for the delete
    # (WAL frames) is counted apart: when the disk filled with WAL pages before the job's log could take
    # them, the job's files are a few KiB and that growth alone can exceed them.
    job_bytes = _allocated(daemon.home / "jobs" / job_id)
    db_before = _database_bytes(daemon.home)
    free_before = fs.free_bytes()
    result = daemon.cli("rm", job_id)  # still full: the ballast is in place
    assert result.returncode == 0, result.stderr
    db_growth = _database_bytes(daemon.home) - db_before
    assert job_bytes > 0
    assert fs.free_bytes() + max(0, db_growth) >= free_before + job_bytes, (job_bytes, db_growth)
    assert not (daemon.home / "jobs" / job_id).exists()
    assert job_id[:12].encode() not in daemon.cli("ps", "-a", check=True).stdout


def test_capsule_create_on_a_full_disk_exits_9_naming_the_path(
    fs: LoopFs, daemon: RunningDaemon, ballast: Path, tmp_path: Path
) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "data.bin").write_bytes(os.urandom(2 << 20))
    fs.fill(ballast.name)
    result = daemon.cli("capsule", "create", "full@1.0", str(source))
    assert result.returncode == 9, result.stderr
    message = result.stderr.decode()
    assert "no space left on device" in message and str(daemon.home) in message
    assert "internal error" not in message
    assert message.count("\n") == 1
    assert os.listdir(daemon.home / "capsules" / "ingest") == []


def test_daemon_stops_cleanly_while_full(fs: LoopFs, daemon: RunningDaemon, ballast: Path) -> None:
    running = daemon.cli("run", "-d", "--", "sleep", "300", check=True).stdout.decode().strip()
    fs.fill(ballast.name)
    t0 = time.monotonic()
    daemon.stop()
    assert _wait_no_processes(daemon.home, 15) == [], "daemon, supervisor, zygote or a job outlived SIGTERM"
    assert time.monotonic() - t0 < 20
    ballast.unlink()
    daemon.start()
    job = _wait_state(daemon, running, {"FAILED", "STOPPED"}, 10)
    assert job["state"] in {"FAILED", "STOPPED"}  # the shutdown stopped it; never stuck RUNNING


def test_daemon_starting_on_a_full_disk_works_or_says_why_in_one_line(
    fs: LoopFs, daemon: RunningDaemon, ballast: Path
) -> None:
    daemon.stop()
    assert _wait_no_processes(daemon.home, 15) == []
    fs.fill(ballast.name)  # after the stop: what the stop freed (WAL, log reserves) is taken too
    try:
        daemon.start(timeout=30)
    except RuntimeError as exc:  # allowed: refusing to start, in one line, leaving nothing behind
        assert "Traceback" not in str(exc), f"start-up on a full disk ended in a traceback: {exc}"
        assert _wait_no_processes(daemon.home, 10) == []
        ballast.unlink()
        daemon.start()
        return
    assert daemon.cli("ps", "-a").returncode == 0
