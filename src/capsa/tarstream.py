"""Tar as the wire format of ``capsa cp``: upload items to tar chunks and back, streaming both ways.

Both the CLI and the daemon use this module, so it imports only the standard library and
the light ``capsa.upload_items`` vocabulary. Items are ``(UploadEntry | None, bytes)``
pairs as produced by :func:`capsa.upload_items.walk_local`: an entry header, then the
file's data in pieces (``None`` for continuation pieces).

Encoding writes each header with :meth:`tarfile.TarInfo.tobuf` (PAX, so long names and
large files need no special casing) and passes file data through untouched: nothing is
buffered beyond one chunk. Decoding uses :mod:`tarfile` in stream mode (``r|``) over the
incoming chunks. Only regular files, directories and symlinks are accepted; a hard link
or device node in a tar is refused (UnsafeArchive) rather than silently dropped, since a
hard link could alias a file outside the destination.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterable, Iterator

from capsa.errors import InvalidArgument, UnsafeArchive
from capsa.upload_items import CHUNK_BYTES, EntryKind, UploadEntry

__all__ = ["decode", "encode"]

_BLOCK = tarfile.BLOCKSIZE
_KINDS = {EntryKind.FILE: tarfile.REGTYPE, EntryKind.DIR: tarfile.DIRTYPE, EntryKind.SYMLINK: tarfile.SYMTYPE}


def _header(entry: UploadEntry) -> bytes:
    info = tarfile.TarInfo(entry.path)
    info.type = _KINDS[entry.kind]
    info.mode = entry.mode & 0o7777
    info.size = entry.size if entry.kind == EntryKind.FILE else 0
    info.linkname = entry.target if entry.kind == EntryKind.SYMLINK else ""
    info.mtime = 0
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
                left = entry.size
                pad = -entry.size % _BLOCK
        if data:
            if len(data) > left:
                raise InvalidArgument("tar stream: more data than the file's declared size")
            left -= len(data)
            pending.append(data)
            size += len(data)
        if size >= chunk_bytes:
            yield flush()
    if left:
        raise InvalidArgument(f"tar stream: the last file ended {left} bytes short")
    pending.append(b"\0" * (pad + 2 * _BLOCK))   # the end-of-archive marker: two zero blocks
    yield flush()


class _ChunkReader:
    """A read-only file over an iterator of byte chunks (what tarfile's stream mode reads from)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._buf = memoryview(b"")

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            parts = [bytes(self._buf), *self._chunks]
            self._buf = memoryview(b"")
            return b"".join(parts)
        while not self._buf:
            chunk = next(self._chunks, None)
            if chunk is None:
                return b""
            self._buf = memoryview(chunk)
        out = self._buf[:n]
        self._buf = self._buf[n:]
        return out.tobytes()


def decode(chunks: Iterable[bytes]) -> Iterator[tuple[UploadEntry | None, bytes]]:
    """Upload items from tar bytes; names are not judged here (the tree writer refuses unsafe ones)."""
    try:
        tar = tarfile.open(fileobj=_ChunkReader(chunks), mode="r|", bufsize=CHUNK_BYTES)  # noqa: SIM115 - closed below
    except tarfile.TarError as exc:
        raise InvalidArgument(f"the copy stream is not a tar archive: {exc}") from None
    with tar:
        try:
            for member in tar:
                yield from _member(tar, member)
        except tarfile.TarError as exc:
            raise InvalidArgument(f"the copy stream is not a valid tar archive: {exc}") from None


def _member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> Iterator[tuple[UploadEntry | None, bytes]]:
    mode = member.mode & 0o7777
    if member.isreg():
        entry: UploadEntry | None = UploadEntry(member.name, EntryKind.FILE, mode, member.size)
        src = tar.extractfile(member)
        assert src is not None   # a regular member always has a reader
        left = member.size
        while True:
            data = src.read(min(CHUNK_BYTES, left)) if left else b""
            if left and not data:
                raise InvalidArgument(f"the copy stream ended inside {member.name!r}")
            left -= len(data)
            yield entry, data
            entry = None
            if not left:
                return
    elif member.isdir():
        yield UploadEntry(member.name, EntryKind.DIR, mode), b""
    elif member.issym():
        yield UploadEntry(member.name, EntryKind.SYMLINK, 0o777, 0, member.linkname), b""
    else:
        raise UnsafeArchive(f"tar entry {member.name!r}: only files, directories and symlinks are copied"
                            " (hard links and device nodes are refused)")
