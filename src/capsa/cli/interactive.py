"""Commands for processes inside running jobs: exec (docs/adr/0013-interactive-jobs-and-exec.md).

Imported lazily (cli/main.py's table): heavy imports stay inside the functions.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from capsa.cli.completion import complete_jobs

__all__ = ["COMMANDS", "exec_"]


@click.command("exec", context_settings={"ignore_unknown_options": False})
@click.option("-e", "--env", "env", multiple=True, metavar="KEY=VALUE", help="Environment variable (repeatable).")
@click.option("-u", "--user", default="", help="UID[:GID] to run as (default: the job's user).")
@click.option("-w", "--workdir", default="", help="Working directory inside the job (default: the job's).")
@click.argument("job_id", shell_complete=complete_jobs)
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


COMMANDS = [exec_]
