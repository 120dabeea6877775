"""First run, every time: a fresh home, a free port, the quickstart's sequence with the real CLI.

Once the daemon's ready file exists (or systemd got READY=1) every command works at
once, with no retry: the file is written only after the API listens and client.yaml
exists. Before that, a client sees "no configuration" (3) or "daemon unavailable"
(7), never anything else.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from capsa.config import write_bundle
from tests.fixtures.daemon import CAPSA, _is_ours, free_port

ROOT = Path(__file__).resolve().parents[3]


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPSA_") and k != "NOTIFY_SOCKET"}
    return {**env, "CAPSA_HOME": str(home), **extra}


def _capsa(home: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CAPSA, *args], env=_env(home), capture_output=True, text=True, timeout=timeout)


def _supervisor_alive(home: Path) -> bool:
    try:
        pid = int((home / "run" / "supervisor.pid").read_text())
    except (OSError, ValueError):
        return False
    return _is_ours(pid, home)


def _job_cgroups(job_id: str) -> list[Path]:
    """Existing cgroup dirs of a job: ``<this process's cgroup>/capsa/<job id>`` in any hierarchy (the daemon
    and its supervisor inherit the test's cgroups)."""
    paths = {line.split(":", 2)[2].lstrip("/") for line in Path("/proc/self/cgroup").read_text().splitlines()}
    roots = [Path("/sys/fs/cgroup"), *(p for p in Path("/sys/fs/cgroup").iterdir() if p.is_dir())]
    return [root / path / "capsa" / job_id for root in roots for path in paths
            if (root / path / "capsa" / job_id).is_dir()]


def _runs_for(pid: int, home: Path) -> bool:
    try:
        return f"CAPSA_HOME={home}\0".encode() in Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False


