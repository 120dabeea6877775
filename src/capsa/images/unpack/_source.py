"""The uncompressed tar byte stream the reader consumes, from a file or a stream.

Two shapes, one interface (:class:`Input`):

* :class:`FileInput` — an uncompressed tar in a regular file. Headers and small
  files come from a large ``pread`` buffer; the body of a large file moves with
  ``copy_file_range`` (kernel to kernel, no copy through Python).
* :class:`StreamInput` — anything else (gzip, zstd, pipes). Decompression runs on
  a producer thread (isal, zlib and zstandard release the GIL) so it overlaps
  with the syscalls that write files; chunks travel through a bounded queue.

Every byte is consumed exactly once and in order, so a hasher sees the whole
uncompressed stream (the layer's diff ID).
"""

from __future__ import annotations

import errno
import io
import os
import queue
import stat
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, Protocol

import zstandard

from capsa.errors import UnsafeArchive, Unsupported
from capsa.images.oci import Compression, layer_compression

from ._limits import Guard

try:  # isal's igzip is a faster drop-in for gzip (declared dependency); stdlib is the fallback
    from isal import igzip as _gzip
except ImportError:  # pragma: no cover - exercised only where isal is absent
    import gzip as _gzip  # type: ignore[no-redef]

__all__ = ["FileInput", "Input", "StreamInput", "open_input", "sniff_compression"]

