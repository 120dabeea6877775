"""Persistence of runs, per-transition outputs and events in the shared SQLite database.

Every state change is one ``db.tx()`` that updates the run row *and* appends its events, so
the run row and its history never disagree, even after ``kill -9``. A transition counts as
complete exactly when its row exists in ``fsm_outputs`` (written with its
``transition_complete`` event); resume continues at the first index without one.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from capsa.errors import NotFound
from capsa.state.db import Database

__all__ = ["ACTIVE_STATES", "EVENT_KINDS", "TERMINAL_STATES", "Event", "RunInfo", "RunStore"]

ACTIVE_STATES = ("queued", "running", "retry_wait")
TERMINAL_STATES = ("succeeded", "failed", "canceled", "handed_off")
EVENT_KINDS = (
    "start", "transition_start", "transition_complete", "error", "retry",
    "finish", "cancel", "handoff", "abort", "resume", "repair",
)

_ACTIVE_SQL = "('queued', 'running', 'retry_wait')"

MIGRATIONS = [
    f"""
    CREATE TABLE fsm_runs (
        run_id TEXT PRIMARY KEY,
        machine TEXT NOT NULL,
        resource_id TEXT NOT NULL,
        action TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'retry_wait',
                                             'succeeded', 'failed', 'canceled', 'handed_off')),
        request TEXT NOT NULL,
        transition_index INTEGER NOT NULL DEFAULT 0,
        current_transition TEXT,
        attempt INTEGER NOT NULL DEFAULT 0,
        output TEXT,
        progress TEXT,
        error_code TEXT,
        error_message TEXT,
        defer_to TEXT,
        retry_at REAL,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        finished_at REAL
    );
    -- the dedupe guarantee: at most one active run per (machine, resource, action)
    CREATE UNIQUE INDEX fsm_runs_one_active ON fsm_runs(machine, resource_id, action)
        WHERE state IN {_ACTIVE_SQL};
    CREATE INDEX fsm_runs_by_resource ON fsm_runs(resource_id, created_at);
    CREATE INDEX fsm_runs_by_machine ON fsm_runs(machine, created_at);
    CREATE INDEX fsm_runs_by_created ON fsm_runs(created_at);
    CREATE TABLE fsm_outputs (
        run_id TEXT NOT NULL REFERENCES fsm_runs(run_id) ON DELETE CASCADE,
        idx INTEGER NOT NULL,
        transition TEXT NOT NULL,
        output TEXT NOT NULL,
        completed_at REAL NOT NULL,
        PRIMARY KEY (run_id, idx)
    );
    CREATE TABLE fsm_events (
        run_id TEXT NOT NULL REFERENCES fsm_runs(run_id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        kind TEXT NOT NULL,
        transition TEXT,
        message TEXT NOT NULL DEFAULT '',
        at REAL NOT NULL,
        PRIMARY KEY (run_id, seq)
    );
    """,
]


@dataclass(frozen=True)
class RunInfo:
    """A run as persisted. Times are Unix seconds; ``output``/``progress``/``request`` are decoded JSON.

    ``output`` is the latest completed transition's output while running, the final output
    after. ``defer_to`` is set when the run handed off to another run.
    """

    run_id: str
    machine: str
    resource_id: str
    action: str
    state: str
    current_transition: str | None
    attempt: int
    error_code: str | None
    error_message: str | None
    output: Any
    progress: Any
    created_at: float
    updated_at: float
    finished_at: float | None
    defer_to: str | None = None
    request: Any = None
    transition_index: int = 0
    retry_at: float | None = None
    cancel_requested: bool = False

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL_STATES


@dataclass(frozen=True)
class Event:
    run_id: str
    seq: int
    kind: str
    transition: str | None
    message: str
    at: float


EventSpec = tuple[str, str | None, str]  # (kind, transition, message)


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _info(row: sqlite3.Row) -> RunInfo:
    return RunInfo(
        run_id=row["run_id"], machine=row["machine"], resource_id=row["resource_id"],
        action=row["action"], state=row["state"], current_transition=row["current_transition"],
        attempt=row["attempt"], error_code=row["error_code"], error_message=row["error_message"],
        output=_loads(row["output"]), progress=_loads(row["progress"]),
        created_at=row["created_at"], updated_at=row["updated_at"], finished_at=row["finished_at"],
        defer_to=row["defer_to"], request=_loads(row["request"]),
        transition_index=row["transition_index"], retry_at=row["retry_at"],
        cancel_requested=bool(row["cancel_requested"]),
    )


def _add_events(conn: sqlite3.Connection, run_id: str, events: Sequence[EventSpec], at: float) -> None:
    row = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM fsm_events WHERE run_id = ?", (run_id,)).fetchone()
    seq = int(row[0])
    for kind, transition, message in events:
        if kind not in EVENT_KINDS:
            raise ValueError(f"unknown event kind {kind!r}")
        seq += 1
        conn.execute(
            "INSERT INTO fsm_events(run_id, seq, kind, transition, message, at) VALUES (?, ?, ?, ?, ?, ?)",
            (run_id, seq, kind, transition, message, at),
        )


class RunStore:
    """Typed access to the fsm tables; every write is one transaction."""

    def __init__(self, db: Database) -> None:
        self.db = db
        db.migrate("fsm", MIGRATIONS)

    # -- creation --------------------------------------------------------------------
    def create_or_join(self, machine: str, resource_id: str, action: str, request_json: str) -> tuple[str, bool]:
        """The active run for the key, or a new queued one: ``(run_id, created)``.

        ``BEGIN IMMEDIATE`` serialises this check-then-insert across threads and processes;
        the partial unique index is the last line of defence.
        """
        now = time.time()
        with self.db.tx() as conn:
            row = conn.execute(
                f"SELECT run_id FROM fsm_runs WHERE machine = ? AND resource_id = ? AND action = ?"
                f" AND state IN {_ACTIVE_SQL}",
                (machine, resource_id, action),
            ).fetchone()
            if row is not None:
                return str(row["run_id"]), False
            run_id = uuid.uuid4().hex
            conn.execute(
                "INSERT INTO fsm_runs(run_id, machine, resource_id, action, state, request,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, 'queued', ?, ?, ?)",
                (run_id, machine, resource_id, action, request_json, now, now),
            )
            _add_events(conn, run_id, [("start", None, f"{machine} {resource_id} {action}")], now)
            return run_id, True

    # -- reads -----------------------------------------------------------------------
    def get(self, run_id: str) -> RunInfo:
        row = self.db.query_one("SELECT * FROM fsm_runs WHERE run_id = ?", (run_id,))
        if row is None:
            raise NotFound(f"no fsm run {run_id!r}")
        return _info(row)

    def outputs(self, run_id: str) -> list[tuple[int, str, str]]:
        rows = self.db.query(
            "SELECT idx, transition, output FROM fsm_outputs WHERE run_id = ? ORDER BY idx", (run_id,)
        )
        return [(int(r["idx"]), str(r["transition"]), str(r["output"])) for r in rows]

    def counts(self) -> dict[tuple[str, str], int]:
        """Runs per (machine, state), for monitoring."""
        rows = self.db.query("SELECT machine, state, COUNT(*) AS n FROM fsm_runs GROUP BY machine, state")
        return {(r["machine"], r["state"]): int(r["n"]) for r in rows}

    def unfinished(self) -> list[RunInfo]:
        rows = self.db.query(f"SELECT * FROM fsm_runs WHERE state IN {_ACTIVE_SQL} ORDER BY created_at, rowid")
        return [_info(r) for r in rows]

    def history(self, *, resource_id: str | None, machine: str | None, limit: int) -> list[RunInfo]:
        clauses, params = [], []
        if resource_id is not None:
            clauses.append("resource_id = ?")
            params.append(resource_id)
        if machine is not None:
            clauses.append("machine = ?")
            params.append(machine)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self.db.query(
            f"SELECT * FROM fsm_runs {where} ORDER BY created_at DESC, rowid DESC LIMIT ?", (*params, limit)
        )
        return [_info(r) for r in rows]

    def events(self, run_id: str) -> list[Event]:
        rows = self.db.query(
            "SELECT run_id, seq, kind, transition, message, at FROM fsm_events WHERE run_id = ? ORDER BY seq",
            (run_id,),
        )
        return [Event(r["run_id"], r["seq"], r["kind"], r["transition"], r["message"], r["at"]) for r in rows]

    # -- state changes ---------------------------------------------------------------
    def _update(self, run_id: str, sets: dict[str, object], events: Sequence[EventSpec],
                *, only_active: bool = True) -> bool:
        now = time.time()
        columns = ", ".join(f"{name} = ?" for name in sets)
        guard = f" AND state IN {_ACTIVE_SQL}" if only_active else ""
        with self.db.tx() as conn:
            cursor = conn.execute(
                f"UPDATE fsm_runs SET {columns}, updated_at = ? WHERE run_id = ?{guard}",
                (*sets.values(), now, run_id),
            )
            if cursor.rowcount == 0:
                return False
            _add_events(conn, run_id, events, now)
            return True

    def begin_transition(self, run_id: str, index: int, name: str, attempt: int) -> None:
        self._update(
            run_id,
            {"state": "running", "transition_index": index, "current_transition": name,
             "attempt": attempt, "retry_at": None},
            [("transition_start", name, f"attempt {attempt}")],
        )

    def complete_transition(self, run_id: str, index: int, name: str, output_json: str,
                            progress_json: str | None, next_name: str | None) -> None:
        now = time.time()
        with self.db.tx() as conn:
            conn.execute(
                "INSERT INTO fsm_outputs(run_id, idx, transition, output, completed_at) VALUES (?, ?, ?, ?, ?)",
                (run_id, index, name, output_json, now),
            )
            conn.execute(
                "UPDATE fsm_runs SET transition_index = ?, current_transition = ?, attempt = 0, output = ?,"
                " progress = COALESCE(?, progress), updated_at = ? WHERE run_id = ?",
                (index + 1, next_name, output_json, progress_json, now, run_id),
            )
            _add_events(conn, run_id, [("transition_complete", name, "")], now)

    def set_retry(self, run_id: str, retry_at: float, progress_json: str | None,
                  events: Sequence[EventSpec]) -> None:
        sets: dict[str, object] = {"state": "retry_wait", "retry_at": retry_at}
        if progress_json is not None:
            sets["progress"] = progress_json
        self._update(run_id, sets, events)

    def set_queued(self, run_id: str, *, attempt: int | None = None, progress_json: str | None = None) -> bool:
        sets: dict[str, object] = {"state": "queued", "retry_at": None}
        if attempt is not None:
            sets["attempt"] = attempt
        if progress_json is not None:
            sets["progress"] = progress_json
        return self._update(run_id, sets, [])

    def set_progress(self, run_id: str, progress_json: str) -> None:
        self._update(run_id, {"progress": progress_json}, [])

    def request_cancel(self, run_id: str) -> bool:
        """Flag an active run as canceled (recorded once); False if it already finished."""
        now = time.time()
        with self.db.tx() as conn:
            row = conn.execute(
                f"SELECT cancel_requested FROM fsm_runs WHERE run_id = ? AND state IN {_ACTIVE_SQL}", (run_id,)
            ).fetchone()
            if row is None:
                return False
            if not row["cancel_requested"]:
                conn.execute(
                    "UPDATE fsm_runs SET cancel_requested = 1, updated_at = ? WHERE run_id = ?", (now, run_id)
                )
                _add_events(conn, run_id, [("cancel", None, "cancel requested")], now)
            return True

    def add_events(self, per_run: Sequence[tuple[str, Sequence[EventSpec]]]) -> None:
        now = time.time()
        with self.db.tx() as conn:
            for run_id, events in per_run:
                _add_events(conn, run_id, events, now)

    def finish(self, run_id: str, state: str, *, output_json: str | None, error_code: str | None,
               error_message: str | None, defer_to: str | None, progress_json: str | None,
               events: Sequence[EventSpec]) -> bool:
        now = time.time()
        sets: dict[str, object] = {
            "state": state, "error_code": error_code, "error_message": error_message,
            "defer_to": defer_to, "retry_at": None, "finished_at": now,
        }
        if output_json is not None:
            sets["output"] = output_json
        if progress_json is not None:
            sets["progress"] = progress_json
        return self._update(run_id, sets, [*events, ("finish", None, state)])

    def prune(self, finished_before: float) -> int:
        with self.db.tx() as conn:
            cursor = conn.execute(
                f"DELETE FROM fsm_runs WHERE state NOT IN {_ACTIVE_SQL} AND finished_at < ?", (finished_before,)
            )
            return cursor.rowcount

    def prune_history(self, finished_before: float, *, keep_sql: Sequence[str] = ()) -> int:
        """Delete finished runs older than ``finished_before`` except those still worth keeping:

        the newest run of each (machine, resource) (``capsa image history`` shows the last pull),
        runs another run handed off to (``defer_to``), and runs the ``keep_sql`` SELECTs name
        (e.g. ``image_pull_requests``: a retried pull request returns its run's outcome).
        """
        keep = "".join(f" AND run_id NOT IN ({sql})" for sql in keep_sql)
        with self.db.tx() as conn:
            return conn.execute(
                f"DELETE FROM fsm_runs WHERE state NOT IN {_ACTIVE_SQL} AND finished_at < ?"
                " AND run_id NOT IN (SELECT defer_to FROM fsm_runs WHERE defer_to IS NOT NULL)"
                " AND EXISTS (SELECT 1 FROM fsm_runs n WHERE n.machine = fsm_runs.machine"
                " AND n.resource_id = fsm_runs.resource_id AND (n.created_at > fsm_runs.created_at"
                f" OR (n.created_at = fsm_runs.created_at AND n.rowid > fsm_runs.rowid))){keep}",
                (finished_before,)).rowcount
