"""Defensive import of a directory or a tar archive into a private staging tree.

Capsules hold regular files, directories and symlinks, nothing else. The rules
are those of a careful image unpacker, applied before anything is published:

* entry names are relative, UTF-8, without ``..``; ``./`` prefixes and doubled
  slashes are normalised; absolute names are refused (never "made relative");
* an entry may not live below a symlink or a file (no writing through a link
  planted by an earlier entry), and a name may not appear twice with different
  types (no type swaps); a directory may be declared twice;
* symlinks must stay inside the capsule *as the kernel would resolve them*
  (through the other symlinks of the capsule), because a capsule is mounted
  at ``/capsules/NAME`` in a job and an escaping link would point into the
  job's own tree: absolute targets and targets that climb above the capsule
  root are refused;
* devices, FIFOs, sockets and sparse files are refused; tar hard links are
  accepted when they point to a regular file earlier in the archive;
* every limit in :class:`CapsuleLimits` is checked *before* the bytes are
  written (declared sizes, entry count, depth, path length).

Ownership and timestamps are not kept; the executable bit is (files become
``0o555`` or ``0o444``, directories ``0o555``: the staged tree is read-only
before it is ever published).
"""

from __future__ import annotations

import lzma
import os
import shutil
import stat
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from capsa.capsules.limits import CapsuleLimits, check_expansion
from capsa.errors import InvalidArgument, LimitExceeded, UnsafeArchive

__all__ = ["CapsuleLimits", "ImportStats", "import_source"]

_COPY_CHUNK = 1 << 20
# What a damaged compressed stream raises from inside tarfile (gzip.BadGzipFile and bz2's
# "Invalid data stream" are OSErrors without an errno; a real I/O error has one).
_CORRUPT_STREAM = (EOFError, zlib.error, lzma.LZMAError)


@dataclass
class ImportStats:
    entries: int = 0
    total_bytes: int = 0


class _Escape(Exception):
    pass


