"""Node commands: init, daemon, version, whoami."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from capsa import __version__
from capsa.cli.output import emit, json_option
from capsa.errors import CapsaError

__all__ = ["COMMANDS"]


@click.command()
@click.option("--dir", "directory", type=click.Path(path_type=Path), required=True,
              help="Where to write server.yaml and client-<role>.yaml.")
@click.option("--address", default="127.0.0.1:7443", show_default=True, help="Address clients dial.")
@click.option("--host", "hosts", multiple=True, help="Extra DNS name or IP for the server certificate.")
@click.option("--force", is_flag=True, help="Overwrite existing files.")
@click.option("--pool-node", "pool_nodes", multiple=True, metavar="NAME=HOST:PORT[,LABEL=VALUE...]",
              help="A pool: one node (repeatable); with --etcd, writes a whole pool's certs (docs/cluster.md).")
@click.option("--etcd", "etcd_members", multiple=True, metavar="NAME=HOST:CLIENT_PORT:PEER_PORT",
              help="A pool: one etcd member (repeatable).")
@json_option
def init(directory: Path, address: str, hosts: tuple[str, ...], force: bool, pool_nodes: tuple[str, ...],
         etcd_members: tuple[str, ...], as_json: bool) -> None:
    """Create a CA, a server config and one client config per role (certificates embedded)."""
    from capsa.config import write_bundle
    from capsa.pki import default_server_hosts

    if pool_nodes or etcd_members:
        from capsa.cli.cluster import init_pool

        paths = init_pool(directory, pool_nodes, etcd_members, force=force)
    else:
        paths = write_bundle(directory, address=address, hosts=[*default_server_hosts(), *hosts] if hosts else None,
                             overwrite=force)
    if as_json:
        emit({"files": [str(p) for p in paths]})
    else:
        for path in paths:
            click.echo(str(path))


@click.command()
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None,
              help="server.yaml to use (default: $CAPSA_HOME/server.yaml, created on first start).")
@click.option("--home", type=click.Path(path_type=Path), default=None, help="Data dir (default $CAPSA_HOME).")
@click.option("--listen", default=None, help="host:port to listen on (default from config, 127.0.0.1:7443).")
@click.option("--live-restore", is_flag=True, help="Keep jobs running when the daemon stops.")
@click.option("--ready-file", type=click.Path(path_type=Path), default=None,
              help="Write this file (atomically) once the API listens and the client config exists;"
                   " removed at shutdown. Under systemd (Type=notify) READY=1 is sent as well.")
def daemon(config_path: Path | None, home: Path | None, listen: str | None, live_restore: bool,
           ready_file: Path | None) -> int:
    """Run the capsa daemon (as root)."""
    from capsa.config.paths import capsa_home
    from capsa.daemon import DaemonOptions, run_daemon

    return run_daemon(DaemonOptions(home=(home or capsa_home()).absolute(), config_path=config_path,
                                    listen=listen, live_restore=live_restore,
                                    ready_file=ready_file.absolute() if ready_file else None))


@click.command()
@json_option
@click.pass_obj
def version(obj: Any, as_json: bool) -> int:
    """Show client and daemon versions."""
    info: dict[str, Any] = {"client": __version__}
    failure: CapsaError | None = None
    try:
        server = obj.client().version()
        info["daemon"] = {"version": server.version, "cgroup": server.cgroup_version, "kernel": server.kernel,
                          "snapshotter": server.snapshotter}
    except CapsaError as exc:
        failure = obj.explain(exc)
        info["daemon_error"] = str(failure)
    # The client's version is printed either way, but the exit status says whether the daemon answered
    # (7 when it is unreachable), so `until capsa version; do sleep 1; done` waits for a usable daemon.
    status = failure.exit_code if failure is not None else 0
    if as_json:
        emit(info)
        return status
    click.echo(f"client: capsa {info['client']}")
    if "daemon" in info:
        d = info["daemon"]
        click.echo(f"daemon: capsa {d['version']} (kernel {d['kernel']}, cgroup {d['cgroup']}, "
                   f"snapshotter {d['snapshotter']})")
    else:
        click.echo(f"daemon: unreachable ({info['daemon_error']})")
    return status


@click.command()
@json_option
@click.pass_obj
def whoami(obj: Any, as_json: bool) -> None:
    """Show the identity and role the daemon sees for this client."""
    who = obj.client().whoami()
    if as_json:
        emit({"common_name": who.common_name, "role": who.role})
    else:
        click.echo(f"{who.common_name} ({who.role})")


@click.group()
def admin() -> None:
    """Node administration."""


@admin.command()
@click.argument("dest")
@json_option
@click.pass_obj
def backup(obj: Any, dest: str, as_json: bool) -> None:
    """Take an online, consistent copy of the daemon's state database to DEST (a path on the node)."""
    result = obj.client().backup_database(dest)
    if as_json:
        emit({"path": result.path, "bytes": result.bytes, "pages": result.pages, "seconds": result.seconds,
              "integrity": result.integrity})
    else:
        click.echo(f"{result.path} ({result.bytes} bytes, integrity {result.integrity}, {result.seconds:.2f}s)")


COMMANDS = [init, daemon, version, whoami, admin]
