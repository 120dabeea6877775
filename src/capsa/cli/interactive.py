"""Commands for processes inside running jobs: exec, attach (docs/adr/0013-interactive-jobs-and-exec.md).

Imported lazily (cli/main.py's table): heavy imports stay inside the functions.
"""

from __future__ import annotations

import sys
from typing import Any

import click

__all__ = ["COMMANDS", "attach", "attached", "exec_"]


@click.command("exec", context_settings={"ignore_unknown_options": False})
@click.option("-e", "--env", "env", multiple=True, metavar="KEY=VALUE", help="Environment variable (repeatable).")
@click.option("-u", "--user", default="", help="UID[:GID] to run as (default: the job's user).")
@click.option("-w", "--workdir", default="", help="Working directory inside the job (default: the job's).")
@click.argument("job_id")
@click.argument("command", nargs=-1, required=True)
@click.pass_obj
def exec_(obj: Any, env: tuple[str, ...], user: str, workdir: str, job_id: str, command: tuple[str, ...]) -> int:
    """Run a command inside a running job: capsa exec [flags] JOB -- CMD ARGS.

    The process joins all of the job's namespaces, its cgroups (counted against its limits), its
    root, seccomp profile, capabilities and user (unless -u); `capsa exec` exits with its exit code.
    """
    from capsa.cli.output import key_values

    result = obj.client().exec_job(job_id, list(command), env=key_values(env, "-e"), user=user, workdir=workdir)
    sys.stdout.buffer.write(result.stdout)
    sys.stdout.buffer.flush()
    sys.stderr.buffer.write(result.stderr)
    sys.stderr.buffer.flush()
    if result.truncated:
        click.echo("capsa: the command's output was longer than exec keeps; the rest was dropped", err=True)
    if result.oom_killed:
        click.echo("capsa: killed by the job's memory limit (OOM)", err=True)
    return int(result.exit_code)


def attached(client: Any, job_id: str, *, from_start: bool, stdin: bool, detach_keys: bytes,
             stop_on_interrupt: bool) -> int:
    """Attach this terminal (or stdin) to a running -i/-t job; the job's exit code, or 0 once detached.

    Ctrl-C the client itself sees (no terminal in raw mode: -i alone) stops the job when it was
    started by this command (``stop_on_interrupt``, as plain `capsa run`), else only detaches.
    """
    import signal

    from capsa.cli.terminal import ClientSignal, Session

    session = Session(client, job_id, from_start=from_start, stdin=stdin, detach_keys=detach_keys)
    try:
        outcome = session.run()
    except KeyboardInterrupt:
        if stop_on_interrupt:
            client.stop_job(job_id)
        return 128 + signal.SIGINT
    except ClientSignal as sig:
        return 128 + int(sig.args[0])
    if outcome.ended is None:
        click.echo(f"\r\ncapsa: detached from job {job_id[:12]}; it keeps running (`capsa attach {job_id[:12]}`)",
                   err=True)
        return 0
    end = outcome.ended
    if end.signal:
        click.echo(f"capsa: job {job_id[:12]}: {end.reason}", err=True)
    return int(end.exit_code)


@click.command("attach")
@click.option("--detach-keys", default="ctrl-p,ctrl-q", show_default=True, metavar="KEYS",
              help="The keys that detach, leaving the job running (e.g. ctrl-a,d; '' for none).")
@click.option("--no-stdin", is_flag=True, help="Only show the output; send no input.")
@click.argument("job_id")
@click.pass_obj
def attach(obj: Any, detach_keys: str, no_stdin: bool, job_id: str) -> int:
    """Re-attach to a running job started with -i or -t: capsa attach JOB.

    Output from now on comes back, input goes to the job (a -t job's terminal: raw mode, Ctrl-C reaches
    the job). Ctrl-P Ctrl-Q detaches and leaves the job running; the job's exit code is attach's.
    """
    from capsa.cli.terminal import parse_detach_keys

    keys = parse_detach_keys(detach_keys)
    client = obj.client()
    job = client.get_job(job_id)   # a name or prefix becomes the id; unknown: a clear NotFound
    return attached(client, job.id, from_start=False, stdin=not no_stdin, detach_keys=keys,
                    stop_on_interrupt=False)


COMMANDS = [exec_, attach]
