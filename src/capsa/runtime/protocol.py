"""Typed messages between the daemon, the supervisor and the zygote.

The supervisor owns the processes; the daemon keeps the promises (the jobs table).
Everything that crosses between them — requests, replies, exit events, the zygote's
start and mount orders, stage one/two's report, the zygote's mount answer — is one
frozen dataclass here, sent as one length-prefixed frame (:mod:`capsa.runtime.wire`)
of the form ``{"type": TAG, "id": N, "body": {...}}``. ``id`` pairs a reply with its
request on a multiplexed connection; events and zygote messages use 0.

Adding an operation is one request dataclass (``@message("tag")``, fields typed with
the few types :mod:`capsa.runtime._codec` knows, range checks in ``validate``) plus one
handler registered in the supervisor for that class.
"""

from __future__ import annotations

import enum
import math
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from capsa.errors import CapsaError, FailedPrecondition, InvalidArgument, NotFound
from capsa.runtime._codec import Message, decode, encode, message, register_type
from capsa.runtime.spec import JobSpec

__all__ = [
    "FORKED_STAMPS",
    "MAX_GRACE_S",
    "MOUNT_ACTIONS",
    "STAGE2_STAMPS",
    "START_STAMPS",
    "ErrorReply",
    "ExecOutput",
    "ExecReply",
    "ExecRequest",
    "ExecStarted",
    "ExitEvent",
    "FenceRequest",
    "ForgetRequest",
    "Forked",
    "InputReply",
    "InputRequest",
    "JobRecord",
    "JobReply",
    "ListReply",
    "ListRequest",
    "Message",
    "MountRequest",
    "OkReply",
    "PingReply",
    "PingRequest",
    "ProcState",
    "ResizeRequest",
    "ShutdownRequest",
    "SignalRequest",
    "Stage2Stamps",
    "StageFailed",
    "StartFailed",
    "StartFailedError",
    "StartRequest",
    "StopRequest",
    "SubscribeRequest",
    "ZygoteExec",
    "StandbyReady",
    "ZygoteMount",
    "ZygoteStandby",
    "ZygoteStart",
    "decode",
    "encode",
    "error_reply",
    "validate_job_id",
]

MAX_GRACE_S = 24 * 3600.0
# The start path's timestamps (see JobRecord.start_stamps): the daemon's (submitted, recorded in
# SQLite), the supervisor's (request received, order sent to the zygote, cgroups made, log opened,
# go written), ``Forked.stamps`` (the zygote read the order, its clone of the job returned),
# ``Stage2Stamps`` (the job's process runs, read the go, joined its cgroups, root built, pivot_root
# done, about to exec) and the supervisor's ``exec`` (report pipe EOF). The zygote's and the job
# process's run alongside the supervisor's cgroups, log and go.
FORKED_STAMPS = ("zygote", "forked")
STAGE2_STAMPS = ("child", "root", "released", "joined", "pivot", "ready")
START_STAMPS = ("submitted", "recorded", "received", "sent", "zygote", "cgroup", "log", "go", "child", "root",
                "released", "joined", "pivot", "ready", "exec")
MOUNT_ACTIONS = frozenset({"attach", "swap", "detach"})
# The daemon's ids are 32 hex digits; tests prefix theirs with a word. What matters to the
# supervisor is that an id is a safe single path component and cgroup name of bounded length.
_JOB_ID = re.compile(r"^[0-9a-z]{1,64}$")


class ProcState(enum.StrEnum):
    """Where a job's process is, as the supervisor sees it (not the user-facing ``jobs.JobState``)."""

    STARTING = "starting"   # accepted; stage one/two not yet exec'd the command
    RUNNING = "running"     # the command was exec'd
    EXITED = "exited"       # reaped, output drained, exit status decided


@dataclass
class JobRecord:
    """What the supervisor knows of one job."""

    job_id: str
    pid: int = 0
    state: ProcState = ProcState.STARTING
    exit_code: int | None = None
    signal: int = 0
    reason: str = ""
    oom_killed: bool = False
    stop_requested: bool = False
    started_ns: int = 0
    exec_latency_ns: int = 0
    ended_ns: int = 0
    cgroup: str = ""
    log_incomplete_bytes: int = 0   # output the disk could not take (ADR-0004); also said in ``reason``
    log_dropped_bytes: int = 0      # oldest log segments dropped by --log-max-size (all runs of the job)
    # Where the start went: CLOCK_MONOTONIC ns (one clock for every process of the host) named by
    # START_STAMPS, taken by the daemon, supervisor, zygote, stage one and stage two. Kept in
    # status.json; bench/bench_job_start.py breaks the start latency down from them.
    start_stamps: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["state"] = self.state.value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobRecord:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["state"] = ProcState(values.get("state", ProcState.STARTING.value))
        return cls(**values)


