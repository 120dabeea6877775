"""The content store: verified commits, dedupe, resumable ingests, cleanup."""

from __future__ import annotations

import hashlib
import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from capsa.errors import Canceled, ChecksumMismatch, LimitExceeded, NotFound, Timeout, Unavailable
from capsa.images.content import ContentStore, copy_to_store
from capsa.images.oci import Digest, sha256_digest
from capsa.state.db import Database

SRC = Path(__file__).resolve().parents[3] / "src"


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = Database(tmp_path / "capsa.db")
    yield database
    database.close()


@pytest.fixture
def store(tmp_path: Path, db: Database) -> ContentStore:
    return ContentStore(tmp_path / "content", db)


def _blob(n: int, seed: int = 0) -> bytes:
    return hashlib.shake_256(f"blob-{seed}".encode()).digest(n)


def _leftovers(store: ContentStore) -> list[str]:
    return sorted(p.name for p in (store.root / "ingest").iterdir())


def test_commit_publishes_read_only_blob_and_records_it(store: ContentStore) -> None:
    data = _blob(3 * 1024 * 1024 + 17)
    digest = sha256_digest(data)
    with store.writer("layer-1", expected=digest, expected_size=len(data)) as w:
        for i in range(0, len(data), 65536):
            w.write(data[i : i + 65536])
        assert w.digest() == digest
        info = w.commit(len(data), digest, media_type="application/vnd.oci.image.layer.v1.tar")
    assert info.digest == digest and info.size == len(data)
    path = store.path(digest)
    assert path == store.root / "blobs" / "sha256" / digest.hex
    assert stat.S_IMODE(path.stat().st_mode) == 0o444
    assert path.read_bytes() == data
    assert store.info(digest).media_type == "application/vnd.oci.image.layer.v1.tar"
    row = store.db.query_one("SELECT size FROM content_blobs WHERE digest = ?", (digest,))
    assert row is not None and row["size"] == len(data)
    assert _leftovers(store) == []


def test_open_reads_by_digest_and_missing_blob_is_not_found(store: ContentStore) -> None:
    info = store.put_bytes(b'{"a": 1}')
    with store.open(info.digest) as f:
        assert f.read() == b'{"a": 1}'
    with pytest.raises(NotFound):
        store.open(sha256_digest(b"absent"))
    assert not store.exists(sha256_digest(b"absent"))


def test_digest_mismatch_raises_naming_both_and_keeps_nothing(store: ContentStore) -> None:
    data = _blob(100_000)
    wrong = sha256_digest(b"something else")
    w = store.writer("bad", expected=wrong)
    w.write(data)
    with pytest.raises(ChecksumMismatch) as err:
        w.commit(len(data))
    assert wrong in str(err.value) and sha256_digest(data) in str(err.value)
    assert not store.exists(sha256_digest(data))
    assert _leftovers(store) == []
    assert list(store.walk()) == []


def test_size_mismatch_at_commit_keeps_nothing(store: ContentStore) -> None:
    w = store.writer("short")
    w.write(b"abc")
    with pytest.raises(ChecksumMismatch, match="expected 4 bytes, got 3"):
        w.commit(4)
    assert _leftovers(store) == []


def test_writing_past_expected_size_fails_at_once_and_keeps_nothing(store: ContentStore) -> None:
    w = store.writer("too-long", expected_size=10)
    w.write(b"0123456789")
    with pytest.raises(ChecksumMismatch, match="more than the expected 10 bytes"):
        w.write(b"x")
    assert _leftovers(store) == []


def test_blob_limit_is_enforced_while_writing(tmp_path: Path, db: Database) -> None:
    small = ContentStore(tmp_path / "c", db, max_blob_size=1000)
    with pytest.raises(LimitExceeded):
        small.writer("big", expected_size=1001)
    w = small.writer("unknown-size")
    w.write(b"a" * 1000)
    with pytest.raises(LimitExceeded, match="1000-byte blob limit"):
        w.write(b"a")
    assert _leftovers(small) == []


def test_commit_of_present_digest_is_a_noop(store: ContentStore) -> None:
    data = _blob(5000)
    first = store.put_bytes(data, media_type="x/first")
    created = first.created
    w = store.writer("again", expected=first.digest)
    w.write(data)
    second = w.commit(len(data))
    assert second.digest == first.digest and second.created == created and second.media_type == "x/first"
    assert [b.digest for b in store.walk()] == [first.digest]
    assert _leftovers(store) == []


