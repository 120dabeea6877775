"""On-disk record and segment layout shared by the writer and the readers.

The layout itself is documented in the package docstring (``capsa.logs``); this
module is the one place that encodes and decodes it.
"""

from __future__ import annotations

import os
import re
import struct
import zlib
from pathlib import Path

try:  # ISA-L's CRC-32 is the zlib polynomial, bit-identical, ~10x faster (PCLMULQDQ); a capsa dependency
    from isal.isal_zlib import crc32
except ImportError:  # pragma: no cover - keep working where only the stdlib is present
    crc32 = zlib.crc32

MAGIC = b"CLOG"
VERSION = 1
END = 0  # stream value of the end-of-log record
NOTICE = 4  # stream value of a capsa notice (e.g. "log incomplete"); see encode_notice

# magic, header_crc | seq, timestamp_ns, length, payload_crc, stream, version, reserved
_BODY = struct.Struct("<QqIIBBH")
HEADER_SIZE = 8 + _BODY.size  # 36
MAX_PAYLOAD = 0xFFFFFFFF
_VALID_STREAMS = frozenset((END, 1, 2, NOTICE))
_ZERO_HEADER = bytes(HEADER_SIZE)

SEGMENT_SUFFIX = ".seg"
_SEGMENT_RE = re.compile(r"^(\d{20})\.seg$")
DROPPED_NAME = ".dropped"  # bytes of whole oldest segments dropped by a size limit (decimal text)
RESERVE_NAME = ".reserve"  # disk set aside for a notice and the end record when the disk fills

_crc32 = crc32
_pack_body = _BODY.pack
_unpack_body = _BODY.unpack_from


def encode_header(seq: int, timestamp_ns: int, stream: int, length: int, payload_crc: int) -> bytes:
    body = _pack_body(seq, timestamp_ns, length, payload_crc, stream, VERSION, 0)
    return MAGIC + _crc32(body).to_bytes(4, "little") + body


def decode_header(buf: bytes | memoryview, pos: int) -> tuple[int, int, int, int, int] | None:
    """Return ``(seq, timestamp_ns, length, payload_crc, stream)``, or None if these bytes are no header.

    The caller guarantees ``HEADER_SIZE`` bytes are available at ``pos``.
    """
    if buf[pos : pos + 4] != MAGIC:
        return None
    if int.from_bytes(buf[pos + 4 : pos + 8], "little") != _crc32(buf[pos + 8 : pos + HEADER_SIZE]):
        return None
    seq, ts, length, pcrc, stream, version, _reserved = _unpack_body(buf, pos + 8)
    if version != VERSION or stream not in _VALID_STREAMS or (stream == END and length):
        return None
    return seq, ts, length, pcrc, stream


_NOTICE_PREFIX = struct.Struct("<QQ")


def encode_notice(last_seq: int, lost_bytes: int, text: str) -> bytes:
    """Payload of a notice record: the last seq it stands for and the bytes lost (u64 LE each), then UTF-8 text.

    A notice written in place of output that could not be persisted carries the
    seq of the first lost chunk and stands for every seq up to ``last_seq``, so
    numbering stays gap-free: the record after it has seq ``last_seq + 1``.
    """
    return _NOTICE_PREFIX.pack(last_seq, lost_bytes) + text.encode()


def notice_last_seq(payload: bytes | memoryview, seq: int) -> int:
    """The last seq a notice stands for (``seq`` itself when the payload is too short to say)."""
    if len(payload) < _NOTICE_PREFIX.size:
        return seq
    return max(seq, _NOTICE_PREFIX.unpack_from(payload)[0])


def notice_lost_bytes(payload: bytes | memoryview) -> int:
    return _NOTICE_PREFIX.unpack_from(payload)[1] if len(payload) >= _NOTICE_PREFIX.size else 0


def notice_text(payload: bytes | memoryview) -> bytes:
    return bytes(payload[_NOTICE_PREFIX.size :])


def is_unwritten(buf: bytes | memoryview, pos: int) -> bool:
    """Zeros where a header should be: a file size that reached disk before its data (power loss).

    Treated like a torn tail, never like a record (a header starts with the magic).
    The caller guarantees ``HEADER_SIZE`` bytes are available at ``pos``.
    """
    return buf[pos : pos + HEADER_SIZE] == _ZERO_HEADER


def segment_name(first_seq: int) -> str:
    return f"{first_seq:020d}{SEGMENT_SUFFIX}"


def segment_path(log_dir: Path, first_seq: int) -> Path:
    return log_dir / segment_name(first_seq)


def list_segments(log_dir: Path) -> list[int]:
    """First seqs of the segment files in ``log_dir``, ascending; [] if the directory does not exist."""
    try:
        names = os.listdir(log_dir)
    except FileNotFoundError:
        return []
    firsts = []
    for name in names:
        m = _SEGMENT_RE.match(name)
        if m:
            firsts.append(int(m.group(1)))
    firsts.sort()
    return firsts


def scan_valid_prefix(fd: int, first_seq: int, block: int = 4 << 20) -> tuple[int, int, bool]:
    """Walk a segment from offset 0, checking headers, seq continuity and payload CRCs.

    Returns ``(valid_bytes, next_seq, ended)``: the length of the prefix made of
    whole valid records, the seq the next record must carry, and whether that
    prefix ends with the end-of-log record.
    """
    off = 0
    seq_expected = first_seq
    while True:
        buf = os.pread(fd, block, off)
        n = len(buf)
        pos = 0
        while n - pos >= HEADER_SIZE:
            hdr = decode_header(buf, pos)
            if hdr is None or hdr[0] != seq_expected:
                return off + pos, seq_expected, False
            _, _, length, pcrc, stream = hdr
            if stream == END:
                return off + pos + HEADER_SIZE, seq_expected, True
            end = pos + HEADER_SIZE + length
            if end <= n:
                payload: bytes | memoryview = memoryview(buf)[pos + HEADER_SIZE : end]
            else:
                payload = os.pread(fd, length, off + pos + HEADER_SIZE)
                if len(payload) < length:
                    return off + pos, seq_expected, False
            if _crc32(payload) != pcrc:
                return off + pos, seq_expected, False
            seq_expected = (notice_last_seq(payload, seq_expected) if stream == NOTICE else seq_expected) + 1
            pos = end
            if end > n:
                break
        if pos == 0:
            return off, seq_expected, False
        off += pos


def read_dropped(log_dir: Path) -> int:
    """Bytes of oldest segments a size limit dropped from this log (0: none)."""
    try:
        return int((log_dir / DROPPED_NAME).read_text().strip() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def write_dropped(log_dir: Path, total: int) -> None:
    tmp = log_dir / (DROPPED_NAME + ".tmp")
    tmp.write_text(f"{total}\n")
    os.replace(tmp, log_dir / DROPPED_NAME)   # readers see the old or the new count, never half of one
