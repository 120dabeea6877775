"""SQLite on a full disk: SQLITE_FULL is retried, never kills a thread, and deletes still free space."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest

from capsa.errors import LimitExceeded
from capsa.state.db import Database
from tests.integration.diskfull.loopfs import LoopFs


def _db_with_rows(path: Path, **kwargs: object) -> Database:
    db = Database(path, **kwargs)  # type: ignore[arg-type]
    db.execute("CREATE TABLE jobs (id INTEGER PRIMARY KEY, blob BLOB)")
    with db.tx() as conn:
        conn.executemany("INSERT INTO jobs (blob) VALUES (?)", [(bytes(4096),) for _ in range(300)])
    db.checkpoint()  # an empty WAL: the next commit needs fresh blocks
    return db


def test_deleting_rows_on_a_full_disk_needs_the_spare_file(small_fs: LoopFs) -> None:
    """The measurement behind the spare file: without it even a DELETE cannot commit."""
    bare = _db_with_rows(small_fs.mnt / "bare.db", spare_bytes=0, full_retry_s=0.3)
    spared = _db_with_rows(small_fs.mnt / "spared.db", full_retry_s=5)
    assert spared.spare_path.stat().st_size == 2 << 20
    small_fs.fill()
    with pytest.raises(LimitExceeded, match="no space left on device writing the database .*bare.db") as err:
        bare.execute("DELETE FROM jobs WHERE id <= 100")
    assert err.value.exit_code == 9
    assert bare.query_one("SELECT count(*) FROM jobs")[0] == 300  # rolled back, connection still usable
    assert not bare.connection().in_transaction

    spared.execute("DELETE FROM jobs WHERE id <= 100")  # the spare was given back, the commit fits
    assert spared.query_one("SELECT count(*) FROM jobs")[0] == 200
    assert not spared.spare_path.exists()
    bare.close(checkpoint=False)
    spared.close(checkpoint=False)


def test_a_state_change_is_retried_until_space_returns_and_logged_once(
    small_fs: LoopFs, caplog: pytest.LogCaptureFixture
) -> None:
    db = _db_with_rows(small_fs.mnt / "state.db", spare_bytes=0, full_retry_s=20)
    ballast = small_fs.fill()
    errors: list[BaseException] = []

    def record_exit() -> None:  # what the daemon's exit-event thread does
        try:
            db.execute("UPDATE jobs SET blob = ? WHERE id <= 50", (bytes(8192),))
        except BaseException as exc:  # pragma: no cover - the assertion below reports it
            errors.append(exc)

    with caplog.at_level(logging.WARNING, logger="capsa.state"):
        thread = threading.Thread(target=record_exit)
        thread.start()
        time.sleep(1.0)
        assert thread.is_alive(), f"gave up at once: {errors}"
        ballast.unlink()
        thread.join(15)
    assert not thread.is_alive() and errors == []
    assert db.query_one("SELECT length(blob) FROM jobs WHERE id = 1")[0] == 8192
    full_lines = [r for r in caplog.records if "is full" in r.getMessage()]
    assert len(full_lines) == 1, [r.getMessage() for r in caplog.records]
    db.close()
