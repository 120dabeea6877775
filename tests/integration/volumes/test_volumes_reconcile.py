"""reconcile() after a crash: every half-done step is finished or undone, held volumes mounted."""

from __future__ import annotations

from pathlib import Path

from volumes_helpers import mounts_under, wait_no_loops

from capsa import linux
from capsa.state import Database
from capsa.volumes import VolumeManager


def _restart(tmp_path: Path) -> tuple[VolumeManager, Database]:
    db = Database(tmp_path / "capsa.db")
    return VolumeManager(db, tmp_path / "volumes"), db


def test_users_that_no_longer_run_are_released_and_the_volume_unmounted(
    volumes: VolumeManager, tmp_path: Path
) -> None:
    volumes.create("v", "16MiB")
    volumes.acquire("v", "job-dead")
    volumes.acquire("v", "job-alive")

    restarted, db = _restart(tmp_path)
    report = restarted.reconcile(["job-alive"])
    assert report.released == ["v:job-dead"] and report.unmounted == []
    assert restarted.get("v").users == ("job-alive",) and restarted.get("v").mounted

    report = restarted.reconcile([])
    assert report.released == ["v:job-alive"] and report.unmounted == ["v"]
    assert mounts_under(tmp_path) == [] and wait_no_loops(tmp_path) == []
    db.close()


def test_mounts_lost_with_a_host_reboot_are_put_back(volumes: VolumeManager, tmp_path: Path) -> None:
    volumes.create("disk", "16MiB")
    (volumes.acquire("disk", "job-1") / "f").write_text("durable")
    volumes.create("ram", "8MiB", "memory")
    (volumes.acquire("ram", "job-1") / "f").write_text("volatile")
    for name in ("disk", "ram"):  # what a reboot does to them
        linux.umount2(tmp_path / "volumes" / name / "mnt")
    assert mounts_under(tmp_path) == []

    restarted, db = _restart(tmp_path)
    report = restarted.reconcile(["job-1"])
    assert report.mounted == ["disk"] and report.recreated == ["ram"]
    assert (tmp_path / "volumes" / "disk" / "mnt" / "f").read_text() == "durable"
    assert not (tmp_path / "volumes" / "ram" / "mnt" / "f").exists()
    assert restarted.get("ram").mounted
    db.close()


def test_a_crash_between_release_and_unmount_is_finished(volumes: VolumeManager, tmp_path: Path) -> None:
    volumes.create("half", "16MiB")
    volumes.acquire("half", "job-1")
    db = Database(tmp_path / "capsa.db")
    db.execute("DELETE FROM volume_users WHERE job_id = 'job-1'")  # the row went, the unmount never came
    report = VolumeManager(db, tmp_path / "volumes").reconcile()
    assert report.unmounted == ["half"]
    assert mounts_under(tmp_path) == []
    db.close()


def test_half_created_half_removed_and_stray_volumes_are_cleaned(volumes: VolumeManager, tmp_path: Path) -> None:
    volumes.create("creating", "8MiB", "memory")
    volumes.create("removing", "16MiB")
    volumes.create("fine", "8MiB")
    db = Database(tmp_path / "capsa.db")
    db.execute("UPDATE volumes SET state = 'creating' WHERE name = 'creating'")
    db.execute("UPDATE volumes SET state = 'removing' WHERE name = 'removing'")
    stray = tmp_path / "volumes" / "stray"
    (stray / "mnt").mkdir(parents=True)

    report = VolumeManager(db, tmp_path / "volumes").reconcile()
    assert sorted(report.removed) == ["creating", "removing", "stray"]
    assert sorted(p.name for p in (tmp_path / "volumes").iterdir()) == ["fine"]
    assert [v.name for v in volumes.list()] == ["fine"]
    assert mounts_under(tmp_path) == []
    db.close()


def test_a_filesystem_volume_whose_image_vanished_is_reported_not_hidden(
    volumes: VolumeManager, tmp_path: Path
) -> None:
    volumes.create("lost", "8MiB")
    (tmp_path / "volumes" / "lost" / "image.ext4").unlink()
    report = volumes.reconcile()
    assert report.missing == ["lost"]
    assert volumes.get("lost").state == "missing"
