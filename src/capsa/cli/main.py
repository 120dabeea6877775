"""The ``capsa`` command: a Docker-like CLI that talks to the daemon over mTLS gRPC.

Every command is thin: parse flags, call :class:`capsa.api.client.CapsaClient`,
print through :mod:`capsa.cli.output`. Errors are typed (:mod:`capsa.errors`)
and become one line on stderr plus the error's stable exit code, here, in
:func:`main` and nowhere else.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from capsa.errors import CapsaError

__all__ = ["cli", "main"]


class Context:
    def __init__(self, config: Path | None, node: str | None) -> None:
        self.config = config
        self.node = node
        self._client = None

    def client(self):  # type: ignore[no-untyped-def]
        from capsa.api.client import CapsaClient

        if self._client is None:
            self._client = CapsaClient.from_config(self.config, node=self.node)
        return self._client


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", type=click.Path(path_type=Path), default=None,
              help="Client config (default: $CAPSA_CONFIG, then $CAPSA_HOME/client.yaml).")
@click.option("--node", default=None, help="Which node of the client config to talk to.")
@click.pass_context
def cli(ctx: click.Context, config: Path | None, node: str | None) -> None:
    """capsa: isolated jobs, images and live-attachable resource capsules."""
    ctx.obj = Context(config, node)


def _register() -> None:
    import capsa.cli.cluster as cluster  # click only: pool commands import the cluster package when run
    import capsa.cli.web as web  # click only: the command imports the web stack (Starlette, uvicorn) when run
    from capsa.cli import admin, capsules, images, jobs, networks, run_features, runtimes, stats, workflows

    for module in (jobs, run_features, images, runtimes, capsules, workflows, networks, stats, admin, web, cluster):
        for command in module.COMMANDS:
            cli.add_command(command)


_register()


def main(argv: list[str] | None = None) -> int:
    try:
        result = cli.main(args=argv, prog_name="capsa", standalone_mode=False)
    except CapsaError as exc:
        click.echo(f"capsa: {exc}", err=True)
        return exc.exit_code
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
    except BrokenPipeError:
        return 141
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
