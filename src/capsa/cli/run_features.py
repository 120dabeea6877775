"""`capsa run` options for uploads, secret environment, schedules and timeouts; and `capsa cancel`.

Kept apart from :mod:`capsa.cli.jobs` so ``run`` only gains one decorator and a few calls:
``@feature_options`` declares the flags, :func:`feature_request` turns them into
RunJob arguments (uploading first), :func:`announce_scheduled` and
:func:`timeout_exit` handle the two new outcomes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import click

from capsa.cli.completion import complete_jobs
from capsa.cli.output import emit, json_option
from capsa.errors import InvalidArgument

__all__ = ["COMMANDS", "TIMEOUT_EXIT", "announce_scheduled", "feature_options", "feature_request", "timeout_exit"]

TIMEOUT_EXIT = 124   # what timeout(1) exits with


def feature_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed((
        click.option("--upload", "uploads", multiple=True, metavar="PATH",
                     help="Copy a local file or directory into the job's /work before it starts (repeatable;"
                          " symlinks are kept as symlinks)."),
        click.option("--secret-env", "secret_env", multiple=True, metavar="KEY=VALUE",
                     help="Environment variable delivered to the job but never stored or shown (repeatable)."),
        click.option("--schedule", default="", metavar="WHEN",
                     help="Start later: a delay (30s, 2h30m) or an RFC 3339 time (2030-01-02T15:04:05Z)."),
        click.option("--timeout", default="", metavar="DURATION",
                     help="Stop the job when it runs longer (state TIMEOUT; an attached run exits 124)."),
    )):
        fn = option(fn)
    return fn


def _parse_secrets(pairs: tuple[str, ...]) -> dict[str, str]:
    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            # Never echo the argument: it may be a secret typed without its name.
            raise InvalidArgument("--secret-env expects KEY=VALUE (the argument is not shown)")
        env[key] = value
    return env


def feature_request(client: Any, features: dict[str, Any]) -> dict[str, Any]:
    """RunJob keyword arguments for the feature flags; streams the uploads first."""
    session = ""
    if features["uploads"]:
        def skipped(path: str, why: str) -> None:
            click.echo(f"capsa: --upload: skipping {path}: {why}", err=True)

        session = client.upload_paths(list(features["uploads"]), on_skip=skipped).session
    return {"secret_env": _parse_secrets(features["secret_env"]), "upload_session": session,
            "schedule": features["schedule"], "timeout": features["timeout"]}


def announce_scheduled(job: Any, as_json: bool, emit_job: Callable[[Any], Any]) -> int:
    """A scheduled job is always detached: print its id (stdout) and its start time (stderr)."""
    if as_json:
        emit(emit_job(job))
    else:
        click.echo(job.id)
        when = dt.datetime.fromtimestamp(job.scheduled_at_ns / 1e9).astimezone()
        click.echo(f"capsa: job {job.id[:12]} scheduled for {when:%Y-%m-%d %H:%M:%S %Z}", err=True)
    return 0


def timeout_exit(job: Any) -> int | None:
    if job.state != "TIMEOUT":
        return None
    click.echo(f"capsa: job {job.id[:12]}: {job.reason or 'timed out'}", err=True)
    return TIMEOUT_EXIT


@click.command()
@json_option
@click.argument("job_ids", nargs=-1, required=True, shell_complete=complete_jobs)
@click.pass_obj
def cancel(obj: Any, as_json: bool, job_ids: tuple[str, ...]) -> None:
    """Cancel SCHEDULED (or still PENDING) jobs before they start."""
    from capsa.cli.jobs import job_dict

    results = [obj.client().cancel_job(j) for j in job_ids]
    if as_json:
        emit([job_dict(j) for j in results])
    else:
        for job in results:
            click.echo(job.id[:12])


COMMANDS = [cancel]