def _kill_leftovers(proc: subprocess.Popen[bytes], home: Path) -> None:
    """Only for a failed test: the daemon we started, then the supervisor it started for this home."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if _supervisor_alive(home):
        with contextlib.suppress(ProcessLookupError, ValueError, OSError):
            os.kill(int((home / "run" / "supervisor.pid").read_text()), signal.SIGKILL)


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    """A stand-in for systemd's notify socket, on an abstract address as systemd's own often is."""
    name = f"capsa-test-first-run-{secrets.token_hex(6)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        yield sock, "@" + name


def _next_message(sock: socket.socket, timeout: float) -> dict[str, str]:
    sock.settimeout(timeout)
    data = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.splitlines() if "=" in line)


def test_a_fresh_home_is_usable_the_moment_the_daemon_says_ready(
    tmp_path: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    home = tmp_path / "home"   # does not exist: the daemon creates it, its certificates and client.yaml
    ready = tmp_path / "ready"
    address = f"127.0.0.1:{free_port()}"
    sock, notify_address = notify_socket
    log = (tmp_path / "daemon.log").open("wb")
    proc = subprocess.Popen([*CAPSA, "daemon", "--listen", address, "--ready-file", str(ready)],
                            env=_env(home, NOTIFY_SOCKET=notify_address), stdout=log, stderr=log,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()
    early: list[int] = []
    stop_probing = threading.Event()

    def probe() -> None:
        # Clients started while the daemon bootstraps: each must fail cleanly, never half-way.
        while not stop_probing.is_set():
            early.append(_capsa(home, "version").returncode)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None, (tmp_path / "daemon.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no ready file after 60 s"
            time.sleep(0.02)
        stop_probing.set()
        prober.join()
        assert set(early) <= {0, 3, 7}, early

        fields = dict(line.split("=", 1) for line in ready.read_text().splitlines())
        assert fields["listen"] == address and fields["pid"] == str(proc.pid)
        assert Path(fields["client_config"]) == home / "client.yaml"
        assert f"address: {address}" in (home / "client.yaml").read_text()   # clients dial the chosen port
        message = _next_message(sock, 10)
        while "READY" not in message:   # STATUS= progress messages come first
            message = _next_message(sock, 10)
        assert message["READY"] == "1" and message["MAINPID"] == str(proc.pid)
        assert address in message["STATUS"]

        # The quickstart's sequence, each command once, no retries.
        version = _capsa(home, "version")
        assert version.returncode == 0, version.stderr
        assert "daemon: capsa" in version.stdout
        hello = _capsa(home, "run", "--", "/bin/sh", "-c", "echo hello from $(hostname)")
        assert hello.returncode == 0, hello.stderr
        assert hello.stdout.startswith("hello from ")
        detached = _capsa(home, "run", "-d", "--max-memory", "64", "--max-pids", "32", "--",
                          "/bin/sh", "-c", "for i in 1 2 3; do echo tick $i; done")
        assert detached.returncode == 0, detached.stderr
        job_id = detached.stdout.strip()
        logs = _capsa(home, "logs", "-f", job_id)
        assert logs.stdout == "tick 1\ntick 2\ntick 3\n", logs.stderr
        assert job_id[:12] in _capsa(home, "ps", "-a").stdout
        job = json.loads(_capsa(home, "inspect", job_id).stdout)
        assert job["state"] == "COMPLETED" and job["exit_code"] == 0

        # A job still running when the daemon stops: without --live-restore it goes, and its cgroup with it.
        sleeper = _capsa(home, "run", "-d", "--max-memory", "64", "--", "/bin/sleep", "300")
        assert sleeper.returncode == 0, sleeper.stderr
        sleeper_id = sleeper.stdout.strip()
        sleeper_pid = json.loads(_capsa(home, "inspect", sleeper_id).stdout)["pid"]
        assert _job_cgroups(sleeper_id), "the running job's cgroup was not found (so its removal proves nothing)"
        supervisor = int((home / "run" / "supervisor.pid").read_text())

        proc.send_signal(signal.SIGTERM)
        message = _next_message(sock, 10)
        assert message.get("STOPPING") == "1", message
        assert proc.wait(60) == 0
        assert not ready.exists(), "the ready file outlived the daemon"
        assert not _supervisor_alive(home), "the supervisor outlived a daemon stopped without --live-restore"
        # Nothing of this home runs any more (the zygote and jobs are the supervisor's children).
        assert not Path(f"/proc/{supervisor}").exists() or not _is_ours(supervisor, home)
        leftovers = [e.name for e in Path("/proc").iterdir() if e.name.isdigit() and _runs_for(int(e.name), home)]
        assert leftovers == [], f"processes of {home} still running: {leftovers}"
        assert not Path(f"/proc/{sleeper_pid}/cmdline").exists() or \
            b"sleep" not in Path(f"/proc/{sleeper_pid}/cmdline").read_bytes()
        assert _job_cgroups(sleeper_id) == []

        gone = _capsa(home, "version")
        assert gone.returncode == 7, (gone.stdout, gone.stderr)
        assert "daemon: unreachable" in gone.stdout
    finally:
        stop_probing.set()
        prober.join()
        _kill_leftovers(proc, home)


@pytest.fixture(scope="module")
def config_without_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    bundle = tmp_path_factory.mktemp("nodaemon")
    # Bound but not listening, for as long as the tests use it: connections are refused, and no
    # server started meanwhile (another test's daemon) can take the port and answer with its TLS.
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        write_bundle(bundle, address=f"127.0.0.1:{holder.getsockname()[1]}")
        yield bundle / "client-admin.yaml"


@pytest.mark.parametrize("args", [["version"], ["version", "--json"], ["ps"], ["run", "-d", "--", "/bin/true"]],
                         ids=" ".join)
def test_commands_exit_7_when_no_daemon_answers(config_without_daemon: Path, args: list[str],
                                                tmp_path: Path) -> None:
    result = _capsa(tmp_path, "--config", str(config_without_daemon), *args)
    assert result.returncode == 7, (result.stdout, result.stderr)
    if args == ["version"]:
        assert "client: capsa" in result.stdout and "daemon: unreachable (cannot reach" in result.stdout
    elif args == ["version", "--json"]:
        assert "cannot reach the capsa daemon" in json.loads(result.stdout)["daemon_error"]
    else:
        lines = result.stderr.splitlines()
        assert lines[-1].startswith("capsa: cannot reach the capsa daemon"), result.stderr
        if args[0] == "run":   # a submission retries with its request id, and says so while it waits
            assert len(lines) == 2 and "retrying with the same request id for up to" in lines[0], result.stderr
        else:
            assert len(lines) == 1, result.stderr


def test_the_quickstart_script_on_a_fresh_home_and_port(tmp_path: Path) -> None:
    home = tmp_path / "qs-home"
    address = f"127.0.0.1:{free_port()}"
    env = _env(home, CAPSA_LISTEN=address, QUICKSTART_SKIP_SETUP="1", TMPDIR=str(tmp_path))
    result = subprocess.run([str(ROOT / "scripts" / "quickstart.sh")], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-3000:])
    assert "quickstart: ok" in result.stdout and "hello from " in result.stdout
    assert f"address: {address}" in (home / "client.yaml").read_text()
    assert not _supervisor_alive(home)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("capsa-quickstart.")] == []   # its temp dir
    # Idempotent: again on the same home, now without CAPSA_LISTEN - server.yaml keeps the port.
    env.pop("CAPSA_LISTEN")
    again = subprocess.run([str(ROOT / "scripts" / "quickstart.sh")], env=env, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, (again.stdout[-2000:], again.stderr[-3000:])
    assert "quickstart: ok" in again.stdout and not _supervisor_alive(home)


def test_quickstart_refuses_a_port_its_home_was_not_set_up_for(tmp_path: Path) -> None:
    home = tmp_path / "home"
    write_bundle(home, address="127.0.0.1:7443")
    (home / "client.yaml").write_text((home / "client-admin.yaml").read_text())
    env = _env(home, CAPSA_LISTEN=f"127.0.0.1:{free_port()}", QUICKSTART_SKIP_SETUP="1")
    result = subprocess.run([str(ROOT / "scripts" / "quickstart.sh")], env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2 and "use a fresh CAPSA_HOME or unset CAPSA_LISTEN" in result.stderr


def test_a_daemon_that_cannot_listen_is_never_ready_and_leaves_nothing(
    tmp_path: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    home, ready = tmp_path / "home", tmp_path / "ready"
    sock, notify_address = notify_socket
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        result = subprocess.run([*CAPSA, "daemon", "--listen", address, "--ready-file", str(ready)],
                                env=_env(home, NOTIFY_SOCKET=notify_address), capture_output=True, text=True,
                                timeout=120, start_new_session=True)
    assert result.returncode != 0 and f"cannot listen on {address}" in result.stderr, result.stderr
    assert not ready.exists()
    messages = []
    with contextlib.suppress(TimeoutError):
        while True:
            messages.append(_next_message(sock, 1))
    assert not any("READY" in m for m in messages), messages
    assert messages[-1] == {"STOPPING": "1", "STATUS": "start failed"}
    assert not _supervisor_alive(home)
