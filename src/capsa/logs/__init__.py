"""Lossless, asynchronous job logs (joblet ADR-005): capture, sequence numbers, segment files, readers.

Who does what
-------------
* The supervisor owns one :class:`LogPersister` (one writer thread for all
  jobs, plus one thread for the fsyncs at job end) and one :class:`JobLog`
  per running job. Its selector thread calls
  ``job_log.append(Stream.STDOUT, os.read(fd, 1 << 20))``: that numbers the
  chunk and queues it, and never waits for the disk; ``backlog_bytes`` shows
  how far the disk is behind. Then ``job_log.pause_fd()``: past the backlog
  limits it returns an eventfd and the supervisor stops reading that job's
  pipes until it fires (back-pressure). When the job has exited and its pipes
  hit EOF: ``job_log.finish_at_exit()``, which returns ``"log incomplete: ..."``
  when output had to be given up on (policy: docs/adr/0004-log-segments.md).
* Any process (the API daemon) reads with :func:`read_log`: history from a seq,
  and with ``follow=True`` live chunks after it, with no gap and no duplicate,
  ending at the end-of-log record. Readers share nothing with the writer but
  the files, so either side may be ``kill -9``-ed and restarted at any time;
  a reader resumes with ``from_seq=last_seen.seq + 1``. A reader holds one file
  descriptor until it is exhausted or closed (``gen.close()``).

On-disk format (version 1)
--------------------------
A job's log directory holds segment files; the one process appending holds a
flock(2) on the directory itself (no lock file, so opening a log creates one
inode fewer)::

    <log_dir>/00000000000000000001.seg      records with seq 1 ..
    <log_dir>/00000000000000004711.seg      records with seq 4711 ..

A segment is named after the seq of its first record (20 zero-padded digits),
so a reader finds the segment holding ``from_seq`` by listing names, and the
segment after the one it is in is always named ``<next expected seq>.seg``.
The writer rotates when the next record would push a segment past
``segment_bytes`` (a record larger than that gets a segment of its own) and
finishes writing a segment before it creates the next one. A segment is a
plain concatenation of records, each a 36-byte little-endian header and the
payload::

    offset size  field
         0    4  magic       b"CLOG"
         4    4  header_crc  CRC-32 (zlib) of header bytes 8..35
         8    8  seq         u64; 1, 2, 3, ... across both streams, no gaps
        16    8  timestamp   i64 ns since the epoch, taken at append()
        24    4  length      u32 payload bytes
        28    4  data_crc    CRC-32 (zlib) of the payload
        32    1  stream      1 = stdout, 2 = stderr, 0 = end of log, 4 = notice
        33    1  version     1
        34    2  reserved    0
        36    *  payload     exactly the bytes given to one append()

A notice record (stream 4) stands where output was given up on: its payload is
the last seq it stands for and the bytes lost (u64 LE each) and a UTF-8 line;
its own seq is the first lost one, so the next record has seq ``last + 1``.

The end-of-log record (stream 0, length 0) carries the seq after the last
chunk and is always the first record of a segment of its own: the writer
fsyncs every segment it wrote (``fsync_on_close``), creates that segment,
writes the record, fsyncs it and the directory. A log is finished exactly
when its last segment starts with an end record (:func:`is_finished` reads
one header; job output can never forge a record at a segment start).

Durability: appended bytes reach the page cache (visible to every reader at
once) as fast as the writer thread drains its queue; they survive a crash of
the supervisor but not of the machine until ``finish`` fsyncs them. Interpreter
exit flushes the queue (atexit); SIGKILL loses only what was still queued.

Recovery: opening an existing log scans the last segment; the first record
that is incomplete or fails a check, and everything after it, is a torn tail
from a crash and is truncated; numbering continues after the last whole
record. Readers never yield a record before all its checks pass: an incomplete
record (or zeros where a header should be) is waited for when following and
ends history otherwise; bytes that stay invalid across a re-read raise
``capsa.errors.ChecksumMismatch``.
"""

from ._format import HEADER_SIZE as RECORD_HEADER_SIZE
from .model import LogChunk, Stream
from .persister import JobLog, LogPersister
from .reader import is_finished, log_size, read_log

__all__ = [
    "RECORD_HEADER_SIZE",
    "JobLog",
    "LogChunk",
    "LogPersister",
    "Stream",
    "is_finished",
    "log_size",
    "read_log",
]
