"""`capsa capsule ...`: create, ls, inspect, attach, swap, detach, push, pull, rm, pin, unpin, gc."""

from __future__ import annotations

import os
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from capsa.cli.completion import complete_capsules, complete_jobs
from capsa.cli.output import ago, emit, format_size, json_option, key_values, print_table
from capsa.cli.protojson import message_dict
from capsa.errors import InvalidArgument, NotFound

__all__ = ["COMMANDS", "tar_chunks"]

_CHUNK = 1 << 20


def tar_chunks(path: Path) -> Iterator[bytes]:
    """The bytes to upload for ``path``: a tar file as is, or a directory tarred on the fly (symlinks kept).

    The daemon's importer decides what is acceptable (no devices, no escaping links, limits).
    """
    if path.is_file():
        with open(path, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                yield chunk
        return
    if not path.is_dir():
        raise NotFound(f"{path} is neither a directory nor a tar file")
    read_fd, write_fd = os.pipe()
    failure: list[BaseException] = []

    def write() -> None:
        try:
            with os.fdopen(write_fd, "wb") as out, tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                for name in sorted(os.listdir(path)):
                    tar.add(path / name, arcname=name, recursive=True)
        except BrokenPipeError:
            pass   # the upload stopped reading: its own error is what matters
        except BaseException as exc:
            failure.append(exc)

    writer = threading.Thread(target=write, name="capsule-tar", daemon=True)
    writer.start()
    try:
        with os.fdopen(read_fd, "rb") as source:
            while chunk := source.read(_CHUNK):
                yield chunk
    finally:
        writer.join()
    if failure:
        raise InvalidArgument(f"cannot read {path}: {failure[0]}")



def _as_dict(message: Any) -> dict[str, Any]:
    data = message_dict(message)
    for key in ("size", "entries", "created_at_ns", "last_used_at_ns", "latency_ns", "bytes_freed"):
        if key in data:
            data[key] = int(data[key])
    for group in ("attachments", "added", "removed", "kept"):
        for item in data.get(group, []):
            item["attached_at_ns"] = int(item.get("attached_at_ns", 0))
    return data


def _labels(pairs: tuple[str, ...]) -> dict[str, str]:
    return key_values(pairs, "--label")


def _split_ref(ref: str) -> tuple[str, str]:
    name, sep, version = ref.partition("@")
    if not sep or not name or not version:
        raise InvalidArgument(f"{ref!r}: expected NAME@VERSION")
    return name, version


def _print_change(change: Any, as_json: bool) -> None:
    if as_json:
        emit(_as_dict(change))
        return
    for verb, items in (("attached", change.added), ("detached", change.removed), ("already attached", change.kept)):
        for a in items:
            click.echo(f"{verb} {a.name}@{a.version} at {a.target} in job {a.job_id[:12]}")


@click.group()
def capsule() -> None:
    """Manage resource capsules: versioned, read-only bundles attached to running jobs."""


@capsule.command()
@click.argument("ref", metavar="NAME@VERSION")
@click.argument("path", type=click.Path(path_type=Path, exists=True))
@click.option("--dep", "deps", multiple=True, metavar="SPEC", help="A dependency, e.g. 'dataset>=1.2,<2' (repeatable).")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="A label (repeatable).")
@json_option
@click.pass_obj
def create(obj: Any, ref: str, path: Path, deps: tuple[str, ...], labels: tuple[str, ...], as_json: bool) -> None:
    """Create NAME@VERSION from a directory or a tar (plain, gz, bz2 or xz)."""
    name, version = _split_ref(ref)
    made = obj.client().create_capsule(name, version, tar_chunks(path), dependencies=deps, labels=_labels(labels))
    if as_json:
        emit(_as_dict(made))
    else:
        click.echo(f"{made.name}@{made.version} {made.digest} ({format_size(made.size)}, {made.entries} entries)")


@capsule.command("ls")
@click.argument("name", required=False, default="")
@click.option("-q", "--quiet", is_flag=True, help="Print NAME@VERSION only.")
@json_option
@click.pass_obj
def ls(obj: Any, name: str, quiet: bool, as_json: bool) -> None:
    """List capsule versions (of NAME), with their dependencies and the jobs they are attached to."""
    found = obj.client().list_capsules(name)
    if as_json:
        emit([_as_dict(c) for c in found])
    elif quiet:
        for c in found:
            click.echo(f"{c.name}@{c.version}")
    else:
        print_table(["NAME", "VERSION", "DIGEST", "SIZE", "DEPENDENCIES", "ATTACHED TO", "PINNED", "CREATED"],
                    [(c.name, c.version, c.digest[:19], format_size(c.size), ", ".join(c.dependencies) or "-",
                      ", ".join(sorted({a.job_id[:12] for a in c.attachments})) or "-", "yes" if c.pinned else "-",
                      ago(c.created_at_ns)) for c in found])


@capsule.command()
@click.argument("ref", metavar="NAME@VERSION", shell_complete=complete_capsules)
@json_option
@click.pass_obj
def inspect(obj: Any, ref: str, as_json: bool) -> None:
    """Show everything known about a capsule version (JSON)."""
    emit(_as_dict(obj.client().inspect_capsule(ref)))


@capsule.command()
@click.argument("job_id", metavar="JOB", shell_complete=complete_jobs)
@click.argument("spec", metavar="NAME@SPEC", shell_complete=complete_capsules)
@click.option("--at", "target", default="", metavar="PATH", help="Mount point inside the job (default /capsules/NAME).")
@json_option
@click.pass_obj
def attach(obj: Any, job_id: str, spec: str, target: str, as_json: bool) -> None:
    """Mount a capsule and its dependencies read-only into a RUNNING job."""
    _print_change(obj.client().attach_capsule(job_id, spec, target=target), as_json)