def _record_from_wire(data: object) -> JobRecord:
    if not isinstance(data, dict) or not isinstance(data.get("job_id"), str):
        raise InvalidArgument("a job record is an object with a job_id")
    stamps = data.get("start_stamps", {})
    if not isinstance(stamps, dict) or not all(type(v) is int for v in stamps.values()):
        raise InvalidArgument("a job record's start_stamps is an object of integers")
    try:
        return JobRecord.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"bad job record: {exc}") from exc


register_type(JobRecord, JobRecord.to_dict, _record_from_wire)


def validate_job_id(job_id: str) -> None:
    if not _JOB_ID.match(job_id):
        raise InvalidArgument(f"job id {job_id[:80]!r} is not 1-64 lowercase letters and digits")


def _check_grace(grace_s: float) -> None:
    if not math.isfinite(grace_s) or not 0 <= grace_s <= MAX_GRACE_S:
        raise InvalidArgument(f"grace period {grace_s!r} is not a finite number of seconds in 0..{MAX_GRACE_S:g}")


# -- daemon -> supervisor ---------------------------------------------------------------------
@message("start")
@dataclass(frozen=True)
class StartRequest(Message):
    """Answered by ``JobReply`` once the command was exec'd, or ``StartFailed`` / ``ErrorReply``."""

    spec: JobSpec
    submitted_ns: int = 0   # the daemon's start stamps (CLOCK_MONOTONIC), copied into start_stamps
    recorded_ns: int = 0

    def validate(self) -> None:
        _validate_spec(self.spec)


@message("stop")
@dataclass(frozen=True)
class StopRequest(Message):
    """SIGTERM to the job's cgroup, SIGKILL after ``grace_s`` (0: at once). Answered by ``JobReply``."""

    job_id: str
    grace_s: float = 10.0

    def validate(self) -> None:
        validate_job_id(self.job_id)
        _check_grace(self.grace_s)


@message("signal")
@dataclass(frozen=True)
class SignalRequest(Message):
    job_id: str
    signal: int

    def validate(self) -> None:
        validate_job_id(self.job_id)
        if not 1 <= self.signal <= 64:
            raise InvalidArgument(f"signal {self.signal} is not in 1..64")


@message("list")
@dataclass(frozen=True)
class ListRequest(Message):
    """Every job the supervisor holds, exited ones included until forgotten. Answered by ``ListReply``."""


@message("forget")
@dataclass(frozen=True)
class ForgetRequest(Message):
    """Drop an exited job's record (a running one: ``failed_precondition``). Answered by ``OkReply``."""

    job_id: str

    def validate(self) -> None:
        validate_job_id(self.job_id)


@message("mount")
@dataclass(frozen=True)
class MountRequest(Message):
    """attach | swap | detach a read-only mount in a running job (done by the zygote). ``OkReply``."""

    job_id: str
    action: str
    target: str
    source: str = ""
    create_target: bool = True

    def validate(self) -> None:
        validate_job_id(self.job_id)
        if self.action not in MOUNT_ACTIONS:
            raise InvalidArgument(f"mount action {self.action!r} is not one of {sorted(MOUNT_ACTIONS)}")
        if not self.target.startswith("/") or "\0" in self.target:
            raise InvalidArgument(f"mount target {self.target!r} is not an absolute path")
        if self.action != "detach" and (not self.source.startswith("/") or "\0" in self.source):
            raise InvalidArgument(f"mount source {self.source!r} is not an absolute path")


