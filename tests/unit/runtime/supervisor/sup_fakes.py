"""Fakes for an in-process supervisor with a fake zygote, cgroup driver and process table: no root needed.

The supervisor's real loop, framing, validation, handlers and queues run on a background
thread against a real Unix socket in ``tmp_path``; only the kernel-facing collaborators are
fakes. The fake zygote answers a start the way stage one and two do — a ``Forked`` frame on
the report pipe, then a ``StageFailed`` frame or the pipe's EOF — and a job's exit is
``FakeProcesses.exit(pid, status)``, which the loop sees as if SIGCHLD had arrived.
"""

from __future__ import annotations

import errno
import itertools
import os
import secrets
import socket
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from capsa.runtime.client import SupervisorClient
from capsa.runtime.protocol import (
    ErrorReply,
    Forked,
    Message,
    OkReply,
    StageFailed,
    StandbyReady,
    ZygoteExec,
    ZygoteMount,
    ZygoteStandby,
    ZygoteStart,
    decode,
    encode,
)
from capsa.runtime.spec import JobSpec
from capsa.runtime.supervisor import Supervisor
from capsa.runtime.wire import encode_frame, recv_msg, write_frame


class FakeProcesses:
    def __init__(self) -> None:
        self.exits: deque[tuple[int, int]] = deque()
        self.alive: set[int] = set()
        self.supervisor: Supervisor | None = None

    def exit(self, pid: int, status: int = 0) -> None:
        """The job's PID 1 exits with wait ``status`` (e.g. ``3 << 8``, or ``9`` for SIGKILL)."""
        if pid in self.alive:
            self.alive.discard(pid)
            self.exits.append((pid, status))
            assert self.supervisor is not None
            self.supervisor.wake()

    def reap(self) -> list[tuple[int, int]]:
        out = []
        while self.exits:
            out.append(self.exits.popleft())
        return out

    def pidfd(self, pid: int) -> int:
        if pid not in self.alive:
            raise ProcessLookupError(pid)
        return os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)


@dataclass
class FakeCgroup:
    name: str
    processes: FakeProcesses
    pid: int = 0
    signals: list[int] = field(default_factory=list)
    kills: int = 0
    removed: bool = False
    held_fds: list[int] = field(default_factory=list)   # a hung stage two's pipe ends die with it

    def device_rules(self, rules: object) -> None:
        pass

    def join_files(self) -> list[Path]:
        return []

    def oom_killed(self) -> bool:
        return False

    def signal_all(self, signo: int) -> None:
        self.signals.append(signo)

    def kill_all(self) -> None:
        self.kills += 1
        self.processes.exit(self.pid, 9)
        while self.held_fds:
            os.close(self.held_fds.pop())

    def remove(self) -> None:
        self.removed = True


class FakeDriver:
    version = 2

    def __init__(self, processes: FakeProcesses) -> None:
        self.processes = processes
        self.cgroups: dict[str, FakeCgroup] = {}
        self.fail_create: Exception | None = None

    def create(self, job_id: str, limits: object) -> FakeCgroup:
        if self.fail_create is not None:
            raise self.fail_create
        cg = self.cgroups[job_id] = FakeCgroup(job_id, self.processes)
        return cg

    def cleanup(self) -> None:
        pass