@dataclass
class _Tree:
    """What has been admitted so far: kind per relative path, symlink targets."""

    limits: CapsuleLimits
    archive_bytes: int | None = None  # size of the source archive (None for a directory)
    kinds: dict[str, str] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)
    stats: ImportStats = field(default_factory=ImportStats)

    def admit(self, raw: str, kind: str, size: int = 0) -> str:
        """Validate one entry; returns its clean relative path ("" for the root itself)."""
        rel = clean_name(raw, self.limits)
        if not rel:
            if kind != "dir":
                raise UnsafeArchive(f"entry {raw!r} names the capsule root but is a {kind}")
            return rel
        parts = rel.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            parent_kind = self.kinds.get(parent)
            if parent_kind is None:
                self._count(parent)
                self.kinds[parent] = "dir"
            elif parent_kind != "dir":
                raise UnsafeArchive(f"entry {rel!r} would be written through the {parent_kind} {parent!r}")
        existing = self.kinds.get(rel)
        if existing is not None:
            if existing == kind == "dir":
                return rel
            raise UnsafeArchive(f"entry {rel!r} appears twice (as {existing} and as {kind})")
        if kind == "file":
            if size > self.limits.max_file_bytes:
                raise LimitExceeded(
                    f"entry {rel!r} is {size} bytes, above the per-file limit of {self.limits.max_file_bytes}"
                )
            if self.stats.total_bytes + size > self.limits.max_total_bytes:
                raise LimitExceeded(
                    f"entry {rel!r} takes the capsule above its size limit of {self.limits.max_total_bytes} bytes"
                )
            check_expansion(self.limits, rel, self.stats.total_bytes + size, self.archive_bytes)
            self.stats.total_bytes += size
        self._count(rel)
        self.kinds[rel] = kind
        return rel

    def _count(self, rel: str) -> None:
        self.stats.entries += 1
        if self.stats.entries > self.limits.max_entries:
            raise LimitExceeded(f"entry {rel!r} exceeds the limit of {self.limits.max_entries} entries")

    def check_symlinks(self) -> None:
        for rel, target in self.links.items():
            if not target or "\0" in target or not _is_utf8(target):
                raise UnsafeArchive(f"symlink {rel!r} has an empty or invalid target")
            if target.startswith("/"):
                raise UnsafeArchive(
                    f"symlink {rel!r} -> {target!r} is absolute and would point outside the capsule"
                )
            budget = [self.limits.max_symlink_hops]
            try:
                self._walk(rel.split("/")[:-1], target, budget)
            except _Escape:
                raise UnsafeArchive(f"symlink {rel!r} -> {target!r} points outside the capsule") from None
            except RecursionError:
                raise UnsafeArchive(f"symlink {rel!r} -> {target!r} loops") from None

    def _walk(self, base: list[str], target: str, budget: list[int]) -> list[str]:
        current = list(base)
        for part in target.split("/"):
            if part in ("", "."):
                continue
            if part == "..":
                if not current:
                    raise _Escape
                current.pop()
                continue
            current.append(part)
            here = "/".join(current)
            if self.kinds.get(here) == "symlink":
                budget[0] -= 1
                if budget[0] < 0:
                    raise UnsafeArchive(f"symlink chain through {here!r} is longer than the hop limit")
                link = self.links[here]
                if link.startswith("/"):
                    raise _Escape
                current = self._walk(current[:-1], link, budget)
            # A file or a missing name ends real resolution; the rest is checked
            # lexically, which is stricter than the kernel and never looser.
        return current


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def clean_name(raw: str, limits: CapsuleLimits) -> str:
    """Normalise an entry name, refusing anything that could leave the capsule."""
    if "\0" in raw:
        raise UnsafeArchive(f"entry name {raw!r} contains NUL")
    if not _is_utf8(raw):
        raise UnsafeArchive(f"entry name {raw!r} is not valid UTF-8")
    if raw.startswith("/"):
        raise UnsafeArchive(f"entry {raw!r} has an absolute path")
    parts = [part for part in raw.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchive(f"entry {raw!r} contains '..'")
    rel = "/".join(parts)
    if len(rel.encode()) > limits.max_path_bytes:
        raise LimitExceeded(f"entry {rel[:80]!r}... is longer than {limits.max_path_bytes} bytes")
    if len(parts) > limits.max_depth:
        raise LimitExceeded(f"entry {rel[:80]!r}... is nested deeper than {limits.max_depth} levels")
    if any(len(part.encode()) > limits.max_name_bytes for part in parts):
        raise LimitExceeded(f"entry {rel[:80]!r} has a component longer than {limits.max_name_bytes} bytes")
    return rel


def import_source(source: Path, dest: Path, limits: CapsuleLimits | None = None) -> ImportStats:
    """Copy ``source`` (a directory or a tar, optionally gz/bz2/xz) into the new directory ``dest``.

    ``dest`` must not exist; on any refusal it is left for the caller to remove.
    """
    limits = limits or CapsuleLimits()
    tree = _Tree(limits)
    os.mkdir(dest, 0o700)
    if source.is_dir():
        _copy_directory(source, dest, tree)
    elif source.is_file():
        tree.archive_bytes = source.stat().st_size
        _extract_tar(source, dest, tree)
    else:
        raise InvalidArgument(f"capsule source {source} is neither a directory nor a tar file")
    tree.check_symlinks()
    for rel, target in sorted(tree.links.items()):
        os.symlink(target, dest / rel)
    for rel in sorted((r for r, k in tree.kinds.items() if k == "dir"), key=len, reverse=True):
        os.chmod(dest / rel, 0o555)
    os.chmod(dest, 0o555)
    return tree.stats


def _file_mode(mode: int) -> int:
    return 0o555 if mode & 0o111 else 0o444


def _copy_directory(source: Path, dest: Path, tree: _Tree) -> None:
    stack: list[tuple[int, str]] = [(os.open(source, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), "")]
    try:
        while stack:
            _copy_one_directory(*stack.pop(), stack, dest, tree)
    finally:
        for dir_fd, _prefix in stack:
            os.close(dir_fd)


def _copy_one_directory(
    dir_fd: int, prefix: str, stack: list[tuple[int, str]], dest: Path, tree: _Tree
) -> None:
    try:
        with os.scandir(dir_fd) as entries:
            names = sorted(entry.name for entry in entries)
        for name in names:
            raw = prefix + name
            if not _is_utf8(name):
                raise UnsafeArchive(f"entry name {raw!r} is not valid UTF-8")
            st = os.lstat(name, dir_fd=dir_fd)
            if stat.S_ISDIR(st.st_mode):
                rel = tree.admit(raw, "dir")
                os.mkdir(dest / rel, 0o755)
                flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
                stack.append((os.open(name, flags, dir_fd=dir_fd), raw + "/"))
            elif stat.S_ISREG(st.st_mode):
                rel = tree.admit(raw, "file", st.st_size)
                _copy_file(dir_fd, name, raw, dest / rel, st.st_size)
            elif stat.S_ISLNK(st.st_mode):
                rel = tree.admit(raw, "symlink")
                tree.links[rel] = os.readlink(name, dir_fd=dir_fd)
            else:
                raise UnsafeArchive(
                    f"{raw!r} is a {_kind_name(st.st_mode)}; capsules hold only regular files, "
                    "directories and symlinks"
                )
    finally:
        os.close(dir_fd)


def _copy_file(dir_fd: int, name: str, raw: str, dest: Path, size: int) -> None:
    src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        opened = os.fstat(src)
        if not stat.S_ISREG(opened.st_mode) or opened.st_size != size:
            raise InvalidArgument(f"capsule source {raw!r} changed while being imported")
        _write_file(dest, _file_mode(opened.st_mode), src, size)
    finally:
        os.close(src)


def _kind_name(mode: int) -> str:
    for test, name in (
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISSOCK, "socket"),
    ):
        if test(mode):
            return name
    return "special file"


