"""``capsa exec``: a process inside a running job, and the audit trail of every one.

Each exec is recorded *before* it runs (who, what, when) in the ``job_exec_events`` table
and completed with its exit code when it ends, so an exec that is still running, or whose
daemon died under it, is visible too. Rows go with their job (``ON DELETE CASCADE``).
The process itself is forked by the zygote and reaped by the supervisor
(:mod:`capsa.runtime.execproc`, docs/adr/0013-interactive-jobs-and-exec.md).
"""

from __future__ import annotations

import asyncio
import base64
import errno
import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from capsa.errors import CapsaError, FailedPrecondition, InvalidArgument
from capsa.jobs.model import JobState
from capsa.jobs.service import JobService
from capsa.runtime.exec_stream import exec_stream
from capsa.runtime.protocol import (
    ErrorReply,
    ExecOutput,
    ExecReply,
    ExecRequest,
    ExecStarted,
    StartFailed,
    StartFailedError,
)

__all__ = ["MIGRATIONS", "ExecEvent", "ExecStreamStarted", "JobExecs", "parse_user"]

MIGRATIONS = [
    """
    CREATE TABLE job_exec_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        who TEXT NOT NULL,
        command TEXT NOT NULL,
        user TEXT NOT NULL DEFAULT '',
        at_ns INTEGER NOT NULL,
        ended_ns INTEGER NOT NULL DEFAULT 0,
        exit_code INTEGER,
        error TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX job_exec_events_job ON job_exec_events(job_id, id);
    """,
]

_USER = re.compile(r"^(\d{1,10})(?::(\d{1,10}))?$")
_MAX_ID = (1 << 32) - 2
_MAX_ARGS = 4096


@dataclass(frozen=True)
class ExecEvent:
    who: str
    command: list[str]
    at_ns: int
    user: str
    ended_ns: int
    exit_code: int | None
    error: str

    @property
    def ended(self) -> bool:
        return self.ended_ns != 0


def parse_user(user: str) -> tuple[int, int]:
    """``UID[:GID]`` (or ``root``) as (uid, gid); (-1, -1) for "": the job's own user."""
    if not user:
        return -1, -1
    if user == "root":
        return 0, 0
    m = _USER.match(user)
    if m is None:
        raise InvalidArgument(f"user {user[:60]!r} is not UID[:GID] (numeric, as inside the job) or 'root'")
    uid = int(m.group(1))
    gid = int(m.group(2)) if m.group(2) is not None else uid
    if uid > _MAX_ID or gid > _MAX_ID:
        raise InvalidArgument(f"user {user!r}: id out of range")
    return uid, gid


@dataclass(frozen=True)
class ExecStreamStarted:
    """The first item of :meth:`JobExecs.exec_stream`: the exec to write input to."""

    job_id: str
    exec_id: int
    tty: bool


