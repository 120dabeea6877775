"""Values that cross the log package boundary: which stream, and one persisted chunk."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

__all__ = ["LogChunk", "Stream"]


class Stream(IntEnum):
    """The job output stream a chunk came from (the value is stored on disk)."""

    STDOUT = 1
    STDERR = 2
    NOTICE = 4
    """Not job output: a line from capsa itself, e.g. ``log incomplete: N bytes not written (...)``
    written where output was lost; its seq stands for the lost chunks' seqs (see ``capsa.logs``)."""


@dataclass(frozen=True, slots=True)
class LogChunk:
    """One appended chunk, exactly as the supervisor handed it over.

    ``seq`` numbers every chunk of a job from 1 without gaps (both streams share
    one sequence), so a reader resumes with ``from_seq=last.seq + 1``.
    ``timestamp_ns`` is the wall clock (``time.time_ns()``) at append time.
    """

    seq: int
    stream: Stream
    timestamp_ns: int
    data: bytes
