"""Certificates and configs for a whole pool from one fresh CA (``capsa init --pool-node ... --etcd ...``).

Like the single-node bundle, the CA's key is used once and discarded: every node, every etcd member
and every user certificate of the pool is issued here, and nobody can mint more later.

Layout written into ``dir``::

    ca.pem                                    the CA certificate (etcd's --trusted-ca-file)
    etcd/<member>.pem, etcd/<member>-key.pem  member certificates (server + client auth: peers use both)
    nodes/<node>/server.yaml                  listen, tls, cluster (etcd client cert, node cert)
    client-<role>.yaml                        every node, the first as default
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

from capsa.config.bootstrap import BUNDLE_ROLES
from capsa.config.client import ClientConfig, NodeConfig
from capsa.config.fields import parse_address
from capsa.config.io import dump_yaml, write_private_file
from capsa.config.server import ClusterConfig, ClusterTLS, ServerConfig, ServerTLS
from capsa.errors import AlreadyExists, InvalidArgument
from capsa.pki import (
    create_ca,
    issue_client_cert,
    issue_etcd_client_cert,
    issue_etcd_member_cert,
    issue_node_cert,
    issue_server_cert,
)

__all__ = ["EtcdMember", "PoolNodeSpec", "write_cluster_bundle"]


@dataclass(frozen=True)
class PoolNodeSpec:
    name: str
    address: str                  # host:port the node listens on and others dial
    labels: dict[str, str]
    home: Path | None = None


@dataclass(frozen=True)
class EtcdMember:
    name: str
    host: str
    client_port: int
    peer_port: int

    @property
    def client_url(self) -> str:
        return f"https://{self.host}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"https://{self.host}:{self.peer_port}"


def write_cluster_bundle(directory: Path, *, nodes: list[PoolNodeSpec], etcd: list[EtcdMember],
                         lease_ttl_s: int = 5, overwrite: bool = False) -> list[Path]:
    """Write the pool's files into ``directory``; AlreadyExists if it holds a bundle, unless ``overwrite``."""
    if not nodes or not etcd:
        raise InvalidArgument("a cluster needs at least one node and one etcd member")
    if not overwrite and (directory / "ca.pem").exists():
        raise AlreadyExists(f"{directory} already holds a pool bundle (ca.pem); pass --force to replace it")
    ca = create_ca(f"capsa CA {secrets.token_hex(4)}")
    written: list[Path] = []

    def write(path: Path, text: str) -> None:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_private_file(path, text, overwrite=True)
        written.append(path)

    write(directory / "ca.pem", ca.cert_pem)
    for member in etcd:
        cert = issue_etcd_member_cert(ca, name=member.name, hosts=[member.host, "localhost", "127.0.0.1"])
        write(directory / "etcd" / f"{member.name}.pem", cert.cert_pem)
        write(directory / "etcd" / f"{member.name}-key.pem", cert.key_pem)
    endpoints = [m.client_url for m in etcd]
    for node in nodes:
        host, _port = parse_address(node.address)
        server_cert = issue_server_cert(ca, hosts=[host, "localhost", "127.0.0.1"])
        etcd_cert = issue_etcd_client_cert(ca, name=node.name)
        node_cert = issue_node_cert(ca, node=node.name)
        fields: dict[str, object] = {
            "listen": node.address,
            "tls": ServerTLS(ca_pem=ca.cert_pem, cert_pem=server_cert.cert_pem, key_pem=server_cert.key_pem),
            "cluster": ClusterConfig(
                etcd=endpoints, node_name=node.name, labels=node.labels, lease_ttl_s=lease_ttl_s,
                etcd_tls=ClusterTLS(cert_pem=etcd_cert.cert_pem, key_pem=etcd_cert.key_pem),
                node_tls=ClusterTLS(cert_pem=node_cert.cert_pem, key_pem=node_cert.key_pem)),
        }
        if node.home is not None:
            fields["home"] = node.home
        server = ServerConfig.model_validate(fields)
        write(directory / "nodes" / node.name / "server.yaml",
              f"# capsa server configuration of pool node {node.name}.\n" + dump_yaml(server, only_set=True))
    for role in BUNDLE_ROLES:
        issued = issue_client_cert(ca, name=f"capsa-{role.value}", role=role)
        client = ClientConfig(nodes={n.name: NodeConfig(address=n.address, ca_pem=ca.cert_pem,
                                                        cert_pem=issued.cert_pem, key_pem=issued.key_pem)
                                     for n in nodes}, default_node=nodes[0].name)
        write(directory / f"client-{role.value}.yaml",
              f"# capsa client configuration for the pool, role {role.value}.\n" + dump_yaml(client))
    return written
