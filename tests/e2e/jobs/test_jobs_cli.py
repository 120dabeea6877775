"""The Docker-like CLI: exit codes, run -d, ps, inspect, id prefixes, stop, rm, one-line errors."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time

import pytest
from jobs_helpers import proc_state, processes_in_cgroup_named, wait_ended, wait_for, wait_running

from tests.fixtures.daemon import CAPSA, RunningDaemon


def one_line_error(res: subprocess.CompletedProcess[bytes]) -> str:
    """The stderr of a failed command, checked to be one clear line and no traceback."""
    err = res.stderr.decode()
    assert res.returncode != 0
    assert "Traceback" not in err, err
    assert err.startswith("capsa: ") and err.count("\n") == 1, repr(err)
    return err


@pytest.mark.parametrize(("command", "code"), [
    (["/bin/true"], 0),
    (["/bin/sh", "-c", "exit 3"], 3),
    (["/bin/sh", "-c", "echo out; echo err >&2; exit 42"], 42),
])
def test_run_exits_with_the_jobs_exit_code(daemon: RunningDaemon, command: list[str], code: int) -> None:
    res = daemon.cli("run", "--", *command)
    assert res.returncode == code, res.stderr.decode()
    if code == 42:
        assert (res.stdout, res.stderr) == (b"out\n", b"err\n")


def test_missing_command_exits_127_with_one_line(daemon: RunningDaemon) -> None:
    res = daemon.cli("run", "--", "/no/such/command")
    assert res.returncode == 127
    err = one_line_error(res)
    assert "/no/such/command" in err
    job_id = daemon.cli("ps", "-a", "-q", check=True).stdout.split()[0].decode()
    info = json.loads(daemon.cli("inspect", job_id, check=True).stdout)
    assert info["state"] == "FAILED" and info["exit_code"] == 127
    assert info["reason"].startswith("start failed")


def test_job_killed_by_sigkill_exits_137(daemon: RunningDaemon) -> None:
    proc = subprocess.Popen([*CAPSA, "--config", str(daemon.home / "client-admin.yaml"), "run", "--",
                             "sleep", "600"], env=daemon.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        with daemon.client() as client:
            job = wait_for(lambda: next((j for j in client.list_jobs() if list(j.command) == ["sleep", "600"]
                                         and j.pid), None), what="the attached job to start")
            os.kill(job.pid, signal.SIGKILL)   # from the host: the only signal PID 1 of a job cannot ignore
            out, err = proc.communicate(timeout=30)
            final = client.get_job(job.id)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 137, err.decode()
    assert "Traceback" not in err.decode()
    assert final.state == "FAILED" and final.exit_code == 137 and final.signal == 9
    assert "SIGKILL" in final.reason


def test_stop_of_a_term_handling_job_gives_143(daemon: RunningDaemon) -> None:
    # PID 1 of a namespace only gets SIGTERM if it handles it; this one exits 128+15 when it does.
    script = "import signal, sys, time\n" \
             "signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))\n" \
             "print('ready', flush=True)\n" \
             "time.sleep(600)"
    with daemon.client() as client:
        job = client.run_job(["python3", "-c", script])
        wait_for(lambda: b"ready" in b"".join(c.data for c in client.stream_logs(job.id)), what="ready")
        t0 = time.monotonic()
        res = daemon.cli("stop", "-t", "20", job.id[:10])
        took = time.monotonic() - t0
        final = client.get_job(job.id)
    assert res.returncode == 0 and res.stdout.decode().strip() == job.id[:12]
    assert final.state == "STOPPED" and final.exit_code == 143 and final.reason == "stopped by user"
    assert took < 10, "SIGTERM was not delivered; the job waited for the SIGKILL after the grace period"


def test_stop_of_a_sleep_kills_it_after_the_grace_period(daemon: RunningDaemon) -> None:
    job_id = daemon.cli("run", "-d", "--", "sleep", "600", check=True).stdout.decode().strip()
    with daemon.client() as client:
        pid = wait_running(client, job_id).pid
        res = daemon.cli("stop", "-t", "1", job_id)
        assert res.returncode == 0, res.stderr.decode()
        final = client.get_job(job_id)
    assert final.state == "STOPPED" and final.exit_code == 137 and final.ended
    assert proc_state(pid) in (None, "Z")
    assert processes_in_cgroup_named(job_id) == []


def test_stop_with_no_grace_kills_at_once_and_bad_grace_is_refused(daemon: RunningDaemon) -> None:
    # As docker stop -t 0: SIGKILL without waiting (the SIGTERM-ignoring PID 1 would otherwise hold 10 s).
    job_id = daemon.cli("run", "-d", "--", "sleep", "600", check=True).stdout.decode().strip()
    with daemon.client() as client:
        wait_running(client, job_id)
        t0 = time.monotonic()
        res = daemon.cli("stop", "-t", "0", job_id)
        took = time.monotonic() - t0
        final = client.get_job(job_id)
    assert res.returncode == 0, res.stderr.decode()
    assert final.state == "STOPPED" and final.exit_code == 137
    assert took < 5, f"stop -t 0 took {took:.1f} s: it waited for a grace period"
    bad = daemon.cli("stop", "-t", "-1", job_id)
    assert bad.returncode == 2 and b"-1" in bad.stderr and b"Traceback" not in bad.stderr


def test_run_detached_prints_only_the_id(daemon: RunningDaemon) -> None:
    res = daemon.cli("run", "-d", "--", "sleep", "600")
    assert res.returncode == 0 and res.stderr == b""
    assert re.fullmatch(rb"[0-9a-f]{32}\n", res.stdout), res.stdout
    job_id = res.stdout.decode().strip()
    try:
        # ps --json is a list of objects with at least id, state, exit_code, command.
        listed = json.loads(daemon.cli("ps", "--json", check=True).stdout)
        assert isinstance(listed, list)
        mine = [j for j in listed if j["id"] == job_id]
        assert len(mine) == 1
        assert mine[0]["state"] == "RUNNING"
        assert mine[0]["exit_code"] is None
        assert mine[0]["command"] == ["sleep", "600"]
        for entry in listed:
            assert {"id", "state", "exit_code", "command"} <= entry.keys()
        quiet = daemon.cli("ps", "-q", check=True).stdout.decode().split("\n")
        assert job_id[:12] in quiet
        assert all(re.fullmatch(r"[0-9a-f]{12}", line) for line in quiet if line)
    finally:
        daemon.cli("rm", "-f", job_id)
    # Ended jobs are only in ps -a.
    assert job_id[:12] not in daemon.cli("ps", "-q", check=True).stdout.decode()


def test_ps_all_includes_ended_jobs_with_exit_codes(daemon: RunningDaemon) -> None:
    with daemon.client() as client:
        job = client.run_job(["/bin/sh", "-c", "exit 5"])
        wait_ended(client, job.id)
    listed = json.loads(daemon.cli("ps", "-a", "--json", check=True).stdout)
    mine = next(j for j in listed if j["id"] == job.id)
    assert mine["state"] == "FAILED" and mine["exit_code"] == 5
    assert job.id[:12] not in daemon.cli("ps", "-q", check=True).stdout.decode()


def test_id_prefix_resolution_and_errors(daemon: RunningDaemon) -> None:
    with daemon.client() as client:
        # Enough jobs that two ids share a first hex digit (pigeonhole: 17 always do).
        ids = [j.id for j in client.list_jobs(all=True)]
        while len({i[0] for i in ids}) == len(ids):
            job = client.run_job(["/bin/true"])
            wait_ended(client, job.id)
            ids.append(job.id)
    target = ids[-1]
    info = json.loads(daemon.cli("inspect", target[:7], check=True).stdout)
    assert info["id"] == target

    first = [i[0] for i in ids]
    ambiguous = next(c for c in first if first.count(c) > 1)
    for command in (["inspect"], ["logs"], ["stop"], ["rm"]):
        res = daemon.cli(*command, ambiguous)
        assert "ambiguous" in one_line_error(res)

    unknown = next(p for p in (f"{n:012x}" for n in range(1, 100)) if not any(i.startswith(p) for i in ids))
    for command in (["inspect"], ["logs"], ["logs", "-f"], ["stop"], ["rm"], ["rm", "-f"]):
        res = daemon.cli(*command, unknown)
        assert "no such job" in one_line_error(res), command
        assert res.returncode == 3

    res = daemon.cli("inspect", "not-hex!")
    assert "invalid job id" in one_line_error(res)


def test_rm_refuses_a_running_job_unless_forced(daemon: RunningDaemon) -> None:
    job_id = daemon.cli("run", "-d", "--", "sleep", "600", check=True).stdout.decode().strip()
    job_dir = daemon.home / "jobs" / job_id
    with daemon.client() as client:
        pid = wait_running(client, job_id).pid
    res = daemon.cli("rm", job_id[:8])
    assert "RUNNING" in one_line_error(res)
    assert json.loads(daemon.cli("inspect", job_id, check=True).stdout)["state"] == "RUNNING"
    assert job_dir.is_dir()

    res = daemon.cli("rm", "-f", job_id[:8])
    assert res.returncode == 0, res.stderr.decode()
    assert res.stdout.decode().strip() == job_id[:12]
    assert "no such job" in one_line_error(daemon.cli("inspect", job_id))
    assert not job_dir.exists()
    wait_for(lambda: proc_state(pid) in (None, "Z"), what="the removed job's process to be gone")
    assert processes_in_cgroup_named(job_id) == []


def test_bad_flags_are_one_line_errors(daemon: RunningDaemon) -> None:
    for args in (["run", "--cpu-cores", "zero", "--", "/bin/true"], ["run", "--max-memory", "-5", "--", "/bin/true"],
                 ["run", "--workdir", "relative", "--", "/bin/true"]):
        res = daemon.cli(*args)
        one_line_error(res)
        assert res.returncode == 2, (args, res.stderr)


def test_json_output_keeps_numbers_as_numbers(daemon: RunningDaemon) -> None:
    job_id = daemon.cli("run", "-d", "--max-memory", "64", "--max-iobps", "1048576", "--", "/bin/true",
                        check=True).stdout.decode().strip()
    with daemon.client() as client:
        wait_ended(client, job_id)
    info = json.loads(daemon.cli("inspect", job_id, check=True).stdout)
    resources = info["resources"]
    assert resources["max_memory_mb"] == 64, resources
    assert resources["max_iobps"] == 1048576, resources
    for key in ("created_at_ns", "started_at_ns", "ended_at_ns", "start_latency_ns", "pid"):
        assert isinstance(info[key], int), (key, info[key])
