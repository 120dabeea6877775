"""A daemon whose listen address is taken fails with one line and leaves nothing running."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield int(holder.getsockname()[1])


def capsa_processes(home: Path) -> list[tuple[int, str]]:
    """(pid, role) of every supervisor or zygote started for ``home``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"CAPSA_HOME={home}".encode() in environ:
            role = next((v.split(b"=", 1)[1].decode() for v in environ if v.startswith(b"CAPSA_ROLE=")), "")
            if role in ("supervisor", "zygote"):
                found.append((int(entry.name), role))
    return found


def test_capsa_daemon_on_a_taken_port_exits_with_one_line_and_starts_nothing(tmp_path: Path,
                                                                             taken_port: int) -> None:
    home = tmp_path / "home"
    address = f"127.0.0.1:{taken_port}"
    env = dict(os.environ, CAPSA_HOME=str(home))
    env.pop("CAPSA_CONFIG", None)
    done = subprocess.run([sys.executable, "-m", "capsa", "daemon", "--listen", address], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and address in lines[0] and "Traceback" not in done.stderr, done.stderr
    assert capsa_processes(home) == []


# In a process of its own: a daemon started in pytest's process would leave gRPC's threads and fork
# handlers behind, and later tests that fork would inherit them.
_START_WITH_THE_CHECK_SKIPPED = """
import sys
from pathlib import Path
import capsa.daemon
from capsa.errors import Unavailable
capsa.daemon.check_bindable = lambda listen: None   # the port is taken between the check and the bind
daemon = capsa.daemon.Daemon(capsa.daemon.DaemonOptions(home=Path(sys.argv[1]), listen=sys.argv[2]))
try:
    daemon.start()
except Unavailable as exc:
    print(f"refused: {exc}")
    print(f"stopped: {daemon.stopped.is_set()}")
"""


def test_a_bind_that_fails_after_start_up_stops_the_supervisor_it_started(tmp_path: Path, taken_port: int) -> None:
    home = tmp_path / "home"
    address = f"127.0.0.1:{taken_port}"
    env = dict(os.environ, CAPSA_HOME=str(home))
    env.pop("CAPSA_CONFIG", None)
    done = subprocess.run([sys.executable, "-c", _START_WITH_THE_CHECK_SKIPPED, str(home), address], env=env,
                          capture_output=True, text=True, timeout=120)
    assert f"refused: cannot listen on {address}" in done.stdout and "stopped: True" in done.stdout, done.stderr
    deadline = time.monotonic() + 10
    while capsa_processes(home) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert capsa_processes(home) == []
    assert (home / "run" / "supervisor.log").exists()   # a supervisor was started, and is gone
    assert not (home / "run" / "capsa.pid").exists()
