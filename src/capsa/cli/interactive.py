"""Commands for processes inside running jobs: exec, attach (docs/adr/0013-interactive-jobs-and-exec.md).

Imported lazily (cli/main.py's table): heavy imports stay inside the functions.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from capsa.cli.completion import complete_jobs

__all__ = ["COMMANDS", "attach", "attached", "exec_"]


@click.command("exec", context_settings={"ignore_unknown_options": False})
@click.option("-i", "--interactive", is_flag=True, help="Stream stdin to the process (its EOF is the process's).")
@click.option("-t", "--tty", is_flag=True,
              help="Give the process a pseudo-terminal (with -i: this terminal in raw mode, Ctrl-C reaches it).")
@click.option("-e", "--env", "env", multiple=True, metavar="KEY=VALUE", help="Environment variable (repeatable).")
@click.option("-u", "--user", default="", help="UID[:GID] to run as (default: the job's user).")
@click.option("-w", "--workdir", default="", help="Working directory inside the job (default: the job's).")
@click.argument("job_id", shell_complete=complete_jobs)
@click.argument("command", nargs=-1, required=True)
@click.pass_obj
def exec_(obj: Any, interactive: bool, tty: bool, env: tuple[str, ...], user: str, workdir: str, job_id: str,
          command: tuple[str, ...]) -> int:
    """Run a command inside a running job: capsa exec [flags] JOB -- CMD ARGS.

    The process joins all of the job's namespaces, its cgroups (counted against its limits), its
    root, seccomp profile, capabilities and user (unless -u); its output is shown as it is produced
    and `capsa exec` exits with its exit code. It lives as long as this command (or its job).
    """
    import signal

    from capsa.api.gen.capsa.v1 import interactive_pb2 as ipb
    from capsa.cli.output import key_values
    from capsa.cli.terminal import ClientSignal, Session
    from capsa.errors import InvalidArgument

    if tty and interactive and not sys.stdin.isatty():
        raise InvalidArgument("the input device is not a terminal: drop -t, or run from a terminal")
    request = ipb.ExecRequest(job_id=job_id, command=list(command), env=key_values(env, "-e"), user=user,
                              workdir=workdir, stdin=interactive, tty=tty)
    client = obj.client()

    def first(rows: int, cols: int) -> Any:
        request.rows, request.cols = (rows, cols) if tty else (0, 0)
        return ipb.ExecInput(start=request)

    # no detach keys: an exec lives as long as its caller (ADR-0013)
    session = Session(client, client.exec_stream, first, ipb.ExecInput, stdin=interactive, detach_keys=b"")
    try:
        outcome = session.run()
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    except ClientSignal as sig:
        return 128 + int(sig.args[0])
    end = outcome.ended
    if end is None:
        click.echo("capsa: the exec's stream ended before the process did", err=True)
        return 1
    if end.oom_killed:
        click.echo("capsa: killed by the job's memory limit (OOM)", err=True)
    return int(end.exit_code)


def attached(client: Any, job_id: str, *, from_start: bool, stdin: bool, detach_keys: bytes,
             stop_on_interrupt: bool) -> int:
    """Attach this terminal (or stdin) to a running -i/-t job; the job's exit code, or 0 once detached.

    Ctrl-C the client itself sees (no terminal in raw mode: -i alone) stops the job when it was
    started by this command (``stop_on_interrupt``, as plain `capsa run`), else only detaches.
    """
    import signal

    from capsa.api.gen.capsa.v1 import interactive_pb2 as ipb
    from capsa.cli.terminal import ClientSignal, Session

    session = Session(client, client.attach,
                      lambda rows, cols: ipb.AttachInput(job_id=job_id, from_start=from_start, rows=rows, cols=cols),
                      ipb.AttachInput, stdin=stdin, detach_keys=detach_keys)
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
@click.argument("job_id", shell_complete=complete_jobs)
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
