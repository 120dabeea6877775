"""Restart policies (``capsa run --restart no|on-failure[:N]|always``): the decision, the backoff, the table.

A restarted job keeps its id, its row and its log (docs/adr/0015): when a run ends and its policy
says so, :class:`RestartStore` records when the next run is due; the scheduler thread claims due
restarts and :meth:`capsa.jobs.service.JobService.restart_claimed` starts them through the ordinary
start path (every resource re-acquired). The row survives daemon restarts, so a restart that came
due while the daemon was down happens when it is back.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from capsa.errors import InvalidArgument
from capsa.jobs.model import JobState
from capsa.state import Database

__all__ = ["Backoff", "RestartPolicy", "RestartStore", "parse_restart"]

MIGRATIONS = [
    # request: the job's run request (JSON, secrets sealed separately); backoff_n: consecutive short
    # runs, the exponent of the next delay; next_ns: wall clock of the next start, 0 when none is due;
    # active: 0 once `capsa stop` or the end of the policy ended it.
    """
    CREATE TABLE job_restarts (
        job_id TEXT PRIMARY KEY,
        mode TEXT NOT NULL,
        max_restarts INTEGER NOT NULL DEFAULT 0,
        restart_count INTEGER NOT NULL DEFAULT 0,
        backoff_n INTEGER NOT NULL DEFAULT 0,
        next_ns INTEGER NOT NULL DEFAULT 0,
        active INTEGER NOT NULL DEFAULT 1,
        request TEXT NOT NULL,
        sealed_secrets BLOB
    );
    CREATE INDEX job_restarts_due ON job_restarts(next_ns) WHERE next_ns > 0;
    """,
]


# Not about restarts, but a column of the same age: kept here so capsa.jobs' own MIGRATIONS stay untouched.
LOG_LIMIT_MIGRATIONS = ["ALTER TABLE jobs ADD COLUMN log_dropped_bytes INTEGER NOT NULL DEFAULT 0;"]


@dataclass(frozen=True)
class RestartPolicy:
    mode: str = "no"          # no | on-failure | always
    max_restarts: int = 0     # on-failure only; 0 = unlimited

    def __str__(self) -> str:
        return f"{self.mode}:{self.max_restarts}" if self.mode == "on-failure" and self.max_restarts else self.mode

    def wants_restart(self, state: JobState, restart_count: int) -> bool:
        """Whether a run that ended in ``state`` is followed by another (``restart_count`` so far).

        A stopped, canceled or timed-out job is never restarted: the user (or its timeout) ended it.
        """
        if self.mode == "always":
            return state in (JobState.COMPLETED, JobState.FAILED)
        if self.mode == "on-failure":
            return state == JobState.FAILED and (not self.max_restarts or restart_count < self.max_restarts)
        return False


def parse_restart(text: str) -> RestartPolicy:
    value = text.strip().lower()
    if value in ("", "no"):
        return RestartPolicy()
    if value == "always":
        return RestartPolicy("always")
    mode, _, count = value.partition(":")
    if mode == "on-failure":
        if not count:
            return RestartPolicy("on-failure")
        if count.isdigit() and int(count) > 0:
            return RestartPolicy("on-failure", int(count))
    raise InvalidArgument(f"--restart {text!r}: use no, always, on-failure or on-failure:N (N > 0)")


@dataclass(frozen=True)
class Backoff:
    """Delay before restart n: ``base_s`` doubling to ``cap_s``; a run of ``reset_after_s`` resets it."""

    base_s: float = 0.1
    cap_s: float = 30.0
    reset_after_s: float = 10.0

    def next(self, backoff_n: int, ran_s: float) -> tuple[float, int]:
        """(delay in seconds, the exponent to store for the restart after this one)."""
        n = 0 if ran_s >= self.reset_after_s else backoff_n
        return min(self.cap_s, self.base_s * 2 ** min(n, 30)), n + 1


class RestartStore:
    """The ``job_restarts`` table: one row per job submitted with a restart policy."""

    def __init__(self, db: Database, *, backoff: Backoff | None = None,
                 clock_ns: Callable[[], int] = time.time_ns) -> None:
        self.db = db
        self.backoff = backoff or Backoff()
        self.clock_ns = clock_ns
        db.migrate("job_restart", MIGRATIONS)

    def add(self, conn: Any, job_id: str, policy: RestartPolicy, request_json: str, sealed: bytes | None) -> None:
        """Inside the caller's transaction (the one that inserts the job)."""
        conn.execute("INSERT INTO job_restarts(job_id, mode, max_restarts, request, sealed_secrets)"
                     " VALUES(?,?,?,?,?)", (job_id, policy.mode, policy.max_restarts, request_json, sealed))

    def get(self, job_id: str) -> dict[str, Any] | None:
        row = self.db.query_one("SELECT * FROM job_restarts WHERE job_id = ?", (job_id,))
        return None if row is None else dict(row)

    def info(self, job_ids: list[str]) -> dict[str, tuple[str, int, int]]:
        """(policy, restart count, next restart ns) by job id, for the jobs that have a policy."""
        if not job_ids:
            return {}
        out: dict[str, tuple[str, int, int]] = {}
        columns = "SELECT job_id, mode, max_restarts, restart_count, next_ns, active FROM job_restarts"
        # Few jobs have a policy: when they are fewer than the ids asked about (a listing asks about
        # 1,000), reading them all is cheaper than binding and probing every id (0.7 ms per 1,000).
        found = self.db.query_one("SELECT COUNT(*) AS n FROM job_restarts") if len(job_ids) > 50 else None
        if found is not None and int(found["n"]) <= len(job_ids):
            wanted = set(job_ids)
            chunks = [[r for r in self.db.query(columns) if r["job_id"] in wanted]]
        else:
            chunks = [self.db.query(f"{columns} WHERE job_id IN ({','.join('?' * len(chunk))})", tuple(chunk))
                      for chunk in (job_ids[i:i + 500] for i in range(0, len(job_ids), 500))]   # the bound limit
        for rows in chunks:
            for r in rows:
                policy = str(RestartPolicy(r["mode"], r["max_restarts"]))
                out[r["job_id"]] = (policy, int(r["restart_count"]), int(r["next_ns"]) if r["active"] else 0)
        return out

    def decide(self, job_id: str, state: JobState, ran_s: float) -> float | None:
        """After a run ended in ``state``: schedule the next one; returns its delay, or None (no restart)."""
        row = self.get(job_id)
        if row is None or not row["active"]:
            return None
        policy = RestartPolicy(row["mode"], row["max_restarts"])
        if not policy.wants_restart(state, row["restart_count"]):
            self.db.execute("UPDATE job_restarts SET active = 0, next_ns = 0 WHERE job_id = ?", (job_id,))
            return None
        delay, n = self.backoff.next(row["backoff_n"], ran_s)
        done = self.db.execute("UPDATE job_restarts SET next_ns = ?, backoff_n = ? WHERE job_id = ? AND active = 1"
                               " AND next_ns = 0", (self.clock_ns() + int(delay * 1e9), n, job_id)).rowcount
        return delay if done else None

    def end(self, job_id: str) -> bool:
        """`capsa stop`: no further restart; True when one was due."""
        return bool(self.db.execute("UPDATE job_restarts SET active = 0, next_ns = 0 WHERE job_id = ? AND active = 1",
                                    (job_id,)).rowcount)

    def due(self, now_ns: int) -> list[str]:
        rows = self.db.query("SELECT job_id FROM job_restarts WHERE next_ns > 0 AND next_ns <= ? AND active = 1"
                             " ORDER BY next_ns", (now_ns,))
        return [str(r["job_id"]) for r in rows]

    def next_due_ns(self) -> int | None:
        row = self.db.query_one("SELECT MIN(next_ns) AS due FROM job_restarts WHERE next_ns > 0 AND active = 1")
        return None if row is None or row["due"] is None else int(row["due"])

    def claim(self, conn: Any, job_id: str) -> int | None:
        """Take a due restart inside the caller's transaction; returns the new restart count (None: not due)."""
        done = conn.execute("UPDATE job_restarts SET next_ns = 0, restart_count = restart_count + 1"
                            " WHERE job_id = ? AND active = 1 AND next_ns > 0", (job_id,)).rowcount
        if not done:
            return None
        row = conn.execute("SELECT restart_count FROM job_restarts WHERE job_id = ?", (job_id,)).fetchone()
        return int(row["restart_count"])

    def delete(self, job_id: str) -> None:
        self.db.execute("DELETE FROM job_restarts WHERE job_id = ?", (job_id,))
