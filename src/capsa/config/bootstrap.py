"""First-start bootstrap: a CA, a server certificate and one client certificate per role, as config files.

Following joblet ADR-006 the certificates live *inside* the YAML files, so a
client needs exactly one file to talk to a daemon. The CA's private key is
used for the bundle and then discarded: nobody can mint more certificates for
this daemon, and no CA key sits on the host waiting to be stolen.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from capsa.config.client import ClientConfig, NodeConfig
from capsa.config.fields import parse_address
from capsa.config.io import dump_yaml, fsync_dir, load_server_config, write_private_file
from capsa.config.paths import HomeLayout
from capsa.config.server import ServerConfig, ServerTLS
from capsa.errors import AlreadyExists, InvalidArgument
from capsa.pki.certs import create_ca, default_server_hosts, issue_client_cert, issue_server_cert
from capsa.pki.roles import Role

__all__ = ["BUNDLE_ROLES", "DEFAULT_NODE_NAME", "bundle_file_names", "ensure_home", "write_bundle"]

BUNDLE_ROLES: tuple[Role, ...] = (Role.ADMIN, Role.MAINTAINER, Role.DEVELOPER, Role.READER)
DEFAULT_NODE_NAME = "default"
_SERVER_FILE = "server.yaml"
_SERVER_HEADER = (
    "# capsa server configuration, generated at first start.\n"
    "# Only listen and tls are set; every other section (jobs, fsm, images, snapshots,\n"
    "# metrics) follows capsa's defaults until you add it here.\n"
)


def _client_file(role: Role) -> str:
    return f"client-{role.value}.yaml"


def bundle_file_names() -> list[str]:
    """Files :func:`write_bundle` creates, in the order it writes them (server.yaml last)."""
    return [_client_file(role) for role in BUNDLE_ROLES] + [_SERVER_FILE]


def _client_address(address: str) -> tuple[str, str]:
    """(host for the server certificate, address clients dial) for a bootstrap ``address``.

    A wildcard host (0.0.0.0, ::) is a bind, not a destination: the generated
    clients then dial loopback, which is right for the local admin; remote
    users replace it with this host's name, which the certificate also covers.
    """
    try:
        host, port = parse_address(address, allow_port_zero=True)
    except ValueError as exc:
        raise InvalidArgument(f"address: {exc}") from None
    if port == 0:
        raise InvalidArgument(
            f"address {address!r}: port 0 picks a random port, which clients cannot know; give a fixed port"
        )
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host, address
    if not ip.is_unspecified:
        return host, address
    loopback = "127.0.0.1" if ip.version == 4 else "::1"
    return loopback, f"{loopback}:{port}" if ip.version == 4 else f"[{loopback}]:{port}"


def _render_bundle(
    *, address: str, hosts: list[str] | None, listen: str | None, home: Path | None
) -> dict[str, str]:
    """File name -> YAML text for a fresh CA, server certificate and one client per role."""
    host, dial = _client_address(address)
    # Clients verify the server certificate against the host they dial, so it must be a SAN.
    san_hosts = [host, *(hosts if hosts is not None else default_server_hosts())]
    # A unique CA name keeps OpenSSL's diagnostics precise ("unable to get local
    # issuer") when certificates of two capsa installations meet.
    ca = create_ca(f"capsa CA {secrets.token_hex(4)}")
    server_cert = issue_server_cert(ca, hosts=san_hosts)
    tls = ServerTLS(ca_pem=ca.cert_pem, cert_pem=server_cert.cert_pem, key_pem=server_cert.key_pem)
    server_fields: dict[str, object] = {"listen": listen or address, "tls": tls}
    if home is not None:
        server_fields["home"] = home
    server = ServerConfig.model_validate(server_fields)

    files: dict[str, str] = {}
    for role in BUNDLE_ROLES:
        issued = issue_client_cert(ca, name=f"capsa-{role.value}", role=role)
        node = NodeConfig(address=dial, ca_pem=ca.cert_pem, cert_pem=issued.cert_pem, key_pem=issued.key_pem)
        client = ClientConfig(nodes={DEFAULT_NODE_NAME: node}, default_node=DEFAULT_NODE_NAME)
        files[_client_file(role)] = f"# capsa client configuration, role {role.value}.\n" + dump_yaml(client)
    files[_SERVER_FILE] = _SERVER_HEADER + dump_yaml(server, only_set=True)
    return files


def write_bundle(
    dir: Path,
    *,
    address: str,
    hosts: list[str] | None = None,
    overwrite: bool = False,
    listen: str | None = None,
    home: Path | None = None,
) -> list[Path]:
    """Write server.yaml and client-{admin,maintainer,developer,reader}.yaml into ``dir``.

    ``address`` is what clients dial (and, unless ``listen`` is given, what the
    server binds); its host is always among the server certificate's SANs,
    next to ``hosts`` (default: loopback names and this host's name). A
    wildcard address (``0.0.0.0:7443``) binds everywhere and has the clients
    dial loopback. Files are
    0600 and written atomically, clients first and server.yaml last. Existing
    files are an AlreadyExists error, checked before anything is written,
    unless ``overwrite``. Returns the paths, server.yaml first.
    """
    directory = Path(dir)
    targets = [directory / name for name in bundle_file_names()]
    if not overwrite:
        existing = [str(p) for p in targets if p.exists()]
        if existing:
            raise AlreadyExists(
                f"refusing to overwrite existing bundle files: {', '.join(existing)} (pass overwrite to replace them)"
            )
    files = _render_bundle(address=address, hosts=hosts, listen=listen, home=home)
    if not directory.is_dir():
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
    for path in targets:
        write_private_file(path, files[path.name], overwrite=overwrite)
    return [targets[-1], *targets[:-1]]


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def ensure_home(
    home: Path,
    *,
    address: str,
    hosts: list[str] | None = None,
    listen: str | None = None,
) -> ServerConfig:
    """Load the server config of ``home``, creating home and bundle on first start.

    First start: creates ``home`` (0700) with server.yaml, the four
    client-<role>.yaml files and client.yaml (a copy of the admin one), plus
    the standard directories. Later starts reuse what is there; ``address``,
    ``hosts`` and ``listen`` only matter the first time.

    Crash safety: the bundle is built in a staging directory and moved in with
    server.yaml last, so a server.yaml never exists without its clients. A
    start that finds no server.yaml but a staging directory knows the previous
    start died half way, and builds a fresh bundle over its leftovers. Files
    that did not come from an interrupted bootstrap are never overwritten.
    """
    layout = HomeLayout(home)
    if not layout.home.is_dir():
        layout.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(layout.home, 0o700)
    with _locked(layout.bootstrap_lock):
        if not layout.server_config.exists():
            _bootstrap(layout, address=address, hosts=hosts, listen=listen)
        elif layout.bootstrap_staging.exists():
            shutil.rmtree(layout.bootstrap_staging)  # died after the commit, before cleaning up
        config = load_server_config(layout.server_config)
    layout.create_dirs()
    return _bind_home(config, layout)


def _bootstrap(layout: HomeLayout, *, address: str, hosts: list[str] | None, listen: str | None) -> None:
    staging = layout.bootstrap_staging
    client_names = [_client_file(role) for role in BUNDLE_ROLES] + [layout.client_config.name]
    if staging.exists():
        shutil.rmtree(staging)  # an interrupted bootstrap: its files in home are ours to replace
    else:
        foreign = [str(layout.home / name) for name in client_names if (layout.home / name).exists()]
        if foreign:
            raise AlreadyExists(
                f"{layout.home} has no server.yaml but already holds client configs: {', '.join(foreign)}; "
                "move them away (or restore the matching server.yaml) before starting"
            )
    staging.mkdir(mode=0o700)
    os.chmod(staging, 0o700)
    write_bundle(staging, address=address, hosts=hosts, listen=listen)
    admin_text = (staging / _client_file(Role.ADMIN)).read_text(encoding="utf-8")
    write_private_file(staging / layout.client_config.name, admin_text)
    for name in client_names:
        os.replace(staging / name, layout.home / name)
    fsync_dir(layout.home)
    # The commit point: from here on the home has a complete, matching bundle.
    os.replace(staging / _SERVER_FILE, layout.server_config)
    fsync_dir(layout.home)
    shutil.rmtree(staging)


def _bind_home(config: ServerConfig, layout: HomeLayout) -> ServerConfig:
    if "home" not in config.model_fields_set:
        return config.model_copy(update={"home": layout.home})
    if config.home.resolve() != layout.home.resolve():
        raise InvalidArgument(
            f"{layout.server_config}: home: the file says {config.home} but lives in {layout.home}; "
            "remove the home setting or correct it"
        )
    return config
