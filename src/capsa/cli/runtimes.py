"""`capsa runtime ...`: build, ls, inspect, rm."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from capsa.cli.output import ago, emit, format_size, json_option, print_table
from capsa.cli.protojson import message_dict
from capsa.errors import InvalidArgument

__all__ = ["COMMANDS"]


def _runtime_dict(rt: Any) -> dict[str, Any]:
    data = message_dict(rt)
    data["spec"] = json.loads(rt.spec_json) if rt.spec_json else {}
    data.pop("spec_json", None)
    for key in ("size", "created_at_ns"):
        data[key] = int(data.get(key, 0))
    for layer in data.get("layers", []):
        layer["size"] = int(layer.get("size", 0))
    for build in data.get("builds", []):
        for key in ("created_at_ns", "finished_at_ns"):
            build[key] = int(build.get(key, 0))
    return data



@click.group()
def runtime() -> None:
    """Self-contained runtimes: complete root filesystems built from a spec (runtimes/*.yaml)."""


@runtime.command()
@click.argument("spec", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Rebuild every layer, even when the runtime is up to date.")
@click.option("-q", "--quiet", is_flag=True, help="Print only the runtime's NAME@VERSION (no build log).")
@json_option
@click.pass_obj
def build(obj: Any, spec: Path, force: bool, quiet: bool, as_json: bool) -> None:
    """Build the runtime SPEC describes, streaming the build log (its jobs' output)."""
    try:
        text = spec.read_text()
    except OSError as exc:
        raise InvalidArgument(f"cannot read {spec}: {exc.strerror}") from None
    started = time.monotonic()
    log = sys.stderr.buffer if as_json else sys.stdout.buffer
    final = None
    for update in obj.client().build_runtime(text, force=force, source=str(spec)):
        if update.log and not quiet:
            log.write(update.log)
            log.flush()
        if update.done:
            final = update
    if final is None:
        raise click.ClickException("the build ended without a result")
    rt = final.runtime
    if as_json:
        emit({**_runtime_dict(rt), "up_to_date": final.up_to_date, "run_id": final.run_id})
    elif quiet:
        click.echo(rt.ref)
    else:
        what = "up to date" if final.up_to_date else "built"
        click.echo(f"{what}: runtime {rt.ref} {rt.digest} ({len(rt.layers)} layers, {format_size(rt.size)},"
                   f" {time.monotonic() - started:.1f}s)")


@runtime.command("ls")
@click.option("-q", "--quiet", is_flag=True, help="Print NAME@VERSION only.")
@json_option
@click.pass_obj
def ls(obj: Any, quiet: bool, as_json: bool) -> None:
    """List the runtimes built on this node."""
    runtimes = obj.client().list_runtimes()
    if as_json:
        emit([_runtime_dict(r) for r in runtimes])
    elif quiet:
        for rt in runtimes:
            click.echo(rt.ref)
    else:
        print_table(["RUNTIME", "BASE", "LAYERS", "SIZE", "CREATED", "IN USE", "DIGEST"],
                    [(r.ref, r.base, len(r.layers), format_size(r.size), ago(r.created_at_ns), len(r.in_use_by),
                      r.digest[:19]) for r in runtimes])


@runtime.command()
@click.argument("name")
@json_option
@click.pass_obj
def inspect(obj: Any, name: str, as_json: bool) -> None:
    """Show a runtime (NAME[@VERSION]): its image, layers, spec and recent builds (JSON)."""
    emit(_runtime_dict(obj.client().inspect_runtime(name)))


@runtime.command()
@click.argument("names", nargs=-1, required=True)
@click.option("-f", "--force", is_flag=True, help="Also when ended jobs used it (never while a job runs in it).")
@json_option
@click.pass_obj
def rm(obj: Any, names: tuple[str, ...], force: bool, as_json: bool) -> None:
    """Remove runtimes (NAME@VERSION)."""
    removed = [obj.client().remove_runtime(n, force=force) for n in names]
    if as_json:
        emit({"removed": removed})
    else:
        for ref in removed:
            click.echo(f"removed runtime {ref}")


COMMANDS = [runtime]
