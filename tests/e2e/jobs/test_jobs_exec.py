"""`capsa exec`: a process inside a real running job (ADR-0013), through the CLI and the daemon."""

from __future__ import annotations

import json
import os

from jobs_helpers import processes_in_cgroup_named, wait_ended, wait_running

from tests.fixtures.daemon import RunningDaemon


def _start(daemon: RunningDaemon, *args: str) -> str:
    job_id = daemon.cli("run", "-d", *args, check=True).stdout.decode().strip()
    wait_running(daemon.client(), job_id)
    return job_id


def _stop(daemon: RunningDaemon, job_id: str) -> None:
    daemon.cli("stop", "-t", "0", job_id, check=True)
    wait_ended(daemon.client(), job_id)


def test_exec_runs_inside_the_jobs_namespaces_and_cgroup(daemon: RunningDaemon) -> None:
    job_id = _start(daemon, "--name", "exec-ns", "--", "/bin/sleep", "100")
    try:
        job = daemon.client().get_job(job_id)
        res = daemon.cli("exec", job_id, "--", "/bin/sh", "-c",
                         "cat /proc/1/cmdline | tr '\\0' ' '; echo; hostname; readlink /proc/self/ns/net; "
                         "id -u; pwd; echo err >&2; exit 7")
        assert res.returncode == 7, res.stderr.decode()
        lines = res.stdout.decode().splitlines()
        assert lines[0].strip() == "/bin/sleep 100"        # the job's PID 1: its PID namespace
        assert lines[1] == job.hostname                    # its UTS namespace
        assert lines[2] == os.readlink(f"/proc/{job.pid}/ns/net")  # its network namespace
        assert lines[-2:] == ["0", "/work"]
        assert res.stderr == b"err\n"
        # an exec'd process in the job's cgroup: listed in the job's cgroup.procs while it runs
        res = daemon.cli("exec", "-e", "A=b c", "-w", "/tmp", "-u", "65534", job_id, "--", "/bin/sh", "-c",
                         'echo "$A"; pwd; id -u; id -g')
        assert res.returncode == 0, res.stderr.decode()
        assert res.stdout.decode().splitlines() == ["b c", "/tmp", "65534", "65534"]
        info = json.loads(daemon.cli("inspect", job_id, check=True).stdout)
        events = info["exec_events"]
        assert [e["command"][0] for e in events] == ["/bin/sh", "/bin/sh"]
        assert events[0]["who"] and events[0]["ended"] and events[0]["exit_code"] == 7
        assert events[1]["user"] == "65534" and events[1]["exit_code"] == 0
    finally:
        _stop(daemon, job_id)


def test_exec_process_is_in_the_job_cgroup(daemon: RunningDaemon) -> None:
    import threading
    import time

    job_id = _start(daemon, "--", "/bin/sleep", "100")
    try:
        job = daemon.client().get_job(job_id)
        res = daemon.cli("exec", job_id, "--", "/bin/sh", "-c", "cat /proc/self/cgroup; sleep 0.5")
        assert res.returncode == 0, res.stderr.decode()
        # cgroup namespace: the job sees its own cgroup as the root, exactly as its PID 1 does
        pid1 = daemon.cli("exec", job_id, "--", "/bin/cat", "/proc/1/cgroup", check=True).stdout
        assert res.stdout == pid1
        # seen from the host: while it runs, the exec'd shell is one of the job cgroup's processes
        t = threading.Thread(target=daemon.cli, args=("exec", job_id, "--", "/bin/sleep", "3"))
        t.start()
        try:
            # The exec helper joins the cgroup (and the namespaces) first and only then execs the
            # command, so for a moment the second process is still the helper: wait for the exec.
            def argv0_of_others() -> list[bytes]:
                names = []
                for pid in processes_in_cgroup_named(job_id):
                    if pid == job.pid:
                        continue
                    try:
                        with open(f"/proc/{pid}/cmdline", "rb") as f:
                            names.append(f.read().split(b"\0")[0])
                    except FileNotFoundError:
                        pass
                return names

            deadline = time.monotonic() + 10
            while argv0_of_others() != [b"/bin/sleep"] and time.monotonic() < deadline:
                time.sleep(0.05)
            procs = processes_in_cgroup_named(job_id)
            assert job.pid in procs and len(procs) == 2
            assert argv0_of_others() == [b"/bin/sleep"]
        finally:
            t.join(15)
    finally:
        _stop(daemon, job_id)


def test_exec_is_oom_killed_by_the_jobs_memory_limit(daemon: RunningDaemon) -> None:
    job_id = _start(daemon, "--max-memory", "64", "--", "/bin/sleep", "100")
    try:
        res = daemon.cli("exec", job_id, "--", "/usr/bin/python3", "-c",
                         "b = []\nwhile True: b.append(bytearray(1 << 20))")
        assert res.returncode == 137, res.stderr.decode()
        assert b"OOM" in res.stderr
    finally:
        _stop(daemon, job_id)


def test_exec_refuses_unknown_and_ended_jobs_and_missing_commands(daemon: RunningDaemon) -> None:
    res = daemon.cli("exec", "nosuchjob", "--", "/bin/true")
    assert res.returncode != 0 and res.stderr.decode().startswith("capsa: ")
    assert "Traceback" not in res.stderr.decode()
    ended = daemon.cli("run", "-d", "--", "/bin/true", check=True).stdout.decode().strip()
    wait_ended(daemon.client(), ended)
    res = daemon.cli("exec", ended, "--", "/bin/true")
    assert res.returncode != 0 and "not RUNNING" in res.stderr.decode(), res.stderr.decode()
    job_id = _start(daemon, "--", "/bin/sleep", "100")
    try:
        res = daemon.cli("exec", job_id, "--", "/no/such/thing")
        assert res.returncode == 127, res.stderr.decode()
        assert "/no/such/thing" in res.stderr.decode()
        res = daemon.cli("exec", "-u", "alice", job_id, "--", "/bin/true")
        assert res.returncode == 2 or "UID" in res.stderr.decode()
        # nothing left behind: the job's cgroup holds only its PID 1 again, and it still runs
        job = daemon.client().get_job(job_id)
        assert processes_in_cgroup_named(job_id) == [job.pid]
        assert job.state == "RUNNING"
    finally:
        _stop(daemon, job_id)


def test_exec_is_killed_when_its_job_ends(daemon: RunningDaemon) -> None:
    job_id = _start(daemon, "--", "/bin/sleep", "100")
    import threading
    import time

    out: list[int] = []
    t = threading.Thread(target=lambda: out.append(daemon.cli("exec", job_id, "--", "/bin/sleep", "200").returncode))
    t.start()
    time.sleep(1.0)
    t0 = time.monotonic()
    _stop(daemon, job_id)
    t.join(20)
    assert not t.is_alive() and out and out[0] in (137, 143)
    assert time.monotonic() - t0 < 15
