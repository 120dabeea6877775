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
(``BEGIN IMMEDIATE``) so two writers never deadlock on a lock upgrade. Writers of
one process first queue on an in-process lock: SQLite's own busy handler makes a
waiting writer sleep 1, 2, 5 ... 100 ms between tries, so twenty threads writing at
once (a burst of submissions) would spend most of their time asleep while the
database is free (docs/adr/0017-burst-submissions.md).

A full disk (SQLITE_FULL, "database or disk is full") is an expected condition,
not a crash: ``tx`` rolls back and raises :class:`~capsa.errors.LimitExceeded`
naming the database, after releasing a spare file (``<db>.spare``, created at
open) whose few MiB let the next attempt commit — deleting rows in WAL mode needs
free pages too, so without it ``capsa rm`` could not free space on a full disk.
:meth:`Database.execute` and :meth:`Database.write` retry such a failure with
bounded backoff (``full_retry_s``), logging the condition once and its end once;
the spare is re-created when space has returned.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from capsa.errors import FailedPrecondition, LimitExceeded

__all__ = ["Database", "is_database_full"]

_log = logging.getLogger("capsa.state")
_T = TypeVar("_T")
_SQLITE_FULL = 13
_SPARE_BYTES = 2 << 20  # room for the WAL frames of a few hundred page writes (one DELETE takes a handful)
_SPARE_RECHECK_S = 10.0
_FULL_QUIET_S = 30.0
_OPEN_MIN_FREE = 1 << 20


def _free_bytes(path: Path) -> int | None:
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def is_database_full(exc: BaseException) -> bool:
    """SQLITE_FULL: "database or disk is full" (ENOSPC while growing the database or its WAL)."""
    if isinstance(exc, LimitExceeded):
        return exc.detail.get("sqlite") == "full"
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    return (code is not None and code & 0xFF == _SQLITE_FULL) or "database or disk is full" in str(exc)

_PRAGMAS = (
    "PRAGMA journal_mode = WAL",
    "PRAGMA synchronous = NORMAL",
    "PRAGMA cache_size = -10000",
    "PRAGMA busy_timeout = 5000",
    "PRAGMA foreign_keys = ON",
)