def _write_file(path: Path, mode: int, src_fd: int, size: int) -> None:
    dst = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        left = size
        while left > 0:
            try:
                copied = os.copy_file_range(src_fd, dst, min(left, 1 << 30))
            except OSError:
                copied = os.write(dst, os.read(src_fd, min(left, _COPY_CHUNK)))
            if copied == 0:
                raise InvalidArgument(f"capsule source for {path.name!r} shrank while being imported")
            left -= copied
    finally:
        os.close(dst)


class _BoundedTarInfo(tarfile.TarInfo):
    """Refuses oversized pax / GNU long-name headers before tarfile reads them into memory.

    This also bounds the cost of CPython's pax-header parsing (CVE-2024-6232 is
    unfixed in 3.11 < 3.11.10).
    """

    _EXTENDED = (
        tarfile.XHDTYPE,
        tarfile.XGLTYPE,
        tarfile.SOLARIS_XHDTYPE,
        tarfile.GNUTYPE_LONGNAME,
        tarfile.GNUTYPE_LONGLINK,
    )
    max_header_bytes = CapsuleLimits.max_header_bytes  # set per import by _extract_tar

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in self._EXTENDED and self.size > self.max_header_bytes:
            raise LimitExceeded(
                f"tar extended header of {self.size} bytes exceeds max_header_bytes={self.max_header_bytes} "
                f"(near {self.name!r})"
            )
        return super()._proc_member(tarfile_)  # type: ignore[misc]


def _is_corrupt_stream(exc: BaseException) -> bool:
    return isinstance(exc, (tarfile.TarError, *_CORRUPT_STREAM)) or (isinstance(exc, OSError) and exc.errno is None)


def _extract_tar(source: Path, dest: Path, tree: _Tree) -> None:
    tarinfo = type("_TarInfo", (_BoundedTarInfo,), {"max_header_bytes": tree.limits.max_header_bytes})
    try:
        archive = tarfile.open(  # noqa: SIM115 - closed by the with-block below
            source, "r:*", encoding="utf-8", errors="surrogateescape", tarinfo=tarinfo
        )
    except tarfile.TarError as exc:
        raise InvalidArgument(f"capsule source {source} is not a readable tar archive: {exc}") from None
    except (*_CORRUPT_STREAM, OSError) as exc:
        if not _is_corrupt_stream(exc):
            raise
        raise UnsafeArchive(f"capsule archive {source} is corrupt: {exc}") from None
    with archive:
        try:
            for member in archive:
                _extract_member(archive, member, dest, tree)
        except (tarfile.TarError, *_CORRUPT_STREAM, OSError) as exc:
            if not _is_corrupt_stream(exc):
                raise  # a real I/O error (ENOSPC is mapped by the staging directory)
            raise UnsafeArchive(f"capsule archive {source} is corrupt: {exc}") from None


def _extract_member(archive: tarfile.TarFile, member: tarfile.TarInfo, dest: Path, tree: _Tree) -> None:
    if member.isdir():
        rel = tree.admit(member.name, "dir")
        if rel:
            (dest / rel).mkdir(mode=0o755, parents=True, exist_ok=True)
    elif member.isreg() and not member.issparse():
        rel = tree.admit(member.name, "file", member.size)
        (dest / rel).parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        data = archive.extractfile(member)
        assert data is not None  # regular members always have data
        fd = os.open(dest / rel, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(data, out, _COPY_CHUNK)
            if out.tell() != member.size:
                raise UnsafeArchive(f"entry {rel!r} is shorter than its header says")
        os.chmod(dest / rel, _file_mode(member.mode))
    elif member.issym():
        rel = tree.admit(member.name, "symlink")
        (dest / rel).parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        tree.links[rel] = member.linkname
    elif member.islnk():
        target = clean_name(member.linkname, tree.limits)
        if tree.kinds.get(target) != "file":
            raise UnsafeArchive(
                f"hard link {member.name!r} -> {member.linkname!r} does not point to a regular file "
                "earlier in the archive"
            )
        rel = tree.admit(member.name, "file", os.stat(dest / target).st_size)
        (dest / rel).parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        os.link(dest / target, dest / rel, follow_symlinks=False)
    else:
        kind = "sparse file" if member.issparse() else _tar_kind(member)
        raise UnsafeArchive(
            f"entry {member.name!r} is a {kind}; capsules hold only regular files, directories and symlinks"
        )


def _tar_kind(member: tarfile.TarInfo) -> str:
    if member.ischr():
        return "character device"
    if member.isblk():
        return "block device"
    if member.isfifo():
        return "FIFO"
    return f"tar entry of type {member.type!r}"
