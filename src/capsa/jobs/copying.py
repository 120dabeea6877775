"""``capsa cp`` on the daemon: a job's ``/work`` served directly, never through the job.

The job's ``/work`` is the host directory ``<home>/jobs/<id>/work``; everything below it is
resolved and walked with the fd-only helpers of :mod:`capsa.copy_tree` (see there, and ADR-0014).
"""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Iterable, Iterator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from capsa.copy_tree import CopyResult, open_beneath, place, split_job_path, walk_fd
from capsa.errors import FailedPrecondition, InvalidArgument, NotFound, UnsafeArchive
from capsa.fdpass import FdBroker, recv_fd, send_fd
from capsa.upload_items import UploadEntry

if TYPE_CHECKING:
    from capsa.jobs.service import JobService

__all__ = ["JobFiles"]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _proc_owner(pid: int) -> tuple[int, int] | None:
    """The effective uid/gid of a job's process, or None when it is gone."""
    ids: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("Uid", "Gid"):
                    ids[key] = int(rest.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return (ids["Uid"], ids["Gid"]) if len(ids) == 2 else None


class JobFiles:
    """Copy out of (running or ended) and into (running) jobs' /work.

    With a ``fast_token`` (see :mod:`capsa.fdpass`) large regular files travel as descriptors over
    the token's connection; everything is resolved, refused and written exactly as without one.
    """

    def __init__(self, jobs: JobService, fast: FdBroker) -> None:
        self.jobs = jobs
        self.fast = fast

    def _work_fd(self, job_id: str) -> int:
        try:
            return os.open(Path(self.jobs.jobs_dir) / job_id / "work", _DIR_FLAGS)
        except FileNotFoundError:
            raise NotFound(f"job {job_id[:12]} has no /work any more (removed)") from None

    def _claim(self, fast_token: str) -> socket.socket | None:
        """The token's descriptor connection, claimed first so that a refused copy closes it at once."""
        return self.fast.claim(fast_token) if fast_token else None

    def copy_out(self, id_or_prefix: str, path: str,
                 fast_token: str = "") -> Iterator[tuple[UploadEntry | None, bytes]]:
        """Items for JOB:path; checks (token, job, path) eagerly so errors come before the first byte."""
        conn = self._claim(fast_token)
        try:
            parent, name, rel = self._source(id_or_prefix, path)
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        return self._items(parent, name, rel, conn)

    def _source(self, id_or_prefix: str, path: str) -> tuple[int, str, str]:
        """(parent fd, name in it, tar name) of JOB:path."""
        job = self.jobs.get(id_or_prefix)
        parts = split_job_path(path)
        work = self._work_fd(job.id)
        try:
            parent = open_beneath(work, parts[:-1], path) if parts else os.dup(work)
        finally:
            os.close(work)
        name = parts[-1] if parts else "."
        try:
            os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            os.close(parent)
            raise NotFound(f"{path!r}: no such file or directory in job {job.id[:12]}") from None
        except BaseException:
            os.close(parent)
            raise
        return parent, name, parts[-1] if parts else "work"

    @staticmethod
    def _items(parent: int, name: str, rel: str,
               conn: socket.socket | None) -> Iterator[tuple[UploadEntry | None, bytes]]:
        try:
            yield from walk_fd(parent, name, rel, send_fd=None if conn is None else partial(send_fd, conn))
        finally:
            os.close(parent)
            if conn is not None:
                conn.close()

    def copy_in(self, id_or_prefix: str, path: str, items: Iterable[tuple[UploadEntry | None, bytes]],
                fast_token: str = "") -> CopyResult:
        conn = self._claim(fast_token)
        try:
            return self._copy_in(id_or_prefix, path, items, conn)
        finally:
            if conn is not None:
                conn.close()

    def _copy_in(self, id_or_prefix: str, path: str, items: Iterable[tuple[UploadEntry | None, bytes]],
                 conn: socket.socket | None) -> CopyResult:
        job = self.jobs.get(id_or_prefix)
        if job.state.ended or not job.pid:
            raise FailedPrecondition(f"job {job.id[:12]} is {job.state.value}: files are copied into running"
                                     " jobs only")
        owner = _proc_owner(job.pid)
        if owner is None:
            raise FailedPrecondition(f"job {job.id[:12]} is not running any more")
        parts = split_job_path(path)
        work = self._work_fd(job.id)
        try:
            dest, new_name = self._dest(work, parts, path)
        finally:
            os.close(work)
        try:
            done = place(items, dest, new_name, owner=owner, shown=path,
                         take_fd=None if conn is None else partial(recv_fd, conn))
        finally:
            os.close(dest)
        where = "/".join(["/work", *parts[:-1], done.name] if new_name else ["/work", *parts, done.name])
        return CopyResult(name=where, files=done.files, dirs=done.dirs, symlinks=done.symlinks, bytes=done.bytes)

    @staticmethod
    def _dest(work: int, parts: list[str], shown: str) -> tuple[int, str | None]:
        """(directory fd, new name or None): into an existing directory, else as the path's last name."""
        if not parts:
            return os.dup(work), None
        try:
            return open_beneath(work, parts, shown), None
        except (NotFound, InvalidArgument):
            pass
        # Not an existing directory: the last component is the new name, in its (existing) parent.
        parent = open_beneath(work, parts[:-1], shown)
        try:
            st = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return parent, parts[-1]
        if stat.S_ISLNK(st.st_mode):
            os.close(parent)
            raise UnsafeArchive(f"{shown!r} is a symlink that does not resolve to a directory inside /work;"
                                " refused (it is never written through)")
        return parent, parts[-1]
