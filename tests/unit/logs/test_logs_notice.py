"""Notice records (stream 4): they stand for lost seqs, keep numbering gap-free, survive recovery."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

from capsa.logs import LogPersister, Stream, read_log
from capsa.logs._format import (
    NOTICE,
    encode_header,
    encode_notice,
    notice_last_seq,
    notice_lost_bytes,
    notice_text,
    scan_valid_prefix,
    segment_path,
)


def _record(seq: int, stream: int, payload: bytes) -> bytes:
    return encode_header(seq, 1000 + seq, stream, len(payload), zlib.crc32(payload)) + payload


def _write_log(log_dir: Path) -> None:
    """seq 1 stdout, a notice standing for seqs 2..5 (300 bytes lost), seq 6 stderr."""
    log_dir.mkdir()
    notice = encode_notice(5, 300, "log incomplete: 300 bytes not written (No space left on device)\n")
    data = _record(1, 1, b"one\n") + _record(2, NOTICE, notice) + _record(6, 2, b"six\n")
    segment_path(log_dir, 1).write_bytes(data)


def test_notice_payload_round_trips() -> None:
    payload = encode_notice(42, 1 << 33, "lost\n")
    assert notice_last_seq(payload, 7) == 42 and notice_lost_bytes(payload) == 1 << 33
    assert notice_text(payload) == b"lost\n"
    assert notice_last_seq(b"short", 7) == 7  # a payload too short to say stands for its own seq only


def test_readers_yield_the_notice_with_its_last_seq_whatever_the_filter(tmp_path: Path) -> None:
    log_dir = tmp_path / "log"
    _write_log(log_dir)
    got = [(c.seq, c.stream, c.data) for c in read_log(log_dir)]
    text = b"log incomplete: 300 bytes not written (No space left on device)\n"
    assert got == [(1, Stream.STDOUT, b"one\n"), (5, Stream.NOTICE, text), (6, Stream.STDERR, b"six\n")]
    assert [c.seq for c in read_log(log_dir, streams={Stream.STDOUT})] == [1, 5]
    assert [c.seq for c in read_log(log_dir, from_seq=3)] == [5, 6]  # from inside the gap: told about it
    assert [c.seq for c in read_log(log_dir, from_seq=6)] == [6]  # resuming after it: not repeated


def test_recovery_continues_numbering_after_a_notice(tmp_path: Path) -> None:
    log_dir = tmp_path / "log"
    _write_log(log_dir)
    fd = os.open(segment_path(log_dir, 1), os.O_RDONLY)
    try:
        valid, next_seq, ended = scan_valid_prefix(fd, 1)
    finally:
        os.close(fd)
    assert (valid, next_seq, ended) == (os.path.getsize(segment_path(log_dir, 1)), 7, False)
    with LogPersister(fsync_on_close=False) as p:  # a restarted supervisor reopens the log
        job = p.open("job", log_dir)
        assert job.append(Stream.STDOUT, b"seven\n") == 7
        job.finish()
        assert job.wait_persisted(5)
    assert [c.seq for c in read_log(log_dir)] == [1, 5, 6, 7]


def test_a_log_that_lost_nothing_reports_nothing(tmp_path: Path) -> None:
    with LogPersister(fsync_on_close=False) as p:
        job = p.open("job", tmp_path / "log")
        assert (tmp_path / "log" / ".reserve").stat().st_size == 64 << 10
        job.append(Stream.STDOUT, b"fine\n")
        assert job.pause_fd() is None
        assert job.finish_at_exit() == ""
        assert job.wait_persisted(5) and job.incomplete_bytes == 0
    assert not (tmp_path / "log" / ".reserve").exists()  # a finished log gives its reserve back
