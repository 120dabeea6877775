"""Telling the world the daemon is ready: a ready file, and systemd's notify protocol.

The notify protocol (sd_notify(3)) is one datagram of ``KEY=VALUE`` lines sent
to the AF_UNIX socket named by ``$NOTIFY_SOCKET``; a leading ``@`` names an
abstract socket (a NUL byte in the kernel's address). It is implemented here
with a plain socket so the daemon does not depend on libsystemd or a python
binding for three messages (READY=1, STATUS=..., STOPPING=1).
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

__all__ = ["Notifier", "remove_ready_file", "write_ready_file"]


class Notifier:
    """Sends sd_notify messages to ``address`` (the value of ``$NOTIFY_SOCKET``); a no-op when unset.

    :meth:`from_environment` also removes ``NOTIFY_SOCKET`` from this process's
    environment, as sd_notify's ``unset_environment`` does: the supervisor and
    jobs the daemon starts must not speak for the daemon (the unit says
    ``NotifyAccess=main``, so systemd would drop their messages anyway).
    """

    def __init__(self, address: str | None) -> None:
        self.address = address or None

    @classmethod
    def from_environment(cls) -> Notifier:
        return cls(os.environ.pop("NOTIFY_SOCKET", None))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, **fields: str | int) -> bool:
        """Send one datagram ``KEY=VALUE\\n...``; True when delivered, False when disabled or undeliverable.

        Failures are swallowed on purpose: a missing or full notify socket must
        never take a running daemon down; systemd then times the start out and
        says so in its own log.
        """
        if self.address is None:
            return False
        payload = "".join(f"{key}={value}\n" for key, value in fields.items()).encode()
        target = self.address
        if target.startswith("@"):
            target = "\0" + target[1:]   # abstract namespace
        elif not target.startswith("/"):
            return False   # sd_notify accepts only absolute paths and abstract names (vsock is not for us)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(payload, target)
        except OSError:
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send(READY=1, STATUS=status, MAINPID=os.getpid())

    def status(self, status: str) -> bool:
        return self.send(STATUS=status)

    def stopping(self, status: str = "stopping") -> bool:
        return self.send(STOPPING=1, STATUS=status)


def write_ready_file(path: Path, text: str) -> None:
    """Write ``path`` atomically (a temp file in the same directory, renamed): a waiter that sees
    the file sees all of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def remove_ready_file(path: Path | None) -> None:
    if path is not None:
        with contextlib.suppress(FileNotFoundError):
            Path(path).unlink()
