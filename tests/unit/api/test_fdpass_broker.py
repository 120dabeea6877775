"""The daemon's descriptor socket for capsa cp's fast path: root peers with a fresh token only."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from capsa.errors import PermissionDenied
from capsa.fdpass import FdBroker, connect, recv_fd, send_fd

ROOT = os.geteuid() == 0


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[FdBroker]:
    b = FdBroker(tmp_path / "run" / "copy" / "fds.sock", ttl_s=5.0)
    b.start()
    yield b
    b.close()


@pytest.mark.skipif(not ROOT, reason="the socket accepts uid 0 only")
def test_a_token_connects_once_and_is_claimed_once(broker: FdBroker, tmp_path: Path) -> None:
    path, token, _ = broker.issue()
    assert os.stat(Path(path).parent).st_mode & 0o777 == 0o700
    conn = connect(path, token)
    assert conn is not None
    assert connect(path, token) is None            # a second connection with the same token
    served = broker.claim(token)
    with pytest.raises(PermissionDenied):
        broker.claim(token)                        # used
    f = tmp_path / "f"
    f.write_bytes(b"through the socket")
    fd = os.open(f, os.O_RDONLY)
    try:
        send_fd(served, fd)
    finally:
        os.close(fd)
    got = recv_fd(conn)
    try:
        assert os.pread(got, 100, 0) == b"through the socket"
    finally:
        os.close(got)
        conn.close()
        served.close()


@pytest.mark.skipif(not ROOT, reason="the socket accepts uid 0 only")
def test_forged_and_unconnected_tokens_are_refused(broker: FdBroker) -> None:
    path, token, _ = broker.issue()
    assert connect(path, "0" * 32) is None
    with pytest.raises(PermissionDenied):
        broker.claim("0" * 32)
    with pytest.raises(PermissionDenied):
        broker.claim(token)                        # issued but nobody connected with it


@pytest.mark.skipif(not ROOT, reason="the socket accepts uid 0 only")
def test_expired_tokens_are_refused(tmp_path: Path) -> None:
    b = FdBroker(tmp_path / "fds.sock", ttl_s=0.2)
    b.start()
    try:
        path, token, _ = b.issue()
        conn = connect(path, token)
        assert conn is not None
        time.sleep(0.3)
        with pytest.raises(PermissionDenied):
            b.claim(token)
        conn.close()
        _, late, _ = b.issue()
        time.sleep(0.3)
        assert connect(path, late) is None
    finally:
        b.close()
    assert not (tmp_path / "fds.sock").exists()


@pytest.mark.skipif(not ROOT, reason="needs root to run a peer as another uid")
def test_a_non_root_peer_is_refused_even_past_the_directory(broker: FdBroker) -> None:
    """uid 1000 given CAP_DAC_OVERRIDE (so the 0700 directory does not stop it): SO_PEERCRED does."""
    path, token, _ = broker.issue()
    code = ("import sys; from capsa.fdpass import connect;"
            f" sys.exit(0 if connect({path!r}, {token!r}) is None else 1)")
    src = str(Path(__file__).resolve().parents[3] / "src")
    r = subprocess.run(["setpriv", "--reuid=1000", "--regid=1000", "--clear-groups",
                        "--inh-caps=+dac_override", "--ambient-caps=+dac_override",
                        sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": src},
                       capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr
    with pytest.raises(PermissionDenied):
        broker.claim(token)


@pytest.mark.skipif(not ROOT, reason="the socket accepts uid 0 only")
def test_an_unreachable_socket_means_no_fast_path(tmp_path: Path) -> None:
    assert connect(str(tmp_path / "missing.sock"), "t") is None
    assert connect(str(tmp_path / ("long" * 40) / "fds.sock"), "t") is None


@pytest.mark.skipif(not ROOT, reason="the socket accepts uid 0 only")
def test_a_socket_path_longer_than_sun_path_works(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    b = FdBroker(deep / "fds.sock")
    b.start()
    try:
        path, token, _ = b.issue()
        conn = connect(path, token)
        assert conn is not None
        conn.close()
    finally:
        b.close()
