"""Upload staging on the real filesystem: trees with modes and symlinks arrive intact, and no entry can write
outside the staging tree (``..``, absolute names, names through symlinks, names taken by symlinks)."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from capsa.errors import InvalidArgument, LimitExceeded, NotFound, UnsafeArchive
from capsa.jobs.uploads import (
    CHUNK_BYTES,
    EntryKind,
    UploadEntry,
    UploadLimits,
    UploadStore,
    walk_local,
)

Item = tuple[UploadEntry | None, bytes]


def F(path: str, data: bytes = b"", mode: int = 0o644) -> Item:  # noqa: N802 - reads like a table
    return UploadEntry(path, EntryKind.FILE, mode, len(data)), data


def D(path: str, mode: int = 0o755) -> Item:  # noqa: N802
    return UploadEntry(path, EntryKind.DIR, mode), b""


def L(path: str, target: str) -> Item:  # noqa: N802
    return UploadEntry(path, EntryKind.SYMLINK, 0o777, 0, target), b""


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A host directory next to the staging area that no upload may touch."""
    d = tmp_path / "outside"
    d.mkdir()
    (d / "sentinel").write_text("untouched")
    return d


@pytest.fixture
def store(tmp_path: Path) -> UploadStore:
    (tmp_path / "uploads").mkdir()
    return UploadStore(tmp_path / "uploads", UploadLimits(max_file_bytes=1 << 20, max_total_bytes=3 << 20,
                                                          max_entries=50, session_ttl_s=60))


def _snapshot(d: Path) -> dict[str, tuple[int, bytes | str]]:
    out: dict[str, tuple[int, bytes | str]] = {}
    for root, dirs, files in os.walk(d):
        for name in dirs + files:
            p = Path(root) / name
            st = p.lstat()
            body: bytes | str = os.readlink(p) if p.is_symlink() else (p.read_bytes() if p.is_file() else b"")
            out[str(p.relative_to(d))] = (st.st_mode, body)
    return out


def _sessions(store: UploadStore) -> list[str]:
    return sorted(os.listdir(store.root)) if store.root.exists() else []


def test_an_implicit_parent_may_be_sent_later_once(store: UploadStore, tmp_path: Path) -> None:
    result = store.receive([F("p/child", b"c"), D("p", 0o700)])
    store.claim(result.session, tmp_path / "w")
    assert stat.S_IMODE((tmp_path / "w/p").stat().st_mode) == 0o700
    with pytest.raises(UnsafeArchive):
        store.receive([F("q/child", b"c"), D("q"), D("q")])


def test_a_tree_arrives_with_its_modes_nested_dirs_and_symlinks(store: UploadStore, tmp_path: Path,
                                                               outside: Path) -> None:
    result = store.receive([
        D("data", 0o750), D("data/nested"), D("data/nested/deeper", 0o700),
        F("data/nested/deeper/run.sh", b"#!/bin/sh\necho hi\n", 0o755),
        F("data/secret.txt", b"s", 0o600),
        L("data/to-outside", str(outside / "sentinel")),
        L("data/relative", "../data/secret.txt"),
        F("top.txt", b"top", 0o640),
    ])
    assert (result.files, result.dirs, result.symlinks, result.bytes) == (3, 3, 2, 22)
    dest = tmp_path / "job" / "work"
    store.claim(result.session, dest)
    assert stat.S_IMODE((dest / "data").stat().st_mode) == 0o750
    assert stat.S_IMODE((dest / "data/nested").stat().st_mode) == 0o755
    assert stat.S_IMODE((dest / "data/nested/deeper").stat().st_mode) == 0o700
    assert stat.S_IMODE((dest / "data/nested/deeper/run.sh").stat().st_mode) == 0o755
    assert stat.S_IMODE((dest / "data/secret.txt").stat().st_mode) == 0o600
    assert stat.S_IMODE((dest / "top.txt").stat().st_mode) == 0o640
    assert (dest / "data/nested/deeper/run.sh").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert (dest / "data/to-outside").is_symlink()
    assert os.readlink(dest / "data/to-outside") == str(outside / "sentinel")
    assert os.readlink(dest / "data/relative") == "../data/secret.txt"
    assert stat.S_IMODE(dest.stat().st_mode) == 0o755
    assert _sessions(store) == []          # staging is gone once claimed
    assert (outside / "sentinel").read_text() == "untouched"


def test_setuid_and_setgid_bits_are_dropped(store: UploadStore, tmp_path: Path) -> None:
    result = store.receive([F("suid", b"x", 0o6755), D("sticky", 0o1777)])
    store.claim(result.session, tmp_path / "w")
    assert stat.S_IMODE((tmp_path / "w/suid").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "w/sticky").stat().st_mode) == 0o1777


