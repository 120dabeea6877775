"""Schedules and timeouts: the one duration parser, the persisted schedules, and the timer thread.

* :func:`parse_duration` / :func:`parse_start_time` are the only places that read
  ``30s``, ``2h30m`` and RFC 3339 times, so every flag and API field that takes one
  accepts the same syntax and fails with the same messages.
* :class:`ScheduleStore` keeps what a SCHEDULED job needs at its start time (the
  run request, its secret environment sealed by :class:`capsa.jobs.secrets.SecretBox`)
  in the ``job_schedules`` table, so schedules survive daemon restarts.
* :class:`Scheduler` is one daemon thread: it starts due jobs (on a small pool, since
  an image pull may take a while), stops jobs that ran past their timeout, and
  removes abandoned uploads. It sleeps until the next deadline (at most
  ``max_sleep_s``) and is woken early by :meth:`Scheduler.wake`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import logging
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from capsa.errors import InvalidArgument
from capsa.jobs.model import RunRequest
from capsa.state import Database

if TYPE_CHECKING:
    from capsa.jobs.service import JobService

__all__ = ["MIGRATIONS", "ScheduleStore", "Scheduler", "parse_duration", "parse_start_time"]

log = logging.getLogger("capsa.jobs.schedule")

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_MAX_SECONDS = 10 * 365 * 86400.0   # far beyond any real use, well inside int64 nanoseconds
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


def parse_duration(text: str, *, what: str = "duration") -> float:
    """Seconds in ``text``: one or more <number><unit> with units ms, s, m, h, d (``90s``, ``2h30m``, ``1.5h``)."""
    value = text.strip().lower()
    if not value:
        raise InvalidArgument(f"{what}: empty; give a duration such as 30s, 5m or 2h30m")
    pos, total = 0, 0.0
    while pos < len(value):
        match = _PART.match(value, pos)
        if match is None:
            if re.fullmatch(r"\d+(\.\d+)?", value):
                raise InvalidArgument(f"{what} {text!r} has no unit: write {value}s, {value}m or {value}h")
            raise InvalidArgument(f"{what} {text!r} is not a duration: use <number><unit> parts with units"
                                  " ms, s, m, h, d, e.g. 30s, 5m, 2h30m")
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if total <= 0:
        raise InvalidArgument(f"{what} {text!r} must be longer than zero")
    if total > _MAX_SECONDS:
        raise InvalidArgument(f"{what} {text!r} is longer than ten years")
    return total


def parse_start_time(text: str, *, now_ns: int | None = None) -> int:
    """Wall-clock start time (ns) for ``--schedule``: a duration from now, or an RFC 3339 time with a zone."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    value = text.strip()
    if "-" not in value[1:] and ":" not in value:   # no date or time separators: a delay
        return now_ns + int(parse_duration(value, what="--schedule") * 1e9)
    if not _RFC3339.match(value):
        raise InvalidArgument(f"--schedule {text!r}: give a delay such as 30s or 2h30m, or an RFC 3339 time"
                              " with a zone such as 2030-01-02T15:04:05Z or 2030-01-02T15:04:05+02:00")
    try:
        when = dt.datetime.fromisoformat(value.replace("z", "Z").replace("t", "T"))
    except ValueError as exc:
        raise InvalidArgument(f"--schedule {text!r}: {exc}") from None
    start_ns = int(when.timestamp() * 1e9)
    if start_ns < now_ns - 1_000_000_000:
        raise InvalidArgument(f"--schedule {text!r} is in the past (now is "
                              f"{dt.datetime.fromtimestamp(now_ns / 1e9, dt.UTC):%Y-%m-%dT%H:%M:%SZ})")
    if (start_ns - now_ns) / 1e9 > _MAX_SECONDS:
        raise InvalidArgument(f"--schedule {text!r} is more than ten years away")
    return start_ns


MIGRATIONS = [
    """
    CREATE TABLE job_schedules (
        job_id TEXT PRIMARY KEY REFERENCES jobs(id) ON DELETE CASCADE,
        due_ns INTEGER NOT NULL,
        request TEXT NOT NULL,
        sealed_secrets BLOB
    );
    CREATE INDEX job_schedules_due ON job_schedules(due_ns);
    """,
]

# Not persisted with the request: secrets are sealed separately, the rest is consumed at submit time.
_TRANSIENT = frozenset({"secret_env", "schedule", "upload_session"})


def request_to_json(request: RunRequest) -> str:
    data = {f.name: getattr(request, f.name) for f in dataclasses.fields(request) if f.name not in _TRANSIENT}
    return json.dumps(data, default=_plain)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"cannot persist {type(value).__name__} in a scheduled job's request")


