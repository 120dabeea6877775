"""Reopen a finished log for the next run of a restarted job (docs/adr/0015-restart-policies-and-retention.md).

A finished log ends with an end record alone in the last segment. A restarted job appends to the
same log, so its end segment is removed and a notice record marking the restart takes its seq:
numbering continues without a gap and readers of history see one log with a marker per restart.
Only the daemon calls this, between runs, when no writer holds the log.
"""

from __future__ import annotations

import os
import time
from collections import deque
from pathlib import Path

from ._format import END, HEADER_SIZE, NOTICE, decode_header, encode_notice, list_segments, segment_path
from ._segments import SegmentWriter

__all__ = ["mark_restart"]


def mark_restart(log_dir: Path, text: str, *, segment_bytes: int = 64 << 20) -> int:
    """Drop the end record, append a notice with ``text``; returns the notice's seq."""
    firsts = list_segments(log_dir)
    if firsts:
        last = segment_path(log_dir, firsts[-1])
        with open(last, "rb") as f:
            head = f.read(HEADER_SIZE)
        decoded = decode_header(head, 0) if len(head) == HEADER_SIZE else None
        if decoded is not None and decoded[4] == END:
            os.unlink(last)   # the end record is alone in its segment: the log reopens before it
    writer = SegmentWriter(log_dir, segment_bytes, fsync_on_close=False)
    seq = writer.open()
    try:
        payload = encode_notice(seq, 0, text if text.endswith("\n") else text + "\n")
        _, _, error = writer.write_some(deque([(None, seq, NOTICE, time.time_ns(), payload)]), 1 << 20)
        if error is not None:
            raise error
    finally:
        writer.release()
    return seq
