"""The read side: history and live follow straight from the segment files, from any process.

Readers keep no state on disk and take no lock; a restarted reader resumes with
``from_seq=last_seen + 1``. They trust only whole records whose header CRC,
sequence number and payload CRC check out, so a record the writer is still
writing is waited for (follow) or not yet part of history, never yielded half.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from capsa.errors import ChecksumMismatch, InvalidArgument

from ._format import (
    END,
    HEADER_SIZE,
    NOTICE,
    crc32,
    decode_header,
    is_unwritten,
    list_segments,
    notice_last_seq,
    notice_text,
    read_dropped,
    segment_path,
)
from .model import LogChunk, Stream

__all__ = ["is_finished", "log_size", "read_log"]

_BLOCK = 4 << 20
_STREAMS = (None, Stream.STDOUT, Stream.STDERR, None, Stream.NOTICE)


def read_log(
    log_dir: Path,
    *,
    from_seq: int = 1,
    follow: bool = False,
    streams: set[Stream] | None = None,
    poll_interval: float = 0.05,
    stop: threading.Event | None = None,
) -> Iterator[LogChunk]:
    """Yield the chunks of the log in ``log_dir`` with ``seq >= from_seq``, in order, each exactly once.

    Without ``follow`` it yields what is on disk now and returns (nothing if
    the directory does not exist). With ``follow`` it then waits for new
    chunks, polling every ``poll_interval`` seconds, and returns once the
    end-of-log record is read, or when ``stop`` is set; a directory that does
    not exist yet is waited for. ``streams`` filters (``None`` = both); chunk
    seqs of one stream then have gaps where the other stream's chunks were.

    Raises ``ChecksumMismatch`` when bytes on disk are corrupt (they stay
    corrupt across a re-read after ``poll_interval``), rather than skipping them.
    """
    if isinstance(from_seq, bool) or not isinstance(from_seq, int) or from_seq < 1:
        raise InvalidArgument(f"from_seq must be an integer >= 1, got {from_seq!r}")
    if not poll_interval > 0:
        raise InvalidArgument(f"poll_interval must be > 0, got {poll_interval!r}")
    wanted = None if streams is None else frozenset(int(Stream(s)) for s in streams)
    return _read(Path(log_dir), from_seq, follow, wanted, poll_interval, stop)


def _read(
    log_dir: Path,
    from_seq: int,
    follow: bool,
    wanted: frozenset[int] | None,
    poll_interval: float,
    stop: threading.Event | None,
) -> Iterator[LogChunk]:
    def pause() -> bool:
        """Sleep one poll interval; False if ``stop`` was set meanwhile."""
        if stop is None:
            time.sleep(poll_interval)
            return True
        return not stop.wait(poll_interval)

    while True:
        firsts = list_segments(log_dir)
        if firsts:
            break
        if not follow or not pause():
            return
    while True:
        starts = [f for f in firsts if f <= from_seq]
        first = starts[-1] if starts else firsts[0]
        try:
            fd = os.open(segment_path(log_dir, first), os.O_RDONLY | os.O_CLOEXEC)
            break
        except FileNotFoundError:   # dropped by a size limit (--log-max-size) just now: look again
            firsts = list_segments(log_dir)
            if not firsts:
                return
    if first > from_seq and (dropped := read_dropped(log_dir)):
        # The oldest segments were dropped to keep the log within its size limit: say so where they stood.
        text = f"log truncated: {dropped} bytes of older output dropped (--log-max-size)\n".encode()
        yield LogChunk(first - 1, Stream.NOTICE, time.time_ns(), text)
    try:
        off = 0
        expected = first
        next_seen = False  # the segment starting at `expected` existed before the last read
        suspect = -1  # offset of bytes that failed validation once (a second failure is corruption)
        pread = os.pread
        while True:
            if stop is not None and stop.is_set():
                return
            buf = pread(fd, _BLOCK, off)
            n = len(buf)
            pos = 0
            bad = False
            while n - pos >= HEADER_SIZE:
                hdr = decode_header(buf, pos)
                if hdr is None or hdr[0] != expected:
                    bad = not is_unwritten(buf, pos)
                    break
                seq, ts, length, pcrc, stream = hdr
                if stream == END:
                    return
                body = pos + HEADER_SIZE
                end = body + length
                if stream == NOTICE:
                    got = _notice(fd, buf, off, body, end, length, pcrc, from_seq)
                    if got is None:
                        bad = end <= n or os.fstat(fd).st_size >= off + end
                        break
                    last, chunk = got
                    if chunk is not None:
                        yield LogChunk(last, Stream.NOTICE, ts, chunk)
                    pos = end
                    expected = last + 1
                    if end > n:
                        break
                    continue
                if end <= n:
                    if seq >= from_seq and (wanted is None or stream in wanted):
                        data = buf[body:end]
                        if crc32(data) != pcrc:
                            bad = True
                            break
                        yield LogChunk(seq, _STREAMS[stream], ts, data)  # type: ignore[arg-type]
                else:  # the record runs past this block: read its payload on its own
                    if seq >= from_seq and (wanted is None or stream in wanted):
                        data = pread(fd, length, off + body)
                        if len(data) < length:
                            break
                        if crc32(data) != pcrc:
                            bad = True
                            break
                        yield LogChunk(seq, _STREAMS[stream], ts, data)  # type: ignore[arg-type]
                    elif os.fstat(fd).st_size < off + end:
                        break
                pos = end
                expected = seq + 1
                if end > n:
                    break
            if pos:
                off += pos
                next_seen = False
                suspect = -1
                continue
            name = segment_path(log_dir, first).name
            if bad:
                if suspect == off:
                    raise ChecksumMismatch(
                        f"log {log_dir}: corrupt record in {name} at offset {off} (expected seq {expected})"
                    )
                suspect = off  # maybe a restarted writer truncating under us: look again once
                if not pause():
                    return
                continue
            if next_seen:
                if n:
                    raise ChecksumMismatch(
                        f"log {log_dir}: {name} ends in {n} bytes that are no whole record, "
                        f"but the next segment starts at seq {expected}"
                    )
                os.close(fd)
                fd = -1
                fd = os.open(segment_path(log_dir, expected), os.O_RDONLY | os.O_CLOEXEC)
                first, off, next_seen = expected, 0, False
                continue
            if expected > first and os.path.exists(segment_path(log_dir, expected)):
                # The writer finishes a segment before creating the next: one more read of this one
                # after seeing the next exist is guaranteed to see all of it.
                next_seen = True
                continue
            if not follow or not pause():
                return
    finally:
        if fd >= 0:
            os.close(fd)


def _notice(
    fd: int, buf: bytes, off: int, body: int, end: int, length: int, pcrc: int, from_seq: int
) -> tuple[int, bytes | None] | None:
    """A notice record's last seq and its text (None when all it stands for is before ``from_seq``).

    Returns None when the payload is not (yet) whole or fails its CRC. A notice is
    yielded whatever ``streams`` asks for: it tells about the output itself. It is
    yielded with its *last* seq, so resuming at ``seq + 1`` never repeats it.
    """
    payload = buf[body:end] if end <= len(buf) else os.pread(fd, length, off + body)
    if len(payload) < length or crc32(payload) != pcrc:
        return None
    last = notice_last_seq(payload, 0)
    return last, (notice_text(payload) if last >= from_seq else None)


def is_finished(log_dir: Path) -> bool:
    """True once the end-of-log record is on disk (the job ended and all its output is persisted)."""
    firsts = list_segments(Path(log_dir))
    if not firsts:
        return False
    try:
        fd = os.open(segment_path(Path(log_dir), firsts[-1]), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        buf = os.pread(fd, HEADER_SIZE, 0)
    finally:
        os.close(fd)
    if len(buf) < HEADER_SIZE:
        return False
    hdr = decode_header(buf, 0)
    return hdr is not None and hdr[4] == END and hdr[0] == firsts[-1]


def log_size(log_dir: Path) -> int:
    """Bytes on disk of all segment files (record headers included); 0 if there is no log."""
    total = 0
    for first in list_segments(Path(log_dir)):
        try:
            total += os.stat(segment_path(Path(log_dir), first)).st_size
        except FileNotFoundError:
            continue
    return total