def test_second_writer_on_same_ref_is_unavailable(store: ContentStore) -> None:
    w = store.writer("busy")
    with pytest.raises(Unavailable):
        store.writer("busy")
    w.close()
    store.writer("busy").abort()


def test_reopened_ingest_resumes_at_its_size_with_rebuilt_digest(store: ContentStore) -> None:
    data = _blob(2_500_000)
    digest = sha256_digest(data)
    w = store.writer("resume", expected=digest, expected_size=len(data))
    w.write(data[:1_000_000])
    w.close()
    w = store.writer("resume", expected=digest, expected_size=len(data))
    assert w.offset == 1_000_000
    assert w.digest() == sha256_digest(data[:1_000_000])
    w.write(data[1_000_000:])
    assert w.commit().digest == digest


def test_truncated_ingest_resumes_from_what_survived(store: ContentStore) -> None:
    data = _blob(1_000_000)
    w = store.writer("torn", expected_size=len(data))
    w.write(data[:600_000])
    w.close()
    ingest = next((store.root / "ingest").iterdir()) / "data"
    os.truncate(ingest, 123_457)  # a torn write: less survived than was written
    w = store.writer("torn", expected_size=len(data))
    assert w.offset == 123_457
    w.write(data[w.offset :])
    assert w.commit(len(data), sha256_digest(data)).size == len(data)


def test_ingest_with_different_expectation_restarts(store: ContentStore) -> None:
    w = store.writer("reuse", expected=sha256_digest(b"one"))
    w.write(b"on")
    w.close()
    w = store.writer("reuse", expected=sha256_digest(b"two"))
    assert w.offset == 0
    w.write(b"two")
    assert w.commit().digest == sha256_digest(b"two")


_KILLED_WRITER = textwrap.dedent(
    """
    import hashlib, os, sys, time
    from pathlib import Path
    from capsa.images.content import ContentStore
    from capsa.state.db import Database

    root, ready = Path(sys.argv[1]), sys.argv[2]
    data = hashlib.shake_256(b"blob-7").digest(8 * 1024 * 1024)
    store = ContentStore(root / "content", Database(root / "capsa.db"))
    w = store.writer("killed", expected_size=len(data))
    for i in range(0, 3 * 1024 * 1024 + 5000, 4096):
        w.write(data[i:i + 4096])
    Path(ready).write_text(str(w.offset))
    while True:  # mid-blob, forever, until SIGKILL
        time.sleep(1)
    """
)


def test_writer_killed_mid_blob_is_resumed_to_the_right_digest(tmp_path: Path, db: Database) -> None:
    data = _blob(8 * 1024 * 1024, seed=7)
    ready = tmp_path / "ready"
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, str(tmp_path), str(ready)],
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert proc.poll() is None, "writer process died early"
            assert time.monotonic() < deadline, "writer process never got mid-blob"
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    written = int(ready.read_text())
    store = ContentStore(tmp_path / "content", db)
    (leftover,) = store.ingests()
    assert leftover.ref == "killed" and leftover.offset == written and not leftover.locked
    w = store.writer("killed", expected_size=len(data))  # the kernel dropped the dead writer's lock
    assert w.offset == written
    w.write(data[w.offset :])
    info = w.commit(len(data), sha256_digest(data))
    assert store.path(info.digest).read_bytes() == data
    assert store.ingests() == []


def test_ingests_lists_leftovers_and_prune_removes_only_old_unlocked_ones(store: ContentStore) -> None:
    old = store.writer("old")
    old.write(b"x" * 10)
    old.close()
    past = time.time() - 3600
    data = next(p for p in (store.root / "ingest").iterdir()) / "data"
    os.utime(data, (past, past))
    held = store.writer("held")
    held.write(b"y")
    os.utime(next(p for p in (store.root / "ingest").iterdir() if p != data.parent) / "data", (past, past))
    fresh = store.writer("fresh")
    fresh.write(b"z")
    fresh.close()
    listing = {i.ref: i for i in store.ingests()}
    assert set(listing) == {"old", "held", "fresh"}
    assert listing["old"].offset == 10 and listing["old"].age >= 3500
    assert listing["held"].locked and not listing["old"].locked
    removed = store.prune_ingests(older_than=600)
    assert [i.ref for i in removed] == ["old"]
    assert {i.ref for i in store.ingests()} == {"held", "fresh"}
    held.abort()
    store.abort("fresh")
    assert store.ingests() == []
    with pytest.raises(NotFound):
        store.abort("fresh")