@message("exec")
@dataclass(frozen=True)
class ExecRequest(Message):
    """Run ``argv`` inside a running job (its namespaces, cgroups, root, seccomp, caps, user).

    ``uid``/``gid`` -1: the job's own user; ``workdir`` "": the job's; ``env`` ("K=V" items) is added
    to the job's.
    Answered by ``ExecReply`` once the process exited and its output is drained (ADR-0013).
    """

    job_id: str
    argv: tuple[str, ...]
    env: tuple[str, ...] = ()
    uid: int = -1
    gid: int = -1
    workdir: str = ""
    # Streamed (``capsa exec``, ADR-0013): ``ExecStarted`` first, then ``ExecOutput`` as the output is
    # read, then ``ExecReply`` (with no output in it), all on this request's id. The exec lives as long
    # as the connection that asked for it, or its job: a dropped caller closes its stdin (a terminal:
    # SIGHUP) and its output is read and dropped.
    stream: bool = False
    stdin: str = ""                      # "" /dev/null | "pipe" | "tty" (a pseudo-terminal, needs stream)
    tty_size: tuple[int, ...] = (0, 0)   # rows, cols

    def validate(self) -> None:
        validate_job_id(self.job_id)
        if self.stdin not in ("", "pipe", "tty") or (self.stdin and not self.stream):
            raise InvalidArgument(f"exec stdin {self.stdin!r}: '', or 'pipe'/'tty' on a streamed exec")
        if len(self.tty_size) != 2 or not all(0 <= n <= 0xFFFF for n in self.tty_size):
            raise InvalidArgument(f"terminal size {self.tty_size!r} out of range")
        if not self.argv or not self.argv[0] or any("\0" in a for a in self.argv):
            raise InvalidArgument("exec needs a command (and no NUL bytes in it)")
        if not (-1 <= self.uid <= _MAX_ID and -1 <= self.gid <= _MAX_ID):
            raise InvalidArgument(f"uid/gid {self.uid}/{self.gid} out of range")
        if self.workdir and (not self.workdir.startswith("/") or "\0" in self.workdir):
            raise InvalidArgument(f"workdir {self.workdir!r} is not an absolute path")
        if any(item.find("=") < 1 or "\0" in item for item in self.env):
            raise InvalidArgument("exec environment items are K=V with a non-empty K and no NUL")


@message("fence")
@dataclass(frozen=True)
class FenceRequest(Message):
    """Kill each of ``job_ids`` (SIGKILL to its cgroup) at ``until_monotonic`` unless fenced again before.

    The pool's lease deadline (ADR-0012, fencing): a pool node's daemon sends it after every lease
    renewal, so pool jobs die by the time the pool may run them elsewhere even when the daemon itself
    is gone. ``until_monotonic`` is CLOCK_MONOTONIC, system-wide on one host; 0 lifts the deadline.
    Jobs not named keep theirs; unknown or exited jobs are ignored. Answered by ``OkReply``.
    """

    job_ids: tuple[str, ...]
    until_monotonic: float

    def validate(self) -> None:
        for job_id in self.job_ids:
            validate_job_id(job_id)
        if not math.isfinite(self.until_monotonic) or self.until_monotonic < 0:
            raise InvalidArgument(f"fence deadline {self.until_monotonic!r} is not a finite monotonic time")


# Bytes of stdin one ``InputRequest`` carries at most (base64 in the frame).
MAX_INPUT_BYTES = 1 << 16