class JobExecs:
    def __init__(self, jobs: JobService) -> None:
        self.jobs = jobs
        self.db = jobs.db
        self.db.migrate("job_exec_events", MIGRATIONS)

    def exec(self, id_or_prefix: str, command: list[str], *, who: str, env: dict[str, str] | None = None,
             user: str = "", workdir: str = "") -> ExecReply:
        """Run ``command`` in the running job; its end (exit code, output). Recorded before and after."""
        job_id, uid, gid, env_items = self._check(id_or_prefix, command, env, user, workdir)
        event_id = self._record(job_id, who, command, user)
        try:
            reply = self.jobs.supervisor.exec(job_id, tuple(command), env=env_items, uid=uid, gid=gid,
                                              workdir=workdir)
        except StartFailedError as exc:
            self._finish(event_id, None, str(exc))
            if not exc.failure.exec_failed:
                raise
            # The command's own fault (missing, not executable): a shell's 127/126 and its message,
            # as `capsa run` reports a job whose command could not be exec'd.
            return _exec_failed_reply(exc.failure)
        except CapsaError as exc:
            self._finish(event_id, None, str(exc))
            raise
        except BaseException as exc:
            self._finish(event_id, None, f"{type(exc).__name__}: {exc}")
            raise
        self._finish(event_id, reply.exit_code, "")
        return reply

    def _check(self, id_or_prefix: str, command: list[str], env: dict[str, str] | None, user: str,
               workdir: str) -> tuple[str, int, int, tuple[str, ...]]:
        """(job id, uid, gid, env items) of a valid exec into a running job."""
        if not command or not command[0]:
            raise InvalidArgument("exec needs a command")
        if len(command) > _MAX_ARGS:
            raise InvalidArgument(f"exec takes at most {_MAX_ARGS} arguments")
        uid, gid = parse_user(user)
        if workdir and not workdir.startswith("/"):
            raise InvalidArgument(f"workdir {workdir!r} is not an absolute path")
        env_items = tuple(f"{k}={v}" for k, v in (env or {}).items())
        for item in env_items:
            if item.find("=") < 1 or "\0" in item:
                raise InvalidArgument(f"environment entry {item[:60]!r} is not NAME=VALUE")
        job = self.jobs.get(id_or_prefix)
        if job.state != JobState.RUNNING:
            raise FailedPrecondition(f"job {job.short_id} is {job.state.value}, not RUNNING: exec needs a running job")
        return job.id, uid, gid, env_items

    async def exec_stream(self, id_or_prefix: str, command: list[str], *, who: str,
                          env: dict[str, str] | None = None, user: str = "", workdir: str = "", stdin: str = "",
                          tty_size: tuple[int, int] = (0, 0)) -> AsyncIterator[object]:
        """A streamed exec: ``ExecStreamStarted``, then ``ExecOutput`` items as produced, then ``ExecReply``.

        Recorded before and after, as :meth:`exec`. Leaving the iteration early ends the process's
        input (a terminal hangs up).
        """
        loop = asyncio.get_running_loop()
        job_id, uid, gid, env_items = await loop.run_in_executor(
            None, lambda: self._check(id_or_prefix, command, env, user, workdir))
        if stdin not in ("", "pipe", "tty"):
            raise InvalidArgument(f"exec stdin {stdin!r} is not '', 'pipe' or 'tty'")
        event_id = await loop.run_in_executor(None, lambda: self._record(job_id, who, command, user))
        request = ExecRequest(job_id, tuple(command), env_items, uid, gid, workdir, stream=True, stdin=stdin,
                              tty_size=tty_size)
        request.validate()
        finished = False

        async def finish(code: int | None, error: str) -> None:
            nonlocal finished
            if not finished:
                finished = True
                await loop.run_in_executor(None, lambda: self._finish(event_id, code, error))

        try:
            async for msg in exec_stream(self.jobs.supervisor.sock_path, request):
                if isinstance(msg, ExecStarted):
                    yield ExecStreamStarted(job_id, msg.exec_id, msg.tty)
                elif isinstance(msg, ExecOutput):
                    yield msg
                elif isinstance(msg, ExecReply):
                    await finish(msg.exit_code, "")   # recorded before the caller hears of the end
                    yield msg
                elif isinstance(msg, StartFailed):
                    if not msg.exec_failed:
                        raise StartFailedError(msg)
                    reply = _exec_failed_reply(msg)
                    await finish(reply.exit_code, msg.message)
                    yield ExecOutput(2, reply.stderr_b64)
                    yield reply
                elif isinstance(msg, ErrorReply):
                    raise msg.to_exception()
        except CapsaError as exc:
            await finish(None, str(exc))
            raise
        finally:
            await finish(None, "the caller went away before the exec ended")

    def events(self, job_id: str) -> list[ExecEvent]:
        rows = self.db.query("SELECT who, command, user, at_ns, ended_ns, exit_code, error FROM job_exec_events "
                             "WHERE job_id = ? ORDER BY id", (job_id,))
        return [ExecEvent(r["who"], json.loads(r["command"]), r["at_ns"], r["user"], r["ended_ns"], r["exit_code"],
                          r["error"]) for r in rows]

    def _record(self, job_id: str, who: str, command: list[str], user: str) -> int:
        def insert(conn: object) -> int:
            cur = conn.execute(  # type: ignore[attr-defined]
                "INSERT INTO job_exec_events (job_id, who, command, user, at_ns) VALUES (?, ?, ?, ?, ?)",
                (job_id, who, json.dumps(command), user, time.time_ns()))
            return int(cur.lastrowid)
        return self.db.write(insert)

    def _finish(self, event_id: int, exit_code: int | None, error: str) -> None:
        self.db.execute("UPDATE job_exec_events SET ended_ns = ?, exit_code = ?, error = ? WHERE id = ?",
                        (time.time_ns(), exit_code, error[:2000], event_id))


def _exec_failed_reply(failure: StartFailed) -> ExecReply:
    """The command's own fault (missing, not executable): a shell's 127/126 and its message on stderr,
    as `capsa run` reports a job whose command could not be exec'd."""
    code = 127 if failure.errno == errno.ENOENT else 126
    return ExecReply(0, code, 0, "", base64.b64encode(f"capsa: {failure.message}\n".encode()).decode())