def test_a_read_only_directory_still_receives_its_contents(store: UploadStore, tmp_path: Path) -> None:
    result = store.receive([D("ro", 0o555), F("ro/inside", b"data", 0o444)])
    store.claim(result.session, tmp_path / "w")
    assert (tmp_path / "w/ro/inside").read_bytes() == b"data"
    assert stat.S_IMODE((tmp_path / "w/ro").stat().st_mode) == 0o555


def test_missing_parents_are_created(store: UploadStore, tmp_path: Path) -> None:
    result = store.receive([F("a/b/c.txt", b"c")])
    store.claim(result.session, tmp_path / "w")
    assert (tmp_path / "w/a/b/c.txt").read_bytes() == b"c"


@pytest.mark.parametrize("name", [
    "../escape", "a/../../escape", "/abs/escape", "/", "./x", "a//b", "a/./b", "a/..", "..", "nul\x00byte",
])
def test_escaping_or_malformed_names_are_refused_and_nothing_is_left(store: UploadStore, outside: Path,
                                                                     name: str) -> None:
    before = _snapshot(outside.parent)
    with pytest.raises(UnsafeArchive):
        store.receive([F("ok.txt", b"fine"), F(name, b"evil")])
    assert _sessions(store) == []
    assert _snapshot(outside.parent) == before


def test_an_entry_through_a_symlink_is_refused(store: UploadStore, outside: Path) -> None:
    with pytest.raises(UnsafeArchive, match="is a symlink or not a directory"):
        store.receive([L("link", str(outside)), F("link/evil", b"evil")])
    assert sorted(os.listdir(outside)) == ["sentinel"]
    assert _sessions(store) == []


def test_a_directory_entry_through_a_symlink_is_refused(store: UploadStore, outside: Path) -> None:
    with pytest.raises(UnsafeArchive):
        store.receive([L("link", str(outside)), D("link/newdir")])
    assert sorted(os.listdir(outside)) == ["sentinel"]


def test_a_relative_symlink_cannot_be_a_parent_either(store: UploadStore, outside: Path) -> None:
    with pytest.raises(UnsafeArchive):
        store.receive([L("up", "../../../outside"), F("up/planted", b"evil")])
    assert sorted(os.listdir(outside)) == ["sentinel"]


def test_a_file_over_a_planted_symlink_is_refused_not_followed(store: UploadStore, outside: Path) -> None:
    with pytest.raises(UnsafeArchive, match="already exists"):
        store.receive([L("victim", str(outside / "sentinel")), F("victim", b"overwritten")])
    assert (outside / "sentinel").read_text() == "untouched"


def test_a_file_used_as_a_parent_is_refused(store: UploadStore) -> None:
    with pytest.raises(UnsafeArchive):
        store.receive([F("plain", b"x"), F("plain/child", b"y")])


def test_duplicate_names_are_refused(store: UploadStore) -> None:
    with pytest.raises(UnsafeArchive, match="already exists"):
        store.receive([F("same", b"1"), F("same", b"2")])
    with pytest.raises(UnsafeArchive, match="already exists"):
        store.receive([D("d"), D("d")])


def test_a_file_over_the_size_limit_is_refused_before_its_data(store: UploadStore) -> None:
    entry = UploadEntry("big", EntryKind.FILE, 0o644, (1 << 20) + 1)

    def stream() -> Iterator[Item]:
        yield entry, b""
        raise AssertionError("data of a refused file was read")

    with pytest.raises(LimitExceeded, match="'big' is 1048577 bytes; the limit per file is 1048576"):
        store.receive(stream())
    assert _sessions(store) == []


def test_the_total_size_limit_counts_every_file(store: UploadStore) -> None:
    chunk = b"x" * (1 << 20)
    with pytest.raises(LimitExceeded, match="total limit"):
        store.receive([F("a", chunk), F("b", chunk), F("c", chunk), F("d", b"one byte too many")])
    assert _sessions(store) == []


def test_the_entry_count_is_limited(store: UploadStore) -> None:
    with pytest.raises(LimitExceeded, match="more than 50 entries"):
        store.receive([F(f"f{i}", b"") for i in range(51)])


def test_data_must_match_the_declared_size(store: UploadStore) -> None:
    with pytest.raises(InvalidArgument, match="more data than its declared size"):
        store.receive([(UploadEntry("f", EntryKind.FILE, 0o644, 2), b"abc")])
    with pytest.raises(InvalidArgument, match="got 1 bytes, declared 2"):
        store.receive([(UploadEntry("f", EntryKind.FILE, 0o644, 2), b"a")])
    with pytest.raises(InvalidArgument, match="without a file entry"):
        store.receive([(None, b"orphan")])
    assert _sessions(store) == []


