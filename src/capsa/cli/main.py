"""The ``capsa`` command: a Docker-like CLI that talks to the daemon over mTLS gRPC.

Every command is thin: parse flags, call :class:`capsa.api.client.CapsaClient`,
print through :mod:`capsa.cli.output`. Errors are typed (:mod:`capsa.errors`)
and become one line on stderr plus the error's stable exit code, here, in
:func:`main` and nowhere else.

The CLI must answer at once, so this module imports nothing but click:
:class:`LazyGroup` imports a command's module only when that command runs, and
``capsa --help`` lists the commands from :data:`COMMANDS` without importing any
(tests/unit/cli/test_lazy_group.py keeps the table equal to the real commands).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from capsa.errors import CapsaError, Unavailable

__all__ = ["COMMANDS", "LazyGroup", "cli", "entry", "main"]

# gRPC's core logs a failed TLS handshake at INFO on stderr, once per attempt, ahead of the CLI's own
# one-line error (a wrong port, a foreign CA): keep its warnings and errors only, unless asked for more.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

# name -> (module under capsa.cli, attribute, short help as ``capsa --help`` shows it), in --help order.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "admin": ("admin", "admin", "Node administration."),
    "attach": ("interactive", "attach", "Re-attach to a running job started with -i or -t: capsa attach JOB."),
    "cancel": ("run_features", "cancel", "Cancel SCHEDULED (or still PENDING) jobs before they start."),
    "capsule": ("capsules", "capsule",
                "Manage resource capsules: versioned, read-only bundles attached to running jobs."),
    "cp": ("files", "cp", "Copy between a job's /work and the local disk: cp JOB:/work/PATH DEST, or cp SRC JOB:/work/PATH."),
    "completion": ("completion", "completion", "Print the shell completion script for bash, zsh or fish (see `capsa"
                   " completion --help`)."),
    "daemon": ("admin", "daemon", "Run the capsa daemon (as root)."),
    "events": ("watch", "events", "Stream lifecycle events (created, started, exited, removed, pulled, ...) as they happen."),
    "exec": ("interactive", "exec_", "Run a command inside a running job: capsa exec [flags] JOB -- CMD ARGS."),
    "image": ("images", "image", "Manage images."),
    "init": ("admin", "init",
             "Create a CA, a server config and one client config per role (certificates embedded)."),
    "inspect": ("jobs", "inspect", "Show everything known about a job (JSON)."),
    "logs": ("jobs", "logs", "Print a job's output (stdout to stdout, stderr to stderr)."),
    "network": ("networks", "network", "Manage job networks (built-in modes: host, none, isolated, bridge)."),
    "node": ("cluster", "node", "The nodes of the pool."),
    "prune": ("housekeeping", "prune", "Remove ended jobs (rows, logs, /work) and finished state-machine history."),
    "ps": ("jobs", "ps", "List jobs (running ones unless -a)."),
    "rm": ("jobs", "rm", "Remove ended jobs, their logs and files."),
    "run": ("jobs", "run", "Run COMMAND as an isolated job (attached unless -d): capsa run [flags] -- CMD ARGS."),
    "scheduler": ("cluster", "scheduler",
                  "Run a pool scheduler: one leader places jobs, the others stand by (run one or more)."),
    "runtime": ("runtimes", "runtime",
                "Self-contained runtimes: complete root filesystems built from a spec (runtimes/*.yaml)."),
    "stats": ("stats", "stats",
              "Show a job's CPU, memory, IO, pids and network usage (one JSON object per line with --json)."),
    "stop": ("jobs", "stop", "Stop jobs: SIGTERM, then SIGKILL after the grace period."),
    "top": ("stats", "top",
            "Show the node's CPU, memory and disk use, the running jobs by CPU, queues and pulls in flight."),
    "version": ("admin", "version", "Show client and daemon versions."),
    "volume": ("networks", "volume", "Manage volumes that jobs mount with --volume NAME[:/path][:ro]."),
    "wait": ("watch", "wait", "Wait for jobs to end; print each exit code and exit with the first one's."),
    "web": ("web", "web", "Serve the web dashboard; prints a one-time sign-in URL (kill -USR1 PID prints another)."),
    "whoami": ("admin", "whoami", "Show the identity and role the daemon sees for this client."),
    "workflow": ("workflows", "workflow", "Run workflows of jobs (YAML: jobs with `requires` between them)."),
}


class _ReaderGone(Exception):
    """stdout's reader closed the pipe. Not an OSError, so click's main does not turn it into exit 1."""


class LazyGroup(click.Group):
    """A group whose subcommands live in :data:`COMMANDS` and are imported on first use."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            raise _ReaderGone from None

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*COMMANDS, *self.commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = self.commands.get(cmd_name)
        if command is None and cmd_name in COMMANDS:
            import importlib

            module, attr, _ = COMMANDS[cmd_name]
            command = getattr(importlib.import_module(f"capsa.cli.{module}"), attr)
            self.commands[cmd_name] = command
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """click's layout, with the help texts of the table instead of the imported commands."""
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(len(name) for name in names)
        rows = []
        for name in names:
            loaded = self.commands.get(name)
            if loaded is not None:
                if loaded.hidden:
                    continue
                rows.append((name, loaded.get_short_help_str(limit)))
            else:
                # A bare Command shortens the text exactly as the real one would.
                rows.append((name, click.Command(name, help=COMMANDS[name][2]).get_short_help_str(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _say_retrying(error: CapsaError, seconds_left: float) -> None:
    click.echo(f"capsa: {error}; retrying with the same request id for up to {seconds_left:.0f}s"
               " (Ctrl-C to give up)", err=True)


class Context:
    """What every command gets as ``obj``: the global flags and, on first use, the client."""

    def __init__(self, config: Path | None, node: str | None) -> None:
        self.config = config
        self.node = node
        self.config_path: Path | None = None
        self._client: Any = None

    def client(self) -> Any:
        if self._client is None:
            from capsa.api.client import CapsaClient
            from capsa.config.client import find_client_config, load_client_config

            self.config_path = find_client_config(self.config)
            # Cryptographic checks of the file are left to the TLS handshake on this path; when the
            # daemon cannot be reached, main() runs them to name the broken field (diagnose()).
            config = load_client_config(self.config_path, verify=False)
            self._client = CapsaClient(config.select(self.node))
            self._client.on_submit_retry = _say_retrying
        return self._client

    def explain(self, exc: CapsaError) -> CapsaError:
        """A clearer error for ``exc``: an unreachable daemon caused by a broken client config says so."""
        if isinstance(exc, Unavailable) and self.config_path is not None:
            from capsa.config.client import diagnose

            return diagnose(self.config_path) or exc
        return exc


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", type=click.Path(path_type=Path), default=None,
              help="Client config (default: $CAPSA_CONFIG, then $CAPSA_HOME/client.yaml).")
@click.option("--node", default=None, help="Which node of the client config to talk to.")
@click.pass_context
def cli(ctx: click.Context, config: Path | None, node: str | None) -> None:
    """capsa: isolated jobs, images and live-attachable resource capsules."""
    global _invoked
    ctx.obj = _invoked = Context(config, node)


_invoked: Context | None = None   # the running command's Context, for main()'s error reporting


def main(argv: list[str] | None = None) -> int:
    global _invoked
    _invoked = None
    if "_CAPSA_COMPLETE" in os.environ:   # a shell asks for completions (capsa.cli.completion)
        from capsa.cli.completion import install

        install()
    try:
        result = cli.main(args=argv, prog_name="capsa", standalone_mode=False)
        sys.stdout.flush()   # here, not at interpreter exit, so a closed pipe (`capsa ps | head`) is handled below
    except CapsaError as exc:
        error = _invoked.explain(exc) if _invoked is not None else exc
        click.echo(f"capsa: {error}", err=True)
        return error.exit_code
    except click.exceptions.Exit as exc:
        return int(exc.exit_code or 0)
    except click.ClickException as exc:
        exc.show()
        return 2
    except click.exceptions.Abort:
        click.echo("capsa: aborted", err=True)
        return 130
    except KeyboardInterrupt:
        return 130
    except (BrokenPipeError, _ReaderGone):
        # The reader went away: like any Unix filter, stop quietly with 128+SIGPIPE. Python would try to
        # flush stdout again at exit and fail once more, so point it at /dev/null first.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 141
    return result if isinstance(result, int) else 0


# Commands that serve until stopped. They may count on work Python does at exit (atexit flushes of
# queued log output, joins of worker threads), so they end the ordinary way.
_SERVERS = frozenset({"daemon", "scheduler", "web"})


def entry() -> NoReturn:
    """The ``capsa`` program: :func:`main`, then exit without tearing the interpreter down.

    A client command has done everything once :func:`main` returns and its output is flushed;
    Python's orderly shutdown (freeing every module, gRPC closing its channel and threads) would
    still add 10-30 ms to every command, so it ends with ``os._exit``. Commands that served
    (:data:`_SERVERS`) exit normally.
    """
    code = main()
    if _SERVERS.isdisjoint(cli.commands):
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except (BrokenPipeError, OSError):
            code = code or 141   # the reader went away after main() flushed: as main() reports it
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
