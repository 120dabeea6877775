"""`capsa network ...` and `capsa volume ...`."""

from __future__ import annotations

from typing import Any

import click

from capsa.cli.output import ago, emit, json_option, print_table
from capsa.cli.protojson import message_dict

__all__ = ["COMMANDS"]


def _dict(msg: Any) -> dict[str, Any]:
    data = message_dict(msg)
    for key in ("created_at_ns", "size_bytes", "used_bytes"):
        if key in data:
            data[key] = int(data[key])
    return data


@click.group()
def network() -> None:
    """Manage job networks (built-in modes: host, none, isolated, bridge)."""


@network.command("create")
@click.argument("name")
@click.option("--cidr", required=True, help="IPv4 subnet, e.g. 10.42.0.0/24.")
@json_option
@click.pass_obj
def network_create(obj: Any, name: str, cidr: str, as_json: bool) -> None:
    """Create a named network with its own bridge."""
    net = obj.client().create_network(name, cidr)
    emit(_dict(net)) if as_json else click.echo(net.name)


@network.command("ls")
@json_option
@click.pass_obj
def network_ls(obj: Any, as_json: bool) -> None:
    """List networks."""
    nets = obj.client().list_networks()
    if as_json:
        emit([_dict(n) for n in nets])
        return
    print_table(["NAME", "KIND", "CIDR", "BRIDGE", "JOBS", "CREATED"],
                [(n.name, n.kind + (" (built-in)" if n.builtin else ""), n.cidr, n.bridge or "-", n.attached,
                  ago(n.created_at_ns)) for n in nets])


@network.command("rm")
@click.argument("names", nargs=-1, required=True)
@click.pass_obj
def network_rm(obj: Any, names: tuple[str, ...]) -> None:
    """Remove named networks (refused while jobs use them)."""
    for name in names:
        click.echo(obj.client().remove_network(name))


@click.group()
def volume() -> None:
    """Manage volumes that jobs mount with --volume NAME[:/path][:ro]."""


@volume.command("create")
@click.argument("name")
@click.option("--size", required=True, help="e.g. 1GB, 512MiB.")
@click.option("--type", "type_", type=click.Choice(["filesystem", "memory"]), default="filesystem",
              show_default=True)
@json_option
@click.pass_obj
def volume_create(obj: Any, name: str, size: str, type_: str, as_json: bool) -> None:
    """Create a volume: an ext4 image on a loop device, or a size-limited tmpfs."""
    vol = obj.client().create_volume(name, size, type_)
    emit(_dict(vol)) if as_json else click.echo(vol.name)


@volume.command("ls")
@json_option
@click.pass_obj
def volume_ls(obj: Any, as_json: bool) -> None:
    """List volumes."""
    vols = obj.client().list_volumes()
    if as_json:
        emit([_dict(v) for v in vols])
        return
    print_table(["NAME", "TYPE", "SIZE", "STATE", "IN USE BY", "CREATED"],
                [(v.name, v.type, v.size_bytes, v.state, ",".join(u[:12] for u in v.users) or "-",
                  ago(v.created_at_ns)) for v in vols])


@volume.command("rm")
@click.argument("names", nargs=-1, required=True)
@click.pass_obj
def volume_rm(obj: Any, names: tuple[str, ...]) -> None:
    """Remove volumes and their data (refused while jobs use them)."""
    for name in names:
        click.echo(obj.client().remove_volume(name))


COMMANDS = [network, volume]