def test_delete_and_walk_repair_metadata_from_files(store: ContentStore) -> None:
    a = store.put_bytes(b"a" * 10, media_type="x/a")
    b = store.put_bytes(b"b" * 20)
    store.db.execute("DELETE FROM content_blobs WHERE digest = ?", (b.digest,))  # crash after rename
    store.path(a.digest).unlink()  # file removed behind our back
    assert {i.digest: i.size for i in store.walk()} == {b.digest: 20}
    assert store.db.query_one("SELECT 1 FROM content_blobs WHERE digest = ?", (a.digest,)) is None
    store.delete(b.digest)
    assert not store.exists(b.digest)
    with pytest.raises(NotFound):
        store.delete(b.digest)
    with pytest.raises(NotFound):
        store.info(b.digest)


def test_hints_resolve_only_to_stored_blobs(store: ContentStore) -> None:
    info = store.put_bytes(b"layer")
    store.record_hint("s3:host/bucket#etag:5", info.digest)
    assert store.lookup_hint("s3:host/bucket#etag:5") == info.digest
    assert store.lookup_hint("s3:host/bucket#other:5") is None
    store.delete(info.digest)
    assert store.lookup_hint("s3:host/bucket#etag:5") is None


def test_copy_to_store_reports_progress_including_resumed_offset(store: ContentStore) -> None:
    w = store.writer("progress", expected_size=30)
    w.write(b"a" * 10)
    seen: list[tuple[int, int | None]] = []
    copy_to_store(iter([b"b" * 10, b"c" * 10]), w, lambda done, total: seen.append((done, total)))
    assert seen == [(20, 30), (30, 30)]
    assert w.commit().size == 30


def test_copy_to_store_times_out_and_keeps_the_ingest_for_resume(store: ContentStore) -> None:
    def slow() -> object:
        for _ in range(100):
            time.sleep(0.02)
            yield b"s" * 100

    w = store.writer("slow")
    with pytest.raises(Timeout, match="0.1 s timeout"):
        copy_to_store(slow(), w, timeout_s=0.1)
    assert 0 < w.offset < 10_000
    w.close()
    assert store.ingests()[0].offset > 0


def test_copy_to_store_stops_when_canceled(store: ContentStore) -> None:
    cancel = threading.Event()

    def chunks() -> object:
        yield b"1" * 10
        cancel.set()
        yield b"2" * 10
        yield b"3" * 10

    w = store.writer("cancel")
    with pytest.raises(Canceled):
        copy_to_store(chunks(), w, cancel=cancel)
    assert w.offset in (10, 20)
    w.abort()


def test_digest_type_rejects_malformed_and_foreign_algorithms() -> None:
    from capsa.errors import InvalidArgument, Unsupported

    assert Digest("sha256:" + "a" * 64).hex == "a" * 64
    with pytest.raises(InvalidArgument):
        Digest("sha256:" + "A" * 64)
    with pytest.raises(InvalidArgument):
        Digest("sha256:../../etc/passwd")
    with pytest.raises(Unsupported):
        Digest("sha512:" + "a" * 128)


def test_verify_detects_and_removes_a_corrupted_blob(store: ContentStore) -> None:
    info = store.put_bytes(b"precious bytes")
    assert store.verify(info.digest) == info
    path = store.path(info.digest)
    path.chmod(0o644)
    path.write_bytes(b"precious bytez")
    with pytest.raises(ChecksumMismatch, match="corrupt"):
        store.verify(info.digest)
    assert not store.exists(info.digest)


def test_digest_file_matches_hashlib(tmp_path: Path) -> None:
    from capsa.images.content import digest_file

    data = _blob(2 * 1024 * 1024 + 3)
    (tmp_path / "f").write_bytes(data)
    assert digest_file(tmp_path / "f") == (sha256_digest(data), len(data))
