"""`capsa run -p` against a real daemon: a job serving HTTP on a bridge network is fetched through its
published port on 127.0.0.1; the rule goes when the job ends and, after a daemon kill -9, when the
restarted daemon reconciles; bad requests are refused with nothing left behind."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import urllib.request

import pytest
from jobs_helpers import wait_ended, wait_running

from tests.fixtures.daemon import RunningDaemon, free_port
from tests.fixtures.waiting import wait_for

SERVE = "echo hello from the job > /work/index.txt && exec python3 -m http.server 8000"


def _fetch(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/index.txt", timeout=3) as resp:
        return resp.read().decode()


def _fetched(port: int) -> str:
    def attempt() -> str | None:
        try:
            return _fetch(port)
        except OSError:
            return None   # the server is still starting
    return wait_for(attempt, timeout=20, what=f"the job's server through 127.0.0.1:{port}")


def _port_rules(port: int) -> list[str]:
    out = subprocess.run(["iptables", "-w", "5", "-t", "nat", "-S"], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if f"--dport {port} " in line and "capsa:" in line]


def _refused(port: int) -> bool:
    try:
        _fetch(port)
    except OSError:
        return True
    return False


def _run(daemon: RunningDaemon, *args: str) -> subprocess.CompletedProcess[bytes]:
    return daemon.cli("run", "-d", *args)


def _serve(daemon: RunningDaemon, port: int) -> str:
    r = _run(daemon, "--network", "bridge", "-p", f"{port}:8000", "--", "sh", "-c", SERVE)
    assert r.returncode == 0, r.stderr
    return r.stdout.decode().strip()


def test_a_published_http_server_is_fetched_and_unpublished_when_it_ends(fresh_daemon: RunningDaemon) -> None:
    daemon = fresh_daemon
    port = free_port()
    job_id = _serve(daemon, port)
    assert _fetched(port) == "hello from the job\n"
    ps = daemon.cli("ps", check=True).stdout.decode()
    assert f"127.0.0.1:{port}->8000/tcp" in ps
    assert json.loads(daemon.cli("inspect", job_id, check=True).stdout)["ports"] == [f"127.0.0.1:{port}->8000/tcp"]
    assert _port_rules(port)
    # The same host port for a second job is refused, naming the first; nothing of the second is kept.
    r = _run(daemon, "--network", "bridge", "-p", f"{port}:9000", "--", "sleep", "30")
    assert r.returncode == 4 and f"published by job {job_id}".encode() in r.stderr, r.stderr
    with daemon.client() as client:
        client.stop_job(job_id, grace_seconds=0.5)
        wait_ended(client, job_id)
        assert [j for j in client.list_jobs() if j.ports] == []
    assert _port_rules(port) == []
    assert _refused(port)


def test_rules_survive_a_daemon_kill_and_go_when_the_restart_finds_the_job_gone(fresh_daemon: RunningDaemon) -> None:
    daemon = fresh_daemon
    port = free_port()
    job_id = _serve(daemon, port)
    assert _fetched(port) == "hello from the job\n"
    daemon.kill9()
    daemon.start()   # the job survived (its supervisor did): reconcile keeps its port
    assert _fetch(port) == "hello from the job\n"
    with daemon.client() as client:
        pid = wait_running(client, job_id).pid
    daemon.kill9()
    os.kill(pid, signal.SIGKILL)   # the job dies while no daemon is there to see it
    daemon.start()
    with daemon.client() as client:
        wait_ended(client, job_id)
    wait_for(lambda: not _port_rules(port), timeout=10, what="the stale port rule to be reconciled away")
    assert _refused(port)


def test_bad_requests_are_refused_and_leave_nothing(daemon: RunningDaemon) -> None:
    with daemon.client() as client:
        before = len(client.list_jobs(all=True))
    port = free_port()
    cases = [
        (["--network", "host", "-p", f"{port}:80"], 2, b"cannot be published with --network host"),
        (["--network", "none", "-p", f"{port}:80"], 2, b"--network none"),
        (["-p", f"{port}:80"], 2, b"--network host"),   # host is the default
        (["--network", "bridge", "-p", "80"], 2, b"HOSTPORT:JOBPORT"),
        (["--network", "bridge", "-p", f"{port}:70000"], 2, b"between 1 and 65535"),
    ]
    for args, code, message in cases:
        r = _run(daemon, *args, "--", "true")
        assert r.returncode == code and message in r.stderr, (args, r.returncode, r.stderr)
    with daemon.client() as client:
        assert len(client.list_jobs(all=True)) == before   # refused before any job was recorded
    with socket.socket() as held:
        held.bind(("127.0.0.1", port))
        held.listen(1)
        r = _run(daemon, "--network", "bridge", "-p", f"{port}:80", "--", "true")
        assert r.returncode == 4, r.stderr
        assert f"in use by a host process (pid {os.getpid()}".encode() in r.stderr, r.stderr
    assert _port_rules(port) == []


@pytest.fixture(autouse=True)
def _no_rules_left() -> None:
    yield
    out = subprocess.run(["iptables", "-w", "5", "-t", "nat", "-S"], capture_output=True, text=True).stdout
    assert not [line for line in out.splitlines() if "-j DNAT" in line and ":port:" in line]