def test_an_interrupted_stream_leaves_nothing(store: UploadStore) -> None:
    def stream() -> Iterator[Item]:
        yield F("first", b"1")
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        store.receive(stream())
    assert _sessions(store) == []


def test_a_session_is_claimed_once(store: UploadStore, tmp_path: Path) -> None:
    result = store.receive([F("x", b"1")])
    store.claim(result.session, tmp_path / "one")
    with pytest.raises(NotFound):
        store.claim(result.session, tmp_path / "two")
    with pytest.raises(NotFound):
        store.claim("0" * 32, tmp_path / "three")
    with pytest.raises(InvalidArgument):
        store.claim("../../etc", tmp_path / "four")


def test_cleanup_removes_expired_and_unfinished_sessions_only(store: UploadStore) -> None:
    old = store.receive([F("x", b"1")]).session
    fresh = store.receive([F("y", b"2")]).session
    past = time.time() - 120
    os.utime(store.root / old / "ready", (past, past))
    unfinished = store.root / ("a" * 32)
    (unfinished / "tree").mkdir(parents=True)          # a stream a crashed daemon never finished
    active = store.root / ("b" * 32)
    (active / "tree").mkdir(parents=True)
    store._active.add("b" * 32)                         # a stream being received right now
    removed = store.cleanup()
    assert sorted(removed) == sorted([old, "a" * 32])
    assert _sessions(store) == sorted([fresh, "b" * 32])


def test_walk_local_round_trips_a_tree_and_keeps_symlinks(store: UploadStore, tmp_path: Path,
                                                          outside: Path) -> None:
    src = tmp_path / "src"
    (src / "sub" / "deep").mkdir(parents=True)
    (src / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(src / "run.sh", 0o750)
    (src / "sub" / "deep" / "data.bin").write_bytes(os.urandom(CHUNK_BYTES * 2 + 17))
    os.chmod(src / "sub" / "deep", 0o700)
    os.symlink(str(outside), src / "sub" / "escape")       # would lead outside if followed
    os.mkfifo(src / "fifo")
    single = tmp_path / "single.txt"
    single.write_text("alone")
    skipped: list[str] = []
    items = list(walk_local([src, single], on_skip=lambda p, why: skipped.append(p)))
    assert skipped == [str(src / "fifo")]
    assert all(len(data) <= CHUNK_BYTES for _, data in items)
    result = UploadStore(store.root).receive(items)      # default limits: the 2 MiB file fits
    dest = tmp_path / "work"
    store.claim(result.session, dest)
    os.unlink(src / "fifo")
    assert _snapshot(dest / "src") == _snapshot(src)
    assert (dest / "single.txt").read_text() == "alone"
    assert os.readlink(dest / "src/sub/escape") == str(outside)


def test_walk_local_streams_a_big_file_in_bounded_chunks(tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(b"z" * (3 * CHUNK_BYTES + 5))
    items = walk_local([big])
    entry, first = next(items)            # lazily: the header goes out with the first chunk only
    assert entry is not None and entry.size == 3 * CHUNK_BYTES + 5 and len(first) == CHUNK_BYTES
    rest = list(items)
    assert [e for e, _ in rest] == [None, None, None]
    assert [len(d) for _, d in rest] == [CHUNK_BYTES, CHUNK_BYTES, 5]


def test_a_symlink_named_on_the_command_line_is_sent_as_a_symlink(tmp_path: Path) -> None:
    os.symlink("/etc/passwd", tmp_path / "pw")
    assert list(walk_local([tmp_path / "pw"])) == [(UploadEntry("pw", EntryKind.SYMLINK, 0o777, 0, "/etc/passwd"),
                                                     b"")]


def test_walk_local_rejects_bad_paths_before_sending(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        list(walk_local([tmp_path / "missing"]))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "a").mkdir()
    with pytest.raises(InvalidArgument, match="already uses the name 'a'"):
        list(walk_local([tmp_path / "a", tmp_path / "b" / "a"]))
    with pytest.raises(InvalidArgument, match="root directory"):
        list(walk_local(["/"]))


def test_a_stream_without_its_end_marker_is_discarded(store: UploadStore) -> None:
    from capsa.errors import Canceled

    with pytest.raises(Canceled, match="end marker"):
        store.receive([F("complete-looking", b"data")], complete=lambda: False)
    assert _sessions(store) == []