@capsule.command()
@click.argument("job_id", metavar="JOB", shell_complete=complete_jobs)
@click.argument("ref", metavar="NAME@VERSION", shell_complete=complete_capsules)
@json_option
@click.pass_obj
def swap(obj: Any, job_id: str, ref: str, as_json: bool) -> None:
    """Replace the attached version of a capsule, atomically (never missing, never mixed)."""
    _print_change(obj.client().swap_capsule(job_id, ref), as_json)


@capsule.command()
@click.argument("job_id", metavar="JOB", shell_complete=complete_jobs)
@click.argument("name")
@json_option
@click.pass_obj
def detach(obj: Any, job_id: str, name: str, as_json: bool) -> None:
    """Unmount a capsule from a job."""
    _print_change(obj.client().detach_capsule(job_id, name), as_json)


@capsule.command()
@click.argument("ref", metavar="NAME@VERSION", shell_complete=complete_capsules)
@click.argument("destination", metavar="DEST")
@click.option("--insecure", is_flag=True, help="Allow plain HTTP for this (non-loopback) registry.")
@json_option
@click.pass_obj
def push(obj: Any, ref: str, destination: str, insecure: bool, as_json: bool) -> None:
    """Push to s3://bucket/prefix/ or to a registry repository (host/repo[:tag], an OCI artifact)."""
    done = obj.client().push_capsule(ref, destination, insecure=insecure)
    if as_json:
        emit(_as_dict(done))
    else:
        click.echo(f"pushed {ref} {done.digest} to {done.location}")


@capsule.command()
@click.argument("source", metavar="SRC")
@click.option("--insecure", is_flag=True, help="Allow plain HTTP for this (non-loopback) registry.")
@json_option
@click.pass_obj
def pull(obj: Any, source: str, insecure: bool, as_json: bool) -> None:
    """Pull from s3://bucket/prefix/NAME/VERSION/ or a registry reference; the digest is verified."""
    got = obj.client().pull_capsule(source, insecure=insecure)
    if as_json:
        emit(_as_dict(got))
    else:
        click.echo(f"pulled {got.name}@{got.version} {got.digest}")


@capsule.command()
@click.argument("refs", nargs=-1, required=True, metavar="NAME@VERSION...", shell_complete=complete_capsules)
@json_option
@click.pass_obj
def rm(obj: Any, refs: tuple[str, ...], as_json: bool) -> None:
    """Remove versions (refused while attached, pinned, or needed by a kept version)."""
    removed = [obj.client().remove_capsule(ref) for ref in refs]
    if as_json:
        emit({"removed": removed})
    else:
        for ref in removed:
            click.echo(ref)


@capsule.command()
@click.argument("ref", metavar="NAME@VERSION", shell_complete=complete_capsules)
@click.pass_obj
def pin(obj: Any, ref: str) -> None:
    """Keep a version through `capsule gc --unused`."""
    got = obj.client().pin_capsule(ref)
    click.echo(f"pinned {got.name}@{got.version}")


@capsule.command()
@click.argument("ref", metavar="NAME@VERSION", shell_complete=complete_capsules)
@click.pass_obj
def unpin(obj: Any, ref: str) -> None:
    got = obj.client().unpin_capsule(ref)
    click.echo(f"unpinned {got.name}@{got.version}")


@capsule.command()
@click.option("--unused", is_flag=True, help="Also remove versions not attached, not pinned, not needed by a kept one.")
@click.option("--older-than", default="", metavar="DURATION", help="With --unused: only those last used before (7d).")
@click.option("--dry-run", is_flag=True, help="List what would be removed.")
@json_option
@click.pass_obj
def gc(obj: Any, unused: bool, older_than: str, dry_run: bool, as_json: bool) -> None:
    """Remove content no version refers to (and, with --unused, unused versions); report bytes freed."""
    from capsa.jobs.schedule import parse_duration  # only here: keeps every other command's start-up light

    if older_than and not unused:
        raise InvalidArgument("--older-than applies together with --unused")
    seconds = parse_duration(older_than, what="--older-than") if older_than else 0.0
    report = obj.client().gc_capsules(unused=unused, older_than_seconds=seconds, dry_run=dry_run)
    if as_json:
        emit(_as_dict(report))
        return
    verb = "would remove" if report.dry_run else "removed"
    for ref in report.removed_versions:
        click.echo(f"{verb} {ref}")
    for digest in report.removed_content:
        click.echo(f"{verb} content {digest}")
    click.echo(f"{'would free' if report.dry_run else 'freed'} {format_size(report.bytes_freed)}")


@capsule.command()
@click.argument("ref", required=False, default="")
@click.option("--all", "all_versions", is_flag=True, help="Verify every stored version.")
@click.option("--repair", is_flag=True, help="Pull damaged versions again from the source they were pulled from.")
@json_option
@click.pass_obj
def verify(obj: Any, ref: str, all_versions: bool, repair: bool, as_json: bool) -> None:
    """Re-hash a stored capsule version (NAME@VERSION, or --all) against its recorded digest."""
    if bool(ref) == all_versions:
        raise click.UsageError("give NAME@VERSION or --all (not both)")
    reports = obj.client().verify_capsules(ref, all=all_versions, repair=repair)
    if as_json:
        emit([_as_dict(r) for r in reports])
    else:
        print_table(["CAPSULE", "STATUS", "ENTRIES", "PROBLEM"],
                    [(r.ref, "ok" if r.ok else ("repaired" if r.repaired else "DAMAGED"), r.entries,
                      "; ".join(p for p in (r.problem, r.repair_error) if p)) for r in reports])
    if any(not r.ok and not r.repaired for r in reports):
        raise SystemExit(1)


COMMANDS = [capsule]
