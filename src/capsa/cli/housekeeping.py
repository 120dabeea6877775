"""`capsa prune`: remove ended jobs (rows, logs, /work) and finished state-machine history."""

from __future__ import annotations

import sys
from typing import Any

import click

from capsa.cli.output import emit, format_size, json_option

__all__ = ["COMMANDS", "prune"]


def _states(filters: tuple[str, ...]) -> list[str]:
    states = []
    for item in filters:
        key, sep, value = item.partition("=")
        if not sep or key.strip() != "state" or not value.strip():
            raise click.UsageError(f"--filter {item!r}: the only filter is state=STATE (e.g. state=failed)")
        states.append(value.strip())
    return states


@click.command()
@click.option("--older-than", default="", metavar="DURATION",
              help="Only what ended at least this long ago (30m, 24h, 7d); default: everything ended.")
@click.option("--filter", "filters", multiple=True, metavar="state=STATE",
              help="Only jobs in this ended state (repeatable); state-machine history is then kept.")
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
@click.option("--pool", is_flag=True, help="Remove the pool's records of ended pool jobs and workflows instead"
              " (docs/cluster.md); each node prunes its own local jobs.")
@json_option
@click.pass_obj
def prune(obj: Any, older_than: str, filters: tuple[str, ...], force: bool, dry_run: bool, pool: bool,
          as_json: bool) -> None:
    """Remove ended jobs (rows, logs, /work) and finished state-machine history."""
    client = obj.client()
    if pool:
        from capsa.cli.cluster import prune_pool_command

        return prune_pool_command(client, older_than=older_than, filters=filters, force=force, dry_run=dry_run,
                                  as_json=as_json)
    states = _states(filters)
    if not force and not dry_run:
        preview = client.prune(older_than=older_than, states=states, dry_run=True)
        what = f"{len(preview.job_ids)} ended job(s) ({format_size(preview.bytes_freed)})" + (
            "" if states else " and finished state-machine history")
        if not sys.stdin.isatty():
            raise click.UsageError(f"would remove {what}; pass -f to do it without a prompt")
        click.confirm(f"remove {what}?", abort=True)
    result = client.prune(older_than=older_than, states=states, dry_run=dry_run)
    if as_json:
        emit({"job_ids": list(result.job_ids), "bytes_freed": result.bytes_freed,
              "fsm_runs_removed": result.fsm_runs_removed, "dry_run": dry_run})
        return
    for job_id in result.job_ids:
        click.echo(job_id[:12])
    verb = "would free" if dry_run else "freed"
    click.echo(f"{len(result.job_ids)} job(s), {verb} {format_size(result.bytes_freed)};"
               f" {result.fsm_runs_removed} state-machine run(s) removed")

COMMANDS = [prune]
