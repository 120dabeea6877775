"""A strict tar reader: ustar, pax (``x``) and GNU long names (``L``/``K``), one :class:`Entry` each.

Written for hostile input rather than borrowed from :mod:`tarfile`, which treats a
header with a bad checksum in the middle of an archive as its end (silently
dropping the rest) and honours global pax ``path`` records. Here:

* every header's checksum is verified (unsigned, or the historic signed sum);
* numeric fields must be octal (or GNU base-256) and in range; sizes are never
  negative; link, device and fifo entries must declare no data;
* pax records are parsed exactly (length, ``key=value``, newline) and names with
  NUL bytes are refused; metadata headers per entry are bounded in count and size;
* the archive must end with a zero block, so truncation is never mistaken for the end;
* sparse files, multi-volume and other exotic GNU types are refused (never produced
  by image builders); global pax headers are validated and ignored, as Go's
  archive/tar (and so containerd and Docker) ignore them.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from capsa.errors import LimitExceeded, UnsafeArchive

from ._limits import Guard, UnpackLimits
from ._source import Input

__all__ = ["BLK", "CHR", "DIR", "FIFO", "LNK", "REG", "SYM", "Entry", "TarReader", "is_tar_header"]

BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)
REG, LNK, SYM, CHR, BLK, DIR, FIFO = "0", "1", "2", "3", "4", "5", "6"
_TYPES = {b"0": REG, b"\0": REG, b"7": REG, b"1": LNK, b"2": SYM, b"3": CHR, b"4": BLK, b"5": DIR, b"6": FIFO}
_NO_DATA = frozenset({LNK, SYM, CHR, BLK, FIFO})
_FAST_TYPES = {b"0": REG, b"\0": REG, b"7": REG, b"1": LNK, b"2": SYM, b"5": DIR, b"6": FIFO}
_META = frozenset({b"x", b"g", b"L", b"K"})
_MAX_META_HEADERS = 8
_HIGH_BYTES = bytes(range(128))
_NO_MAGIC = bytes(8)  # translate(None, _HIGH_BYTES) leaves the bytes >= 0x80
_MAX_ID = (1 << 32) - 2  # (uid_t)-1 means "leave unchanged" to chown(2)
_MAX_SECONDS = (1 << 63) // 1_000_000_000 - 1
_CANONICAL_NUMBERS = re.compile(rb"([0-7]{7})\0([0-7]{7})\0([0-7]{7})\0([0-7]{11})\0([0-7]{11})\0([0-7]{6})\0 ")


@dataclass(slots=True)
class Entry:
    """One archive member. ``name``/``linkname`` are as stored (not yet normalised)."""

    name: str
    type: str
    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    atime_ns: int
    linkname: str
    devmajor: int
    devminor: int
    xattrs: dict[str, bytes] | None
    offset: int

    @property
    def what(self) -> str:
        """How error messages name this entry."""
        return repr(self.name)


def _bad(msg: str, offset: int) -> UnsafeArchive:
    return UnsafeArchive(f"{msg} (header at byte {offset})", detail={"offset": offset})


def _stored_name(blk: bytes) -> str:
    """The name a header claims (for messages about headers too broken to parse)."""
    return repr(_decode(_cstr(blk[:100])))


def _cstr(field: bytes) -> bytes:
    end = field.find(0)
    return field if end < 0 else field[:end]


def _decode(raw: bytes) -> str:
    # The same mapping as os.fsdecode on Linux, so names round-trip to the exact bytes.
    return raw.decode("utf-8", "surrogateescape")


def _num(field: bytes, what: str, offset: int, blk: bytes = b"") -> int:
    first = field[0]
    if first & 0x80:  # GNU / star base-256; bit 6 is the sign
        value = int.from_bytes(bytes([first & 0x7F]) + field[1:], "big")
        if first & 0x40:
            value -= 1 << (8 * len(field) - 1)
        return value
    digits = field.strip(b" \0")  # padding may be spaces or NULs on either side (as Go accepts)
    if not digits:
        return 0
    if digits.translate(None, b"01234567"):
        raise _bad(f"{_stored_name(blk)}: invalid {what} field {field!r}", offset)
    return int(digits, 8)


def _checksum_ok(blk: bytes, stored: int | None = None) -> bool:
    if stored is None:
        try:
            stored = _num(blk[148:156], "checksum", 0)
        except UnsafeArchive:
            return False
    field_sum = sum(blk[148:156])
    if blk.isascii():
        # Every byte < 0x80: the sum is < 65521, so adler32's low half is exactly 1 + sum.
        return stored == (zlib.adler32(blk) & 0xFFFF) - 1 - field_sum + 256
    unsigned = sum(blk) - field_sum + 256
    if stored == unsigned:
        return True
    high = len(blk.translate(None, _HIGH_BYTES)) - len(blk[148:156].translate(None, _HIGH_BYTES))
    return stored == unsigned - 256 * high  # historic signed-char sum


def _fixed_fields(blk: bytes, offset: int) -> tuple[int, int, int, int, int]:
    """Verify the checksum; return mode, uid, gid, size, mtime."""
    m = _CANONICAL_NUMBERS.fullmatch(blk, 100, 156)
    if m is not None and blk.isascii():  # what GNU tar, Go and Python write
        mode, uid, gid, size, mtime, chk = m.groups()
        # adler32's low half is 1 + the byte sum (exact: an ASCII block sums to < 65521);
        # the checksum field counts as eight spaces: its digits, a NUL and a space are replaced.
        if int(chk, 8) != (zlib.adler32(blk) & 0xFFFF) - 1 - sum(chk) - 32 + 256:
            raise _bad(f"{_stored_name(blk)}: bad header checksum", offset)
        return int(mode, 8), int(uid, 8), int(gid, 8), int(size, 8), int(mtime, 8)
    if not _checksum_ok(blk):
        raise _bad(f"{_stored_name(blk)}: bad header checksum", offset)
    return (_num(blk[100:108], "mode", offset, blk), _num(blk[108:116], "uid", offset, blk),
            _num(blk[116:124], "gid", offset, blk), _num(blk[124:136], "size", offset, blk),
            _num(blk[136:148], "mtime", offset, blk))


def is_tar_header(blk: bytes) -> bool:
    """True when ``blk`` is a non-zero 512-byte block with a valid tar checksum."""
    return len(blk) == BLOCK and blk != ZERO_BLOCK and _checksum_ok(blk)


def _pax_records(payload: bytes, offset: int) -> dict[str, bytes]:
    records: dict[str, bytes] = {}
    pos, end = 0, len(payload)
    while pos < end:
        if not payload[pos:].strip(b"\0"):
            break  # NUL padding after the last record
        space = payload.find(b" ", pos, pos + 21)
        length_text = payload[pos:space] if space > pos else b""
        if not length_text or length_text.translate(None, b"0123456789"):
            raise _bad("malformed pax record length", offset)
        length = int(length_text)
        if length <= space - pos + 1 or pos + length > end or payload[pos + length - 1] != 0x0A:
            raise _bad("malformed pax record", offset)
        key, eq, value = payload[space + 1:pos + length - 1].partition(b"=")
        if not eq or not key:
            raise _bad("malformed pax record (no key=value)", offset)
        try:
            records[key.decode("utf-8")] = value
        except UnicodeDecodeError:
            raise _bad(f"pax keyword {key!r} is not UTF-8", offset) from None
        pos += length
    return records


def _pax_int(value: bytes, key: str, offset: int) -> int:
    if not value or value.translate(None, b"0123456789"):
        raise _bad(f"invalid pax {key} {value!r}", offset)
    return int(value)


def _pax_time_ns(value: bytes, key: str, offset: int) -> int:
    text = value.decode("ascii", "replace")
    sign = -1 if text.startswith("-") else 1
    whole, _, frac = text.lstrip("-").partition(".")
    if not whole.isdigit() or (frac and not frac.isdigit()):
        raise _bad(f"invalid pax {key} {value!r}", offset)
    seconds = int(whole)
    if seconds > _MAX_SECONDS:
        raise _bad(f"pax {key} {value!r} is out of range", offset)
    return sign * (seconds * 1_000_000_000 + int((frac + "000000000")[:9]))


def _pax_name(value: bytes, key: str, offset: int) -> str:
    if b"\0" in value:
        raise _bad(f"pax {key} {value!r} contains a NUL byte", offset)
    return _decode(value)


class TarReader:
    """Iterates the entries of a tar stream; data is consumed (or skipped) by the caller."""

    def __init__(self, inp: Input, limits: UnpackLimits, guard: Guard) -> None:
        self._inp = inp
        self._limits = limits
        self._guard = guard
        self._data_end = 0  # stream offset where the current entry's data (plus padding) ends

    def __iter__(self) -> Iterator[Entry]:
        while (entry := self.next()) is not None:
            yield entry

    def _read_payload(self, size: int, kind: str, offset: int) -> bytes:
        payload = self._inp.read(size)
        if len(payload) < size:
            raise _bad(f"archive ends inside a {kind} header", offset)
        pad = -size % BLOCK
        if pad and len(self._inp.read(pad)) < pad:
            raise _bad(f"archive ends inside a {kind} header", offset)
        return payload

    def next(self) -> Entry | None:
        inp = self._inp
        rest = self._data_end - inp.offset
        if rest > 0:
            inp.skip(rest, self._guard, "entry data")
        offset = inp.offset
        blk = inp.read(BLOCK)
        if len(blk) < BLOCK or blk == ZERO_BLOCK:
            return self._end(blk, offset, pending=False)
        flag = blk[156:157]
        if flag in _META:
            return self._with_metadata(blk, flag, offset)
        m = _CANONICAL_NUMBERS.fullmatch(blk, 100, 156)
        kind = _FAST_TYPES.get(flag)
        if m is None or kind is None or not blk.isascii():
            return self._entry(blk, flag, _fixed_fields(blk, offset), offset, None, None, None)
        # The common case, kept lean: an ASCII ustar/GNU header with canonical octal
        # numbers (which can be neither negative nor out of range).
        mode, uid, gid, size, mtime, chk = m.groups()
        if int(chk, 8) != (zlib.adler32(blk) & 0xFFFF) - 1 - sum(chk) - 32 + 256:
            raise _bad(f"{_stored_name(blk)}: bad header checksum", offset)
        end = blk.find(0, 0, 100)
        raw = blk[:end] if end >= 0 else blk[:100]
        magic = blk[257:263]
        if magic == b"ustar\0":
            if blk[345]:
                raw = _cstr(blk[345:500]) + b"/" + raw
        elif magic != b"ustar " and blk[257:265] != _NO_MAGIC:
            raise _bad(f"{_stored_name(blk)}: unknown header format (magic {magic!r})", offset)
        name = raw.decode("ascii")
        size = int(size, 8)
        if kind != REG:
            if size and kind != DIR:
                raise _bad(f"{name!r}: a type {kind} entry must not carry data (size {size})", offset)
            size = 0
        elif flag == b"\0" and raw.endswith(b"/"):
            kind, size = DIR, 0  # pre-POSIX archives mark directories with a trailing slash
        linkname = _cstr(blk[157:257]).decode("ascii") if kind in (LNK, SYM) else ""
        mtime_ns = int(mtime, 8) * 1_000_000_000
        self._data_end = self._inp.offset + size + (-size % BLOCK)
        return Entry(name, kind, int(mode, 8) & 0o7777, int(uid, 8), int(gid, 8), size, mtime_ns, mtime_ns,
                     linkname, 0, 0, None, offset)

    def _end(self, blk: bytes, offset: int, *, pending: bool) -> None:
        """The archive ended at ``offset`` with ``blk`` (short, or a zero block)."""
        if len(blk) < BLOCK:
            if pending:
                raise _bad("archive ends after a pax or long-name header", offset)
            raise _bad("archive is truncated: it ends without an end-of-archive marker" if not blk
                       else "archive ends inside a header", offset)
        if pending:
            raise _bad("end-of-archive marker right after a pax or long-name header", offset)
        if self._inp.read(BLOCK).strip(b"\0"):
            raise _bad("a lone zero block is followed by more data", offset + BLOCK)
        return None

    def _with_metadata(self, blk: bytes, flag: bytes, offset: int) -> Entry | None:
        """Collect pax / GNU long-name headers, then return the entry they describe."""
        inp = self._inp
        pax: dict[str, bytes] = {}
        longname = longlink = None
        meta_headers = meta_bytes = 0
        pending = False  # a pax/long-name header waits for its entry
        while True:
            fields = _fixed_fields(blk, offset)
            if flag not in _META:
                return self._entry(blk, flag, fields, offset, pax, longname, longlink)
            size = fields[3]
            if size < 0:
                raise _bad("negative size in a metadata header", offset)
            meta_headers += 1
            meta_bytes += size
            if meta_headers > _MAX_META_HEADERS:
                raise _bad(f"more than {_MAX_META_HEADERS} metadata headers for one entry", offset)
            if meta_bytes > self._limits.max_header_bytes:
                raise LimitExceeded(
                    f"pax/long-name metadata of {meta_bytes} bytes at byte {offset} exceeds "
                    f"max_header_bytes={self._limits.max_header_bytes}",
                    detail={"limit": "max_header_bytes", "offset": offset})
            self._guard.check_time(f"metadata header at byte {offset}")
            self._guard.charge_data(f"metadata header at byte {offset}", size, is_file=False)
            payload = self._read_payload(size, "metadata", offset)
            if flag == b"x":
                pax.update(_pax_records(payload, offset))
                pending = True
            elif flag == b"g":
                _pax_records(payload, offset)  # validated, then ignored (as Go's archive/tar does)
            elif flag == b"L":
                longname = _cstr(payload)
                pending = True
            else:
                longlink = _cstr(payload)
                pending = True
            offset = inp.offset
            blk = inp.read(BLOCK)
            if len(blk) < BLOCK or blk == ZERO_BLOCK:
                return self._end(blk, offset, pending=pending)
            flag = blk[156:157]

    def _entry(self, blk: bytes, flag: bytes, fields: tuple[int, int, int, int, int], offset: int,
               pax: dict[str, bytes] | None, longname: bytes | None, longlink: bytes | None) -> Entry:
        magic = blk[257:263]
        if longname is not None:
            raw_name = longname
        else:
            end = blk.find(0, 0, 100)
            raw_name = blk[:end] if end >= 0 else blk[:100]
            if magic == b"ustar\0" and blk[345]:
                raw_name = _cstr(blk[345:500]) + b"/" + raw_name
        if magic != b"ustar\0" and magic != b"ustar " and blk[257:265] != _NO_MAGIC:  # POSIX, GNU, v7
            raise _bad(f"{_stored_name(blk)}: unknown header format (magic {magic!r})", offset)
        name = raw_name.decode("utf-8", "surrogateescape")
        if longlink is not None:
            linkname = _decode(longlink)
        elif flag == b"1" or flag == b"2":
            linkname = _decode(_cstr(blk[157:257]))
        else:
            linkname = ""
        mode, uid, gid, size, mtime = fields
        if abs(mtime) > _MAX_SECONDS:
            raise _bad(f"mtime {mtime} of {name!r} is out of range", offset)
        mtime_ns = mtime * 1_000_000_000
        atime_ns = mtime_ns
        xattrs: dict[str, bytes] | None = None
        if pax:
            for key, value in pax.items():
                if key == "path" and value:
                    name = _pax_name(value, key, offset)
                elif key == "linkpath" and value:
                    linkname = _pax_name(value, key, offset)
                elif key == "size" and value:
                    size = _pax_int(value, key, offset)
                elif key == "uid" and value:
                    uid = _pax_int(value, key, offset)
                elif key == "gid" and value:
                    gid = _pax_int(value, key, offset)
                elif key == "mtime" and value:
                    mtime_ns = atime_ns = _pax_time_ns(value, key, offset)
                elif key.startswith("SCHILY.xattr."):
                    xname = key[13:]
                    if not xname or "\0" in xname:
                        raise _bad(f"invalid xattr name {xname!r} on {name!r}", offset)
                    (xattrs := xattrs or {})[xname] = value
                elif key.startswith("GNU.sparse."):
                    raise _bad(f"{name!r}: sparse files are not supported", offset)
            if "atime" in pax and pax["atime"]:
                atime_ns = _pax_time_ns(pax["atime"], "atime", offset)
        kind = _TYPES.get(flag)
        if kind is None:
            raise _bad(f"{name!r}: unsupported entry type {flag!r}", offset)
        if flag == b"\0" and name.endswith("/"):
            kind = DIR  # pre-POSIX archives mark directories with a trailing slash
        if size < 0:
            raise _bad(f"{name!r}: negative size {size}", offset)
        if kind in _NO_DATA and size:
            raise _bad(f"{name!r}: a type {kind} entry must not carry data (size {size})", offset)
        if kind == DIR:
            size = 0  # POSIX: a directory's size field reserves space; no data follows
        if mode < 0 or not (0 <= uid <= _MAX_ID and 0 <= gid <= _MAX_ID):
            raise _bad(f"{name!r}: invalid mode/uid/gid ({mode:o}/{uid}/{gid})", offset)
        devmajor = devminor = 0
        if kind in (CHR, BLK):
            devmajor = _num(blk[329:337], "devmajor", offset, blk)
            devminor = _num(blk[337:345], "devminor", offset, blk)
            if not (0 <= devmajor < 1 << 32 and 0 <= devminor < 1 << 32):
                raise _bad(f"{name!r}: invalid device number {devmajor}:{devminor}", offset)
        data_start = self._inp.offset
        self._data_end = data_start + size + (-size % BLOCK)
        return Entry(name, kind, mode & 0o7777, uid, gid, size, mtime_ns, atime_ns, linkname,
                     devmajor, devminor, xattrs, offset)
