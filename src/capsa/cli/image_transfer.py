"""`capsa image tag/push/save/load`: images leaving and joining the node by name (docs/images.md).

Progress bars (rich) are drawn only when stderr is a terminal and neither --json nor -q is given;
otherwise the commands print one result (or one JSON document) and nothing else.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from capsa.cli.completion import complete_images
from capsa.cli.output import emit, format_size, json_option

__all__ = ["load", "push", "save", "tag"]

_CHUNK = 1024 * 1024


def _bars(enabled: bool) -> Any:
    """A rich Progress for byte transfers on stderr, or None (not a terminal, --json, -q)."""
    if not enabled or not sys.stderr.isatty():
        return None
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    TextColumn("{task.fields[state]}"), console=Console(stderr=True), transient=False)


@click.command()
@click.argument("source", shell_complete=complete_images)
@click.argument("target")
@json_option
@click.pass_obj
def tag(obj: Any, source: str, target: str, as_json: bool) -> None:
    """Give image SOURCE another name TARGET (same content; moves TARGET if it named another image)."""
    from capsa.cli.images import _image_dict

    img = obj.client().tag_image(source, target)
    if as_json:
        emit(_image_dict(img))
    else:
        click.echo(f"tagged {img.ref} {img.digest}")


@click.command()
@click.argument("ref", shell_complete=complete_images)
@click.argument("destination", required=False, default="")
@click.option("--insecure", is_flag=True, help="Allow plain HTTP for this (non-loopback) registry.")
@click.option("-q", "--quiet", is_flag=True, help="Print only the pushed manifest digest.")
@json_option
@click.pass_obj
def push(obj: Any, ref: str, destination: str, insecure: bool, quiet: bool, as_json: bool) -> None:
    """Push image REF to an OCI registry as DESTINATION (host[:port]/repo:tag; default REF itself).

    Blobs the registry has are skipped; blobs another repository of the same registry holds are mounted.
    """
    stream = obj.client().push_image(ref, destination, insecure=insecure)
    final = None
    progress = _bars(not (quiet or as_json))
    with progress if progress is not None else contextlib.nullcontext():
        tasks: dict[str, Any] = {}
        for update in stream:
            if progress is not None:
                for blob in update.blobs:
                    if blob.digest not in tasks:
                        tasks[blob.digest] = progress.add_task(blob.digest[7:19], total=blob.size, state=blob.state)
                    progress.update(tasks[blob.digest], completed=blob.done, state=blob.state)
            if update.done:
                final = update
    if final is None:
        raise click.ClickException("the push ended without a result")
    blobs = [{"digest": b.digest, "size": b.size, "state": b.state} for b in final.blobs]
    if as_json:
        emit({"destination": final.destination, "digest": final.digest, "blobs": blobs})
    elif quiet:
        click.echo(final.digest)
    else:
        count = {s: sum(1 for b in blobs if b["state"] == s) for s in ("pushed", "exists", "mounted")}
        sent = sum(b["size"] for b in blobs if b["state"] == "pushed")
        click.echo(f"pushed {final.destination} {final.digest} ({count['pushed']} blobs uploaded,"
                   f" {format_size(sent)}; {count['exists']} already there; {count['mounted']} mounted)")


@click.command()
@click.argument("refs", nargs=-1, required=True, shell_complete=complete_images)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the archive to this file (default: stdout, unless it is a terminal).")
@json_option
@click.pass_obj
def save(obj: Any, refs: tuple[str, ...], output: Path | None, as_json: bool) -> None:
    """Write images to an OCI image-layout tar archive (skopeo's oci-archive:, umoci, `capsa image load`)."""
    if output is None and (as_json or sys.stdout.isatty()):
        raise click.UsageError("give -o FILE (the archive is not written to a terminal, nor beside --json)")
    stream = obj.client().save_images(list(refs))
    head = next(stream, None)
    if head is None:
        raise click.ClickException("the daemon sent no archive")
    progress = _bars(not as_json)
    written = 0
    with _destination(output) as sink, progress if progress is not None else contextlib.nullcontext():
        task = progress.add_task("saving", total=head.blob_bytes or None, state="") if progress else None
        for chunk in _data(head, stream):
            sink.write(chunk)
            written += len(chunk)
            if progress is not None:
                progress.update(task, completed=min(written, head.blob_bytes or written))
    if as_json:
        emit({"file": str(output), "bytes": written, "images": list(refs)})
    elif output is not None:
        click.echo(f"saved {', '.join(refs)} to {output} ({format_size(written)})")


def _data(head: Any, stream: Iterator[Any]) -> Iterator[bytes]:
    if head.data:
        yield head.data
    for chunk in stream:
        yield chunk.data


@contextlib.contextmanager
def _destination(output: Path | None) -> Iterator[Any]:
    """The file being written (``FILE.part``, renamed into place only when complete), or stdout."""
    if output is None:
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    part = output.with_name(output.name + ".part")
    try:
        with open(part, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(part, output)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(part)


@click.command()
@click.option("-i", "--input", "input_", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="The archive to read (default: stdin).")
@click.option("-t", "--tag", "tag_", default="", metavar="NAME",
              help="Name for the image when the archive holds one without a name.")
@click.option("-q", "--quiet", is_flag=True, help="Print only the loaded references.")
@json_option
@click.pass_obj
def load(obj: Any, input_: Path | None, tag_: str, quiet: bool, as_json: bool) -> None:
    """Import the images of an OCI image-layout tar archive (`capsa image save`, skopeo's oci-archive:)."""
    if input_ is None and sys.stdin.isatty():
        raise click.UsageError("give -i FILE or pipe the archive to stdin")
    progress = _bars(not (quiet or as_json))
    with (open(input_, "rb") if input_ is not None else contextlib.nullcontext(sys.stdin.buffer)) as source:
        total = os.fstat(source.fileno()).st_size if input_ is not None else None

        def chunks() -> Iterator[bytes]:
            task = progress.add_task("loading", total=total, state="") if progress else None
            while data := source.read(_CHUNK):
                if progress is not None:
                    progress.advance(task, len(data))
                yield data

        with progress if progress is not None else contextlib.nullcontext():
            images = obj.client().load_image(chunks(), tag=tag_)
    if as_json:
        from capsa.cli.images import _image_dict

        emit([_image_dict(i) for i in images])
        return
    for img in images:
        click.echo(img.ref if quiet else f"loaded {img.ref} {img.digest}")
