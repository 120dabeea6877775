"""The daemon's side of the supervisor: spawn it if needed, talk to it.

Every request uses its own short-lived Unix connection (a connect costs tens of
microseconds), so gRPC threads never share a socket; exit events arrive on one
long-lived subscription connection read by a dedicated thread.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from capsa.errors import CapsaError, Unavailable, error_from_code
from capsa.runtime.protocol import ExitEvent, JobRecord
from capsa.runtime.spec import JobSpec
from capsa.runtime.wire import recv_msg, send_msg

__all__ = ["SupervisorClient", "ensure_supervisor"]


class SupervisorClient:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.sock_path = home / "run" / "supervisor.sock"
        self._sub_thread: threading.Thread | None = None
        self._sub_sock: socket.socket | None = None
        self._closing = False

    # -- requests ---------------------------------------------------------------------
    def call(self, payload: dict[str, Any], *, timeout: float | None = 60.0) -> dict[str, Any]:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            try:
                sock.connect(str(self.sock_path))
            except OSError as exc:
                raise Unavailable(f"supervisor not reachable at {self.sock_path}: {exc.strerror}") from exc
            send_msg(sock, payload)
            reply, _ = recv_msg(sock)
        except TimeoutError as exc:
            raise Unavailable(f"supervisor did not answer {payload.get('op')!r} in {timeout}s") from exc
        except OSError as exc:  # e.g. reset by a supervisor that is going away
            raise Unavailable(f"supervisor connection failed during {payload.get('op')!r}: {exc}") from exc
        finally:
            sock.close()
        if reply is None:
            raise Unavailable("supervisor closed the connection")
        if not reply.get("ok"):
            err = reply.get("error", {})
            raise error_from_code(err.get("code", "internal"), err.get("message", "supervisor error"))
        return reply

    def ping(self) -> dict[str, Any]:
        return self.call({"op": "ping"}, timeout=5)

    def alive(self) -> bool:
        try:
            self.ping()
        except CapsaError:
            return False
        return True

    def start(self, spec: JobSpec) -> JobRecord:
        import json

        return JobRecord.from_dict(self.call({"op": "start", "spec": json.loads(spec.to_json())})["job"])

    def stop(self, job_id: str, grace_s: float) -> JobRecord:
        return JobRecord.from_dict(self.call({"op": "stop", "job_id": job_id, "grace_s": grace_s})["job"])

    def signal(self, job_id: str, signo: int) -> JobRecord:
        return JobRecord.from_dict(self.call({"op": "signal", "job_id": job_id, "signal": signo})["job"])

    def list(self) -> list[JobRecord]:
        return [JobRecord.from_dict(rec) for rec in self.call({"op": "list"})["jobs"]]

    def forget(self, job_id: str) -> None:
        self.call({"op": "forget", "job_id": job_id})

    def mount(self, job_id: str, action: str, *, target: str, source: str = "", create_target: bool = True) -> None:
        """attach | swap | detach a read-only mount in a running job (done by the zygote, see mounts.py)."""
        self.call({"op": "mount", "job_id": job_id, "action": action, "source": source, "target": target,
                   "create_target": create_target})

    def shutdown(self) -> None:
        with contextlib.suppress(CapsaError):
            self.call({"op": "shutdown"}, timeout=5)

    # -- events ---------------------------------------------------------------------------
    def subscribe(self, on_event: Callable[[ExitEvent], None],
                  on_lost: Callable[[], None] | None = None) -> None:
        """Deliver exit events to ``on_event`` from a background thread."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(self.sock_path))
        send_msg(sock, {"op": "subscribe"})
        reply, _ = recv_msg(sock)
        if not reply or not reply.get("ok"):
            raise Unavailable("supervisor refused the event subscription")
        self._sub_sock = sock

        def pump() -> None:
            while True:
                try:
                    msg, _ = recv_msg(sock)
                except OSError:
                    msg = None
                if msg is None:
                    if on_lost is not None and not self._closing:
                        on_lost()
                    return
                if msg.get("event") == "exit":
                    on_event(ExitEvent(JobRecord.from_dict(msg["job"])))

        self._sub_thread = threading.Thread(target=pump, name="supervisor-events", daemon=True)
        self._sub_thread.start()

    def close(self) -> None:
        self._closing = True
        if self._sub_sock is not None:
            with contextlib.suppress(OSError):
                self._sub_sock.shutdown(socket.SHUT_RDWR)
            self._sub_sock.close()
            self._sub_sock = None


def ensure_supervisor(home: Path, *, timeout: float = 15.0) -> tuple[SupervisorClient, bool]:
    """Connect to a running supervisor or start one; returns (client, started_now).

    The supervisor is the same program started with ``CAPSA_ROLE=supervisor``,
    in a new session so a crash of the daemon does not take it (and the jobs'
    output pipes) down.
    """
    client = SupervisorClient(home)
    if client.alive():
        return client, False
    run_dir = home / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    pid_file = run_dir / "supervisor.pid"
    if pid_file.exists():  # a previous supervisor that no longer answers must not linger
        with contextlib.suppress(ValueError, OSError):
            pid = int(pid_file.read_text())
            if _is_supervisor(pid):
                os.kill(pid, signal.SIGKILL)
    env = dict(os.environ, CAPSA_ROLE="supervisor", CAPSA_HOME=str(home))
    log = open(run_dir / "supervisor.log", "ab")  # noqa: SIM115 - handed to the child
    try:
        subprocess.Popen([sys.executable, "-m", "capsa"], env=env, stdin=subprocess.DEVNULL, stdout=log,
                         stderr=log, start_new_session=True, close_fds=True)
    finally:
        log.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.alive():
            return client, True
        time.sleep(0.02)
    raise Unavailable(f"supervisor did not start within {timeout}s; see {run_dir / 'supervisor.log'}")


def _is_supervisor(pid: int) -> bool:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return b"CAPSA_ROLE=supervisor" in environ
