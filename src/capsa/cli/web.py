"""``capsa web``: the browser dashboard (capsa.web), an ordinary mTLS client of the configured node(s).

Only click is imported here: the web stack (Starlette, uvicorn, Jinja2) loads inside the command,
so ``capsa ps`` and every other command never pay for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

__all__ = ["COMMANDS"]


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to serve on. Anything but loopback needs --allow-remote and TLS.")
@click.option("--port", default=8765, show_default=True, type=int, help="Port (0 picks a free one).")
@click.option("--allow-remote", is_flag=True, help="Allow a non-loopback --host (requires TLS).")
@click.option("--tls-cert", type=click.Path(path_type=Path, dir_okay=False, exists=True), default=None,
              help="Server certificate (PEM, chain included) for HTTPS.")
@click.option("--tls-key", type=click.Path(path_type=Path, dir_okay=False, exists=True), default=None,
              help="Its private key (PEM).")
@click.option("--tls-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Make (once) a web CA and a certificate for --public-name/--host here, and serve HTTPS with it.")
@click.option("--public-name", default=None, help="Host name browsers use to reach the dashboard.")
@click.pass_obj
def web(obj: Any, host: str, port: int, allow_remote: bool, tls_cert: Path | None, tls_key: Path | None,
        tls_dir: Path | None, public_name: str | None) -> None:
    """Serve the web dashboard; prints a one-time sign-in URL (kill -USR1 PID prints another)."""
    from capsa.web.server import WebOptions, serve

    options = WebOptions(host=host, port=port, allow_remote=allow_remote, tls_cert=tls_cert, tls_key=tls_key,
                         tls_dir=tls_dir, public_name=public_name)
    serve(options, config_path=obj.config, node=obj.node, echo=lambda line: click.echo(line))


COMMANDS = [web]
