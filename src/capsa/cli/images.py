"""`capsa image ...`: pull, ls, inspect, rm, prune, history, verify; tag, push, save, load (image_transfer)."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click

from capsa.cli.completion import complete_images
from capsa.cli.image_transfer import load, push, save, tag
from capsa.cli.output import ago, emit, format_size, json_option, print_table
from capsa.cli.protojson import message_dict

__all__ = ["COMMANDS"]


def _image_dict(image: Any) -> dict[str, Any]:
    data = message_dict(image)
    data["config"] = json.loads(image.config_json) if image.config_json else {}
    data.pop("config_json", None)
    for key in ("size", "created_at_ns", "unpacked_size"):
        data[key] = int(data.get(key, 0))
    return data



@click.group()
def image() -> None:
    """Manage images."""


@image.command()
@click.argument("ref")
@click.option("--platform", default="", help="os/arch[/variant] (default linux/amd64).")
@click.option("--insecure", is_flag=True, help="Allow plain HTTP for this (non-loopback) registry.")
@click.option("--expected-digest", default="", help="sha256:... the single S3 object must have.")
@click.option("-q", "--quiet", is_flag=True, help="Print only the image digest.")
@json_option
@click.pass_obj
def pull(obj: Any, ref: str, platform: str, insecure: bool, expected_digest: str, quiet: bool, as_json: bool) -> None:
    """Pull an image: registry ref, s3://bucket/prefix/, s3://bucket/key.tar, oci:PATH[:TAG], docker-archive:PATH."""
    stream = obj.client().pull_image(ref, platform=platform, insecure=insecure, expected_digest=expected_digest)
    final = None
    started = time.monotonic()
    if sys.stderr.isatty() and not quiet and not as_json:
        # rich only for the live progress on a terminal: importing it costs more than most commands take.
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

        console = Console(stderr=True)
        columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                   TextColumn("{task.fields[state]}"))
        with Progress(*columns, console=console, transient=False) as progress:
            tasks: dict[str, Any] = {}
            for update in stream:
                for layer in update.layers:
                    if layer.digest not in tasks:
                        tasks[layer.digest] = progress.add_task(layer.digest[7:19] or layer.digest[:12],
                                                                total=layer.total or None, state=layer.state)
                    progress.update(tasks[layer.digest], completed=layer.bytes, state=layer.state)
                if update.done:
                    final = update
    else:
        for update in stream:
            if update.done:
                final = update
    if final is None:
        raise click.ClickException("the pull ended without a result")
    img = final.image
    if as_json:
        emit(_image_dict(img))
    elif quiet:
        click.echo(img.digest)
    else:
        click.echo(f"pulled {img.ref} {img.digest} ({len(img.layers)} layers, {format_size(img.size)},"
                   f" {time.monotonic() - started:.1f}s)")


@image.command("ls")
@click.option("-q", "--quiet", is_flag=True, help="Print references only.")
@json_option
@click.pass_obj
def ls(obj: Any, quiet: bool, as_json: bool) -> None:
    """List images."""
    images = obj.client().list_images()
    if as_json:
        emit([_image_dict(i) for i in images])
    elif quiet:
        for img in images:
            click.echo(img.ref)
    else:
        print_table(["REFERENCE", "DIGEST", "SIZE", "CREATED", "IN USE"],
                    [(i.ref, i.digest[:19], format_size(i.size), ago(i.created_at_ns), len(i.in_use_by)) for i in images])


@image.command()
@click.argument("ref", shell_complete=complete_images)
@json_option
@click.pass_obj
def inspect(obj: Any, ref: str, as_json: bool) -> None:
    """Show an image's manifest digest, layers and config (JSON)."""
    emit(_image_dict(obj.client().inspect_image(ref)))


