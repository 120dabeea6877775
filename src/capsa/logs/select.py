"""Where a reader starts: the seq of ``--since`` and of ``--tail N``, found from the files' end.

A 1 GB log's tail must not cost a 1 GB read. Segments are named after their first seq and every
record header carries its seq and timestamp, so:

* :func:`seq_since` bisects the segments on their first record's timestamp (appends are in time
  order) and walks the headers of one or two segments only;
* :func:`seq_tail` walks segments from the last one backwards, reading payloads only until it has
  counted N line breaks.

Both return a seq to hand to :func:`~capsa.logs.read_log` (or ``follow_log``) as ``from_seq``, so a
following reader continues by seq from exactly there: no gap, no duplicate between history and live.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from ._format import END, HEADER_SIZE, NOTICE, decode_header, list_segments, segment_path

__all__ = ["seq_since", "seq_tail"]

_BLOCK = 1 << 20
Header = tuple[int, int, int, int, int]   # seq, timestamp_ns, stream, payload offset, length


def _headers(path: Path) -> Iterator[Header]:
    """The whole records of one segment, in order (a torn or unwritten tail ends the walk)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        off = 0
        while True:
            head = os.pread(fd, HEADER_SIZE, off)
            if len(head) < HEADER_SIZE:
                return
            hdr = decode_header(head, 0)
            if hdr is None:
                return
            seq, ts, length, _crc, stream = hdr
            if stream == END:
                return
            yield seq, ts, stream, off + HEADER_SIZE, length
            off += HEADER_SIZE + length
    finally:
        os.close(fd)


def _first_timestamp(path: Path) -> int | None:
    for _seq, ts, *_ in _headers(path):
        return ts
    return None


def seq_since(log_dir: Path, since_ns: int) -> int:
    """The first seq written at or after ``since_ns``; past the last record when none was (1 if empty)."""
    firsts = list_segments(log_dir)
    if not firsts:
        return 1
    lo, hi = 0, len(firsts) - 1   # the last segment whose first record is before since_ns
    while lo < hi:
        mid = (lo + hi + 1) // 2
        ts = _first_timestamp(segment_path(log_dir, firsts[mid]))
        if ts is not None and ts < since_ns:
            lo = mid
        else:
            hi = mid - 1
    after = firsts[lo]
    for first in firsts[lo:]:
        for seq, ts, *_rest in _headers(segment_path(log_dir, first)):
            if ts >= since_ns:
                return seq
            after = seq + 1
    return after


def seq_tail(log_dir: Path, lines: int, streams: frozenset[int] | None = None) -> tuple[int, int]:
    """``(from_seq, skip)``: the last ``lines`` lines of output start ``skip`` bytes into chunk ``from_seq``.

    Only chunks of ``streams`` (None: both) count; a last line without a line break counts as a line.
    A log with fewer lines gives ``(1, 0)``: all of it.
    """
    if lines <= 0:
        raise ValueError("lines must be positive")
    need = lines
    at_end = True
    for first in reversed(list_segments(log_dir)):
        path = segment_path(log_dir, first)
        records = [h for h in _headers(path) if h[2] != NOTICE and (streams is None or h[2] in streams)]
        if not records:
            continue
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            for seq, _ts, _stream, off, length in reversed(records):
                data = os.pread(fd, length, off)
                pos = len(data)
                if at_end and data.endswith(b"\n"):
                    pos -= 1   # the log's final line break ends the last line, it starts none
                at_end = at_end and not data
                while True:
                    i = data.rfind(b"\n", 0, pos)
                    if i < 0:
                        break
                    need -= 1
                    if need == 0:
                        return seq, i + 1
                    pos = i
        finally:
            os.close(fd)
    return 1, 0
