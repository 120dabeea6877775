"""sd_notify over a plain datagram socket (path and abstract addresses) and the atomic ready file."""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from capsa.readiness import Notifier, remove_ready_file, write_ready_file


def _fields(datagram: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in datagram.decode().splitlines())


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        path = tmp_path / "notify.sock"
        sock.bind(str(path))
        sock.settimeout(5)
        yield sock, str(path)


def test_ready_status_and_stopping_reach_a_path_socket(listener: tuple[socket.socket, str]) -> None:
    sock, address = listener
    notifier = Notifier(address)
    assert notifier.ready("listening on 127.0.0.1:1")
    assert _fields(sock.recv(4096)) == {"READY": "1", "STATUS": "listening on 127.0.0.1:1",
                                        "MAINPID": str(os.getpid())}
    assert notifier.status("half way")
    assert _fields(sock.recv(4096)) == {"STATUS": "half way"}
    assert notifier.stopping()
    assert _fields(sock.recv(4096)) == {"STOPPING": "1", "STATUS": "stopping"}


def test_an_abstract_address_is_written_with_at() -> None:
    name = f"capsa-test-notify-{secrets.token_hex(6)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert Notifier("@" + name).ready("ok")
        assert _fields(sock.recv(4096))["READY"] == "1"


def test_from_environment_takes_the_variable_away_from_children(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    notifier = Notifier.from_environment()
    assert notifier.address == "/run/systemd/notify" and "NOTIFY_SOCKET" not in os.environ
    assert not Notifier.from_environment().enabled


def test_no_socket_or_a_dead_one_is_not_an_error(tmp_path: Path) -> None:
    assert Notifier(None).ready("x") is False
    assert Notifier(str(tmp_path / "nobody-listens.sock")).ready("x") is False
    assert Notifier("relative/path").ready("x") is False


def test_ready_file_is_replaced_atomically_and_removed(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "ready"
    write_ready_file(path, "listen=a\n")
    write_ready_file(path, "listen=b\n")
    assert path.read_text() == "listen=b\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["ready"]   # no temp file left behind
    remove_ready_file(path)
    remove_ready_file(path)   # already gone: fine
    remove_ready_file(None)
    assert not path.exists()
