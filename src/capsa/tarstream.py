"""Tar as the wire format of ``capsa cp``: upload items to tar chunks and back, streaming both ways.

Both the CLI and the daemon use this module, so it imports only the standard library and
the light ``capsa.upload_items`` vocabulary. Items are ``(UploadEntry | None, bytes)``
pairs as produced by :func:`capsa.upload_items.walk_local`: an entry header, then the
file's data in pieces (``None`` for continuation pieces).

Encoding writes each header with :meth:`tarfile.TarInfo.tobuf` (PAX, so long names and
large files need no special casing) and passes file data through untouched: nothing is
buffered beyond one chunk. Decoding parses headers with :meth:`tarfile.TarInfo.frombuf`
(checksums, ustar/GNU/PAX fields) and hands file data on as views of the incoming chunks. Only regular files, directories and symlinks are accepted; a hard link
or device node in a tar is refused (UnsafeArchive) rather than silently dropped, since a
hard link could alias a file outside the destination.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterable, Iterator

from capsa.errors import InvalidArgument, UnsafeArchive
from capsa.extents import parse_map, render_map
from capsa.upload_items import CHUNK_BYTES, EntryKind, UploadEntry

__all__ = ["decode", "encode"]

_BLOCK = tarfile.BLOCKSIZE
_SIZE, _SPARSE, _PASSED = "CAPSA.size", "CAPSA.sparse.map", "CAPSA.fd"
_KINDS = {EntryKind.FILE: tarfile.REGTYPE, EntryKind.DIR: tarfile.DIRTYPE, EntryKind.SYMLINK: tarfile.SYMTYPE}


def _header(entry: UploadEntry) -> bytes:
    info = tarfile.TarInfo(entry.path)
    info.type = _KINDS[entry.kind]
    info.mode = entry.mode & 0o7777
    info.size = entry.data_bytes
    info.linkname = entry.target if entry.kind == EntryKind.SYMLINK else ""
    info.mtime = 0
    if entry.kind == EntryKind.FILE and (entry.passed or entry.extents is not None):
        # Our own PAX records (unknown keys are ignored by other readers): the file's length, and
        # either the map of the data extents that follow or the mark "its descriptor is passed".
        info.pax_headers = {_SIZE: str(entry.size)}
        if entry.passed:
            info.pax_headers[_PASSED] = "1"
        else:
            info.pax_headers[_SPARSE] = render_map(list(entry.extents or ()))
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def encode(items: Iterable[tuple[UploadEntry | None, bytes]], *,
           chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
    """Tar bytes for ``items``, in pieces of about ``chunk_bytes``; headers ride with the data after them."""
    pending: list[bytes] = []
    size = 0
    left = 0          # data bytes the current file still owes
    pad = 0           # zero bytes that close the current file's last block

    def flush() -> bytes:
        nonlocal size
        out = b"".join(pending) if len(pending) != 1 else pending[0]
        pending.clear()
        size = 0
        return out

    for entry, data in items:
        if entry is not None:
            if left:
                raise InvalidArgument(f"tar stream: the file before {entry.path!r} ended {left} bytes short")
            if pad:
                pending.append(b"\0" * pad)
                size += pad
                pad = 0
            pending.append(_header(entry))
            size += len(pending[-1])
            if entry.kind == EntryKind.FILE:
                left = entry.data_bytes
                pad = -left % _BLOCK
        if data:
            if len(data) > left:
                raise InvalidArgument("tar stream: more data than the file's declared size")
            left -= len(data)
            pending.append(data)
            size += len(data)
        if size >= chunk_bytes or (entry is not None and entry.passed):
            # A passed entry goes out at once: its descriptor is already waiting on the other side,
            # and the sender may block on the next one until this entry is taken.
            yield flush()
    if left:
        raise InvalidArgument(f"tar stream: the last file ended {left} bytes short")
    pending.append(b"\0" * (pad + 2 * _BLOCK))   # the end-of-archive marker: two zero blocks
    yield flush()


class _Reader:
    """Exact reads over an iterator of chunks; data is handed on as slices of the chunks, not copied."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._buf = memoryview(b"")

    def _fill(self) -> bool:
        while not self._buf:
            chunk = next(self._chunks, None)
            if chunk is None:
                return False
            self._buf = memoryview(chunk)
        return True

    def exact(self, n: int) -> bytes:
        parts: list[bytes] = []
        while n:
            if not self._fill():
                raise InvalidArgument("the copy stream ended inside a tar header")
            part, self._buf = self._buf[:n], self._buf[n:]
            parts.append(part.tobytes())
            n -= len(part)
        return b"".join(parts)

    def pieces(self, n: int, what: str) -> Iterator[memoryview]:
        while n:
            if not self._fill():
                raise InvalidArgument(f"the copy stream ended inside {what!r}")
            part, self._buf = self._buf[:n], self._buf[n:]
            n -= len(part)
            yield part

    def skip(self, n: int) -> None:
        for _ in self.pieces(n, "tar padding"):
            pass


