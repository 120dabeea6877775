"""The ``jobs`` table: every statement the job service runs, each a guarded single step.

Every state change is a guarded UPDATE (``WHERE state IN (...)``) so an exit event
racing a start reply, or a restart replaying events, can never move a job backwards.
Decisions two callers may race on (a cancel against a scheduled start, two submissions
with one request id) are taken inside one transaction or by a unique index.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from capsa.errors import Conflict, InvalidArgument, NotFound
from capsa.jobs.model import ACTIVE_STATES, LISTED_STATES, MIGRATIONS, Job, JobPage, JobState, RunRequest
from capsa.jobs.resources import RECORDED_COLUMNS
from capsa.runtime.protocol import JobRecord
from capsa.selectors import NAME_PATTERN, JobFilter
from capsa.state import Database
from capsa.state.keys import resolve_id_prefix

__all__ = ["JobStore", "NewJob", "PageEntry", "decode_page_token", "encode_page_token"]

_IN_ACTIVE = f"({','.join(repr(s) for s in ACTIVE_STATES)})"

# Its own component (not appended to MIGRATIONS): names, labels and --rm came on their own branch.
# Names taken twice before names were unique keep the newest; older ones get their id appended.
# Only names people give are unique: the engine's own (workflow and runtime-build jobs) contain a '/'
# that NAME_PATTERN refuses, and the same workflow or build runs many times.
LABEL_MIGRATIONS = [
    """
    ALTER TABLE jobs ADD COLUMN labels TEXT NOT NULL DEFAULT '{}';
    ALTER TABLE jobs ADD COLUMN auto_remove INTEGER NOT NULL DEFAULT 0;
    UPDATE jobs SET name = name || '-' || substr(id, 1, 12) WHERE name != '' AND instr(name, '/') = 0
        AND rowid NOT IN (SELECT MAX(rowid) FROM jobs WHERE name != '' AND instr(name, '/') = 0 GROUP BY name);
    CREATE UNIQUE INDEX jobs_name ON jobs(name) WHERE name != '' AND instr(name, '/') = 0;
    """,
]

# rev: bumped by every UPDATE of a row (by the trigger, whoever writes), so a listing can reuse what it
# built for a row whose (id, rev) it has seen before (capsa.api.joblist; ADR-0017). The WHEN clause
# keeps the trigger's own UPDATE from firing it again.
REV_MIGRATIONS = [
    """
    ALTER TABLE jobs ADD COLUMN rev INTEGER NOT NULL DEFAULT 0;
    CREATE TRIGGER jobs_rev AFTER UPDATE ON jobs FOR EACH ROW WHEN NEW.rev = OLD.rev
    BEGIN
        UPDATE jobs SET rev = OLD.rev + 1 WHERE rowid = NEW.rowid;
    END;
    """,
]


# One row of a page without its contents, (id, rev, state, created_ns): enough to tell whether a copy
# built earlier is current. Plain tuples straight from SQLite: a page of 1,000 costs no Python per row.
PageEntry = tuple[str, int, str, int]


@dataclass(frozen=True)
class NewJob:
    """What a job's row starts with."""

    id: str
    hostname: str
    request: RunRequest
    state: JobState
    scheduled_ns: int = 0
    timeout_ns: int = 0
    launched: bool = False
    recorded: Mapping[str, Any] | None = None   # what resources acquired before the row said (image, digest)


