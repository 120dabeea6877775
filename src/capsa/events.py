"""Durable lifecycle events: one row per change in the ``events`` table, read back by ``capsa events``.

Writers call :meth:`EventLog.record` in the transaction of the state change when they have one
(``conn=``), otherwise right after it; either way the event is on disk before the change is
reported back, so a watcher that starts later replays it with ``since``. Readers poll cheaply:
:attr:`EventLog.last_seq` is kept in memory, so an idle stream costs no query.

Kept for ``RETENTION_S`` (pruned as events are recorded), which bounds the table.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from capsa.state import Database

__all__ = ["EVENT_TYPES", "Event", "EventLog"]

EVENT_TYPES = ("job", "image", "capsule", "workflow")
RETENTION_S = 7 * 86400
_PRUNE_EVERY = 1000

MIGRATIONS = [
    """
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        time_ns INTEGER NOT NULL,
        type TEXT NOT NULL,
        action TEXT NOT NULL,
        object_id TEXT NOT NULL,
        name TEXT NOT NULL DEFAULT '',
        attributes TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX events_time ON events(time_ns);
    """,
]


@dataclass(frozen=True)
class Event:
    seq: int
    time_ns: int
    type: str
    action: str
    id: str
    name: str = ""
    attributes: dict[str, str] = field(default_factory=dict)


_LOGS: weakref.WeakKeyDictionary[Database, EventLog] = weakref.WeakKeyDictionary()
_LOGS_LOCK = threading.Lock()


class EventLog:
    @classmethod
    def of(cls, db: Database) -> EventLog:
        """The one EventLog of ``db``: every writer shares it, so its in-memory last seq sees every event."""
        with _LOGS_LOCK:
            log = _LOGS.get(db)
            if log is None:
                log = _LOGS[db] = cls(db)
            return log

    def __init__(self, db: Database) -> None:
        self.db = db
        db.migrate("events", MIGRATIONS)
        row = db.query_one("SELECT MAX(seq) AS seq FROM events")
        self.last_seq = int(row["seq"] or 0) if row else 0
        self._lock = threading.Lock()
        self._count = 0

    def record(self, type: str, action: str, object_id: str, *, name: str = "",
               attributes: Mapping[str, object] | None = None, conn: sqlite3.Connection | None = None) -> None:
        """Record one event; ``conn``: inside the caller's transaction (the change and its event commit together)."""
        if type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {type!r}")
        values = (time.time_ns(), type, action, object_id, name,
                  json.dumps({k: str(v) for k, v in (attributes or {}).items()}, sort_keys=True))
        sql = "INSERT INTO events(time_ns, type, action, object_id, name, attributes) VALUES(?,?,?,?,?,?)"
        seq = (conn.execute(sql, values) if conn is not None else self.db.execute(sql, values)).lastrowid
        with self._lock:
            self.last_seq = max(self.last_seq, int(seq or 0))
            self._count += 1
            prune = self._count % _PRUNE_EVERY == 0
        if prune:
            self.db.execute("DELETE FROM events WHERE time_ns < ?", (time.time_ns() - int(RETENTION_S * 1e9),))

    def safe_record(self, type: str, action: str, object_id: str, **kw: object) -> None:
        """:meth:`record` for callers whose change already happened: a failing event write must not undo it."""
        try:
            self.record(type, action, object_id, **kw)  # type: ignore[arg-type]
        except (sqlite3.Error, OSError):
            import logging

            logging.getLogger("capsa.events").warning("recording event %s %s of %s failed", type, action,
                                                      object_id, exc_info=True)

    def start_seq(self, since_ns: int) -> int:
        """The seq after which events recorded at or after ``since_ns`` come (0: from now on)."""
        if not since_ns:
            return self.last_seq
        row = self.db.query_one("SELECT MIN(seq) AS seq FROM events WHERE time_ns >= ?", (since_ns,))
        return int(row["seq"]) - 1 if row and row["seq"] is not None else self.last_seq

    def visible_seq(self) -> int:
        """The highest committed seq. SQLite commits writes one at a time in seq order, so every event up to
        it is committed too: a filtered reader can move its cursor there without missing one."""
        row = self.db.query_one("SELECT MAX(seq) AS seq FROM events")
        return int(row["seq"] or 0) if row else 0

    def after(self, seq: int, *, types: Sequence[str] = (), ids: Sequence[str] = (), limit: int = 500,
              upto: int | None = None) -> list[Event]:
        """Events with a seq greater than ``seq`` (and at most ``upto``), oldest first."""
        where, params = ["seq > ?"], [seq]
        if upto is not None:
            where.append("seq <= ?")
            params.append(upto)
        if types:
            where.append(f"type IN ({','.join('?' * len(types))})")
            params.extend(types)
        if ids:
            where.append(f"object_id IN ({','.join('?' * len(ids))})")
            params.extend(ids)
        rows = self.db.query(f"SELECT * FROM events WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?",
                             (*params, limit))
        return [Event(seq=r["seq"], time_ns=r["time_ns"], type=r["type"], action=r["action"], id=r["object_id"],
                      name=r["name"], attributes=json.loads(r["attributes"])) for r in rows]