def _pax(data: bytes) -> dict[str, str]:
    """The records of a PAX extended header ("LEN key=value\n" each)."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data) and data[pos:pos + 1] != b"\0":
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        if length <= 0:
            raise InvalidArgument("the copy stream has a malformed PAX header")
        key, _, value = data[space + 1:pos + length - 1].partition(b"=")
        out[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out


def _file_entry(name: str, mode: int, data_bytes: int, pax: dict[str, str]) -> UploadEntry:
    """A file entry, with its length, sparse map or passed mark from our PAX records (checked here)."""
    if _SIZE not in pax:
        return UploadEntry(name, EntryKind.FILE, mode, data_bytes)
    try:
        size = int(pax[_SIZE])
    except ValueError:
        raise InvalidArgument(f"tar entry {name!r}: malformed {_SIZE}") from None
    if size < 0:
        raise InvalidArgument(f"tar entry {name!r}: negative size")
    if pax.get(_PASSED) == "1":
        if data_bytes:
            raise InvalidArgument(f"tar entry {name!r}: a passed file carries no data in the stream")
        return UploadEntry(name, EntryKind.FILE, mode, size, passed=True)
    extents = parse_map(pax.get(_SPARSE, ""), size, name)
    if sum(length for _, length in extents) != data_bytes:
        raise InvalidArgument(f"tar entry {name!r}: its sparse map does not add up to its data")
    return UploadEntry(name, EntryKind.FILE, mode, size, extents=tuple(extents))


def decode(chunks: Iterable[bytes]) -> Iterator[tuple[UploadEntry | None, bytes]]:
    """Upload items from tar bytes (ustar, PAX and GNU long names); names are not judged here (the
    tree writer refuses unsafe ones). File data is passed on as views of the received chunks:
    :mod:`tarfile`'s stream mode copies every byte several times, which halves the throughput."""
    reader = _Reader(chunks)
    pending: dict[str, str] = {}
    while True:
        block = reader.exact(_BLOCK) if reader._fill() else b""
        if not block.strip(b"\0"):
            return   # end-of-archive (two zero blocks; what follows is padding)
        try:
            info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        except tarfile.HeaderError as exc:
            raise InvalidArgument(f"the copy stream is not a valid tar archive: {exc}") from None
        padded = info.size + (-info.size % _BLOCK)
        if info.type in (tarfile.XHDTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XGLTYPE):
            if info.size > 1 << 20:
                raise InvalidArgument("the copy stream has an extended header larger than 1 MiB")
            data = reader.exact(padded)[:info.size]
            if info.type == tarfile.XHDTYPE:
                pending.update(_pax(data))
            elif info.type == tarfile.GNUTYPE_LONGNAME:
                pending["path"] = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
            elif info.type == tarfile.GNUTYPE_LONGLINK:
                pending["linkpath"] = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
            continue
        name = pending.get("path", info.name).rstrip("/") if info.isdir() else pending.get("path", info.name)
        link = pending.get("linkpath", info.linkname)
        if "size" in pending:
            info.size = int(pending["size"])
            padded = info.size + (-info.size % _BLOCK)
        extra, pending = pending, {}
        mode = info.mode & 0o7777
        if info.type in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE):
            entry: UploadEntry | None = _file_entry(name, mode, info.size, extra)
            for piece in reader.pieces(info.size, name):
                yield entry, piece   # type: ignore[misc]  # a view: the writer only needs the buffer
                entry = None
            if entry is not None:
                yield entry, b""
            reader.skip(padded - info.size)
        elif info.isdir():
            yield UploadEntry(name, EntryKind.DIR, mode), b""
            reader.skip(padded)
        elif info.issym():
            yield UploadEntry(name, EntryKind.SYMLINK, 0o777, 0, link), b""
            reader.skip(padded)
        else:
            raise UnsafeArchive(f"tar entry {name!r}: only files, directories and symlinks are copied"
                                " (hard links and device nodes are refused)")
