"""The CLI's configuration (client.yaml): named daemon nodes with embedded mTLS material."""

from __future__ import annotations

import os
import re
from pathlib import Path

from pydantic import ValidationInfo, field_validator

from capsa.config.fields import Address, CaCertPem, CertPem, KeyPem, StrictModel, key_belongs_to
from capsa.config.paths import HomeLayout, capsa_home
from capsa.errors import InvalidArgument, NotFound
from capsa.pki.certs import role_from_cert_pem
from capsa.pki.roles import Role

__all__ = ["ClientConfig", "NodeConfig", "find_client_config"]

_NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class NodeConfig(StrictModel):
    """How to reach and authenticate to one capsa daemon."""

    address: Address
    ca_pem: CaCertPem
    """CA that the daemon's server certificate must chain to."""
    cert_pem: CertPem
    key_pem: KeyPem

    @field_validator("key_pem")
    @classmethod
    def _key_matches_cert(cls, value: str, info: ValidationInfo) -> str:
        return key_belongs_to(info.data.get("cert_pem"), value)

    @property
    def role(self) -> Role:
        """The role this node's client certificate claims (the server decides what it allows)."""
        return role_from_cert_pem(self.cert_pem)


class ClientConfig(StrictModel):
    nodes: dict[str, NodeConfig]
    default_node: str | None = None
    """Node used when none is named; may be omitted when there is exactly one node."""

    @field_validator("nodes")
    @classmethod
    def _named_nodes(cls, value: dict[str, NodeConfig]) -> dict[str, NodeConfig]:
        if not value:
            raise ValueError("at least one node is required")
        for name in value:
            if not _NODE_NAME.match(name):
                raise ValueError(f"node name {name!r} must be letters, digits, '_', '.' or '-'")
        return value

    @field_validator("default_node")
    @classmethod
    def _default_exists(cls, value: str | None, info: ValidationInfo) -> str | None:
        nodes = info.data.get("nodes")  # absent when nodes failed validation itself
        if value is not None and nodes is not None and value not in nodes:
            raise ValueError(f"{value!r} is not one of the nodes: {', '.join(sorted(nodes))}")
        return value

    def select(self, node: str | None = None) -> NodeConfig:
        """The named node, else the default node, else the only node."""
        available = ", ".join(sorted(self.nodes))
        if node is None:
            if self.default_node is not None:
                return self.nodes[self.default_node]
            if len(self.nodes) == 1:
                return next(iter(self.nodes.values()))
            raise InvalidArgument(f"no node given and no default_node configured; choose one of: {available}")
        try:
            return self.nodes[node]
        except KeyError:
            raise NotFound(f"unknown node {node!r}; configured nodes: {available}") from None


def find_client_config(explicit: Path | None = None) -> Path:
    """The client config to use: ``--config``, else ``$CAPSA_CONFIG``, else ``$CAPSA_HOME/client.yaml``.

    A place that is named but missing is an error rather than a silent fall
    through, so a typo in ``--config`` never talks to the wrong daemon.
    """
    env_value = os.environ.get("CAPSA_CONFIG", "").strip()
    home_file = HomeLayout(capsa_home()).client_config
    if explicit is not None:
        return _existing(Path(explicit).expanduser(), "--config", env_value, home_file)
    if env_value:
        return _existing(Path(env_value).expanduser(), "$CAPSA_CONFIG", env_value, home_file)
    if home_file.is_file():
        return home_file
    raise NotFound(_places_message("no client configuration found", None, env_value, home_file))


def _existing(path: Path, source: str, env_value: str, home_file: Path) -> Path:
    if path.is_file():
        return path
    problem = "is a directory, not a file" if path.is_dir() else "does not exist"
    explicit = path if source == "--config" else None
    raise NotFound(
        _places_message(
            f"client configuration {path} (from {source}) {problem}", explicit, env_value, home_file
        )
    )


def _places_message(headline: str, explicit: Path | None, env_value: str, home_file: Path) -> str:
    return (
        f"{headline}; capsa looks, in order, at:\n"
        f"  1. --config: {explicit if explicit is not None else '(not given)'}\n"
        f"  2. $CAPSA_CONFIG: {env_value or '(not set)'}\n"
        f"  3. $CAPSA_HOME/client.yaml: {home_file}"
    )
