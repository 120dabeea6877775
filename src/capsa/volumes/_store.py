"""The volumes' SQLite tables: one row per volume, one per (volume, job) that holds it."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass

from capsa.errors import AlreadyExists, Conflict, NotFound
from capsa.state import Database

__all__ = ["Store", "VolumeRow"]

MIGRATIONS = [
    """
    CREATE TABLE volumes (
        name       TEXT PRIMARY KEY,
        type       TEXT NOT NULL CHECK (type IN ('filesystem', 'memory')),
        size_bytes INTEGER NOT NULL CHECK (size_bytes > 0),
        state      TEXT NOT NULL CHECK (state IN ('creating', 'ready', 'removing')),
        created_ns INTEGER NOT NULL
    );
    CREATE TABLE volume_users (
        volume      TEXT NOT NULL REFERENCES volumes(name),
        job_id      TEXT NOT NULL,
        acquired_ns INTEGER NOT NULL,
        PRIMARY KEY (volume, job_id)
    );
    """,
]


@dataclass(frozen=True)
class VolumeRow:
    name: str
    type: str
    size_bytes: int
    state: str
    created_ns: int


def _row(r: sqlite3.Row) -> VolumeRow:
    return VolumeRow(r["name"], r["type"], int(r["size_bytes"]), r["state"], int(r["created_ns"]))


class Store:
    def __init__(self, db: Database) -> None:
        self.db = db
        db.migrate("volumes", MIGRATIONS)

    def insert(self, name: str, type_: str, size_bytes: int) -> VolumeRow:
        try:
            self.db.execute("INSERT INTO volumes(name, type, size_bytes, state, created_ns)"
                            " VALUES(?, ?, ?, 'creating', ?)", (name, type_, size_bytes, time.time_ns()))
        except sqlite3.IntegrityError as exc:
            raise AlreadyExists(f"volume {name!r} already exists") from exc
        row = self.get(name)
        assert row is not None
        return row

    def get(self, name: str) -> VolumeRow | None:
        r = self.db.query_one("SELECT * FROM volumes WHERE name = ?", (name,))
        return None if r is None else _row(r)

    def require(self, name: str) -> VolumeRow:
        row = self.get(name)
        if row is None or row.state != "ready":
            raise NotFound(f"no volume named {name!r}")
        return row

    def all(self) -> list[VolumeRow]:
        return [_row(r) for r in self.db.query("SELECT * FROM volumes ORDER BY name")]

    def set_state(self, name: str, state: str) -> None:
        self.db.execute("UPDATE volumes SET state = ? WHERE name = ?", (state, name))

    def delete(self, name: str) -> None:
        with self.db.tx() as conn:
            conn.execute("DELETE FROM volume_users WHERE volume = ?", (name,))
            conn.execute("DELETE FROM volumes WHERE name = ?", (name,))

    def begin_remove(self, name: str) -> None:
        """Mark ``name`` as being removed, unless a job holds it (Conflict) or it does not exist."""
        with self.db.tx() as conn:
            row = conn.execute("SELECT state FROM volumes WHERE name = ?", (name,)).fetchone()
            if row is None or row["state"] == "creating":
                raise NotFound(f"no volume named {name!r}")
            users = [r[0] for r in conn.execute(
                "SELECT job_id FROM volume_users WHERE volume = ? ORDER BY job_id", (name,))]
            if users:
                shown = ", ".join(users[:5]) + (" …" if len(users) > 5 else "")
                raise Conflict(f"volume {name!r} is in use by {len(users)} job(s): {shown}")
            conn.execute("UPDATE volumes SET state = 'removing' WHERE name = ?", (name,))

    # -- users ----------------------------------------------------------------------------
    def users(self, name: str) -> list[str]:
        return [r[0] for r in self.db.query(
            "SELECT job_id FROM volume_users WHERE volume = ? ORDER BY acquired_ns, job_id", (name,))]

    def all_users(self) -> list[tuple[str, str]]:
        return [(r[0], r[1]) for r in self.db.query("SELECT volume, job_id FROM volume_users")]

    def add_user(self, name: str, job_id: str) -> bool:
        """Record that ``job_id`` holds ``name``; False if it already did."""
        with self.db.tx() as conn:
            row = conn.execute("SELECT state FROM volumes WHERE name = ?", (name,)).fetchone()
            if row is None or row["state"] != "ready":
                raise NotFound(f"no volume named {name!r}")
            cur = conn.execute("INSERT OR IGNORE INTO volume_users(volume, job_id, acquired_ns) VALUES(?, ?, ?)",
                               (name, job_id, time.time_ns()))
            return cur.rowcount == 1

    def remove_user(self, name: str, job_id: str) -> int:
        """Forget that ``job_id`` holds ``name``; returns how many users remain."""
        with self.db.tx() as conn:
            conn.execute("DELETE FROM volume_users WHERE volume = ? AND job_id = ?", (name, job_id))
            row = conn.execute("SELECT COUNT(*) FROM volume_users WHERE volume = ?", (name,)).fetchone()
            return int(row[0])
