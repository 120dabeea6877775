"""The on-disk record and segment layout, checked byte by byte against the documented format."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

from capsa.logs import RECORD_HEADER_SIZE, LogPersister, Stream, is_finished, log_size, read_log
from capsa.logs._format import (
    END,
    decode_header,
    encode_header,
    list_segments,
    scan_valid_prefix,
    segment_name,
)


def test_header_layout_matches_the_documented_format() -> None:
    hdr = encode_header(7, 1_700_000_000_123_456_789, 2, 5, zlib.crc32(b"hello"))
    assert len(hdr) == RECORD_HEADER_SIZE == 36
    assert hdr[:4] == b"CLOG"
    assert struct.unpack("<I", hdr[4:8])[0] == zlib.crc32(hdr[8:36])
    assert struct.unpack("<QqIIBBH", hdr[8:36]) == (
        7,
        1_700_000_000_123_456_789,
        5,
        zlib.crc32(b"hello"),
        2,
        1,
        0,
    )


def test_decode_header_round_trips_and_rejects_damage() -> None:
    hdr = encode_header(42, 99, 1, 10, 1234)
    assert decode_header(hdr, 0) == (42, 99, 10, 1234, 1)
    assert decode_header(b"xx" + hdr, 2) == (42, 99, 10, 1234, 1)
    for i in range(len(hdr)):
        damaged = bytearray(hdr)
        damaged[i] ^= 0x40
        assert decode_header(bytes(damaged), 0) is None, f"flipped bit in byte {i} went unnoticed"


def test_end_record_must_be_empty() -> None:
    assert decode_header(encode_header(3, 0, END, 0, 0), 0) == (3, 0, 0, 0, END)
    assert decode_header(encode_header(3, 0, END, 1, 0), 0) is None
    assert decode_header(encode_header(3, 0, 3, 0, 0), 0) is None  # unknown stream


def test_segment_names_sort_by_first_seq(tmp_path: Path) -> None:
    assert segment_name(1) == "00000000000000000001.seg"
    for first in (1, 10, 9, 100):
        (tmp_path / segment_name(first)).touch()
    (tmp_path / "notes.txt").touch()
    (tmp_path / ".writer.lock").touch()
    assert list_segments(tmp_path) == [1, 9, 10, 100]
    assert list_segments(tmp_path / "missing") == []


def test_persisted_bytes_are_headers_plus_exact_payloads(tmp_path: Path) -> None:
    with LogPersister(segment_bytes=1 << 20, fsync_on_close=False) as p:
        job = p.open("j", tmp_path)
        job.append(Stream.STDOUT, b"out-1")
        job.append(Stream.STDERR, b"")
        job.append(Stream.STDERR, b"err\x00\xff")
        job.finish()
        assert job.wait_persisted(5)
    raw = (tmp_path / segment_name(1)).read_bytes()
    assert len(raw) == 3 * RECORD_HEADER_SIZE + 5 + 0 + 5
    assert decode_header(raw, 0)[:1] == (1,)
    assert raw[36:41] == b"out-1"
    assert decode_header(raw, 41)[0] == 2 and decode_header(raw, 41)[2] == 0
    assert raw[-5:] == b"err\x00\xff"
    end = (tmp_path / segment_name(4)).read_bytes()
    assert (
        len(end) == RECORD_HEADER_SIZE and decode_header(end, 0)[0] == 4 and decode_header(end, 0)[4] == END
    )
    assert log_size(tmp_path) == len(raw) + len(end)
    assert is_finished(tmp_path)


def test_scan_valid_prefix_stops_at_first_bad_record(tmp_path: Path) -> None:
    path = tmp_path / segment_name(5)
    recs = [encode_header(5 + i, 0, 1, 3, zlib.crc32(p)) + p for i, p in enumerate([b"aaa", b"bbb", b"ccc"])]
    path.write_bytes(b"".join(recs))
    fd = os.open(path, os.O_RDWR)
    try:
        assert scan_valid_prefix(fd, 5) == (3 * 39, 8, False)
        os.pwrite(fd, b"X", 39 + 36 + 1)  # corrupt payload of seq 6
        assert scan_valid_prefix(fd, 5) == (39, 6, False)
        assert scan_valid_prefix(fd, 4) == (0, 4, False)  # first record's seq does not match the name
    finally:
        os.close(fd)


def test_is_finished_ignores_end_lookalikes_in_job_output(tmp_path: Path) -> None:
    fake_end = encode_header(3, 0, END, 0, zlib.crc32(b""))
    with LogPersister(segment_bytes=1 << 20, fsync_on_close=False) as p:
        job = p.open("j", tmp_path)
        job.append(Stream.STDOUT, b"before")
        job.append(Stream.STDOUT, fake_end)  # seq 2; a forged end record for seq 3 inside the payload
        assert job.wait_persisted(5)
        assert not is_finished(tmp_path)
        assert [c.data for c in read_log(tmp_path)] == [b"before", fake_end]
        job.finish()
        assert job.wait_persisted(5)
    assert is_finished(tmp_path)


def test_is_finished_and_log_size_on_missing_dir(tmp_path: Path) -> None:
    assert not is_finished(tmp_path / "nope")
    assert log_size(tmp_path / "nope") == 0
    assert list(read_log(tmp_path / "nope")) == []
