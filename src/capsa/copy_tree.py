"""``capsa cp`` trees: read and written through directory fds only (daemon and CLI alike).

A job's ``/work`` is the host directory ``<home>/jobs/<id>/work`` bind-mounted into the job,
so the daemon serves it directly, without entering the job. The job may have planted
symlinks anywhere in it, so:

* the path the caller names is resolved with ``openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)``
  relative to an fd of the work directory: a symlink (or ``..``) leading outside fails with
  EXDEV and becomes UnsafeArchive; symlinks that stay inside ``/work`` are resolved the way
  the job itself would see them;
* below that point every step is ``O_NOFOLLOW`` relative to its parent's fd (reading:
  :func:`walk_fd`; writing: the upload tree writer), so a symlink is copied as a symlink
  and never followed, even one swapped in while the copy runs;
* writes go to a fresh staging directory next to the destination and are renamed into place
  only when the whole stream arrived and checked out; any failure removes the staging
  directory, so a refused or cut copy leaves nothing behind. The same :func:`place` is used
  by the CLI to write a copied-out tar below DEST.

Files written into a running job are chowned to the uid/gid the job's process runs as.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from capsa import linux
from capsa.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, UnsafeArchive
from capsa.upload_items import EntryKind, UploadEntry, file_items
from capsa.upload_tree import TreeWriter, UploadLimits

__all__ = ["COPY_LIMITS", "CopyResult", "open_beneath", "place", "split_job_path", "walk_fd"]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_BENEATH = linux.RESOLVE_BENEATH | linux.RESOLVE_NO_MAGICLINKS
_STAGING = ".capsa-cp-"
# cp moves what the caller asks for; the disk (and the job's quota) is the real limit, not a size cap.
COPY_LIMITS = UploadLimits(max_file_bytes=1 << 50, max_total_bytes=1 << 50, max_entries=10_000_000)


@dataclass(frozen=True)
class CopyResult:
    name: str
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    bytes: int = 0


def split_job_path(path: str) -> list[str]:
    """The components below /work of ``/work/...`` (``[]`` for /work itself); '..' and paths elsewhere refused."""
    if not path.startswith("/"):
        path = "/work/" + path   # "JOB:data/x" means /work/data/x, the job's working directory
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchive(f"{path!r}: '..' is refused; name a path beneath /work")
    if not parts or parts[0] != "work":
        raise InvalidArgument(f"{path!r}: only paths in the job's /work can be copied")
    if "\x00" in path:
        raise UnsafeArchive(f"{path!r}: NUL bytes are refused")
    return parts[1:]


def open_beneath(root_fd: int, parts: list[str], shown: str, flags: int = _DIR_FLAGS) -> int:
    """An fd for root/parts, resolved with RESOLVE_BENEATH: escaping symlinks are UnsafeArchive."""
    try:
        return linux.openat2(root_fd, "/".join(parts) or ".", flags & ~os.O_NOFOLLOW, resolve=_BENEATH)
    except OSError as exc:
        if exc.errno in (errno.EXDEV, errno.ELOOP):
            raise UnsafeArchive(f"{shown!r} resolves outside /work (a symlink or '..' pointing out);"
                                " refused") from None
        if exc.errno == errno.ENOENT:
            raise NotFound(f"{shown!r}: no such file or directory in the job") from None
        if exc.errno == errno.ENOTDIR:
            raise InvalidArgument(f"{shown!r}: a path component is not a directory") from None
        raise


# -- reading ------------------------------------------------------------------------------------
def walk_fd(parent_fd: int, name: str, rel: str, *,
            send_fd: Callable[[int], None] | None = None) -> Iterator[tuple[UploadEntry | None, bytes]]:
    """Upload items for ``name`` in ``parent_fd`` (tar name ``rel``), never following a symlink.

    Files with holes send only their data extents; with ``send_fd`` large files go as descriptors.
    """
    st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    if stat.S_ISLNK(st.st_mode):
        yield UploadEntry(rel, EntryKind.SYMLINK, 0o777, 0, os.readlink(name, dir_fd=parent_fd)), b""
    elif stat.S_ISREG(st.st_mode):
        yield from _file(parent_fd, name, rel, send_fd)
    elif stat.S_ISDIR(st.st_mode):
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        try:
            yield UploadEntry(rel, EntryKind.DIR, stat.S_IMODE(os.fstat(fd).st_mode)), b""
            for child in sorted(os.listdir(fd)):
                try:
                    yield from walk_fd(fd, child, f"{rel}/{child}", send_fd=send_fd)
                except FileNotFoundError:
                    continue   # removed by the running job while we walked: not an error of the copy
        finally:
            os.close(fd)
    # sockets, FIFOs and device nodes are not copied (opening a FIFO would block the daemon)


def _file(parent_fd: int, name: str, rel: str,
          send_fd: Callable[[int], None] | None) -> Iterator[tuple[UploadEntry | None, bytes]]:
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=parent_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):   # swapped between the stat and the open
            return
        # A file the job is still appending to is copied as it was when opened.
        yield from file_items(fd, rel, stat.S_IMODE(st.st_mode), st.st_size, sparse=True, send_fd=send_fd,
                              shrank=FailedPrecondition, shown=repr(rel))
    finally:
        os.close(fd)


# -- writing ------------------------------------------------------------------------------------
def _chown_tree(fd: int, uid: int, gid: int) -> None:
    for name in os.listdir(fd):
        os.chown(name, uid, gid, dir_fd=fd, follow_symlinks=False)
        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            try:
                _chown_tree(child, uid, gid)
            finally:
                os.close(child)


def place(items: Iterable[tuple[UploadEntry | None, bytes]], dest_fd: int, new_name: str | None, *,
          owner: tuple[int, int] | None = None, shown: str = "DEST",
          take_fd: Callable[[], int] | None = None) -> CopyResult:
    """Write a stream with one top-level entry into ``dest_fd`` (renamed to ``new_name`` if given).

    The tree is built in a staging directory inside ``dest_fd`` and renamed into place once
    complete; an existing file of the same name is replaced, a non-empty directory is not.
    ``take_fd`` yields the descriptors of entries marked ``passed`` (the local fast path).
    """
    staging = _STAGING + secrets.token_hex(8)
    os.mkdir(staging, 0o700, dir_fd=dest_fd)
    try:
        sfd = os.open(staging, _DIR_FLAGS, dir_fd=dest_fd)
        try:
            writer = TreeWriter(sfd, COPY_LIMITS, take_fd=take_fd)
            try:
                for entry, data in items:
                    if entry is not None:
                        writer.begin(entry)
                    writer.data(data)
                writer.finish()
            finally:
                writer.abort()
            top = os.listdir(sfd)
            if len(top) != 1:
                raise InvalidArgument(f"the copy stream holds {len(top)} top-level entries; exactly one is"
                                      " copied at a time")
            if owner is not None:
                os.chown(top[0], owner[0], owner[1], dir_fd=sfd, follow_symlinks=False)
                if stat.S_ISDIR(os.stat(top[0], dir_fd=sfd, follow_symlinks=False).st_mode):
                    child = os.open(top[0], _DIR_FLAGS, dir_fd=sfd)
                    try:
                        _chown_tree(child, *owner)
                    finally:
                        os.close(child)
            name = new_name or top[0]
            try:
                os.rename(top[0], name, src_dir_fd=sfd, dst_dir_fd=dest_fd)
            except OSError as exc:
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.EISDIR, errno.ENOTDIR):
                    raise AlreadyExists(f"{shown}: {name!r} already exists and is not replaced by this copy"
                                        " (a directory is only replaced when empty, and only by a directory)"
                                        ) from None
                raise
        finally:
            os.close(sfd)
    finally:
        shutil.rmtree(staging, dir_fd=dest_fd, ignore_errors=True)
    return CopyResult(name=name, files=writer.files, dirs=writer.dirs, symlinks=writer.symlinks,
                      bytes=writer.total)