def request_from_json(text: str) -> RunRequest:
    """Rebuild a RunRequest, restoring nested dataclasses and tuples from their defaults' types."""
    data = json.loads(text)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(RunRequest):
        if f.name not in data:
            continue
        value = data[f.name]
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            value = type(default)(**value)
        elif isinstance(default, tuple) or f.name == "command":
            value = tuple(value)
        kwargs[f.name] = value
    return RunRequest(**kwargs)


class ScheduleStore:
    """The ``job_schedules`` table: one row per SCHEDULED job, deleted when it starts or is canceled."""

    def __init__(self, db: Database) -> None:
        self.db = db
        db.migrate("job_schedules", MIGRATIONS)

    def add(self, conn: Any, job_id: str, due_ns: int, request: RunRequest, sealed: bytes | None) -> None:
        """Insert inside the caller's transaction (the same one that inserts the job)."""
        conn.execute("INSERT INTO job_schedules(job_id, due_ns, request, sealed_secrets) VALUES(?,?,?,?)",
                     (job_id, due_ns, request_to_json(request), sealed))

    def take(self, job_id: str) -> tuple[RunRequest, bytes | None] | None:
        """Remove and return a job's schedule (None when it was already taken)."""
        with self.db.tx() as conn:
            row = conn.execute("SELECT request, sealed_secrets FROM job_schedules WHERE job_id = ?",
                               (job_id,)).fetchone()
            if row is None:
                return None
            conn.execute("DELETE FROM job_schedules WHERE job_id = ?", (job_id,))
        return request_from_json(row["request"]), row["sealed_secrets"]

    def drop(self, job_id: str) -> None:
        self.db.execute("DELETE FROM job_schedules WHERE job_id = ?", (job_id,))

    def due(self, now_ns: int) -> list[str]:
        rows = self.db.query(
            "SELECT s.job_id FROM job_schedules s JOIN jobs j ON j.id = s.job_id"
            " WHERE j.state = 'SCHEDULED' AND s.due_ns <= ? ORDER BY s.due_ns", (now_ns,))
        return [str(r["job_id"]) for r in rows]

    def next_due_ns(self) -> int | None:
        row = self.db.query_one(
            "SELECT MIN(s.due_ns) AS due FROM job_schedules s JOIN jobs j ON j.id = s.job_id"
            " WHERE j.state = 'SCHEDULED'")
        return None if row is None or row["due"] is None else int(row["due"])


class Scheduler:
    """Starts due jobs, enforces timeouts, and runs periodic housekeeping (``chores``)."""

    def __init__(self, jobs: JobService, *, max_sleep_s: float = 1.0, workers: int = 4,
                 chores: tuple[tuple[float, Callable[[], object]], ...] = ()) -> None:
        self.jobs = jobs
        self.max_sleep_s = max_sleep_s
        self._chores = [(period, fn, 0.0) for period, fn in chores]
        self._wake = jobs.timers_changed     # set by the job service when a schedule or timeout is added
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="job-start")
        self._thread = threading.Thread(target=self._loop, name="job-scheduler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(10)
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self.tick()
            except Exception:  # the timer thread must survive a bad row or a busy database
                log.exception("scheduler tick failed")
            self._wake.wait(self._sleep_s())

    def tick(self) -> None:
        now = time.time_ns()
        for job_id in self.jobs.claim_due(now):
            self._pool.submit(self._start, job_id)
        for job_id in self.jobs.claim_due_restarts(now):
            self._pool.submit(self._restart, job_id)
        for job_id in self.jobs.expired_timeouts(now):
            self.jobs.time_out(job_id)
        mono = time.monotonic()
        for i, (period, fn, last) in enumerate(self._chores):
            if mono - last >= period:
                self._chores[i] = (period, fn, mono)
                with contextlib.suppress(Exception):
                    fn()

    def _start(self, job_id: str) -> None:
        try:
            self.jobs.start_claimed(job_id)
        except Exception:
            log.exception("starting scheduled job %s failed", job_id)

    def _restart(self, job_id: str) -> None:
        try:
            self.jobs.restart_claimed(job_id)
        except Exception:
            log.exception("restarting job %s failed", job_id)

    def _sleep_s(self) -> float:
        deadlines = [d for d in (self.jobs.schedules.next_due_ns(), self.jobs.next_timeout_ns(),
                                 self.jobs.next_restart_ns()) if d is not None]
        if not deadlines:
            return self.max_sleep_s
        return max(0.0, min(self.max_sleep_s, (min(deadlines) - time.time_ns()) / 1e9))