CHUNK = 1 << 20  # pread size for plain tar files
# Decompressed chunks: large, so the producer thread (which needs the GIL between
# chunks, and may wait a switch interval for it) moves plenty of data per handoff.
STREAM_CHUNK = 4 << 20
_QUEUE_CHUNKS = 4  # at most this many decompressed chunks wait in memory
# Below this, refilling the buffer (which also serves the next headers) beats a
# dedicated copy_file_range call.
_DIRECT_MIN = 256 << 10
_DIRECT_STEP = 64 << 20  # copy in steps so the timeout is checked during huge files
_JOIN_TIMEOUT_S = 5.0
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_UNSUPPORTED_MAGIC = {b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x04\x22\x4d\x18": "lz4"}
_DECOMPRESS_ERRORS: tuple[type[BaseException], ...] = (
    EOFError, zlib.error, _gzip.BadGzipFile, zstandard.ZstdError,
)
try:
    from isal.isal_zlib import IsalError as _IsalError

    _DECOMPRESS_ERRORS += (_IsalError,)
except ImportError:  # pragma: no cover
    pass


class Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        written = os.write(fd, view)
        view = view[written:]


class Input:
    """Sequential reader over the uncompressed tar stream; ``offset`` counts consumed bytes."""

    def __init__(self, hasher: Hasher | None) -> None:
        self._buf = b""
        self._view = memoryview(self._buf)
        self._pos = 0
        self.offset = 0
        self._hasher = hasher

    # -- hooks -------------------------------------------------------------------------
    def _next_chunk(self) -> bytes:
        raise NotImplementedError

    def _direct_copy(self, fd: int, n: int, guard: Guard, what: str) -> bool:
        """Copy ``n`` bytes straight from the source; False if this input cannot."""
        return False

    def _direct_skip(self, n: int) -> bool:
        return False

    def close(self) -> None:
        """Release what this input owns (never the caller's file object)."""

    # -- reading -----------------------------------------------------------------------
    def _refill(self) -> bool:
        chunk = self._next_chunk()
        if not chunk:
            return False
        if self._hasher is not None:
            self._hasher.update(chunk)
        self._buf = chunk
        self._view = memoryview(chunk)
        self._pos = 0
        return True

    def read(self, n: int) -> bytes:
        """Exactly ``n`` bytes, or fewer only at the end of the stream."""
        pos = self._pos
        end = pos + n
        if end <= len(self._buf):
            self._pos = end
            self.offset += n
            return self._buf[pos:end]
        parts = [self._buf[pos:]]
        got = len(parts[0])
        self._pos = len(self._buf)
        while got < n and self._refill():
            take = min(n - got, len(self._buf))
            parts.append(self._buf[:take])
            self._pos = take
            got += take
        self.offset += got
        return b"".join(parts)

    def copy_to(self, fd: int, n: int, guard: Guard, what: str) -> None:
        """Write the next ``n`` bytes to ``fd`` at its current position."""
        pos = self._pos
        if pos + n <= len(self._buf):  # the common small file: one write from the buffer
            written = os.write(fd, self._view[pos:pos + n])
            self._pos = pos + written
            self.offset += written
            n -= written
        while n:
            avail = len(self._buf) - self._pos
            if not avail:
                if n >= _DIRECT_MIN and self._direct_copy(fd, n, guard, what):
                    return
                if not self._refill():
                    raise UnsafeArchive(f"{what}: archive ends inside the entry's data",
                                        detail={"entry": what})
                avail = len(self._buf)
            take = min(avail, n)
            _write_all(fd, self._view[self._pos:self._pos + take])
            self._pos += take
            self.offset += take
            n -= take
            if n:
                guard.check_time(what)

    def skip(self, n: int, guard: Guard, what: str) -> None:
        pos = self._pos
        if pos + n <= len(self._buf):
            self._pos = pos + n
            self.offset += n
            return
        while n:
            avail = len(self._buf) - self._pos
            if not avail:
                if n >= _DIRECT_MIN and self._direct_skip(n):
                    return
                if not self._refill():
                    raise UnsafeArchive(f"{what}: archive ends inside the entry's data",
                                        detail={"entry": what})
                avail = len(self._buf)
            take = min(avail, n)
            self._pos += take
            self.offset += take
            n -= take
            if n:
                guard.check_time(what)

    def drain(self, guard: Guard) -> int:
        """Consume the rest of the stream (verifies compressed trailers); returns its length."""
        total = len(self._buf) - self._pos
        self._pos = len(self._buf)
        while self._refill():
            total += len(self._buf)
            self._pos = len(self._buf)
            guard.check_time("trailing data")
        self.offset += total
        return total


class FileInput(Input):
    """An uncompressed tar in a regular file, read from byte ``start`` on."""

    def __init__(self, fd: int, start: int, hasher: Hasher | None, *, owned: bool) -> None:
        super().__init__(hasher)
        self._fd = fd
        self._fpos = start
        self._owned = owned
        self._size = os.fstat(fd).st_size
        # Hashing needs every byte in user space; so does a kernel without the syscall.
        self._copy_range = hasher is None and hasattr(os, "copy_file_range")

    def _next_chunk(self) -> bytes:
        chunk = os.pread(self._fd, CHUNK, self._fpos)
        self._fpos += len(chunk)
        return chunk

    def _direct_copy(self, fd: int, n: int, guard: Guard, what: str) -> bool:
        if not self._copy_range:
            return False
        if self._fpos + n > self._size:
            raise UnsafeArchive(f"{what}: archive ends inside the entry's data", detail={"entry": what})
        done = 0
        while done < n:
            try:
                copied = os.copy_file_range(self._fd, fd, min(n - done, _DIRECT_STEP), self._fpos)
            except OSError as exc:
                if done == 0 and exc.errno in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    self._copy_range = False  # e.g. tar and rootfs on different filesystem types
                    return False
                raise
            if copied == 0:
                raise UnsafeArchive(f"{what}: archive ends inside the entry's data", detail={"entry": what})
            self._fpos += copied
            self.offset += copied
            done += copied
            guard.check_time(what)
        return True

    def _direct_skip(self, n: int) -> bool:
        if self._hasher is not None:
            return False
        if self._fpos + n > self._size:
            return False  # let the buffered path report the truncation
        self._fpos += n
        self.offset += n
        return True

    def drain(self, guard: Guard) -> int:
        if self._hasher is not None:
            return super().drain(guard)
        total = len(self._buf) - self._pos + max(0, self._size - self._fpos)
        self._pos = len(self._buf)
        self._fpos = max(self._fpos, self._size)
        self.offset += total
        return total

    def close(self) -> None:
        if self._owned:
            os.close(self._fd)
            self._owned = False


class StreamInput(Input):
    """Chunks from ``read`` (a decompressor), produced on a thread when ``threaded``."""

    _END = b""

    def __init__(self, read: Callable[[int], bytes], hasher: Hasher | None, *, name: str,
                 guard: Guard, threaded: bool, closers: list[Callable[[], None]]) -> None:
        super().__init__(hasher)
        self._read = read
        self._name = name
        self._guard = guard
        self._closers = closers
        self._stop = threading.Event()
        self._queue: queue.Queue[bytes | BaseException] = queue.Queue(maxsize=_QUEUE_CHUNKS)
        self._thread: threading.Thread | None = None
        self._done = False
        if threaded:
            self._thread = threading.Thread(target=self._produce, name=f"unpack-{name}", daemon=True)
            self._thread.start()

    def _read_chunk(self) -> bytes:
        try:
            return self._read(STREAM_CHUNK)
        except _DECOMPRESS_ERRORS as exc:
            raise UnsafeArchive(f"corrupt {self._name} stream: {exc}") from exc

    def _produce(self) -> None:
        item: bytes | BaseException
        while not self._stop.is_set():
            try:
                item = self._read_chunk()
            except BaseException as exc:  # handed to the consumer, which re-raises it
                item = exc
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if not isinstance(item, bytes) or not item:
                return

    def _next_chunk(self) -> bytes:
        if self._done:
            return self._END
        if self._thread is None:
            chunk = self._read_chunk()
        else:
            while True:
                try:
                    item = self._queue.get(timeout=0.5)
                    break
                except queue.Empty:
                    self._guard.check_time(f"reading the {self._name} stream")
                    if not self._thread.is_alive() and self._queue.empty():
                        raise UnsafeArchive(f"{self._name} stream reader stopped unexpectedly") from None
            if isinstance(item, BaseException):
                self._done = True
                raise item
            chunk = item
        if not chunk:
            self._done = True
        return chunk

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            # A producer blocked reading a stalled caller's stream cannot be interrupted:
            # give up waiting after a while; it exits (stop is set) once its read returns,
            # and the caller owns that stream. Never close what it may still be reading.
            give_up = time.monotonic() + _JOIN_TIMEOUT_S
            while self._thread.is_alive() and time.monotonic() < give_up:
                try:  # unblock a producer waiting on a full queue
                    while True:
                        self._queue.get_nowait()
                except queue.Empty:
                    pass
                self._thread.join(timeout=0.1)
            if self._thread.is_alive():
                return
        for closer in self._closers:
            closer()


class _Prefixed(io.RawIOBase):
    """A non-seekable stream with bytes already read from it put back in front."""

    def __init__(self, head: bytes, rest: BinaryIO) -> None:
        self._head = head
        self._rest = rest

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if self._head:
            out, self._head = (self._head, b"") if n < 0 or n >= len(self._head) else (
                self._head[:n], self._head[n:])
            return out
        return self._rest.read(n)

    def readinto(self, buf: memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buf))
        buf[:len(data)] = data
        return len(data)


