"""`capsa image verify` and `capsa admin backup` against a real daemon, and the documented restore
(docs/images.md "Backups": stop the daemon, copy the backup to HOME/capsa.db, start)."""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from image_helpers import ImageDaemon, image_daemon, integrity_check, one_line_error

from tests.fixtures.images import LayoutImages


@pytest.fixture
def d(tmp_path: Path) -> Iterator[ImageDaemon]:
    with image_daemon(tmp_path / "home") as daemon:
        yield daemon


def _flip_a_byte(path: Path) -> None:
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_verify_finds_a_flipped_byte_and_repair_fetches_the_blob_again(d: ImageDaemon,
                                                                      test_images: LayoutImages) -> None:
    ref = test_images.ref("whiteout")
    image = d.cli_json("image", "pull", ref)
    assert [r["ok"] for r in d.cli_json("image", "verify", ref)] == [True]
    layer = image["layers"][1]["digest"]
    blob = d.home / "content" / "blobs" / "sha256" / layer.removeprefix("sha256:")
    _flip_a_byte(blob)
    res = d.cli("image", "verify", ref, "--json")
    assert res.returncode == 1
    found = json.loads(res.stdout)[0]
    assert found["ok"] is False and any(layer in p and "corrupt" in p for p in found["problems"])
    assert not blob.exists()  # never kept for use
    res = d.cli("image", "verify", ref)
    assert res.returncode == 1 and b"DAMAGED" in res.stdout
    report = d.cli_json("image", "verify", "--all", "--repair")[0]
    assert report["ok"] is False and report["repaired"] is True
    assert any(layer in p and "missing" in p for p in report["problems"])
    assert [r["ok"] for r in d.cli_json("image", "verify", ref)] == [True]
    res = d.cli("image", "verify", ref, role="reader")
    assert res.returncode == 6 and "may not call VerifyImages" in one_line_error(res)


def test_a_backup_restores_the_state_it_was_taken_in(d: ImageDaemon, test_images: LayoutImages,
                                                     tmp_path: Path) -> None:
    busybox, whiteout = test_images.ref("busybox"), test_images.ref("whiteout")
    d.cli_ok("image", "pull", busybox)
    backups = tmp_path / "backups"
    backups.mkdir()
    res = d.cli("admin", "backup", str(backups), role="maintainer")
    assert res.returncode == 6 and "may not call BackupDatabase" in one_line_error(res)
    taken = d.cli_json("admin", "backup", str(backups))
    assert taken["integrity"] == "ok" and Path(taken["path"]).parent == backups
    d.cli_ok("image", "pull", whiteout)  # after the backup: not in it

    d.stop()  # the documented restore
    shutil.copyfile(taken["path"], d.home / "capsa.db")
    for suffix in ("-wal", "-shm"):
        (d.home / f"capsa.db{suffix}").unlink(missing_ok=True)
    d.start()

    refs = {i["ref"] for i in d.cli_json("image", "ls")}
    assert busybox.removeprefix("oci:") in " ".join(refs) and not any("whiteout" in r for r in refs)
    assert all(r["ok"] for r in d.cli_json("image", "verify", "--all"))
    d.cli_ok("image", "pull", whiteout)  # work done after the backup is simply done again
    assert integrity_check(d.home) == "ok"
    conn = sqlite3.connect(taken["path"])
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()