@image.command()
@click.argument("refs", nargs=-1, required=True, shell_complete=complete_images)
@click.option("-f", "--force", is_flag=True, help="Also remove when ended jobs used it (never while running).")
@json_option
@click.pass_obj
def rm(obj: Any, refs: tuple[str, ...], force: bool, as_json: bool) -> None:
    """Remove images."""
    removed: list[str] = []
    for ref in refs:
        removed += obj.client().remove_image(ref, force=force)
    if as_json:
        emit({"removed": removed})
    else:
        for ref in removed:
            click.echo(f"removed {ref}")


@image.command()
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
@json_option
@click.pass_obj
def prune(obj: Any, force: bool, dry_run: bool, as_json: bool) -> None:
    """Remove blobs, snapshots and download leftovers that no image uses; prints bytes freed."""
    client = obj.client()
    if not force and not dry_run:
        preview = client.prune_images(dry_run=True)
        if not preview.removed:
            click.echo("nothing to prune")
            return
        if not sys.stdin.isatty():
            raise click.UsageError(f"would remove {len(preview.removed)} items ({format_size(preview.bytes_freed)});"
                                   " pass -f to do it without a prompt")
        click.confirm(f"remove {len(preview.removed)} items ({format_size(preview.bytes_freed)})?", abort=True)
    result = client.prune_images(dry_run=dry_run)
    if as_json:
        emit({"removed": list(result.removed), "bytes_freed": result.bytes_freed, "dry_run": dry_run})
        return
    for item in result.removed:
        click.echo(item)
    click.echo(f"{'would free' if dry_run else 'freed'} {result.bytes_freed} bytes ({format_size(result.bytes_freed)})")


@image.command()
@click.argument("ref", shell_complete=complete_images)
@click.option("-n", "--limit", type=int, default=20)
@click.option("--events", is_flag=True, help="Show every FSM event of each run.")
@json_option
@click.pass_obj
def history(obj: Any, ref: str, limit: int, events: bool, as_json: bool) -> None:
    """Show the durable pull runs of an image (state machine history)."""
    runs = obj.client().image_history(ref, limit=limit)
    if as_json:
        from google.protobuf.json_format import (
            MessageToDict,  # unset fields omitted: not message_dict's mapping
        )

        emit([MessageToDict(r, preserving_proto_field_name=True) for r in runs])
        return
    print_table(["RUN", "MACHINE", "STATE", "STEP", "ATTEMPT", "CREATED", "ERROR"],
                [(r.run_id[:12], r.machine, r.state, r.current_transition, r.attempt, ago(r.created_at_ns),
                  r.error_message[:60]) for r in runs])
    if events:
        for run in runs:
            click.echo(f"\n{run.run_id}:")
            for ev in run.events:
                click.echo(f"  {ev.seq:>3} {ev.kind:<20} {ev.transition:<10} {ev.message}")


@image.command()
@click.argument("ref", required=False, default="", shell_complete=complete_images)
@click.option("--all", "all_images", is_flag=True, help="Verify every image.")
@click.option("--repair", is_flag=True, help="Pull damaged images again from their recorded reference.")
@json_option
@click.pass_obj
def verify(obj: Any, ref: str, all_images: bool, repair: bool, as_json: bool) -> None:
    """Re-hash an image (or --all) against its recorded digests and diff_ids; check its snapshots."""
    if bool(ref) == all_images:
        raise click.UsageError("give an image reference or --all (not both)")
    reports = obj.client().verify_images(ref, all=all_images, repair=repair)
    if as_json:
        emit([message_dict(r) for r in reports])
    else:
        print_table(["IMAGE", "STATUS", "BLOBS", "DIFF_IDS", "SNAPSHOTS", "PROBLEMS"],
                    [(r.ref, "ok" if r.ok else ("repaired" if r.repaired else "DAMAGED"), r.blobs_checked,
                      r.diff_ids_checked, r.snapshots_checked, "; ".join(r.problems)[:80]) for r in reports])
    if any(not r.ok and not r.repaired for r in reports):
        raise SystemExit(1)


for _command in (tag, push, save, load):
    image.add_command(_command)

COMMANDS = [image]
