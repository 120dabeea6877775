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

from capsa.daemon import Daemon, DaemonOptions
from capsa.errors import Unavailable


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


def test_a_bind_that_fails_after_start_up_stops_the_supervisor_it_started(tmp_path: Path, taken_port: int,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    monkeypatch.setattr("capsa.daemon.check_bindable", lambda listen: None)   # taken between check and bind
    daemon = Daemon(DaemonOptions(home=home, listen=f"127.0.0.1:{taken_port}"))
    with pytest.raises(Unavailable, match=f"cannot listen on 127.0.0.1:{taken_port}"):
        daemon.start()
    deadline = time.monotonic() + 10
    while capsa_processes(home) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert capsa_processes(home) == []
    assert daemon.stopped.is_set() and not (home / "run" / "capsa.pid").exists()
