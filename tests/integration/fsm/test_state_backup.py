"""Online backups of the state database while writers run (image ADR-001/002)."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from capsa.errors import InvalidArgument
from capsa.state.backup import BackupSchedule, backup_database, prune_backups
from capsa.state.db import Database


def test_a_backup_taken_under_concurrent_writers_is_consistent_and_complete(tmp_path: Path) -> None:
    db = Database(tmp_path / "capsa.db")
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, writer INTEGER, pad BLOB)")
    stop = threading.Event()
    committed: list[list[int]] = [[], [], []]

    def writer(n: int) -> None:
        while not stop.is_set():
            with db.tx() as conn:  # each row commits on its own, with WAL
                cur = conn.execute("INSERT INTO t (writer, pad) VALUES (?, randomblob(3000))", (n,))
            committed[n].append(int(cur.lastrowid or 0))

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    try:
        while sum(map(len, committed)) < 1000:  # megabytes, so the copy takes many steps
            time.sleep(0.01)
        before = {i for rows in committed for i in list(rows)}
        result = backup_database(db.path, tmp_path)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert result.integrity == "ok" and result.path.parent == tmp_path
    copy = sqlite3.connect(result.path)
    try:
        assert copy.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert copy.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # one self-contained file
        present = {r[0] for r in copy.execute("SELECT id FROM t")}
    finally:
        copy.close()
    assert before <= present  # every row committed before the backup began
    db.close()


def test_backups_refuse_relative_or_live_destinations(tmp_path: Path) -> None:
    db = Database(tmp_path / "capsa.db")
    with pytest.raises(InvalidArgument, match="absolute"):
        backup_database(db.path, Path("relative.db"))
    with pytest.raises(InvalidArgument, match="live database"):
        backup_database(db.path, db.path)
    db.close()


def test_the_schedule_keeps_the_newest_backups(tmp_path: Path) -> None:
    db = Database(tmp_path / "capsa.db")
    db.execute("CREATE TABLE t (x)")
    schedule = BackupSchedule(db.path, tmp_path / "backups", interval_s=3600, keep=2)
    schedule.directory.mkdir()
    made = [schedule.run_once().path for _ in range(4)]
    assert sorted(p.name for p in (tmp_path / "backups").iterdir()) == sorted(p.name for p in made[-2:])
    assert prune_backups(tmp_path / "backups", 1) == [made[-2]]
    db.close()
