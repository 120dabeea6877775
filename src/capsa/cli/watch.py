"""Waiting and watching: ``capsa wait`` and ``capsa events``.

Both read the daemon's durable event records (capsa.events), so nothing that happens between the
command starting and its stream being set up is missed: they ask for events since just before they
started (with a margin for a daemon clock a little behind ours) and check the current state after.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click

from capsa.cli.completion import complete_jobs
from capsa.cli.output import emit, json_option
from capsa.errors import InvalidArgument

__all__ = ["COMMANDS", "events", "wait"]

ENDED_ACTIONS = frozenset({"exited", "oom", "stopped", "canceled", "timeout", "removed"})
CLOCK_MARGIN_NS = 60 * 1_000_000_000
EVENT_TYPES = ("job", "image", "capsule", "workflow")


@click.command()
@json_option
@click.argument("job_ids", nargs=-1, required=True, shell_complete=complete_jobs)
@click.pass_obj
def wait(obj: Any, as_json: bool, job_ids: tuple[str, ...]) -> int:
    """Wait for jobs to end; print each exit code and exit with the first one's."""
    client = obj.client()
    since = time.time_ns() - CLOCK_MARGIN_NS
    jobs = [client.get_job(j) for j in job_ids]   # names and prefixes resolve here; unknown: exit 3
    ended = {j.id: j for j in jobs if j.ended}
    pending = [j.id for j in jobs if j.id not in ended]
    if pending:
        for event in client.watch_events(types=["job"], ids=pending, since_ns=since):
            if event.action not in ENDED_ACTIONS or event.id in ended:
                continue
            job = client.get_job(event.id) if event.action != "removed" else None
            if job is None or job.ended:
                ended[event.id] = job if job is not None else _removed(event)
            if all(j in ended for j in pending):
                break
    results = [ended[j.id] for j in jobs]
    if as_json:
        emit([{"id": j.id, "name": j.name, "state": j.state, "exit_code": j.exit_code} for j in results])
    else:
        for job in results:
            click.echo(job.exit_code)
    return int(results[0].exit_code)


def _removed(event: Any) -> Any:
    """An --rm job gone before we read it: its exit code is on its last event before removal."""
    from types import SimpleNamespace

    code = event.attributes.get("exit_code", "")
    return SimpleNamespace(id=event.id, name=event.name, state=event.attributes.get("state", "REMOVED"),
                           exit_code=int(code) if code.lstrip("-").isdigit() else -1)


@click.command()
@click.option("-f", "--filter", "filters", multiple=True, metavar="type=TYPE",
              help="Only events of this type: job, image, capsule or workflow (repeatable: any of them).")
@click.option("--since", default="", metavar="WHEN",
              help="Replay recorded events since a duration ago (10m) or an RFC 3339 time, then stream.")
@click.option("--no-follow", is_flag=True, help="Print the replayed events and stop.")
@json_option
@click.pass_obj
def events(obj: Any, filters: tuple[str, ...], since: str, no_follow: bool, as_json: bool) -> None:
    """Stream lifecycle events (created, started, exited, removed, pulled, ...) as they happen."""
    from capsa.selectors import parse_since

    types: list[str] = []
    for item in filters:
        key, sep, value = item.partition("=")
        if key != "type" or not sep:
            raise InvalidArgument(f"--filter {item!r}: the only filter is type=TYPE")
        if value not in EVENT_TYPES:
            raise InvalidArgument(f"--filter {item!r}: a type is one of {', '.join(EVENT_TYPES)}")
        types.append(value)
    since_ns = parse_since(since, what="--since") if since else time.time_ns() - CLOCK_MARGIN_NS // 60
    if no_follow and not since:
        raise InvalidArgument("--no-follow needs --since: there is nothing to replay otherwise")
    for event in obj.client().watch_events(types=types, since_ns=since_ns, follow=not no_follow):
        if as_json:
            sys.stdout.write(json.dumps(event_dict(event)) + "\n")
        else:
            attrs = " ".join(f"{k}={v}" for k, v in sorted(event.attributes.items()) if v)
            name = f" ({event.name})" if event.name else ""
            sys.stdout.write(f"{_rfc3339(event.time_ns)} {event.type} {event.action} {event.id}{name}"
                             + (f" {attrs}" if attrs else "") + "\n")
        sys.stdout.flush()


def event_dict(event: Any) -> dict[str, Any]:
    return {"seq": int(event.seq), "time_ns": int(event.time_ns), "type": event.type, "action": event.action,
            "id": event.id, "name": event.name, "attributes": dict(event.attributes)}


def _rfc3339(ns: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ns // 1_000_000_000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S") + \
        f".{ns % 1_000_000_000:09d}Z"


COMMANDS = [wait, events]
