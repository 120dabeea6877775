"""A raw tar writer for hostile test archives.

:mod:`tarfile` refuses to write most of what an attacker sends (negative sizes,
NUL bytes in names, bad checksums, symlinks with data, unknown types), so the
unpacker's tests build headers byte by byte here. Defaults produce exactly
what GNU tar / Go write (ustar magic, zero-padded octal, NUL-terminated), and
every field can be overridden.
"""

from __future__ import annotations

import os

__all__ = ["TarWriter", "octal"]

BLOCK = 512
MTIME = 1_700_000_000


def octal(value: int, width: int) -> bytes:
    """Zero-padded octal, NUL-terminated, or GNU base-256 when it does not fit."""
    text = f"{value:0{width - 1}o}".encode()
    if value >= 0 and len(text) <= width - 1:
        return text + b"\0"
    raw = (value % (1 << (8 * width))).to_bytes(width, "big")
    return bytes([raw[0] | 0x80]) + raw[1:] if value >= 0 else raw  # negative: two's complement, 0xff lead


def _b(text: str | bytes) -> bytes:
    return text if isinstance(text, bytes) else os.fsencode(text)


class TarWriter:
    def __init__(self) -> None:
        self.buf = bytearray()

    # -- raw ---------------------------------------------------------------------------
    def header(self, name: str | bytes, *, type: bytes = b"0", size: int = 0, mode: int = 0o644,  # noqa: A002
               uid: int = 0, gid: int = 0, mtime: int = MTIME, linkname: str | bytes = b"",
               devmajor: int = 0, devminor: int = 0, magic: bytes = b"ustar\x0000",
               prefix: bytes = b"", fields: dict[str, bytes] | None = None,
               checksum_delta: int = 0) -> TarWriter:
        """Append one header block. ``fields`` replaces raw fields by name after formatting."""
        raw = {
            "name": _b(name), "mode": octal(mode, 8), "uid": octal(uid, 8), "gid": octal(gid, 8),
            "size": octal(size, 12), "mtime": octal(mtime, 12), "type": type, "linkname": _b(linkname),
            "magic": magic, "uname": b"root", "gname": b"root", "devmajor": octal(devmajor, 8),
            "devminor": octal(devminor, 8), "prefix": prefix,
        }
        raw.update(fields or {})
        layout = [("name", 100), ("mode", 8), ("uid", 8), ("gid", 8), ("size", 12), ("mtime", 12),
                  ("chksum", 8), ("type", 1), ("linkname", 100), ("magic", 8), ("uname", 32),
                  ("gname", 32), ("devmajor", 8), ("devminor", 8), ("prefix", 155), ("pad", 12)]
        block = bytearray()
        for key, width in layout:
            value = b" " * 8 if key == "chksum" else raw.get(key, b"")
            if len(value) > width:
                raise ValueError(f"{key} {value!r} does not fit in {width} bytes")
            block += value.ljust(width, b"\0")
        checksum = sum(block) + checksum_delta
        block[148:156] = f"{checksum:06o}".encode() + b"\0 "
        self.buf += block
        return self

    def data(self, payload: bytes) -> TarWriter:
        self.buf += payload + b"\0" * (-len(payload) % BLOCK)
        return self

    def raw(self, payload: bytes) -> TarWriter:
        self.buf += payload
        return self

    def end(self) -> bytes:
        return bytes(self.buf + b"\0" * (2 * BLOCK))

    def unterminated(self) -> bytes:
        return bytes(self.buf)

    # -- entries -----------------------------------------------------------------------
    def _named(self, name: str | bytes, kwargs: dict) -> tuple[bytes, dict]:
        raw = _b(name)
        if len(raw) > 100:  # what Go and GNU tar do for long names: a pax path record
            self.pax({"path": raw})
            raw = raw[:99]
        return raw, kwargs

    def file(self, name: str | bytes, payload: bytes | str = b"", **kw: object) -> TarWriter:
        data = payload.encode() if isinstance(payload, str) else payload
        raw, kw = self._named(name, kw)
        return self.header(raw, size=len(data), **kw).data(data)  # type: ignore[arg-type]

    def dir(self, name: str | bytes, mode: int = 0o755, **kw: object) -> TarWriter:
        raw, kw = self._named(name, kw)
        return self.header(raw, type=b"5", mode=mode, **kw)  # type: ignore[arg-type]

    def symlink(self, name: str | bytes, target: str | bytes, **kw: object) -> TarWriter:
        target = _b(target)
        if len(target) > 100:
            self.pax({"linkpath": target})
            target = target[:99]
        raw, kw = self._named(name, kw)
        kw.setdefault("mode", 0o777)
        return self.header(raw, type=b"2", linkname=target, **kw)  # type: ignore[arg-type]

    def hardlink(self, name: str | bytes, target: str | bytes, **kw: object) -> TarWriter:
        raw, kw = self._named(name, kw)
        return self.header(raw, type=b"1", linkname=_b(target), **kw)  # type: ignore[arg-type]

    def node(self, name: str | bytes, kind: bytes, major: int = 0, minor: int = 0, mode: int = 0o644,
             **kw: object) -> TarWriter:
        return self.header(name, type=kind, devmajor=major, devminor=minor, mode=mode, **kw)  # type: ignore[arg-type]

    def whiteout(self, path: str) -> TarWriter:
        parent, _, name = path.rstrip("/").rpartition("/")
        return self.file(f"{parent}/.wh.{name}" if parent else f".wh.{name}", b"", mode=0o600)

    def opaque(self, directory: str) -> TarWriter:
        return self.file(f"{directory.rstrip('/')}/.wh..wh..opq" if directory.strip("/") else ".wh..wh..opq",
                         b"", mode=0o600)

    def pax(self, records: dict[str, str | bytes], *, type: bytes = b"x") -> TarWriter:  # noqa: A002
        body = b""
        for key, value in records.items():
            item = b" " + key.encode() + b"=" + _b(value) + b"\n"
            length = len(item) + 1
            while len(str(length).encode() + item) != length:
                length = len(str(length).encode() + item)
            body += str(length).encode() + item
        self.header(b"PaxHeaders/x", type=type, size=len(body))
        return self.data(body)

    def longname(self, name: str | bytes, *, type: bytes = b"L") -> TarWriter:
        payload = _b(name) + b"\0"
        self.header(b"././@LongLink", type=type, size=len(payload), magic=b"ustar  \0")
        return self.data(payload)
