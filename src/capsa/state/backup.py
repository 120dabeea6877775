"""Online backups of the state database (image ADR-001/002: "regular backups of both DB and WAL").

:func:`backup_database` copies the live database with SQLite's backup API through a
connection of its own, in one step: one read transaction, so the copy is the consistent
snapshot of everything committed before it began (WAL content included). Under WAL a reader
never blocks writers, so the daemon keeps writing meanwhile. (Copying in several steps would
let writers in, and SQLite restarts a stepped copy whenever another connection writes: under
a steady stream of writes it would never finish.) The copy is written to a temporary file, checked with
``PRAGMA integrity_check``, fsynced and renamed into place: a backup file that exists is
complete. It is a single self-contained file in rollback-journal mode (no ``-wal`` to
carry along).

Restore (docs/images.md "Backups"): stop the daemon, copy the backup file to
``HOME/capsa.db`` (removing any ``capsa.db-wal`` and ``capsa.db-shm`` beside it), start the
daemon. Runs that were unfinished in the backup resume; work finished after it is redone
or found already done by the state machines' validity checks.

:class:`BackupSchedule` takes one every ``interval_s`` into a directory and keeps the
newest ``keep``.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from capsa.errors import FailedPrecondition, InvalidArgument

__all__ = ["BackupResult", "BackupSchedule", "backup_database", "prune_backups"]

log = logging.getLogger("capsa.state")

_PREFIX = "capsa-"
_SUFFIX = ".db"


@dataclass(frozen=True)
class BackupResult:
    path: Path
    bytes: int
    pages: int
    seconds: float
    integrity: str


def backup_database(source: Path | str, dest: Path | str, *, busy_timeout_ms: int = 5000) -> BackupResult:
    """Copy the database at ``source`` to ``dest`` (a file, or a directory for a timestamped one)."""
    source = Path(source)
    dest = Path(dest)
    if not dest.is_absolute():
        raise InvalidArgument(f"backup destination {str(dest)!r} must be an absolute path on the node")
    if dest.is_dir():
        dest = dest / f"{_PREFIX}{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{time.time_ns() % 10**9:09d}{_SUFFIX}"
    if not dest.parent.is_dir():
        raise InvalidArgument(f"backup destination directory {dest.parent} does not exist")
    if dest.resolve() == source.resolve():
        raise InvalidArgument("a backup cannot overwrite the live database")
    began = time.monotonic()
    tmp = dest.with_name(f".{dest.name}.partial")
    tmp.unlink(missing_ok=True)
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=busy_timeout_ms / 1000)
    try:
        out = sqlite3.connect(tmp)
        try:
            src.backup(out, pages=-1)  # one step, one read snapshot (see the module docstring)
            out.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
            integrity = str(out.execute("PRAGMA integrity_check").fetchone()[0])
            pages = int(out.execute("PRAGMA page_count").fetchone()[0])
        finally:
            out.close()
    finally:
        src.close()
    if integrity != "ok":
        tmp.unlink(missing_ok=True)
        raise FailedPrecondition(f"the backup of {source} failed its integrity check: {integrity}")
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, dest)
    dir_fd = os.open(dest.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return BackupResult(path=dest, bytes=dest.stat().st_size, pages=pages, seconds=time.monotonic() - began,
                        integrity=integrity)


def prune_backups(directory: Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` scheduled backups in ``directory``; returns what went."""
    found = sorted(p for p in directory.glob(f"{_PREFIX}*{_SUFFIX}") if p.is_file())
    doomed = found[:-keep] if keep > 0 else found
    for path in doomed:
        path.unlink(missing_ok=True)
    return doomed


class BackupSchedule:
    """A daemon thread taking a backup every ``interval_s`` into ``directory``, keeping ``keep``."""

    def __init__(self, source: Path, directory: Path, *, interval_s: float, keep: int) -> None:
        self.source, self.directory, self.interval_s, self.keep = source, directory, interval_s, keep
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="capsa-backup", daemon=True)

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._thread.start()

    def stop(self, timeout: float = 10) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def close(self) -> None:
        """The daemon's shutdown verb for its background parts."""
        self.stop()

    def run_once(self) -> BackupResult:
        result = backup_database(self.source, self.directory)
        prune_backups(self.directory, self.keep)
        log.info("state backup %s: %d bytes in %.2fs", result.path, result.bytes, result.seconds)
        return result

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.run_once()
            except Exception:  # a failed backup must not stop the next one
                log.exception("scheduled state backup into %s failed", self.directory)
