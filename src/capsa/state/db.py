"""The one SQLite database under CAPSA_HOME (image ADR-001/002).

WAL mode with ``synchronous=NORMAL``: readers never block the writer, and a
crash loses at most the last few commits, which the durable FSMs tolerate
because every transition re-checks real state.

Each component owns its tables and registers an ordered list of migrations
under its own name (``db.migrate("jobs", [...])``); ``schema_versions``
records how far each component has been migrated, so packages evolve their
schemas independently and a newcomer finds a table's definition next to the
code that uses it.

Connections are per thread (sqlite3 objects must not cross threads); writes go
through :meth:`Database.tx`, which takes the write lock up front
(``BEGIN IMMEDIATE``) so two writers never deadlock on a lock upgrade.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from capsa.errors import FailedPrecondition

__all__ = ["Database"]

_PRAGMAS = (
    "PRAGMA journal_mode = WAL",
    "PRAGMA synchronous = NORMAL",
    "PRAGMA cache_size = -10000",
    "PRAGMA busy_timeout = 5000",
    "PRAGMA foreign_keys = ON",
)


class Database:
    """A SQLite file opened with capsa's pragmas; safe to share between threads."""

    def __init__(self, path: Path | str, *, busy_timeout_ms: int = 5000) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._busy_timeout_ms = busy_timeout_ms
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        self._migrate_lock = threading.Lock()
        with self.tx() as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_versions ("
                " component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
            )

    # -- connections -----------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path,
            timeout=self._busy_timeout_ms / 1000,
            isolation_level=None,  # we issue BEGIN/COMMIT ourselves
            check_same_thread=False,
        )
        conn.row_factory = sqlite3.Row
        for pragma in _PRAGMAS:
            conn.execute(pragma.replace("5000", str(self._busy_timeout_ms)))
        with self._all_lock:
            self._all.append(conn)
        return conn

    def connection(self) -> sqlite3.Connection:
        """This thread's connection (autocommit; use :meth:`tx` for writes)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
        return conn

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: committed on success, rolled back on any exception.

        Nested use on one thread joins the outer transaction.
        """
        conn = self.connection()
        if conn.in_transaction:
            yield conn
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        else:
            conn.execute("COMMIT")

    def query(self, sql: str, params: Sequence[object] | dict[str, object] = ()) -> list[sqlite3.Row]:
        return self.connection().execute(sql, params).fetchall()

    def query_one(self, sql: str, params: Sequence[object] | dict[str, object] = ()) -> sqlite3.Row | None:
        return self.connection().execute(sql, params).fetchone()

    def execute(self, sql: str, params: Sequence[object] | dict[str, object] = ()) -> sqlite3.Cursor:
        """Run one statement in its own write transaction."""
        with self.tx() as conn:
            return conn.execute(sql, params)

    # -- schema ----------------------------------------------------------------------
    def migrate(self, component: str, migrations: Sequence[str]) -> int:
        """Apply the not-yet-applied entries of ``migrations`` for ``component``.

        Each entry is one SQL script; entry ``i`` takes the component to version
        ``i + 1``. Applying is idempotent and atomic per script. A database newer
        than this code (more versions recorded than migrations known) is refused
        rather than silently misread.
        """
        with self._migrate_lock, self.tx() as conn:
            row = conn.execute(
                "SELECT version FROM schema_versions WHERE component = ?", (component,)
            ).fetchone()
            current = row["version"] if row else 0
            if current > len(migrations):
                raise FailedPrecondition(
                    f"database {self.path} has schema version {current} for {component!r}, "
                    f"newer than this capsa knows ({len(migrations)}); upgrade capsa"
                )
            for version in range(current, len(migrations)):
                for statement in _split_sql(migrations[version]):
                    conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_versions(component, version) VALUES(?, ?)"
                " ON CONFLICT(component) DO UPDATE SET version = excluded.version",
                (component, len(migrations)),
            )
            return len(migrations)

    def schema_version(self, component: str) -> int:
        row = self.query_one("SELECT version FROM schema_versions WHERE component = ?", (component,))
        return int(row["version"]) if row else 0

    # -- lifecycle -------------------------------------------------------------------
    def integrity_check(self) -> str:
        row = self.query_one("PRAGMA integrity_check")
        return str(row[0]) if row else "no result"

    def checkpoint(self) -> None:
        """Fold the WAL back into the main file (done on clean shutdown)."""
        self.connection().execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self, *, checkpoint: bool = True) -> None:
        if checkpoint:
            try:
                self.checkpoint()
            except sqlite3.Error:
                pass  # another process may hold the WAL; closing is still safe
        with self._all_lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()
        self._local = threading.local()


def _split_sql(script: str) -> list[str]:
    """Split a migration script into statements (sqlite3.complete_statement aware)."""
    statements: list[str] = []
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            if buffer.strip():
                statements.append(buffer.strip())
            buffer = ""
    if buffer.strip():
        statements.append(buffer.strip())
    return statements
