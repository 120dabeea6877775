"""Garbage collection never removes what is in use — including under races."""

from __future__ import annotations

import os
import random
import shutil
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest

from capsa.capsules import CapsuleStore, tree_digest
from capsa.capsules._fs import staging_dir
from capsa.errors import InvalidArgument, NotFound
from capsa.state.db import Database

DAY = 86_400.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[CapsuleStore]:
    db = Database(tmp_path / "state.db")
    yield CapsuleStore(tmp_path / "store", db, clock=clock)
    db.close()


def src(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sources" / f"{text}-{os.urandom(4).hex()}"
    path.mkdir(parents=True)
    (path / "payload").write_text(text)
    return path


def content_dirs(tmp_path: Path) -> set[str]:
    return {p.name for p in (tmp_path / "store" / "content" / "sha256").iterdir()}


def test_gc_removes_content_no_version_refers_to(store: CapsuleStore, tmp_path: Path) -> None:
    kept = store.create("kept", "1.0", src(tmp_path, "kept"))
    orphan = store.create("orphan", "1.0", src(tmp_path, "orphan-data"))
    store.db.execute("DELETE FROM capsule_versions WHERE name = 'orphan'")  # as after a crash
    dry = store.gc(dry_run=True)
    assert dry.removed_content == (orphan.digest,) and dry.bytes_freed == len("orphan-data")
    assert orphan.path.exists()
    report = store.gc()
    assert report.removed_content == (orphan.digest,) and report.removed_versions == ()
    assert report.bytes_freed == len("orphan-data") and not report.dry_run
    assert not orphan.path.exists() and kept.path.exists()
    assert store.gc().removed_content == ()


def test_gc_unused_removes_only_unattached_unpinned_versions(store: CapsuleStore, tmp_path: Path) -> None:
    store.create("idle", "1.0", src(tmp_path, "idle"))
    attached = store.create("busy", "1.0", src(tmp_path, "busy"))
    pinned = store.create("pinned", "1.0", src(tmp_path, "pinned"))
    twin = store.create("twin", "1.0", src(tmp_path, "busy"))  # shares busy's content
    store.record_attach("job-1", "busy", "1.0", "/capsules/busy")
    store.pin("pinned", "1.0")
    dry = store.gc(unused=True, dry_run=True)
    assert dry.removed_versions == ("idle@1.0", "twin@1.0")
    assert len(store.list()) == 4
    report = store.gc(unused=True)
    assert report.removed_versions == ("idle@1.0", "twin@1.0")
    assert len(report.removed_content) == 1 and report.bytes_freed == len("idle")
    assert [v.ref for v in store.list()] == ["busy@1.0", "pinned@1.0"]
    assert attached.path.exists() and pinned.path.exists() and twin.path == attached.path


def test_gc_keeps_what_a_kept_version_still_needs(store: CapsuleStore, tmp_path: Path) -> None:
    for version in ("1.2.0", "1.3.0", "2.0.0"):
        store.create("dataset", version, src(tmp_path, f"dataset-{version}"))
    store.create("model", "3.0.0", src(tmp_path, "model"), deps=["dataset>=1.2,<2"])
    store.record_attach("job-1", "model", "3.0.0", "/capsules/model")
    report = store.gc(unused=True)
    assert report.removed_versions == ("dataset@1.2.0", "dataset@2.0.0")
    assert [v.ref for v in store.list()] == ["dataset@1.3.0", "model@3.0.0"]
    assert [v.ref for v in store.resolve(["model"])] == ["dataset@1.3.0", "model@3.0.0"]


def test_gc_older_than_counts_from_the_last_use(store: CapsuleStore, clock: Clock, tmp_path: Path) -> None:
    store.create("old", "1.0", src(tmp_path, "old"))
    store.create("used", "1.0", src(tmp_path, "used"))
    clock.now += 5 * DAY
    store.create("young", "1.0", src(tmp_path, "young"))
    store.record_attach("job-1", "used", "1.0", "/capsules/used")
    store.record_detach("job-1", "/capsules/used")
    clock.now += 3 * DAY
    report = store.gc(unused=True, older_than=timedelta(days=7))
    assert report.removed_versions == ("old@1.0",)
    assert [v.ref for v in store.list()] == ["used@1.0", "young@1.0"]


def test_older_than_needs_unused(store: CapsuleStore) -> None:
    with pytest.raises(InvalidArgument, match="unused"):
        store.gc(older_than=timedelta(days=1))


def test_gc_sweeps_crashed_imports_but_not_live_ones(store: CapsuleStore, tmp_path: Path) -> None:
    ingest = tmp_path / "store" / "ingest"
    crashed = ingest / "123-deadbeef"
    (crashed / "tree").mkdir(parents=True)
    (crashed / "tree" / "partial").write_bytes(b"x" * 100)
    hour_ago = time.time() - 3600
    os.utime(crashed, (hour_ago, hour_ago))
    with staging_dir(ingest) as live:
        os.utime(live, (hour_ago, hour_ago))  # old, but its lock is held
        report = store.gc()
        assert live.exists() and not crashed.exists()
    assert report.bytes_freed == 100


def test_gc_never_removes_a_version_a_racing_attach_recorded(store: CapsuleStore, tmp_path: Path) -> None:
    """100 rounds of record_attach (the pre-mount lease) racing gc(unused=True)."""
    outcomes: Counter[str] = Counter()
    with ThreadPoolExecutor(max_workers=2) as pool:
        for round_ in range(100):
            version = f"1.0.{round_}"
            created = store.create("ds", version, src(tmp_path, f"round-{round_}"))
            barrier = threading.Barrier(2)

            def attach(version: str = version, barrier: threading.Barrier = barrier) -> str:
                barrier.wait()
                time.sleep(random.uniform(0, 0.002))
                try:
                    store.record_attach("job", "ds", version, "/capsules/ds")
                except NotFound:
                    return "refused"
                return "attached"

            def collect(barrier: threading.Barrier = barrier) -> None:
                barrier.wait()
                time.sleep(random.uniform(0, 0.002))
                store.gc(unused=True)

            attached, collected = pool.submit(attach), pool.submit(collect)
            outcome = attached.result()
            collected.result()
            outcomes[outcome] += 1
            if outcome == "attached":
                assert store.get("ds", version) == created
                assert tree_digest(created.path).digest == created.digest
                store.record_detach("job", "/capsules/ds")
            else:
                with pytest.raises(NotFound):
                    store.get("ds", version)
                assert not created.path.exists()
    assert outcomes["attached"] > 0 and outcomes["refused"] > 0, outcomes


def test_gc_racing_an_import_of_the_same_content_keeps_it(store: CapsuleStore, tmp_path: Path) -> None:
    """rm + gc removing the last user of a digest while another name imports identical content."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        for round_ in range(50):
            source = src(tmp_path, f"shared-{round_}")
            old = store.create("old", f"1.{round_}", source)
            barrier = threading.Barrier(2)

            def collect(round_: int = round_, barrier: threading.Barrier = barrier) -> None:
                barrier.wait()
                store.remove("old", f"1.{round_}")
                store.gc()

            def create(
                source: Path = source, round_: int = round_, barrier: threading.Barrier = barrier
            ) -> None:
                barrier.wait()
                store.create("new", f"1.{round_}", source)

            futures = [pool.submit(collect), pool.submit(create)]
            for future in futures:
                future.result()
            new = store.get("new", f"1.{round_}")
            assert new.digest == old.digest
            assert tree_digest(new.path).digest == new.digest
            shutil.rmtree(source)
    assert content_dirs(tmp_path) == {v.digest.removeprefix("sha256:") for v in store.list()}
