"""Data extents of regular files: holes found with SEEK_DATA/SEEK_HOLE, kept as holes when copied.

Used by ``capsa cp`` on both paths (see ADR-0014): the stream sends only the data extents of a
sparse file plus their map, and the receiver writes each extent at its offset and sets the
length with ``ftruncate``; the local fast path copies the extents of a passed fd in the kernel
(``copy_file_range``). Either way a hole in the source is never written, so it stays a hole.
Standard library only: the CLI imports it.
"""

from __future__ import annotations

import errno
import os

from capsa.errors import FailedPrecondition, InvalidArgument

__all__ = ["MAX_EXTENTS", "check_extents", "copy_extents", "data_extents", "parse_map", "render_map"]

MAX_EXTENTS = 8192           # more than this are merged (small holes filled) so a map stays < 200 KiB
_COPY_STEP = 1 << 30          # copy_file_range moves at most this much per call


def data_extents(fd: int, size: int) -> list[tuple[int, int]]:
    """(offset, length) of each data region of ``fd`` below ``size``, in order.

    A file system without SEEK_DATA support answers EINVAL: then the whole file is one extent
    (dense, correct, only holes are lost). A file with no data at all has no extents.
    """
    out: list[tuple[int, int]] = []
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:     # no data after pos: the rest is a hole
                break
            if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                return [(0, size)] if size else []
            raise
        if start >= size:
            break
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        out.append((start, end - start))
        pos = end
    os.lseek(fd, 0, os.SEEK_SET)
    return _merge(out)


def _merge(extents: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """At most MAX_EXTENTS extents: neighbours are merged pairwise (their gap is then written as zeros)."""
    while len(extents) > MAX_EXTENTS:
        merged = []
        for i in range(0, len(extents) - 1, 2):
            (a, _), (b, blen) = extents[i], extents[i + 1]
            merged.append((a, b + blen - a))
        if len(extents) % 2:
            merged.append(extents[-1])
        extents = merged
    return extents


def check_extents(extents: list[tuple[int, int]], size: int, what: str) -> None:
    """Refuse a map that is unordered, overlapping, empty-piece, too long or beyond ``size``."""
    if len(extents) > MAX_EXTENTS:
        raise InvalidArgument(f"{what!r}: more than {MAX_EXTENTS} data extents")
    end = 0
    for off, length in extents:
        if off < end or length <= 0 or off + length > size:
            raise InvalidArgument(f"{what!r}: malformed sparse map (extents must be ordered, non-empty,"
                                  f" non-overlapping and inside the file's {size} bytes)")
        end = off + length


def render_map(extents: list[tuple[int, int]]) -> str:
    return ",".join(f"{off},{length}" for off, length in extents)


def parse_map(text: str, size: int, what: str) -> list[tuple[int, int]]:
    try:
        numbers = [int(n) for n in text.split(",")] if text else []
    except ValueError:
        raise InvalidArgument(f"{what!r}: malformed sparse map") from None
    if len(numbers) % 2:
        raise InvalidArgument(f"{what!r}: malformed sparse map (odd number of fields)")
    extents = list(zip(numbers[::2], numbers[1::2], strict=True))
    check_extents(extents, size, what)
    return extents


def copy_extents(src: int, dst: int, size: int, what: str) -> int:
    """Copy the first ``size`` bytes of ``src`` into the empty file ``dst``, holes kept; returns data bytes.

    Each data extent moves with ``copy_file_range`` (in the kernel; a reflink where the file system
    can) at the same offset; ``ftruncate`` sets the length, so trailing holes stay holes too. A source
    shorter than ``size`` (changed while copied) is FailedPrecondition.
    """
    if os.fstat(src).st_size < size:   # SEEK_DATA would call the missing tail a hole
        raise FailedPrecondition(f"{what!r} shrank while it was being copied (it was changed); retry")
    moved = 0
    for off, length in data_extents(src, size):
        moved += _copy_range(src, dst, off, length, what)
    os.ftruncate(dst, size)
    return moved


def _copy_range(src: int, dst: int, off: int, length: int, what: str) -> int:
    done = 0
    while done < length:
        step = min(length - done, _COPY_STEP)
        try:
            n = os.copy_file_range(src, dst, step, off + done, off + done)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                raise
            n = _copy_plain(src, dst, off + done, step)
        if n == 0:
            raise FailedPrecondition(f"{what!r} shrank while it was being copied (it was changed); retry")
        done += n
    return done


def _copy_plain(src: int, dst: int, off: int, length: int) -> int:
    """pread/pwrite for file pairs copy_file_range refuses (e.g. some cross-fs kernels)."""
    done = 0
    while done < length:
        data = os.pread(src, min(length - done, 1 << 20), off + done)
        if not data:
            break
        view = memoryview(data)
        while view:
            view = view[os.pwrite(dst, view, off + done + len(data) - len(view)):]
        done += len(data)
    return done