def _column_values(recorded: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(recorded) - RECORDED_COLUMNS
    if unknown:
        raise ValueError(f"not a recorded job column: {sorted(unknown)}")
    return {k: json.dumps(list(v)) if isinstance(v, (list, tuple)) else v for k, v in recorded.items()}


class JobStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        db.migrate("jobs", MIGRATIONS)
        db.migrate("job_labels", LABEL_MIGRATIONS)
        db.migrate("job_rev", REV_MIGRATIONS)

    # -- submit ---------------------------------------------------------------------------------
    def insert(self, new: NewJob) -> str | None:
        """Record a job; returns None, or the id of the job already recorded under its request id."""
        r = new.request
        columns = {
            "id": new.id, "name": r.name, "command": json.dumps(list(r.command)), "state": new.state.value,
            "env": json.dumps(r.env), "workdir": r.workdir or "/work", "resources": json.dumps(r.resources.to_dict()),
            "created_ns": time.time_ns(), "hostname": new.hostname, "image": r.image,
            "workflow_id": r.workflow_id, "workflow_job": r.workflow_job, "scheduled_ns": new.scheduled_ns,
            "timeout_ns": new.timeout_ns, "secret_env_keys": json.dumps(sorted(r.secret_env)),
            "seccomp": r.seccomp, "network": r.network, "volumes": json.dumps(list(r.volumes)), "gpus": r.gpus,
            "request_id": r.request_id, "launched": int(new.launched),
            "labels": json.dumps(r.labels, sort_keys=True), "auto_remove": int(r.auto_remove),
            **_column_values(new.recorded or {}),
        }
        insert = f"INSERT INTO jobs({', '.join(columns)}) VALUES({', '.join('?' * len(columns))})"

        def record(conn: sqlite3.Connection) -> str | None:   # one transaction, with any name handed over
            try:
                conn.execute(insert, tuple(columns.values()))
                return None
            except sqlite3.IntegrityError:
                existing = self.find_request(r.request_id) if r.request_id else None
                if existing is not None:
                    return existing
                taken = self.find_name(r.name) if r.name else None
                if taken is None:
                    raise
                if not self._hand_over_name(conn, taken, new.id, r.request_id):
                    raise Conflict(f"the name {r.name!r} is already taken by job {taken[:12]}"
                                   "; remove that job or pick another name") from None
            conn.execute(insert, tuple(columns.values()))
            return None

        return self.db.write(record)

    @staticmethod
    def _hand_over_name(conn: sqlite3.Connection, holder: str, job_id: str, request_id: str) -> bool:
        """A retry of a submission whose job never started (the daemon died first; see ``fail_lost``)
        takes that job's name: the client named its request, and the lost job was never its answer."""
        if not request_id:
            return False
        return bool(conn.execute(
            "UPDATE jobs SET name = '', reason = reason || ?"
            " WHERE id = ? AND released_request_id = ? AND state = 'FAILED'",
            (f"; retried as job {job_id[:12]}, which took its name", holder, request_id)).rowcount)

    def find_name(self, name: str, *, retried_by: str = "") -> str | None:
        """The job holding ``name``; None when it is free, or when ``retried_by`` is the request id that
        its holder, a job that never started, gave back (that retry may take the name)."""
        row = self.db.query_one(
            "SELECT id, released_request_id FROM jobs WHERE name = ? AND name != '' AND instr(name, '/') = 0",
            (name,))
        if row is None or (retried_by and row["released_request_id"] == retried_by):
            return None
        return str(row["id"])

    def find_request(self, request_id: str) -> str | None:
        row = self.db.query_one("SELECT id FROM jobs WHERE request_id = ?", (request_id,))
        return None if row is None else str(row["id"])

    # -- start ------------------------------------------------------------------------------------
    def claim_due(self, job_ids: list[str]) -> list[str]:
        """Move due SCHEDULED jobs to PENDING; each is claimed by exactly one caller."""
        return [job_id for job_id in job_ids if self.db.execute(
            "UPDATE jobs SET state = 'PENDING' WHERE id = ? AND state = 'SCHEDULED'", (job_id,)).rowcount]

    def claim_launch(self, job_id: str, request: RunRequest, recorded: Mapping[str, Any]) -> bool:
        """A claimed scheduled job is about to be handed to the supervisor: from now on a cancel cannot
        stop it from running. False when it was canceled first (then it must never run)."""
        values = {"command": json.dumps(list(request.command)), "env": json.dumps(request.env),
                  "workdir": request.workdir or "/work", **_column_values(recorded)}
        sets = ", ".join(f"{name} = ?" for name in values)
        return bool(self.db.execute(
            f"UPDATE jobs SET launched = 1, {sets} WHERE id = ? AND state = 'PENDING' AND launched = 0",
            (*values.values(), job_id)).rowcount)

    def mark_running(self, job_id: str, rec: JobRecord, latency_ns: int, recorded: Mapping[str, Any]) -> None:
        """The supervisor started it. Its exit may already be recorded (a fast job): then only the start
        latency and what its resources said are added, the state stays."""
        values = _column_values(recorded)
        extra = "".join(f", {name} = ?" for name in values)
        self.db.execute(
            "UPDATE jobs SET start_latency_ns = ?, cgroup = ?,"
            " pid = CASE WHEN state = 'PENDING' THEN ? ELSE pid END,"
            " started_ns = CASE WHEN state = 'PENDING' THEN ? ELSE started_ns END,"
            f" state = CASE WHEN state = 'PENDING' THEN 'RUNNING' ELSE state END{extra}"
            " WHERE id = ?",
            (latency_ns, rec.cgroup, rec.pid, rec.started_ns, *values.values(), job_id))

    def fail_start(self, job_id: str, reason: str, recorded: Mapping[str, Any] | None = None) -> None:
        values = _column_values(recorded or {})
        extra = "".join(f", {name} = ?" for name in values)
        self.db.execute(
            "UPDATE jobs SET state = 'FAILED', reason = ?, ended_ns = ?, exit_code = COALESCE(exit_code, 127)"
            f"{extra} WHERE id = ? AND state = 'PENDING'",
            (f"start failed: {reason}", time.time_ns(), *values.values(), job_id))

    def fail_lost(self, job_id: str, reason: str, *, never_started: bool = False) -> None:
        """``never_started``: the supervisor never had it, so its request id is given back — a client
        retrying the submission gets a new job that runs, instead of this one that never did."""
        release = ", released_request_id = request_id, request_id = ''" if never_started else ""
        self.db.execute(
            "UPDATE jobs SET state = 'FAILED', reason = ?, ended_ns = ?, exit_code = COALESCE(exit_code, -1)"
            f"{release} WHERE id = ? AND state IN {_IN_ACTIVE}", (reason, time.time_ns(), job_id))

    def adopt_running(self, job_id: str, pid: int) -> None:
        self.db.execute(f"UPDATE jobs SET state = 'RUNNING', pid = ? WHERE id = ? AND state IN {_IN_ACTIVE}",
                        (pid, job_id))

    # -- cancel, stop, timeouts ---------------------------------------------------------------------
    def cancel(self, job_id: str) -> bool:
        """SCHEDULED, or claimed but not yet launched -> CANCELED, with its schedule, in one transaction."""
        with self.db.tx() as conn:
            done = conn.execute(
                "UPDATE jobs SET state = 'CANCELED', reason = 'canceled by user', ended_ns = ?"
                " WHERE id = ? AND (state = 'SCHEDULED' OR (state = 'PENDING' AND launched = 0))",
                (time.time_ns(), job_id)).rowcount
            if done:
                conn.execute("DELETE FROM job_schedules WHERE job_id = ?", (job_id,))
        return bool(done)

    def request_stop(self, job_id: str) -> None:
        self.db.execute("UPDATE jobs SET stop_requested = 1 WHERE id = ?", (job_id,))

    def mark_timed_out(self, job_id: str) -> bool:
        return bool(self.db.execute(
            "UPDATE jobs SET timed_out = 1 WHERE id = ? AND state = 'RUNNING' AND timed_out = 0", (job_id,)).rowcount)

    def expired_timeouts(self, now_ns: int) -> list[str]:
        rows = self.db.query("SELECT id FROM jobs WHERE state = 'RUNNING' AND timeout_ns > 0 AND timed_out = 0"
                             " AND started_ns > 0 AND started_ns + timeout_ns <= ?", (now_ns,))
        return [str(r["id"]) for r in rows]

    def next_timeout_ns(self) -> int | None:
        row = self.db.query_one("SELECT MIN(started_ns + timeout_ns) AS due FROM jobs WHERE state = 'RUNNING'"
                                " AND timeout_ns > 0 AND timed_out = 0 AND started_ns > 0")
        return None if row is None or row["due"] is None else int(row["due"])

    # -- exits ----------------------------------------------------------------------------------------
    def record_exit(self, rec: JobRecord) -> None:
        row = self.db.query_one("SELECT stop_requested, timed_out, timeout_ns FROM jobs WHERE id = ?",
                                (rec.job_id,))
        if row is None:
            return
        reason = rec.reason
        if reason.startswith("start failed") or rec.oom_killed:
            state = JobState.FAILED
        elif row["timed_out"]:
            state = JobState.TIMEOUT
            reason = f"timed out after {row['timeout_ns'] / 1e9:g}s"
        elif rec.stop_requested or row["stop_requested"]:
            state = JobState.STOPPED
            reason = reason or "stopped by user"
        elif rec.exit_code == 0:
            state = JobState.COMPLETED
        else:
            state = JobState.FAILED
        self.db.execute(
            "UPDATE jobs SET state = ?, exit_code = ?, signal = ?, reason = ?, ended_ns = ?,"
            " pid = CASE WHEN pid = 0 THEN ? ELSE pid END,"
            " started_ns = CASE WHEN started_ns = 0 THEN ? ELSE started_ns END, log_incomplete_bytes = ?"
            f" WHERE id = ? AND state IN {_IN_ACTIVE}",
            (state.value, rec.exit_code, rec.signal, reason, rec.ended_ns or time.time_ns(),
             rec.pid, rec.started_ns, rec.log_incomplete_bytes, rec.job_id),
        )

    def ended_auto_remove(self) -> list[str]:
        """Ended --rm jobs still recorded (the daemon stopped before it removed them)."""
        rows = self.db.query("SELECT id FROM jobs WHERE auto_remove = 1 AND ended_ns > 0"
                             f" AND state NOT IN {_IN_ACTIVE} AND state != 'SCHEDULED'")
        return [str(r["id"]) for r in rows]

    def delete(self, job_id: str) -> None:
        self.db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    # -- queries --------------------------------------------------------------------------------------
    def resolve_id(self, id_or_prefix: str) -> str:
        """A job's exact name first, then a full id or unique id prefix."""
        by_name = self.find_name(id_or_prefix) if id_or_prefix else None
        if by_name is not None:
            return by_name
        try:
            return resolve_id_prefix(self.db, "jobs", id_or_prefix, noun="job")
        except InvalidArgument:
            # an ambiguous prefix, or something that can be neither a name nor an id, says so
            if re.fullmatch(r"[0-9a-fA-F]{1,32}", id_or_prefix.strip()) or not re.fullmatch(NAME_PATTERN, id_or_prefix):
                raise
            raise NotFound(f"no such job: {id_or_prefix} (neither a job name nor an id)") from None

    def get(self, id_or_prefix: str) -> Job:
        job_id = self.resolve_id(id_or_prefix)
        row = self.db.query_one("SELECT * FROM jobs WHERE id = ?", (job_id,))
        if row is None:
            raise NotFound(f"no such job: {id_or_prefix}")
        return Job.from_row(row)

    def by_id(self, job_id: str) -> Job | None:
        """The job with exactly this id (no name or prefix lookup), None if there is none."""
        row = self.db.query_one("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return None if row is None else Job.from_row(row)

    def active(self) -> list[Job]:
        return [Job.from_row(r) for r in self.db.query(f"SELECT * FROM jobs WHERE state IN {_IN_ACTIVE}")]

    def running_names(self) -> list[tuple[str, str]]:
        return [(str(r["id"]), str(r["name"])) for r in self.db.query(
            "SELECT id, name FROM jobs WHERE state = 'RUNNING' ORDER BY created_ns DESC, id DESC")]

    def list(self, *, all: bool = False) -> list[Job]:
        return self.page(all=all).jobs

    def page(self, *, all: bool = False, limit: int = 0, page_token: str = "",
             filter: JobFilter | None = None) -> JobPage:
        """Jobs newest first (``limit`` 0: all of them), from after ``page_token``, matching ``filter``."""
        sql, params = self.page_query(all=all, limit=limit, page_token=page_token, filter=filter)
        rows = self.db.query(sql, params)
        jobs = [Job.from_row(r) for r in (rows[:limit] if limit else rows)]
        more = bool(limit) and len(rows) > limit
        return JobPage(jobs=jobs, next_page_token=encode_page_token(jobs[-1]) if more else "")

    def page_entries(self, *, all: bool = False, limit: int = 0, page_token: str = "",
                     filter: JobFilter | None = None) -> tuple[list[PageEntry], str]:
        """What :meth:`page` would list, as (id, rev, state, created_ns) only, and the next page token."""
        sql, params = self.page_query(all=all, limit=limit, page_token=page_token, filter=filter,
                                      columns="id, rev, state, created_ns")
        cursor = self.db.connection().cursor()
        cursor.row_factory = None   # tuples, not sqlite3.Row
        rows = cursor.execute(sql, params).fetchall()
        if not (limit and len(rows) > limit):
            return rows, ""
        return rows[:limit], _token(rows[limit - 1][3], rows[limit - 1][0])

    def get_many(self, job_ids: list[str]) -> dict[str, tuple[int, Job]]:
        """(rev, job) by exact id, each rev read with its row; ids deleted meanwhile are absent."""
        out: dict[str, tuple[int, Job]] = {}
        for i in range(0, len(job_ids), 500):   # SQLite's bound-parameter limit
            chunk = job_ids[i:i + 500]
            for r in self.db.query(f"SELECT * FROM jobs WHERE id IN ({','.join('?' * len(chunk))})", chunk):
                out[r["id"]] = (r["rev"], Job.from_row(r))
        return out

    @staticmethod
    def page_query(*, all: bool, limit: int, page_token: str, filter: JobFilter | None = None,
                   columns: str = "*") -> tuple[str, tuple[Any, ...]]:
        """The SELECT for one page (one row more than ``limit``, to know whether another page follows)."""
        if limit < 0:
            raise InvalidArgument(f"page size must be zero (everything) or positive, got {limit}")
        where: list[str] = []
        params: list[Any] = []
        if filter is not None and not filter.empty:
            where, params = filter.sql()
        if not all and not (filter is not None and filter.states):   # a state filter says which states
            where.append(f"state IN ({','.join('?' * len(LISTED_STATES))})")
            params.extend(LISTED_STATES)
        if page_token:
            # A row value comparison: the (created_ns, id) index seeks straight to the page.
            where.append("(created_ns, id) < (?, ?)")
            params.extend(decode_page_token(page_token))
        sql = (f"SELECT {columns} FROM jobs" + (" WHERE " + " AND ".join(where) if where else "")
               + " ORDER BY created_ns DESC, id DESC" + (" LIMIT ?" if limit else ""))
        return sql, (*params, limit + 1) if limit else tuple(params)

    def count_by_state(self) -> dict[str, int]:
        rows = self.db.query("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")
        return {str(r["state"]): int(r["n"]) for r in rows}


def encode_page_token(last: Job) -> str:
    """Opaque to clients: the (created_ns, id) of the last job of a page."""
    return _token(last.created_ns, last.id)


def _token(created_ns: int, job_id: str) -> str:
    return base64.urlsafe_b64encode(f"{created_ns}:{job_id}".encode()).decode().rstrip("=")


def decode_page_token(token: str) -> tuple[int, str]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        created, _, job_id = raw.partition(":")
        if not job_id or len(job_id) > 64:
            raise ValueError(raw)
        return int(created), job_id
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidArgument(f"page token {token[:40]!r} is not one this daemon handed out") from None
