"""Snapshot metadata in capsa's SQLite database (the source of truth).

Every backend keeps the same rows: a numeric id (names the on-disk storage, so
paths stay short — it matters for overlay's ``lowerdir=`` length limit), the
caller's key, the parent id, the kind, labels, timestamps and, once committed,
the usage measured at commit time. ``scope`` ("<backend>:<root>") lets several
snapshotters share one database without their keys colliding.

The devmapper backend adds a device table (thin device id, state machine,
sizes). All migrations live here because ``Database.migrate`` takes one
ordered list per component.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass

from capsa.errors import AlreadyExists, Conflict, FailedPrecondition, InvalidArgument, NotFound
from capsa.snapshots.base import Info, Kind, Usage
from capsa.state.db import Database

__all__ = ["MIGRATIONS", "Row", "SnapshotStore", "check_labels"]

MIGRATIONS: list[str] = [
    """
    CREATE TABLE snapshots (
      id INTEGER PRIMARY KEY AUTOINCREMENT,
      scope TEXT NOT NULL,
      key TEXT NOT NULL,
      parent_id INTEGER REFERENCES snapshots(id),
      kind TEXT NOT NULL CHECK (kind IN ('active', 'view', 'committed')),
      labels TEXT NOT NULL DEFAULT '{}',
      created REAL NOT NULL,
      updated REAL NOT NULL,
      size INTEGER,
      inodes INTEGER,
      UNIQUE (scope, key)
    );
    CREATE INDEX snapshots_parent ON snapshots(parent_id);
    CREATE TABLE snapshot_devices (
      name TEXT PRIMARY KEY,
      pool TEXT NOT NULL,
      dev_id INTEGER NOT NULL,
      parent_name TEXT,
      size INTEGER NOT NULL,
      state TEXT NOT NULL,
      error TEXT NOT NULL DEFAULT '',
      snapshot_id INTEGER,
      base_bytes INTEGER,
      updated REAL NOT NULL,
      UNIQUE (pool, dev_id)
    );
    """,
]

_MAX_LABEL_BYTES = 4096  # per key+value, as containerd


def check_labels(labels: Mapping[str, str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in (labels or {}).items():
        if not isinstance(k, str) or not isinstance(v, str) or not k:
            raise InvalidArgument(f"snapshot label {k!r}={v!r}: keys and values must be strings, keys non-empty")
        if len(k.encode()) + len(v.encode()) > _MAX_LABEL_BYTES:
            raise InvalidArgument(f"snapshot label {k!r} is longer than {_MAX_LABEL_BYTES} bytes")
        out[k] = v
    return out


@dataclass(frozen=True)
class Row:
    id: int
    key: str
    parent_id: int | None
    parent_key: str | None
    kind: Kind
    labels: dict[str, str]
    created: float
    updated: float
    size: int | None
    inodes: int | None

    def info(self) -> Info:
        return Info(
            key=self.key,
            parent=self.parent_key,
            kind=self.kind,
            labels=dict(self.labels),
            created=self.created,
            updated=self.updated,
        )

    def stored_usage(self) -> Usage | None:
        if self.size is None or self.inodes is None:
            return None
        return Usage(size=self.size, inodes=self.inodes)


_SELECT = (
    "SELECT s.id, s.key, s.parent_id, p.key AS parent_key, s.kind, s.labels, s.created, s.updated,"
    " s.size, s.inodes FROM snapshots s LEFT JOIN snapshots p ON p.id = s.parent_id"
)


def _row(r: sqlite3.Row) -> Row:
    return Row(
        id=int(r["id"]),
        key=str(r["key"]),
        parent_id=r["parent_id"],
        parent_key=r["parent_key"],
        kind=Kind(r["kind"]),
        labels=json.loads(r["labels"]),
        created=float(r["created"]),
        updated=float(r["updated"]),
        size=r["size"],
        inodes=r["inodes"],
    )


class SnapshotStore:
    """Typed access to one scope's snapshot rows; writes take a ``Database.tx`` connection."""

    def __init__(self, db: Database, scope: str) -> None:
        db.migrate("snapshots", MIGRATIONS)
        self.db = db
        self.scope = scope

    # -- reads ------------------------------------------------------------------------
    def get(self, key: str, conn: sqlite3.Connection | None = None) -> Row | None:
        c = conn or self.db.connection()
        r = c.execute(_SELECT + " WHERE s.scope = ? AND s.key = ?", (self.scope, key)).fetchone()
        return _row(r) if r else None

    def require(self, key: str, conn: sqlite3.Connection | None = None) -> Row:
        row = self.get(key, conn)
        if row is None:
            raise NotFound(f"snapshot {key!r} does not exist")
        return row

    def by_id(self, snap_id: int, conn: sqlite3.Connection | None = None) -> Row | None:
        c = conn or self.db.connection()
        r = c.execute(_SELECT + " WHERE s.id = ?", (snap_id,)).fetchone()
        return _row(r) if r else None

    def ancestors(self, row: Row, conn: sqlite3.Connection | None = None) -> list[Row]:
        """Parents of ``row``, nearest first (the overlay ``lowerdir`` order)."""
        if row.parent_id is None:
            return []
        c = conn or self.db.connection()
        rows = c.execute(
            "WITH RECURSIVE anc(id, depth) AS ("
            " SELECT ?, 1"
            " UNION ALL"
            " SELECT s.parent_id, anc.depth + 1 FROM snapshots s JOIN anc ON s.id = anc.id"
            " WHERE s.parent_id IS NOT NULL)"
            " SELECT x.id, x.key, x.parent_id, p.key AS parent_key, x.kind, x.labels, x.created,"
            " x.updated, x.size, x.inodes FROM anc JOIN snapshots x ON x.id = anc.id"
            " LEFT JOIN snapshots p ON p.id = x.parent_id ORDER BY anc.depth",
            (row.parent_id,),
        ).fetchall()
        return [_row(r) for r in rows]

    def has_children(self, snap_id: int, conn: sqlite3.Connection | None = None) -> bool:
        c = conn or self.db.connection()
        return c.execute("SELECT 1 FROM snapshots WHERE parent_id = ? LIMIT 1", (snap_id,)).fetchone() is not None

    def all(self, conn: sqlite3.Connection | None = None) -> list[Row]:
        c = conn or self.db.connection()
        return [_row(r) for r in c.execute(_SELECT + " WHERE s.scope = ? ORDER BY s.id", (self.scope,))]

    def ids(self, conn: sqlite3.Connection | None = None) -> set[int]:
        c = conn or self.db.connection()
        return {int(r[0]) for r in c.execute("SELECT id FROM snapshots WHERE scope = ?", (self.scope,))}

    # -- writes (inside the caller's transaction) -------------------------------------
    def check_new(self, conn: sqlite3.Connection, key: str, parent: str | None) -> Row | None:
        """Validate a prepare/view: ``key`` free, ``parent`` present and committed."""
        if not isinstance(key, str) or not key:
            raise InvalidArgument("snapshot key must be a non-empty string")
        if self.get(key, conn) is not None:
            raise AlreadyExists(f"snapshot {key!r} already exists")
        if parent is None:
            return None
        prow = self.get(parent, conn)
        if prow is None:
            raise NotFound(f"parent snapshot {parent!r} does not exist")
        if prow.kind is not Kind.COMMITTED:
            raise FailedPrecondition(f"parent snapshot {parent!r} is {prow.kind.value}, not committed")
        return prow

    def insert(
        self, conn: sqlite3.Connection, key: str, parent: Row | None, kind: Kind, labels: Mapping[str, str]
    ) -> int:
        now = time.time()
        cur = conn.execute(
            "INSERT INTO snapshots(scope, key, parent_id, kind, labels, created, updated)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (self.scope, key, parent.id if parent else None, kind.value, json.dumps(dict(labels)), now, now),
        )
        return int(cur.lastrowid or 0)

    def commit(
        self,
        conn: sqlite3.Connection,
        row: Row,
        name: str,
        labels: Mapping[str, str] | None,
        usage: Usage,
    ) -> None:
        if self.get(name, conn) is not None:
            raise AlreadyExists(f"snapshot {name!r} already exists")
        new_labels = dict(row.labels) if labels is None else dict(labels)
        conn.execute(
            "UPDATE snapshots SET key = ?, kind = 'committed', labels = ?, updated = ?, size = ?, inodes = ?"
            " WHERE id = ? AND kind = 'active'",
            (name, json.dumps(new_labels), time.time(), usage.size, usage.inodes, row.id),
        )

    def set_parent(self, conn: sqlite3.Connection, row: Row, parent: Row) -> None:
        """Give an active snapshot without a parent its (committed) parent."""
        if row.kind is not Kind.ACTIVE or row.parent_id is not None:
            raise FailedPrecondition(f"snapshot {row.key!r} is not an active snapshot without a parent")
        if parent.kind is not Kind.COMMITTED:
            raise FailedPrecondition(f"parent snapshot {parent.key!r} is {parent.kind.value}, not committed")
        conn.execute("UPDATE snapshots SET parent_id = ?, updated = ? WHERE id = ? AND kind = 'active'",
                     (parent.id, time.time(), row.id))

    def set_labels(self, conn: sqlite3.Connection, row: Row, labels: Mapping[str, str]) -> None:
        conn.execute(
            "UPDATE snapshots SET labels = ?, updated = ? WHERE id = ?",
            (json.dumps(dict(labels)), time.time(), row.id),
        )

    def delete(self, conn: sqlite3.Connection, row: Row) -> None:
        if self.has_children(row.id, conn):
            raise Conflict(f"snapshot {row.key!r} has children; remove them first")
        conn.execute("DELETE FROM snapshots WHERE id = ?", (row.id,))