@message("input")
@dataclass(frozen=True)
class InputRequest(Message):
    """Write to the stdin of a job started with ``-i``/``-t`` (its pipe or its terminal). ``InputReply``.

    The supervisor never blocks on it: it writes what the pipe or terminal takes now and says how
    much (``accepted``); the caller sends the rest again. ``eof`` closes a stdin pipe once ``data``
    is written (for a terminal, the job reads EOF when it is sent the VEOF character, Ctrl-D). An
    empty ``data`` only checks that the job takes input.
    """

    job_id: str
    data_b64: str = ""
    eof: bool = False
    exec_id: int = 0   # > 0: the streamed exec of that id (``ExecStarted``) in the job, not the job itself

    def validate(self) -> None:
        validate_job_id(self.job_id)
        if self.exec_id < 0:
            raise InvalidArgument(f"exec id {self.exec_id} is negative")
        if len(self.data_b64) > (MAX_INPUT_BYTES // 3 + 1) * 4:
            raise InvalidArgument(f"at most {MAX_INPUT_BYTES} bytes of input per request")


@message("resize")
@dataclass(frozen=True)
class ResizeRequest(Message):
    """Set the window size of a ``-t`` job's terminal (its foreground processes get SIGWINCH). ``OkReply``."""

    job_id: str
    rows: int
    cols: int
    exec_id: int = 0   # > 0: a streamed exec's terminal

    def validate(self) -> None:
        validate_job_id(self.job_id)
        if self.exec_id < 0:
            raise InvalidArgument(f"exec id {self.exec_id} is negative")
        if not (1 <= self.rows <= 0xFFFF and 1 <= self.cols <= 0xFFFF):
            raise InvalidArgument(f"terminal size {self.rows}x{self.cols} is not in 1..65535")


@message("ping")
@dataclass(frozen=True)
class PingRequest(Message):
    """Answered by ``PingReply``."""


@message("shutdown")
@dataclass(frozen=True)
class ShutdownRequest(Message):
    """Stop every job and exit. Answered by ``OkReply`` first."""


@message("subscribe")
@dataclass(frozen=True)
class SubscribeRequest(Message):
    """From now on, push an ``ExitEvent`` on this connection for every job that exits. ``OkReply``."""


# -- supervisor -> daemon ---------------------------------------------------------------------
@message("ok")
@dataclass(frozen=True)
class OkReply(Message):
    pass


@message("job")
@dataclass(frozen=True)
class JobReply(Message):
    job: JobRecord


@message("jobs")
@dataclass(frozen=True)
class ListReply(Message):
    jobs: tuple[JobRecord, ...]


@message("pong")
@dataclass(frozen=True)
class PingReply(Message):
    pid: int
    cgroup_version: int


@message("input_taken")
@dataclass(frozen=True)
class InputReply(Message):
    """``accepted`` bytes of the input were written; ``closed``: the job's stdin is gone (closed or exited)."""

    accepted: int
    closed: bool = False
    tty: bool = False   # the job's stdin is a terminal (``-t``), not a pipe


@message("exec_started")
@dataclass(frozen=True)
class ExecStarted(Message):
    """A streamed exec was accepted; ``exec_id`` names it in ``InputRequest``/``ResizeRequest``."""

    exec_id: int
    tty: bool = False


@message("exec_output")
@dataclass(frozen=True)
class ExecOutput(Message):
    """Output of a streamed exec as it was read: ``stream`` 1 stdout (a terminal's all), 2 stderr."""

    stream: int
    data_b64: str


@message("exec_done")
@dataclass(frozen=True)
class ExecReply(Message):
    """An exec's end: exit code (128+N for signal N), its output (base64; capped, see ``truncated``)."""

    pid: int
    exit_code: int
    signal: int
    stdout_b64: str
    stderr_b64: str
    oom_killed: bool = False
    truncated: bool = False
    exec_latency_ns: int = 0   # request received -> command exec'd, as the supervisor saw it


@message("error")
@dataclass(frozen=True)
class ErrorReply(Message):
    """A failed request; ``code`` is one of ``capsa.errors``' codes."""

    code: str
    message: str
    errno: int = 0

    def to_exception(self) -> CapsaError:
        from capsa.errors import error_from_code

        exc = error_from_code(self.code, self.message)
        if self.errno:
            exc.detail["errno"] = self.errno
        return exc


@message("start_failed")
@dataclass(frozen=True)
class StartFailed(Message):
    """The job's command was never exec'd: ``step`` names where it stopped (``exec /x``, ``pivot_root``…).

    ``command_not_found``: the command does not exist (ENOENT at the exec step);
    ``exec_failed``: the exec itself failed (not found, not executable, bad format) — the job's
    own fault, conventionally exit code 127, as opposed to a failure of capsa's set-up.
    """

    step: str
    errno: int
    message: str
    command_not_found: bool = False
    exec_failed: bool = False


class StartFailedError(FailedPrecondition):
    """Raised by ``SupervisorClient.start`` for a ``StartFailed`` reply; ``failure`` holds its fields.

    Its ``code`` is ``not_found`` for a command that does not exist, else ``failed_precondition``.
    """

    def __init__(self, failure: StartFailed) -> None:
        super().__init__(failure.message, detail={"step": failure.step, "errno": failure.errno})
        self.failure = failure
        if failure.command_not_found:
            self.code = NotFound.code
            self.exit_code = NotFound.exit_code


@message("exit")
@dataclass(frozen=True)
class ExitEvent(Message):
    """Sent to subscribers once a job's process has exited and its output is drained."""

    job: JobRecord


# -- supervisor <-> zygote, stage one/two -> supervisor ---------------------------------------------
@message("zygote_start")
@dataclass(frozen=True)
class ZygoteStart(Message):
    """Clone the job's PID 1 for ``spec``; carries ([stdin,] stdout, stderr, go, report) as SCM_RIGHTS.

    The go pipe brings the cgroup files to join once the supervisor has made them (zygote._await_go).
    """

    spec: JobSpec


@message("zygote_standby")
@dataclass(frozen=True)
class ZygoteStandby(Message):
    """Clone a standby job process (:mod:`capsa.runtime.standby`) on the socket it carries as SCM_RIGHTS.

    The standby writes ``StandbyReady(pid)`` on that socket once it is ready (the supervisor reads it from
    its own end), then waits there for one ``ZygoteStart`` and its descriptors.
    """


@message("standby_ready")
@dataclass(frozen=True)
class StandbyReady(Message):
    """A standby exists; its PID as the supervisor sees it (its own getpid() is 1)."""

    pid: int


@message("zygote_mount")
@dataclass(frozen=True)
class ZygoteMount(Message):
    """Carries the job's pidfd and the reply pipe's write end; answered there by ``OkReply``/``ErrorReply``."""

    action: str
    target: str
    source: str = ""
    create_target: bool = True


@message("zygote_exec")
@dataclass(frozen=True)
class ZygoteExec(Message):
    """Fork a process into a running job; carries [job pidfd, (stdin,) stdout, stderr, report] as SCM_RIGHTS.

    ``spec`` is the job's (seccomp profile, capabilities, user, env); the rest is the exec's own.
    ``tty``: stdin is a terminal the exec'd process takes as its controlling terminal.
    """

    spec: JobSpec
    cgroup_procs: tuple[str, ...]
    argv: tuple[str, ...]
    env: tuple[str, ...]
    uid: int
    gid: int
    workdir: str
    tty: bool = False


@message("forked")
@dataclass(frozen=True)
class Forked(Message):
    """The job's PID 1 exists (on the report pipe; written by the zygote, or by an exec's stage one)."""

    pid: int
    stamps: tuple[int, ...] = ()   # FORKED_STAMPS (a job start's; an exec sends none)


@message("stage2_stamps")
@dataclass(frozen=True)
class Stage2Stamps(Message):
    """The job process's STAGE2_STAMPS, written just before it execs (on the report pipe)."""

    stamps: tuple[int, ...]


@message("stage_failed")
@dataclass(frozen=True)
class StageFailed(Message):
    """Stage one or two failed at ``step`` (on the report pipe); the command was not exec'd."""

    step: str
    errno: int
    message: str


def error_reply(exc: BaseException) -> ErrorReply:
    if isinstance(exc, CapsaError):
        return ErrorReply(exc.code, exc.message, int(exc.detail.get("errno", 0) or 0))  # type: ignore[call-overload]
    return ErrorReply("internal", f"{type(exc).__name__}: {exc}")


_SECCOMP = frozenset({"default", "strict", "unconfined"})
_MAX_ID = (1 << 32) - 2


def _validate_spec(spec: JobSpec) -> None:
    validate_job_id(spec.job_id)
    if not spec.argv or not spec.argv[0]:
        raise InvalidArgument("a job needs a command")
    for name, path in (("job_dir", spec.job_dir), ("netns_path", spec.netns_path or "/")):
        if not path.startswith("/") or "\0" in path:
            raise InvalidArgument(f"{name} {path!r} is not an absolute path")
    if spec.stdin not in ("", "pipe", "tty"):
        raise InvalidArgument(f"stdin {spec.stdin!r} is not one of '', 'pipe', 'tty'")
    if len(spec.tty_size) != 2 or not all(0 <= n <= 0xFFFF for n in spec.tty_size):
        raise InvalidArgument(f"terminal size {spec.tty_size!r} out of range")
    if spec.seccomp not in _SECCOMP:
        raise InvalidArgument(f"seccomp profile {spec.seccomp!r} is not one of {sorted(_SECCOMP)}")
    if not (0 <= spec.uid <= _MAX_ID and 0 <= spec.gid <= _MAX_ID):
        raise InvalidArgument(f"uid/gid {spec.uid}/{spec.gid} out of range")
    r = spec.resources
    for name in ("cpu_percent", "memory_bytes", "io_bps", "pids_max"):
        value = getattr(r, name)
        if value is not None and (type(value) is not int or value < 0):
            raise InvalidArgument(f"resources.{name} {value!r} is not a non-negative integer")

