"""The supervisor: the one long-lived process that owns every running job.

It is started by the daemon (``capsa`` with ``CAPSA_ROLE=supervisor``) in its
own session so that it outlives a crash of the daemon: jobs keep running, their
output keeps being persisted, and a restarted daemon reconnects and re-adopts
them (containerd's shim, one per node instead of one per job — which is what
keeps the per-job memory cost near zero).

Responsibilities, all in one single-threaded ``selectors`` loop:
- start jobs through the zygote (forked before any thread exists);
- read every job's stdout/stderr pipe and hand the chunks to the asynchronous
  log persister (its writer thread is the only other thread);
- reap jobs (we are a child subreaper) and decide their exit status and reason;
- stop jobs: SIGTERM to every process of the job's cgroup, then SIGKILL after
  the grace period;
- answer the daemon: start, stop, list, forget, subscribe (exit events), shutdown.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capsa.logs import JobLog, LogPersister, Stream
from capsa.runtime import cgroups
from capsa.runtime.devices import job_device_rules
from capsa.runtime.protocol import JobRecord, ProcState
from capsa.runtime.security._kernel import prctl
from capsa.runtime.spec import JobSpec
from capsa.runtime.wire import recv_msg, send_msg

__all__ = ["JobRecord", "Supervisor", "main"]

_PR_SET_CHILD_SUBREAPER = 36
_F_SETPIPE_SZ = 1031
_PIPE_BYTES = 1 << 20
_READ_CHUNK = 1 << 20


@dataclass
class _Job:
    record: JobRecord
    spec: JobSpec
    log: JobLog
    cgroup: Any
    report_fd: int
    out_fds: set[int] = field(default_factory=set)
    report_buf: bytes = b""
    start_error: dict[str, Any] | None = None
    waiter: socket.socket | None = None
    wait_status: int | None = None
    kill_at: float | None = None
    received_ns: int = 0             # monotonic: when the start request arrived


class Supervisor:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.run_dir = home / "run"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.sock_path = self.run_dir / "supervisor.sock"
        self.jobs: dict[str, _Job] = {}
        self.by_pid: dict[int, str] = {}
        self.by_fd: dict[int, tuple[str, str]] = {}   # fd -> (job_id, "out"|"err"|"report")
        self.early_exits: dict[int, int] = {}
        self.subscribers: set[socket.socket] = set()
        self.mount_replies: dict[int, tuple[socket.socket, bytearray]] = {}   # zygote reply fd -> (asker, data)
        self.sel = selectors.DefaultSelector()
        self.running = True
        self.zygote_pid = 0
        self.zygote_sock: socket.socket | None = None
        self.driver: Any = None
        self.persister: LogPersister | None = None

    # -- set-up ----------------------------------------------------------------------
    def start(self) -> None:
        prctl(_PR_SET_CHILD_SUBREAPER, 1)
        self._spawn_zygote()
        self.driver = cgroups.detect()
        self.persister = LogPersister()
        with contextlib.suppress(FileNotFoundError):
            self.sock_path.unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.sock_path))
        os.chmod(self.sock_path, 0o600)
        listener.listen(64)
        listener.setblocking(False)
        self.sel.register(listener, selectors.EVENT_READ, ("listen", None))
        rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wfd)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: None)
        self.sel.register(rfd, selectors.EVENT_READ, ("signal", None))
        (self.run_dir / "supervisor.pid").write_text(str(os.getpid()))

    def _spawn_zygote(self) -> None:
        """Start the zygote as a fresh ``capsa`` process (CAPSA_ROLE=zygote).

        exec'ing rather than forking means a zygote can be (re)started at any time, even
        now that this process runs threads, and it carries only the modules job starts need.
        """
        if self.zygote_sock is not None:
            self.zygote_sock.close()
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = dict(os.environ, CAPSA_ROLE="zygote", CAPSA_ZYGOTE_FD=str(child.fileno()))
        proc = subprocess.Popen([sys.executable, "-m", "capsa"], env=env, pass_fds=(child.fileno(),),
                                stdin=subprocess.DEVNULL, close_fds=True)
        child.close()
        self.zygote_pid, self.zygote_sock = proc.pid, parent
        # Popen's own bookkeeping would race our waitpid(-1) loop; we reap the zygote ourselves.
        proc.returncode = 0

    # -- main loop -------------------------------------------------------------------
    def serve(self) -> None:
        while self.running:
            timeout = self._next_deadline()
            for key, _ in self.sel.select(timeout):
                kind, data = key.data
                if kind == "listen":
                    self._accept(key.fileobj)  # type: ignore[arg-type]
                elif kind == "conn":
                    self._on_conn(key.fileobj)  # type: ignore[arg-type]
                elif kind == "pipe":
                    self._on_pipe(key.fd)
                elif kind == "signal":
                    self._on_signal(key.fd)
                elif kind == "mount":
                    self._on_mount_reply(key.fd)
            self._run_deadlines()
        self._shutdown_jobs()

    def _next_deadline(self) -> float | None:
        deadlines = [j.kill_at for j in self.jobs.values() if j.kill_at is not None]
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - time.monotonic())

    def _run_deadlines(self) -> None:
        now = time.monotonic()
        for job in list(self.jobs.values()):
            if job.kill_at is not None and now >= job.kill_at:
                job.kill_at = None
                if job.record.state != ProcState.EXITED:
                    self._kill_cgroup(job)

    # -- signals and reaping -------------------------------------------------------------
    def _on_signal(self, fd: int) -> None:
        try:
            data = os.read(fd, 512)
        except BlockingIOError:
            data = b""
        for signo in data:
            if signo in (signal.SIGTERM, signal.SIGINT):
                self.running = False
        self._reap()

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.zygote_pid:
                # Running jobs do not depend on the zygote (they are our children now); only
                # starts do. A start it was handling sees its report pipe close and fails.
                self._log(f"zygote {pid} exited with status {status}; starting a new one")
                if self.running:
                    self._spawn_zygote()
                continue
            job_id = self.by_pid.get(pid)
            if job_id is None:
                self.early_exits[pid] = status
                continue
            job = self.jobs[job_id]
            job.wait_status = status
            self._maybe_finish(job)

    # -- connections -----------------------------------------------------------------------
    def _accept(self, listener: socket.socket) -> None:
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            return
        conn.setblocking(True)
        self.sel.register(conn, selectors.EVENT_READ, ("conn", None))

    def _drop(self, conn: socket.socket) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(conn)
        self.subscribers.discard(conn)
        for job in self.jobs.values():
            if job.waiter is conn:
                job.waiter = None
        conn.close()

    def _on_conn(self, conn: socket.socket) -> None:
        try:
            msg, _fds = recv_msg(conn)
        except (OSError, ValueError):
            msg = None
        if msg is None:
            self._drop(conn)
            return
        op = msg.get("op")
        try:
            if op == "start":
                self._start(conn, msg)
                return  # answered once exec happened (or failed)
            if op == "mount":
                self._mount(conn, msg)
                return  # answered when the zygote has done it
            if op == "stop":
                reply = self._stop(msg["job_id"], float(msg.get("grace_s", 10.0)))
            elif op == "signal":
                reply = self._signal(msg["job_id"], int(msg["signal"]))
            elif op == "list":
                reply = {"ok": True, "jobs": [j.record.to_dict() for j in self.jobs.values()]}
            elif op == "forget":
                reply = self._forget(msg["job_id"])
            elif op == "subscribe":
                self.subscribers.add(conn)
                reply = {"ok": True}
            elif op == "ping":
                reply = {"ok": True, "pid": os.getpid(), "cgroup_version": self.driver.version}
            elif op == "shutdown":
                self.running = False
                reply = {"ok": True}
            else:
                reply = {"ok": False, "error": {"code": "invalid_argument", "message": f"unknown op {op!r}"}}
        except KeyError as exc:
            reply = {"ok": False, "error": {"code": "not_found", "message": f"unknown job {exc}"}}
        except Exception as exc:  # a bad request must never take the supervisor down
            reply = _error_reply(exc)
        self._send(conn, reply)

    def _send(self, conn: socket.socket, reply: dict[str, Any]) -> None:
        try:
            send_msg(conn, reply)
        except OSError:
            self._drop(conn)

    # -- start -----------------------------------------------------------------------------
    def _start(self, conn: socket.socket, msg: dict[str, Any]) -> None:
        started = time.monotonic_ns()
        spec = JobSpec.from_dict(msg["spec"])
        if spec.job_id in self.jobs:
            self._send(conn, {"ok": False, "error": {"code": "already_exists",
                                                      "message": f"job {spec.job_id} already exists"}})
            return
        job_dir = Path(spec.job_dir)
        for sub in ("root", "work", "logs"):
            (job_dir / sub).mkdir(parents=True, exist_ok=True)
        try:
            cg = self.driver.create(spec.job_id, _limits(spec))
        except Exception as exc:
            self._send(conn, _error_reply(exc))
            return
        try:   # before any process joins: the job may open only its minimal /dev and what the spec adds
            cg.device_rules(job_device_rules(spec))
        except Exception as exc:
            with contextlib.suppress(Exception):
                cg.remove()
            self._send(conn, _error_reply(exc))
            return
        assert self.persister is not None
        log = self.persister.open(spec.job_id, Path(spec.log_dir))
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        rep_r, rep_w = os.pipe2(os.O_CLOEXEC)
        for fd in (out_r, err_r):
            with contextlib.suppress(OSError):
                fcntl.fcntl(fd, _F_SETPIPE_SZ, _PIPE_BYTES)
            os.set_blocking(fd, False)
        os.set_blocking(rep_r, False)
        record = JobRecord(job_id=spec.job_id, started_ns=time.time_ns(), cgroup=str(cg.name))
        job = _Job(record=record, spec=spec, log=log, cgroup=cg, report_fd=rep_r, out_fds={out_r, err_r},
                   waiter=conn, received_ns=started)
        self.jobs[spec.job_id] = job
        self.by_fd[out_r] = (spec.job_id, "out")
        self.by_fd[err_r] = (spec.job_id, "err")
        self.by_fd[rep_r] = (spec.job_id, "report")
        for fd in (out_r, err_r, rep_r):
            self.sel.register(fd, selectors.EVENT_READ, ("pipe", None))
        assert self.zygote_sock is not None
        try:
            send_msg(self.zygote_sock, {"spec": json.loads(spec.to_json()),
                                        "cgroup_procs": [str(p) for p in cg.join_files()]},
                     [out_w, err_w, rep_w])
        except OSError as exc:
            job.start_error = {"error": f"zygote unavailable: {exc}", "step": "launch", "errno": exc.errno or 0}
        finally:
            for fd in (out_w, err_w, rep_w):
                os.close(fd)

    def _on_report(self, job: _Job, data: bytes) -> None:
        job.report_buf += data
        while b"\n" in job.report_buf:
            line, job.report_buf = job.report_buf.split(b"\n", 1)
            if line.startswith(b"P"):
                pid = int(line[1:])
                job.record.pid = pid
                self.by_pid[pid] = job.record.job_id
                if pid in self.early_exits:
                    job.wait_status = self.early_exits.pop(pid)
            elif line.startswith(b"E"):
                job.start_error = json.loads(line[1:])

    def _on_report_eof(self, job: _Job) -> None:
        if job.start_error is None and job.record.pid:
            job.record.state = ProcState.RUNNING
            # Request received -> the CLOEXEC report pipe closed, i.e. the user's command was exec'd.
            job.record.exec_latency_ns = time.monotonic_ns() - job.received_ns
            if job.waiter is not None:
                self._send(job.waiter, {"ok": True, "job": job.record.to_dict()})
                job.waiter = None
            self._maybe_finish(job)
            return
        err = job.start_error or {"error": "job process vanished before exec", "step": "launch", "errno": 0}
        job.record.reason = f"start failed: {err['error']}"
        job.start_error = err
        if job.waiter is not None:
            code = "not_found" if err.get("errno") == errno.ENOENT and str(err.get("step", "")).startswith("exec") \
                else "failed_precondition"
            self._send(job.waiter, {"ok": False, "error": {"code": code, "message": err["error"]}})
            job.waiter = None
        if not job.record.pid:
            job.wait_status = job.wait_status if job.wait_status is not None else 127 << 8
        self._maybe_finish(job)

    # -- output ----------------------------------------------------------------------------------
    def _on_pipe(self, fd: int) -> None:
        job_id, kind = self.by_fd[fd]
        job = self.jobs[job_id]
        if kind == "resume":  # the persister drained this job's backlog
            self._resume_output(job)
            return
        try:
            data = os.read(fd, _READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            if kind == "report":
                self._on_report(job, data)
            else:
                job.log.append(Stream.STDOUT if kind == "out" else Stream.STDERR, data)
                wake_fd = job.log.pause_fd(exited=job.wait_status is not None)
                if wake_fd is not None:
                    self._pause_output(job, wake_fd)
            return
        self.sel.unregister(fd)
        os.close(fd)
        del self.by_fd[fd]
        if kind == "report":
            job.report_fd = -1
            self._on_report_eof(job)
        else:
            job.out_fds.discard(fd)
            self._maybe_finish(job)

    def _pause_output(self, job: _Job, wake_fd: int) -> None:
        """Back-pressure (ADR-0004): stop reading the job's pipes, so it blocks in write(2), until wake_fd fires."""
        for fd in job.out_fds:
            with contextlib.suppress(KeyError):
                self.sel.unregister(fd)
        if wake_fd not in self.by_fd:
            self.by_fd[wake_fd] = (job.record.job_id, "resume")
            self.sel.register(wake_fd, selectors.EVENT_READ, ("pipe", None))

    def _resume_output(self, job: _Job) -> None:
        wake_fd = job.log.resume()
        if self.by_fd.pop(wake_fd, None) is not None:
            self.sel.unregister(wake_fd)
        for fd in job.out_fds:
            if fd not in self.sel.get_map():
                self.sel.register(fd, selectors.EVENT_READ, ("pipe", None))

    # -- end of a job ------------------------------------------------------------------------------
    def _maybe_finish(self, job: _Job) -> None:
        rec = job.record
        if job.wait_status is not None and rec.state != ProcState.EXITED:
            self._resume_output(job)  # an exited job is never held back: drain its pipes to EOF
        if rec.state == ProcState.EXITED or job.wait_status is None or job.out_fds or job.report_fd != -1:
            return
        status = job.wait_status
        code = os.waitstatus_to_exitcode(status)
        rec.signal = -code if code < 0 else 0
        rec.exit_code = 128 + rec.signal if code < 0 else code
        with contextlib.suppress(Exception):
            rec.oom_killed = bool(job.cgroup.oom_killed())
        with contextlib.suppress(Exception):
            job.cgroup.kill_all()
        with contextlib.suppress(Exception):
            job.cgroup.remove()
        if job.start_error is not None:
            rec.reason = rec.reason or "start failed"
        elif rec.oom_killed:
            rec.reason = "OOM killed"
        elif rec.stop_requested:
            rec.reason = "stopped by user"
        elif rec.signal:
            rec.reason = f"killed by signal {signal.Signals(rec.signal).name}" if rec.signal in _SIGNALS \
                else f"killed by signal {rec.signal}"
        elif rec.exit_code:
            rec.reason = f"exited with code {rec.exit_code}"
        rec.state = ProcState.EXITED
        rec.ended_ns = time.time_ns()
        job.kill_at = None
        self.by_pid.pop(rec.pid, None)
        lost = job.log.finish_at_exit()  # gives up on output a failing disk still holds, so the record can say so
        if lost:
            rec.reason = f"{rec.reason}; {lost}" if rec.reason else lost
        _write_status(Path(job.spec.job_dir), rec)
        event = {"event": "exit", "job": rec.to_dict()}
        for sub in list(self.subscribers):
            self._send(sub, event)

    # -- live mounts (capsules) ---------------------------------------------------------------
    def _mount(self, conn: socket.socket, msg: dict[str, Any]) -> None:
        """Hand an attach/swap/detach to the zygote with the job's pidfd; its JSON answer comes on a pipe."""
        job = self.jobs.get(str(msg.get("job_id", "")))
        if job is None or job.record.state == ProcState.EXITED or job.wait_status is not None:   # reaped: PID is free
            self._send(conn, {"ok": False, "error": {"code": "not_found",
                                                     "message": f"job {msg.get('job_id')} is not running"}})
            return
        if job.record.state != ProcState.RUNNING or not job.record.pid:
            self._send(conn, {"ok": False, "error": {"code": "failed_precondition",
                                                     "message": f"job {msg.get('job_id')} has not started yet"}})
            return
        try:
            # Our own (re-parented) child, not yet reaped: the PID cannot have been reused.
            pidfd = os.pidfd_open(job.record.pid)
        except ProcessLookupError:
            self._send(conn, {"ok": False, "error": {"code": "not_found",
                                                     "message": f"job {msg.get('job_id')} has exited"}})
            return
        reply_r, reply_w = os.pipe2(os.O_CLOEXEC)
        request = {"op": "mount", "action": msg.get("action"), "source": msg.get("source", ""),
                   "target": msg.get("target", ""), "create_target": bool(msg.get("create_target", True))}
        try:
            assert self.zygote_sock is not None
            send_msg(self.zygote_sock, request, [pidfd, reply_w])
        except OSError as exc:
            os.close(reply_r)
            self._send(conn, {"ok": False, "error": {"code": "unavailable", "message": f"zygote unavailable: {exc}"}})
            return
        finally:
            os.close(pidfd)
            os.close(reply_w)
        os.set_blocking(reply_r, False)
        self.mount_replies[reply_r] = (conn, bytearray())
        self.sel.register(reply_r, selectors.EVENT_READ, ("mount", None))

    def _on_mount_reply(self, fd: int) -> None:
        conn, buf = self.mount_replies[fd]
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            buf += data
            return
        self.sel.unregister(fd)
        os.close(fd)
        del self.mount_replies[fd]
        try:
            reply = json.loads(buf) if buf else None
        except ValueError:
            reply = None
        if not isinstance(reply, dict):
            reply = {"ok": False, "error": {"code": "internal", "message": "the zygote gave no answer to a mount"}}
        self._send(conn, reply)

    # -- stop / signal / forget --------------------------------------------------------------------
    def _stop(self, job_id: str, grace_s: float) -> dict[str, Any]:
        job = self.jobs[job_id]
        if job.record.state == ProcState.EXITED:
            return {"ok": True, "job": job.record.to_dict()}
        job.record.stop_requested = True
        with contextlib.suppress(Exception):
            job.cgroup.signal_all(signal.SIGTERM)
        if grace_s <= 0:
            self._kill_cgroup(job)
        else:
            job.kill_at = time.monotonic() + grace_s
        return {"ok": True, "job": job.record.to_dict()}

    def _kill_cgroup(self, job: _Job) -> None:
        try:
            job.cgroup.kill_all()
        except Exception as exc:
            self._log(f"kill of job {job.record.job_id} failed: {exc}")

    def _signal(self, job_id: str, signo: int) -> dict[str, Any]:
        job = self.jobs[job_id]
        if job.record.state != ProcState.EXITED:
            job.cgroup.signal_all(signo)
        return {"ok": True, "job": job.record.to_dict()}

    def _forget(self, job_id: str) -> dict[str, Any]:
        job = self.jobs.get(job_id)
        if job is None:
            return {"ok": True}
        if job.record.state != ProcState.EXITED:
            return {"ok": False, "error": {"code": "failed_precondition",
                                           "message": f"job {job_id} is still running"}}
        del self.jobs[job_id]
        return {"ok": True}

    def _shutdown_jobs(self) -> None:
        """On shutdown, stop every job: nobody would supervise them afterwards."""
        for job in self.jobs.values():
            if job.record.state != ProcState.EXITED:
                job.record.stop_requested = True
                with contextlib.suppress(Exception):
                    job.cgroup.kill_all()
        deadline = time.monotonic() + 10
        while any(j.record.state != ProcState.EXITED for j in self.jobs.values()) and time.monotonic() < deadline:
            for key, _ in self.sel.select(0.05):
                if key.data[0] == "pipe":
                    self._on_pipe(key.fd)
            self._reap()
        if self.persister is not None:
            self.persister.close()
        with contextlib.suppress(Exception):
            self.driver.cleanup()  # the empty capsa/ base cgroups go too (kept while any job cgroup is in them)
        with contextlib.suppress(OSError):
            os.kill(self.zygote_pid, signal.SIGKILL)
        with contextlib.suppress(FileNotFoundError):
            self.sock_path.unlink()
        with contextlib.suppress(FileNotFoundError):
            (self.run_dir / "supervisor.pid").unlink()

    def _log(self, message: str) -> None:
        print(f"capsa-supervisor: {message}", file=sys.stderr, flush=True)


_SIGNALS = {int(s) for s in signal.Signals}


def _limits(spec: JobSpec) -> Any:
    r = spec.resources
    return cgroups.Limits(
        cpu_percent=r.cpu_percent,
        cpuset=r.cpuset,
        memory_bytes=r.memory_bytes,
        pids_max=r.pids_max,
        io_bps=r.io_bps,
        io_path=Path(spec.job_dir) if r.io_bps else None,
    )


def _error_reply(exc: BaseException) -> dict[str, Any]:
    code = getattr(exc, "code", "internal")
    return {"ok": False, "error": {"code": code, "message": str(exc) or type(exc).__name__}}


def _write_status(job_dir: Path, rec: JobRecord) -> None:
    tmp = job_dir / "status.json.tmp"
    with contextlib.suppress(OSError):
        tmp.write_text(json.dumps(rec.to_dict()))
        os.replace(tmp, job_dir / "status.json")


def main(home: Path) -> None:
    supervisor = Supervisor(home)
    supervisor.start()
    supervisor.serve()