class FakeZygote:
    """Commands: ``/bin/true`` runs until ``exit``; ``/quick`` exits at once; ``/missing`` is not found;
    ``/hang`` never execs (its report pipe stays open); ``/garbage`` reports bytes that are no frame;
    ``/echo ARGS`` writes its arguments to stdout and exits. A mount at ``/fail`` fails, one at
    ``/hang`` is never answered (until ``kill``)."""

    def __init__(self, processes: FakeProcesses, driver: FakeDriver) -> None:
        self.pid = 1
        self.processes = processes
        self.driver = driver
        self.orders: list[Message] = []
        self._pids = itertools.count(100_000)
        self.stdin: dict[str, int] = {}   # job id -> the job's end of its stdin (-i pipe or -t terminal), kept open
        self.kills = 0
        self.held_mount_fds: list[int] = []
        self.not_started: list[str] = []   # job ids whose go pipe closed without the go: nothing ran
        self.standbys = True   # False: a ZygoteStandby order is dropped (its socket closes), as a failed clone
        self.standby_pids: list[int] = []

    def spawn(self) -> None:
        pass

    def submit(self, msg: Message, fds: list[int]) -> None:
        self.orders.append(msg)
        keep = False
        try:
            if isinstance(msg, ZygoteStart):   # runs once the supervisor's go arrives, as the job process would
                threading.Thread(target=self._await_go, args=(msg, fds), daemon=True).start()
                keep = True
            elif isinstance(msg, ZygoteStandby) and self.standbys:
                threading.Thread(target=self._standby, args=(fds[0],), daemon=True).start()
                keep = True
            elif isinstance(msg, ZygoteExec):
                self._exec(msg, fds)
            elif isinstance(msg, ZygoteMount) and msg.target == "/hang":   # never answers, until killed
                self.held_mount_fds.extend(fds)
                keep = True
            elif isinstance(msg, ZygoteMount):
                reply: Message = OkReply() if msg.target != "/fail" else ErrorReply("failed_precondition", "no")
                write_frame(fds[1], encode(reply))
        finally:
            for fd in fds if not keep else ():
                os.close(fd)

    def _standby(self, link_fd: int) -> None:
        """A standby: says it is ready with a PID of its own, then runs the one start it is sent (or exits at EOF)."""
        pid = next(self._pids)
        self.processes.alive.add(pid)
        self.standby_pids.append(pid)
        link = socket.socket(fileno=link_fd)
        with link:
            link.sendall(encode_frame(encode(StandbyReady(pid))))
            frame, fds = recv_msg(link)
        if frame is None:
            self.processes.exit(pid, 0)
            return
        _id, msg = decode(frame)
        assert isinstance(msg, ZygoteStart)
        self._await_go(msg, fds, pid)

    def _await_go(self, msg: ZygoteStart, fds: list[int], pid: int = 0) -> None:
        """Reads the go pipe to its end; a start the supervisor gave up on before its go runs nothing."""
        go = fds.pop(-2)
        data = b""
        while chunk := os.read(go, 4096):
            data += chunk
        os.close(go)
        if not data.endswith(b"\0"):
            self.not_started.append(msg.spec.job_id)
        keep = data.endswith(b"\0") and self._start(msg, fds, pid)
        if not data.endswith(b"\0") and pid:
            self.processes.exit(pid, 127 << 8)   # a standby whose start was given up: exits unrun
        for fd in fds if not keep else ():
            os.close(fd)

    def _start(self, msg: ZygoteStart, fds: list[int], pid: int = 0) -> bool:
        """False: the fds can close now (exec'd or failed); True: the job holds them (hung).
        ``pid``: a standby's (already known to the supervisor); 0: a new one, reported ``Forked``."""
        if len(fds) == 4:   # -i/-t: [stdin, out, err, report]; the test reads the job's stdin end
            self.stdin[msg.spec.job_id] = fds.pop(0)
        command = msg.spec.argv[0]
        if command == "/hang":
            self.driver.cgroups[msg.spec.job_id].held_fds.extend(fds)
            return True
        if command == "/garbage":   # a report pipe carrying something that is not a frame
            os.write(fds[2], b"\x00\x00\x00\x05nope!")
            return False
        if not pid:
            pid = next(self._pids)
            self.processes.alive.add(pid)
            write_frame(fds[2], encode(Forked(pid)))
        self.driver.cgroups[msg.spec.job_id].pid = pid
        if command == "/missing":
            write_frame(fds[2], encode(StageFailed(f"exec {command}", errno.ENOENT, f"exec {command}: not found")))
            self.processes.exit(pid, 127 << 8)
        elif command in ("/quick", "/echo"):
            if command == "/echo":
                os.write(fds[0], " ".join(msg.spec.argv[1:]).encode() + b"\n")
            self.processes.exit(pid, 0)
        return False

    def _exec(self, msg: ZygoteExec, fds: list[int]) -> None:
        """An exec into a job: ``/missing`` is not found, ``/exit N`` exits N, ``/kill`` dies of SIGKILL;
        every other command prints its argv and the user, workdir and env it was given, and exits 0."""
        _pidfd, *_stdin, out, err, report = fds
        command = msg.argv[0]
        if command == "/missing":
            write_frame(report, encode(StageFailed(f"exec {command}", errno.ENOENT, f"exec {command}: not found")))
            return
        pid = next(self._pids)
        self.processes.alive.add(pid)
        write_frame(report, encode(Forked(pid)))
        os.write(out, f"{' '.join(msg.argv)}|{msg.uid}:{msg.gid}|{msg.workdir}|{','.join(msg.env)}".encode())
        os.write(err, b"err")
        if command == "/exit":
            self.processes.exit(pid, int(msg.argv[1]) << 8)
        elif command == "/kill":
            self.processes.exit(pid, 9)
        else:
            self.processes.exit(pid, 0)

    def flush(self) -> None:
        pass

    def wants_write(self) -> bool:
        return False

    def fileno(self) -> int:
        return -1

    def stop(self) -> None:
        pass

    def kill(self) -> None:
        self.kills += 1
        while self.held_mount_fds:
            os.close(self.held_mount_fds.pop())


@dataclass
class Harness:
    home: Path
    supervisor: Supervisor
    zygote: FakeZygote
    driver: FakeDriver
    processes: FakeProcesses
    client: SupervisorClient
    thread: threading.Thread

    def spec(self, *argv: str, job_id: str | None = None, **fields: object) -> JobSpec:
        job_id = secrets.token_hex(16) if job_id is None else job_id
        return JobSpec(job_id=job_id, argv=argv or ("/bin/true",), env={}, hostname="h",
                       job_dir=str(self.home / "jobs" / job_id), **fields)  # type: ignore[arg-type]
