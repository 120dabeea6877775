"""`capsa cp`: copy files out of and into a job's /work (tar over gRPC, see capsa.jobs.copying)."""

from __future__ import annotations

import os
from typing import Any

import click

__all__ = ["COMMANDS", "cp"]


def _remote(arg: str) -> tuple[str, str] | None:
    """(job, path) for ``JOB:PATH``; None for a local path (which may contain ':' after a '/')."""
    job, sep, path = arg.partition(":")
    if not sep or not job or "/" in job:
        return None
    return job, path or "/work"


@click.command("cp")
@click.argument("src")
@click.argument("dest")
@click.pass_obj
def cp(obj: Any, src: str, dest: str) -> None:
    """Copy between a job's /work and the local disk: cp JOB:/work/PATH DEST, or cp SRC JOB:/work/PATH.

    \b
    Copying out works for running jobs and for ended ones whose /work is kept;
    copying in needs a running job (files are owned by the job's user).
    Directories are copied whole; symlinks are copied as symlinks, never followed.
    Into an existing directory the entry keeps its name; otherwise DEST names it.
    Unsafe names ('..', absolute, through a symlink) are refused (exit 11).
    """
    from capsa.errors import InvalidArgument

    out, into = _remote(src), _remote(dest)
    if (out is None) == (into is None):
        raise InvalidArgument("capsa cp: exactly one of SRC and DEST must be JOB:/work/PATH")
    if out is not None:
        _copy_out(obj, *out, dest)
    else:
        assert into is not None
        _copy_in(obj, src, *into)


def _copy_out(obj: Any, job: str, path: str, dest: str) -> None:
    from capsa import tarstream
    from capsa.copy_tree import place, split_job_path
    from capsa.errors import InvalidArgument, NotFound

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
        done = place(tarstream.decode(obj.client().copy_out(job, path)), fd, new_name, shown=dest)
    finally:
        os.close(fd)
    click.echo(f"{os.path.join(dest, done.name) if new_name is None else dest}: {done.files} files,"
               f" {done.dirs} dirs, {done.symlinks} symlinks, {done.bytes} bytes", err=True)


def _copy_in(obj: Any, src: str, job: str, path: str) -> None:
    from capsa import tarstream
    from capsa.copy_tree import split_job_path
    from capsa.errors import NotFound
    from capsa.upload_items import walk_local

    split_job_path(path)
    if not os.path.lexists(src):
        raise NotFound(f"capsa cp: {src!r}: no such file or directory")

    def skipped(where: str, why: str) -> None:
        click.echo(f"capsa cp: skipped {where}: {why}", err=True)

    done = obj.client().copy_in(job, path, tarstream.encode(walk_local([src], on_skip=skipped)))
    click.echo(f"{job}:{done.path}: {done.files} files, {done.dirs} dirs, {done.symlinks} symlinks,"
               f" {done.bytes} bytes", err=True)


COMMANDS = [cp]
