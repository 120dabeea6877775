"""`capsa cp`: copy files out of and into a job's /work (tar over gRPC, see capsa.jobs.copying)."""

from __future__ import annotations

import os
from functools import partial
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    import socket

__all__ = ["COMMANDS", "NO_FAST_ENV", "cp"]

NO_FAST_ENV = "CAPSA_CP_NO_FAST"


def _remote(arg: str) -> tuple[str, str] | None:
    """(job, path) for ``JOB:PATH``; None for a local path (which may contain ':' after a '/')."""
    job, sep, path = arg.partition(":")
    if not sep or not job or "/" in job:
        return None
    return job, path or "/work"


def _fast(client: Any, no_fast: bool) -> tuple[socket.socket | None, str]:
    """(connection, token) of the local fast path (capsa.fdpass), or (None, "") to stream.

    Only a root client on the daemon's host can use it; anything else (a remote or older daemon,
    an unreachable socket, a refused token) falls back to the stream silently.
    """
    from capsa.errors import CapsaError
    from capsa.fdpass import connect

    if no_fast or os.environ.get(NO_FAST_ENV, "") not in ("", "0") or os.geteuid() != 0:
        return None, ""
    try:
        reply = client.fast_path()
    except CapsaError:
        return None, ""
    conn = connect(reply.socket_path, reply.token)
    return (conn, reply.token) if conn is not None else (None, "")


@click.command("cp")
@click.argument("src")
@click.argument("dest")
@click.option("--no-fast", is_flag=True,
              help=f"Always stream the bytes through the API, never pass descriptors locally (also {NO_FAST_ENV}=1).")
@click.pass_obj
def cp(obj: Any, src: str, dest: str, no_fast: bool) -> None:
    """Copy between a job's /work and the local disk: cp JOB:/work/PATH DEST, or cp SRC JOB:/work/PATH.

    \b
    Copying out works for running jobs and for ended ones whose /work is kept;
    copying in needs a running job (files are owned by the job's user).
    Directories are copied whole; symlinks are copied as symlinks, never followed.
    Into an existing directory the entry keeps its name; otherwise DEST names it.
    Unsafe names ('..', absolute, through a symlink) are refused (exit 11).
    Holes in sparse files stay holes. Run as root on the daemon's host, large files
    are copied in the kernel from descriptors the daemon opens (the local fast path).
    """
    from capsa.errors import InvalidArgument

    out, into = _remote(src), _remote(dest)
    if (out is None) == (into is None):
        raise InvalidArgument("capsa cp: exactly one of SRC and DEST must be JOB:/work/PATH")
    if out is not None:
        _copy_out(obj, *out, dest, no_fast)
    else:
        assert into is not None
        _copy_in(obj, src, *into, no_fast)


def _copy_out(obj: Any, job: str, path: str, dest: str, no_fast: bool) -> None:
    from capsa import tarstream
    from capsa.copy_tree import place, split_job_path
    from capsa.errors import InvalidArgument, NotFound
    from capsa.fdpass import recv_fd

    split_job_path(path)   # refuse '..' and paths outside /work before contacting the daemon
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
    if os.path.isdir(dest):
        fd, new_name = os.open(dest, flags), None
    else:
        parent, new_name = os.path.split(os.path.abspath(dest))
        if not os.path.isdir(parent):
            raise NotFound(f"capsa cp: {parent!r} is not an existing directory")
        if not new_name:
            raise InvalidArgument(f"capsa cp: {dest!r} does not name a file")
        fd = os.open(parent, flags)
    try:
        client = obj.client()
        conn, token = _fast(client, no_fast)
        try:
            chunks = client.copy_out(job, path, fast_token=token)
            done = place(tarstream.decode(chunks), fd, new_name, shown=dest,
                         take_fd=None if conn is None else partial(recv_fd, conn))
        finally:
            if conn is not None:
                conn.close()
    finally:
        os.close(fd)
    click.echo(f"{os.path.join(dest, done.name) if new_name is None else dest}: {done.files} files,"
               f" {done.dirs} dirs, {done.symlinks} symlinks, {done.bytes} bytes ({_how(conn)})", err=True)


def _how(conn: socket.socket | None) -> str:
    return "stream" if conn is None else "local fast path"


def _copy_in(obj: Any, src: str, job: str, path: str, no_fast: bool) -> None:
    from capsa import tarstream
    from capsa.copy_tree import split_job_path
    from capsa.errors import NotFound
    from capsa.fdpass import send_fd
    from capsa.upload_items import walk_local

    split_job_path(path)
    if not os.path.lexists(src):
        raise NotFound(f"capsa cp: {src!r}: no such file or directory")

    def skipped(where: str, why: str) -> None:
        click.echo(f"capsa cp: skipped {where}: {why}", err=True)

    client = obj.client()
    conn, token = _fast(client, no_fast)
    try:
        items = walk_local([src], on_skip=skipped, sparse=True,
                           send_fd=None if conn is None else partial(send_fd, conn))
        done = client.copy_in(job, path, tarstream.encode(items), fast_token=token)
    finally:
        if conn is not None:
            conn.close()
    click.echo(f"{job}:{done.path}: {done.files} files, {done.dirs} dirs, {done.symlinks} symlinks,"
               f" {done.bytes} bytes ({_how(conn)})", err=True)


COMMANDS = [cp]