class Database:
    """A SQLite file opened with capsa's pragmas; safe to share between threads."""

    def __init__(
        self, path: Path | str, *, busy_timeout_ms: int = 5000, full_retry_s: float = 30.0,
        spare_bytes: int = _SPARE_BYTES,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._busy_timeout_ms = busy_timeout_ms
        self.full_retry_s = full_retry_s
        self.spare_path = self.path.with_name(self.path.name + ".spare")
        self._spare_bytes = spare_bytes
        self._spare_checked = 0.0
        self._full = False  # a "database is full" condition is being reported (log once per condition)
        self._full_at = 0.0  # monotonic time of the last SQLITE_FULL
        self._full_lock = threading.Lock()
        self._ensure_spare()
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        self._migrate_lock = threading.Lock()
        self._write_lock = threading.Lock()   # this process's writers queue here, not in SQLite's busy handler
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
        try:
            for pragma in _PRAGMAS:
                conn.execute(pragma.replace("5000", str(self._busy_timeout_ms)))
        except sqlite3.OperationalError as exc:
            conn.close()
            # Opening in WAL mode creates the -wal and -shm files; on a full disk SQLite says only
            # "disk I/O error". Say what it is when the filesystem is indeed (nearly) full.
            free = _free_bytes(self.path.parent)
            if is_database_full(exc) or (free is not None and free < _OPEN_MIN_FREE):
                raise LimitExceeded(
                    f"cannot open the database {self.path}: no space left on device ({free} bytes free on "
                    "its filesystem); free space there and retry",
                    detail={"path": str(self.path), "sqlite": "full"},
                ) from exc
            raise
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
    def tx(self, *, spare: bool = True) -> Iterator[sqlite3.Connection]:
        """A write transaction: committed on success, rolled back on any exception.

        Nested use on one thread joins the outer transaction. A full disk raises
        ``LimitExceeded`` naming the database; unless ``spare=False`` (writes that
        can simply be skipped, like metrics samples) the spare file is released
        first so that a retry can commit.
        """
        conn = self.connection()
        if conn.in_transaction:
            yield conn
            return
        # Waiting as long as SQLite's busy timeout would, with the same error after it.
        if not self._write_lock.acquire(timeout=self._busy_timeout_ms / 1000):
            raise sqlite3.OperationalError("database is locked")
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException as exc:
                # After SQLITE_FULL SQLite may have rolled back already, and a failed COMMIT leaves the
                # transaction open: without this ROLLBACK the next tx() on this thread would "join" it.
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                if is_database_full(exc) and not isinstance(exc, LimitExceeded):
                    raise self._full_error(exc, spare) from exc
                raise
        finally:
            self._write_lock.release()
        self._after_write()

    def _full_error(self, exc: BaseException, spare: bool) -> LimitExceeded:
        released = spare and self._release_spare()
        with self._full_lock:
            first, self._full = not self._full, True
            self._full_at = time.monotonic()
        if first:
            _log.warning("database %s is full (%s)%s; writes are retried", self.path, exc,
                         "; released its spare file" if released else "")
        return LimitExceeded(
            f"no space left on device writing the database {self.path}; free space there and retry",
            detail={"path": str(self.path), "sqlite": "full"},
        )

    def _after_write(self) -> None:
        now = time.monotonic()
        # One success between failures (another writer found a free page) does not end the condition:
        # it ends after _FULL_QUIET_S without a failure, so a full disk is logged once, not per write.
        if self._full and now - self._full_at >= _FULL_QUIET_S:
            with self._full_lock:
                was, self._full = self._full, False
            if was:
                _log.warning("database %s: writes succeed again", self.path)
        if now - self._spare_checked >= _SPARE_RECHECK_S:
            self._spare_checked = now
            self._ensure_spare()

    def _ensure_spare(self) -> None:
        """(Re)create the spare file; quietly not while the disk is still too full for it."""
        if self._spare_bytes <= 0:
            return
        try:
            if os.stat(self.spare_path).st_blocks * 512 >= self._spare_bytes:
                return
        except FileNotFoundError:
            pass
        except OSError:
            return
        try:
            fd = os.open(self.spare_path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.posix_fallocate(fd, 0, self._spare_bytes)
            finally:
                os.close(fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(self.spare_path)

    def _release_spare(self) -> bool:
        try:
            os.unlink(self.spare_path)
        except OSError:
            return False
        self._spare_checked = time.monotonic()  # do not take the space straight back
        return True

    def write(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``fn(conn)`` in a write transaction, retrying it whole while the disk is full.

        Retries with backoff (0.05 s doubling to 2 s) for up to ``full_retry_s``,
        then raises ``LimitExceeded`` naming the database. ``fn`` must be safe to
        run again (it is: each failed attempt was rolled back). Inside an outer
        transaction it runs once: the outer one has been rolled back.
        """
        if self.connection().in_transaction:
            with self.tx() as conn:
                return fn(conn)
        deadline = time.monotonic() + self.full_retry_s
        delay = 0.05
        while True:
            try:
                with self.tx() as conn:
                    return fn(conn)
            except LimitExceeded as exc:
                if not is_database_full(exc) or time.monotonic() + delay > deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 2.0)

    def query(self, sql: str, params: Sequence[object] | dict[str, object] = ()) -> list[sqlite3.Row]:
        return self.connection().execute(sql, params).fetchall()

    def query_one(self, sql: str, params: Sequence[object] | dict[str, object] = ()) -> sqlite3.Row | None:
        return self.connection().execute(sql, params).fetchone()

    def execute(self, sql: str, params: Sequence[object] | dict[str, object] = ()) -> sqlite3.Cursor:
        """Run one statement in its own write transaction (retried while the disk is full, see ``write``)."""
        return self.write(lambda conn: conn.execute(sql, params))

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
