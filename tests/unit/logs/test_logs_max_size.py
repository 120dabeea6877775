"""--log-max-size: whole oldest segments are dropped, the newest bytes stay, and readers are told how much went."""

from __future__ import annotations

from pathlib import Path

from capsa.logs import LogPersister, Stream, read_log
from capsa.logs._format import list_segments, read_dropped


def test_a_limited_log_keeps_its_newest_bytes_and_says_what_was_dropped(tmp_path: Path) -> None:
    limit = 64 * 1024
    with LogPersister(segment_bytes=1 << 20, fsync_on_close=False) as p:
        job = p.open("j", tmp_path, max_bytes=limit)
        for i in range(500):   # 500 lines of ~1 KiB: about 8x the limit
            job.append(Stream.STDOUT, f"{i:05d} ".encode() + b"x" * 1018 + b"\n")
        job.finish()
        assert job.wait_persisted(10)
        dropped = job.dropped_bytes
    on_disk = sum((tmp_path / f"{first:020d}.seg").stat().st_size for first in list_segments(tmp_path))
    assert on_disk <= limit + 4096 and dropped > 0 and read_dropped(tmp_path) == dropped
    chunks = list(read_log(tmp_path))
    assert chunks[0].stream == Stream.NOTICE and f"{dropped} bytes".encode() in chunks[0].data
    data = [c for c in chunks if c.stream == Stream.STDOUT]
    assert data[-1].data.startswith(b"00499 ")                        # the newest output is all there
    assert [c.seq for c in data] == list(range(data[0].seq, 501))      # contiguous up to the end
    assert chunks[0].seq == data[0].seq - 1
    resumed = list(read_log(tmp_path, from_seq=data[0].seq))           # a reader resuming after the notice
    assert resumed[0].seq == data[0].seq and resumed[0].stream == Stream.STDOUT


def test_an_unlimited_log_drops_nothing(tmp_path: Path) -> None:
    with LogPersister(segment_bytes=4096, fsync_on_close=False) as p:
        job = p.open("j", tmp_path)
        for _ in range(50):
            job.append(Stream.STDOUT, b"y" * 1000)
        job.finish()
        assert job.wait_persisted(10)
        assert job.dropped_bytes == 0
    assert sum(len(c.data) for c in read_log(tmp_path)) == 50_000 and read_dropped(tmp_path) == 0


def test_a_chunk_larger_than_a_segment_is_split_so_its_tail_is_kept(tmp_path: Path) -> None:
    limit = 64 * 1024
    data = b"".join(f"{i:07d}\n".encode() for i in range(40_000))   # 320 KB in one read of the pipe
    with LogPersister(segment_bytes=1 << 20, fsync_on_close=False) as p:
        job = p.open("j", tmp_path, max_bytes=limit)
        job.append(Stream.STDOUT, data)
        job.finish()
        assert job.wait_persisted(10)
    kept = b"".join(c.data for c in read_log(tmp_path) if c.stream == Stream.STDOUT)
    assert limit * 3 // 4 - 4096 <= len(kept) <= limit and data.endswith(kept)
