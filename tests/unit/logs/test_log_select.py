"""--since and --tail find their start seq from the files' end: exact lines, stream filters, across segments."""

from __future__ import annotations

from pathlib import Path

from capsa.logs import LogPersister, Stream, read_log
from capsa.logs.select import seq_since, seq_tail


def _write(log_dir: Path, chunks: list[tuple[Stream, bytes]], *, segment_bytes: int = 64 << 10) -> list[int]:
    """Write ``chunks`` and finish the log; returns their timestamps."""
    persister = LogPersister(segment_bytes=segment_bytes)
    try:
        log = persister.open("job", log_dir)
        for stream, data in chunks:
            log.append(stream, data)
        log.finish_at_exit()
    finally:
        persister.close()
    return [c.timestamp_ns for c in read_log(log_dir)]


def _text_from(log_dir: Path, start: tuple[int, int], stream: Stream | None = None) -> bytes:
    seq, skip = start
    out = b""
    for chunk in read_log(log_dir, from_seq=seq, streams=None if stream is None else {stream}):
        out += chunk.data[skip:] if chunk.seq == seq else chunk.data
    return out


def test_tail_counts_lines_not_chunks(tmp_path: Path) -> None:
    log_dir = tmp_path / "logs"
    _write(log_dir, [(Stream.STDOUT, b"a\nb\nc"), (Stream.STDOUT, b"d\ne\n"), (Stream.STDOUT, b"f\ng\n")])
    assert _text_from(log_dir, seq_tail(log_dir, 1)) == b"g\n"
    assert _text_from(log_dir, seq_tail(log_dir, 3)) == b"e\nf\ng\n"
    assert _text_from(log_dir, seq_tail(log_dir, 4)) == b"cd\ne\nf\ng\n"   # "c" and "d" are one line
    assert _text_from(log_dir, seq_tail(log_dir, 6)) == b"a\nb\ncd\ne\nf\ng\n"
    assert seq_tail(log_dir, 100) == (1, 0)


def test_tail_of_one_stream_skips_the_other(tmp_path: Path) -> None:
    log_dir = tmp_path / "logs"
    _write(log_dir, [(Stream.STDOUT, b"o1\n"), (Stream.STDERR, b"e1\n"), (Stream.STDOUT, b"o2\n"),
                     (Stream.STDERR, b"e2\n")])
    start = seq_tail(log_dir, 1, frozenset({int(Stream.STDOUT)}))
    assert _text_from(log_dir, start, Stream.STDOUT) == b"o2\n"


def test_tail_reads_back_across_segments(tmp_path: Path) -> None:
    log_dir = tmp_path / "logs"
    lines = [(Stream.STDOUT, f"line{i:05d}\n".encode() * 100) for i in range(300)]   # many small segments
    _write(log_dir, lines, segment_bytes=64 << 10)
    assert len(list((log_dir).glob("*.seg"))) > 3
    got = _text_from(log_dir, seq_tail(log_dir, 250))
    assert got.splitlines() == [f"line{i:05d}".encode() for i in range(297, 300) for _ in range(100)][-250:]


def test_since_finds_the_first_chunk_at_or_after_a_time(tmp_path: Path) -> None:
    log_dir = tmp_path / "logs"
    stamps = _write(log_dir, [(Stream.STDOUT, f"{i}\n".encode() * 2000) for i in range(200)],
                    segment_bytes=64 << 10)
    for i in (0, 1, 57, 199):
        assert seq_since(log_dir, stamps[i]) <= i + 1
        assert all(c.timestamp_ns >= stamps[i] for c in read_log(log_dir, from_seq=seq_since(log_dir, stamps[i])))
    assert seq_since(log_dir, stamps[-1] + 1) == 201
    assert seq_since(log_dir, 0) == 1
    assert seq_since(tmp_path / "missing", 5) == 1