def sniff_compression(head: bytes) -> Compression:
    """The compression of a layer from its first bytes (a valid tar header wins)."""
    from ._tarheader import is_tar_header  # local: the header module imports nothing from here

    if len(head) >= 512 and is_tar_header(head[:512]):
        return Compression.NONE
    if head.startswith(_GZIP_MAGIC):
        return Compression.GZIP
    if head.startswith(_ZSTD_MAGIC):
        return Compression.ZSTD
    for magic, name in _UNSUPPORTED_MAGIC.items():
        if head.startswith(magic):
            raise Unsupported(f"layer is {name}-compressed; only uncompressed, gzip and zstd layers are supported")
    return Compression.NONE


def _regular_fd(source: BinaryIO) -> int | None:
    try:
        fd = source.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        return None
    try:
        return fd if stat.S_ISREG(os.fstat(fd).st_mode) and source.seekable() else None
    except OSError:
        return None


def open_input(source: Path | str | BinaryIO, media_type: str | None, guard: Guard,
               hasher: Hasher | None) -> Input:
    """Open ``source`` as an :class:`Input`; compression is detected from the content.

    ``media_type``, when given, must be a supported tar layer type (else Unsupported);
    the content's magic bytes still decide the decompressor, as containerd does, so a
    mislabelled uncompressed layer still applies (its digests are verified elsewhere).
    """
    if media_type is not None:
        layer_compression(media_type)
    if isinstance(source, (str, os.PathLike)):
        fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise Unsupported(f"layer source {os.fspath(source)!r} is not a regular file")
            return _from_fd(fd, 0, guard, hasher, owned=True)
        except BaseException:
            os.close(fd)
            raise
    fd = _regular_fd(source)
    if fd is not None:
        return _from_fd(fd, source.tell(), guard, hasher, owned=False)
    head = source.read(512)
    return _stream(sniff_compression(head), _Prefixed(head, source), guard, hasher, closers=[])


def _from_fd(fd: int, start: int, guard: Guard, hasher: Hasher | None, *, owned: bool) -> Input:
    kind = sniff_compression(os.pread(fd, 512, start))
    if kind is Compression.NONE:
        return FileInput(fd, start, hasher, owned=owned)
    raw = open(os.dup(fd), "rb", closefd=True)  # noqa: SIM115 - closed by StreamInput.close
    raw.seek(start)
    closers = [raw.close] + ([lambda: os.close(fd)] if owned else [])
    return _stream(kind, raw, guard, hasher, closers=closers)


def _stream(kind: Compression, raw: BinaryIO | io.RawIOBase, guard: Guard, hasher: Hasher | None,
            *, closers: list[Callable[[], None]]) -> Input:
    if kind is Compression.GZIP:
        reader = _gzip.GzipFile(fileobj=raw, mode="rb")
        return StreamInput(reader.read, hasher, name="gzip", guard=guard, threaded=True,
                           closers=[reader.close, *closers])
    if kind is Compression.ZSTD:
        zreader = zstandard.ZstdDecompressor().stream_reader(raw, read_size=1 << 20, read_across_frames=True,
                                                             closefd=False)
        return StreamInput(zreader.read, hasher, name="zstd", guard=guard, threaded=True,
                           closers=[zreader.close, *closers])
    return StreamInput(raw.read, hasher, name="tar", guard=guard, threaded=False, closers=closers)
