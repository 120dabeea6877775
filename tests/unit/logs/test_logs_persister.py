"""LogPersister / JobLog: numbering, persistence, rotation, recovery, errors."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from capsa.errors import AlreadyExists, ChecksumMismatch, Conflict, FailedPrecondition, InvalidArgument
from capsa.logs import RECORD_HEADER_SIZE, LogChunk, LogPersister, Stream, is_finished, read_log
from capsa.logs._format import list_segments, segment_path


def payload(seq: int, size: int = 1000) -> bytes:
    """Content that names its seq, so any reordering or mix-up shows."""
    return (f"<{seq}>".encode() * (size // 3 + 1))[:size]


def read_all(log_dir: Path, **kw: object) -> list[LogChunk]:
    return list(read_log(log_dir, **kw))  # type: ignore[arg-type]


def test_seqs_start_at_one_and_are_gap_free_across_streams(persister: LogPersister, tmp_path: Path) -> None:
    job = persister.open("j", tmp_path / "j")
    seqs = [job.append(Stream.STDOUT if i % 3 else Stream.STDERR, payload(i + 1, 10)) for i in range(20)]
    assert seqs == list(range(1, 21))
    assert job.last_seq == 20
    assert job.wait_persisted(5)
    assert job.persisted_seq == 20
    chunks = read_all(tmp_path / "j")
    assert [c.seq for c in chunks] == seqs
    assert [c.stream for c in chunks] == [Stream.STDOUT if i % 3 else Stream.STDERR for i in range(20)]
    assert all(c.data == payload(c.seq, 10) for c in chunks)


def test_concurrent_appenders_get_unique_seqs_in_file_order(persister: LogPersister, tmp_path: Path) -> None:
    job = persister.open("j", tmp_path / "j")
    got: list[list[int]] = [[] for _ in range(4)]

    def worker(k: int) -> None:
        for _ in range(500):
            seq = job.append(Stream.STDOUT, b"")
            got[k].append(seq)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(s for g in got for s in g) == list(range(1, 2001))
    assert all(g == sorted(g) for g in got)
    assert job.wait_persisted(5)
    assert [c.seq for c in read_all(tmp_path / "j")] == list(range(1, 2001))


def test_segments_rotate_at_segment_bytes_and_oversize_records_stand_alone(tmp_path: Path) -> None:
    # 4 records of 1000 + 36 bytes fit into 4096 bytes? 4 * 1036 = 4144 > 4096, so 3 per segment.
    with LogPersister(segment_bytes=4096, fsync_on_close=False) as p:
        job = p.open("j", tmp_path)
        for seq in range(1, 8):
            job.append(Stream.STDOUT, payload(seq))
        job.append(Stream.STDERR, payload(8, 10_000))  # larger than a segment
        job.append(Stream.STDOUT, payload(9))
        job.finish()
        assert job.wait_persisted(5)
    assert list_segments(tmp_path) == [1, 4, 7, 8, 9, 10]
    assert os.path.getsize(segment_path(tmp_path, 1)) == 3 * (RECORD_HEADER_SIZE + 1000)
    assert os.path.getsize(segment_path(tmp_path, 8)) == RECORD_HEADER_SIZE + 10_000
    assert os.path.getsize(segment_path(tmp_path, 10)) == RECORD_HEADER_SIZE  # the end record alone
    for start in range(1, 11):
        chunks = read_all(tmp_path, from_seq=start)
        assert [c.seq for c in chunks] == list(range(start, 10))
        assert all(c.data == payload(c.seq, len(c.data)) for c in chunks)


def test_finish_is_idempotent_and_refuses_more_output(persister: LogPersister, tmp_path: Path) -> None:
    job = persister.open("j", tmp_path / "j")
    job.append(Stream.STDOUT, b"x")
    job.finish()
    job.finish()
    with pytest.raises(FailedPrecondition):
        job.append(Stream.STDOUT, b"late")
    assert job.wait_persisted(5)
    assert job.finished and job.persisted_seq == 1
    assert is_finished(tmp_path / "j")
    with pytest.raises(FailedPrecondition, match="finished"):
        persister.open("j", tmp_path / "j")


def test_empty_log_finishes_with_only_an_end_record(persister: LogPersister, tmp_path: Path) -> None:
    job = persister.open("j", tmp_path / "j")
    job.finish()
    assert job.wait_persisted(5)
    assert list_segments(tmp_path / "j") == [1]
    assert is_finished(tmp_path / "j")
    assert read_all(tmp_path / "j", follow=True) == []


def test_append_validates_stream_and_size_and_copies_mutable_buffers(
    persister: LogPersister, tmp_path: Path
) -> None:
    job = persister.open("j", tmp_path / "j")
    with pytest.raises(InvalidArgument):
        job.append(0, b"x")  # type: ignore[arg-type]
    buf = bytearray(b"original")
    job.append(Stream.STDERR, buf)  # type: ignore[arg-type]
    buf[:] = b"mutated!"
    job.append(2, memoryview(b"view"))  # type: ignore[arg-type]
    assert job.wait_persisted(5)
    assert [(c.stream, c.data) for c in read_all(tmp_path / "j")] == [
        (Stream.STDERR, b"original"),
        (Stream.STDERR, b"view"),
    ]


def test_same_job_or_dir_cannot_be_opened_twice(persister: LogPersister, tmp_path: Path) -> None:
    persister.open("j", tmp_path / "a")
    with pytest.raises(AlreadyExists):
        persister.open("j", tmp_path / "b")
    with pytest.raises(AlreadyExists):
        persister.open("other", tmp_path / "a")
    with LogPersister() as second, pytest.raises(Conflict):
        second.open("j", tmp_path / "a")  # flock held by the first writer


def test_close_releases_unfinished_logs_and_reopen_continues_numbering(tmp_path: Path) -> None:
    with LogPersister(segment_bytes=4096) as p:
        job = p.open("j", tmp_path)
        for seq in range(1, 6):
            job.append(Stream.STDOUT, payload(seq))
    assert job.persisted_seq == 5 and job.backlog_bytes == 0
    with pytest.raises(FailedPrecondition):
        job.append(Stream.STDOUT, b"after close")
    assert not is_finished(tmp_path)
    with LogPersister(segment_bytes=4096) as p:
        job = p.open("j", tmp_path)
        assert job.first_seq == 6
        assert job.append(Stream.STDOUT, payload(6)) == 6
        job.finish()
    assert [c.seq for c in read_all(tmp_path, follow=True)] == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("cut", ["mid_payload", "mid_header", "zeros", "torn_end_record"])
def test_reopen_truncates_torn_tail_and_continues_numbering(tmp_path: Path, cut: str) -> None:
    with LogPersister(segment_bytes=1 << 20, fsync_on_close=False) as p:
        job = p.open("j", tmp_path)
        for seq in range(1, 11):
            job.append(Stream.STDOUT, payload(seq))
    last = segment_path(tmp_path, 1)
    size = os.path.getsize(last)
    survivors = 9
    if cut == "mid_payload":
        os.truncate(last, size - 500)
    elif cut == "mid_header":
        os.truncate(last, size - 1000 - 20)
    elif cut == "zeros":  # size reached disk, data did not (power loss)
        with open(last, "ab") as f:
            f.write(bytes(300))
        survivors = 10
    else:
        with LogPersister() as p:
            p.open("j", tmp_path).finish()
        end_seg = segment_path(tmp_path, 11)
        os.truncate(end_seg, 20)
        survivors = 10
        assert not is_finished(tmp_path)
    # History stops before the torn bytes; it never yields a partial record.
    assert [c.seq for c in read_all(tmp_path)] == list(range(1, survivors + 1))
    with LogPersister(segment_bytes=1 << 20, fsync_on_close=False) as p:
        job = p.open("j", tmp_path)
        assert job.first_seq == survivors + 1
        assert job.append(Stream.STDERR, b"after restart") == survivors + 1
        job.finish()
    chunks = read_all(tmp_path, follow=True)
    assert [c.seq for c in chunks] == list(range(1, survivors + 2))
    assert all(c.data == payload(c.seq) for c in chunks[:-1])
    assert chunks[-1].data == b"after restart"


def test_corrupt_record_in_history_raises_instead_of_skipping(tmp_path: Path) -> None:
    with LogPersister(fsync_on_close=False) as p:
        job = p.open("j", tmp_path)
        for seq in range(1, 4):
            job.append(Stream.STDOUT, payload(seq))
        job.finish()
    seg = segment_path(tmp_path, 1)
    with open(seg, "r+b") as f:
        f.seek(RECORD_HEADER_SIZE + 1000 + RECORD_HEADER_SIZE + 10)  # payload of seq 2
        f.write(b"!")
    reader = read_log(tmp_path, poll_interval=0.01)
    assert next(reader).seq == 1
    with pytest.raises(ChecksumMismatch, match="seq 2"):
        next(reader)


def test_read_log_filters_streams_and_validates_arguments(persister: LogPersister, tmp_path: Path) -> None:
    job = persister.open("j", tmp_path / "j")
    for seq in range(1, 7):
        job.append(Stream.STDERR if seq % 2 else Stream.STDOUT, payload(seq, 5))
    job.finish()
    assert job.wait_persisted(5)
    assert [c.seq for c in read_all(tmp_path / "j", streams={Stream.STDERR})] == [1, 3, 5]
    assert [c.seq for c in read_all(tmp_path / "j", streams={Stream.STDOUT}, from_seq=3)] == [4, 6]
    assert read_all(tmp_path / "j", from_seq=7) == []
    assert read_all(tmp_path / "j", from_seq=70) == []
    with pytest.raises(InvalidArgument):
        read_log(tmp_path / "j", from_seq=0)
    with pytest.raises(InvalidArgument):
        read_log(tmp_path / "j", poll_interval=0)


def test_follow_on_missing_dir_waits_and_stop_ends_it(tmp_path: Path) -> None:
    stop = threading.Event()
    out: list[LogChunk] = []
    t = threading.Thread(target=lambda: out.extend(read_log(tmp_path / "later", follow=True, stop=stop)))
    t.start()
    t.join(0.2)
    assert t.is_alive()
    stop.set()
    t.join(2)
    assert not t.is_alive() and out == []


def test_backlog_drains_to_zero(persister: LogPersister, tmp_path: Path) -> None:
    jobs = [persister.open(f"j{i}", tmp_path / f"j{i}") for i in range(3)]
    for job in jobs:
        for _ in range(10):
            job.append(Stream.STDOUT, bytes(1000))
    assert 0 <= persister.backlog_bytes <= 30_000
    assert all(0 <= j.backlog_bytes <= 10_000 for j in jobs)
    for job in jobs:
        assert job.wait_persisted(5)
        assert job.backlog_bytes == 0
    assert persister.backlog_bytes == 0


def test_persister_rejects_tiny_segments_and_use_after_close(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument):
        LogPersister(segment_bytes=100)
    p = LogPersister()
    p.close()
    with pytest.raises(FailedPrecondition):
        p.open("j", tmp_path)
