"""The CLI's configuration (client.yaml): named daemon nodes with embedded mTLS material.

Every CLI command reads this file, so it is loaded without pydantic, PyYAML or
cryptography (each costs more to import than the command's RPC takes): plain
dataclasses, the YAML fast path of :mod:`capsa.config.mini_yaml`, and checks
split in two tiers:

* structural (always): unknown and missing keys, types, node names,
  default_node, addresses, and that each PEM field holds a PEM block of the
  right kind;
* cryptographic (``verify=True``, the default of :func:`load_client_config`):
  the CA is a CA, each certificate and key parse, the key belongs to the
  certificate. The CLI skips them on its fast path and runs them when the daemon
  cannot be reached (:func:`diagnose`), which is when a broken file shows up
  as an opaque TLS handshake failure.

Error messages are the same in both tiers - ``<file>: <field path>: <problem>``,
e.g. ``client.yaml: nodes['a'].address: 'nohost' is not host:port`` - because
any structural failure is re-validated with the cryptographic checks before it
is reported.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from capsa.config.addresses import parse_address
from capsa.config.paths import HomeLayout, capsa_home
from capsa.errors import InvalidArgument, NotFound

if TYPE_CHECKING:
    from capsa.pki.roles import Role

__all__ = ["ClientConfig", "NodeConfig", "diagnose", "find_client_config", "load_client_config",
           "read_config_text"]

_NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----\n?([A-Za-z0-9+/=\s]+?)-----END \1-----")
_NODE_FIELDS = ("address", "ca_pem", "cert_pem", "key_pem")
_TOP_FIELDS = ("nodes", "default_node")
_Problems = list[tuple[str, str]]


@dataclass(frozen=True)
class NodeConfig:
    """How to reach and authenticate to one capsa daemon (checked structurally when built)."""

    address: str
    ca_pem: str
    """CA that the daemon's server certificate must chain to."""
    cert_pem: str
    key_pem: str = field(repr=False)   # private keys must never reach logs through a repr

    def __post_init__(self) -> None:
        problems = _node_problems(dict(address=self.address, ca_pem=self.ca_pem, cert_pem=self.cert_pem,
                                       key_pem=self.key_pem), "", verify=False)
        if problems:
            raise _error(problems, "NodeConfig")
        object.__setattr__(self, "address", self.address.strip())

    @property
    def role(self) -> Role:
        """The role this node's client certificate claims (the server decides what it allows)."""
        from capsa.pki.certs import role_from_cert_pem

        return role_from_cert_pem(self.cert_pem)

    def to_dict(self) -> dict[str, str]:
        return {name: getattr(self, name) for name in _NODE_FIELDS}


@dataclass(frozen=True)
class ClientConfig:
    nodes: dict[str, NodeConfig]
    default_node: str | None = None
    """Node used when none is named; may be omitted when there is exactly one node."""

    def __post_init__(self) -> None:
        problems = _top_problems({"nodes": {k: v.to_dict() for k, v in self.nodes.items()},
                                  "default_node": self.default_node}, verify=False)
        if problems:
            raise _error(problems, "ClientConfig")

    @classmethod
    def model_validate(cls, data: Any, *, source: str = "ClientConfig", verify: bool = True) -> ClientConfig:
        """Build from parsed YAML/JSON data; InvalidArgument naming ``source`` and every bad field."""
        problems = _validate(data, verify=verify)
        if problems:
            raise _error(problems, source)
        nodes = {name: NodeConfig(**node) for name, node in data["nodes"].items()}
        return cls(nodes=nodes, default_node=data.get("default_node"))

    @classmethod
    def parse_text(cls, text: str, *, source: str = "<string>", verify: bool = True) -> ClientConfig:
        from capsa.config import mini_yaml

        data = mini_yaml.parse(text)
        if data is mini_yaml.UNSUPPORTED:   # YAML beyond what capsa writes: PyYAML decides
            from capsa.config.yaml_strict import load_yaml

            data = load_yaml(text, source=source)
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise InvalidArgument(
                f"{source}: expected a mapping of settings at the top level, got {type(data).__name__}",
                detail={"path": source},
            )
        return cls.model_validate(data, source=source, verify=verify)

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

    def to_dict(self) -> dict[str, Any]:
        return {"nodes": {name: node.to_dict() for name, node in self.nodes.items()},
                "default_node": self.default_node}


# --------------------------------------------------------------------------- loading


def read_config_text(path: Path) -> str:
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NotFound(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise InvalidArgument(f"config file {path} is a directory") from None
    except UnicodeDecodeError as exc:
        raise InvalidArgument(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def load_client_config(path: Path, *, verify: bool = True) -> ClientConfig:
    """Read and validate a client.yaml; ``verify=False`` skips the cryptographic checks (see module doc)."""
    return ClientConfig.parse_text(read_config_text(path), source=str(path), verify=verify)


def diagnose(path: Path) -> InvalidArgument | None:
    """The cryptographic problem of a client config that loaded with ``verify=False``, if any."""
    try:
        load_client_config(path, verify=True)
    except InvalidArgument as exc:
        return exc
    except NotFound:
        return None
    return None


# --------------------------------------------------------------------------- validation


def _validate(data: Any, *, verify: bool) -> _Problems:
    if not isinstance(data, dict):
        return [("(top level)", "Input should be a valid dictionary or instance of ClientConfig")]
    problems = _top_problems(data, verify=False)
    if problems or verify:
        # Report what the full checks say: the same words whichever tier noticed first.
        problems = _top_problems(data, verify=True)
    return problems


def _top_problems(data: dict[str, Any], *, verify: bool) -> _Problems:
    problems: _Problems = _unknown_keys(data, _TOP_FIELDS, "")
    nodes = data.get("nodes")
    nodes_ok = False
    if "nodes" not in data:
        problems.append(("nodes", "required field is missing"))
    elif not isinstance(nodes, dict):
        problems.append(("nodes", "Input should be a valid dictionary"))
    else:
        before = len(problems)
        for name, node in nodes.items():
            problems += _node_problems(node, f"nodes[{name!r}]", verify=verify)
        if len(problems) == before:
            if not nodes:
                problems.append(("nodes", "at least one node is required"))
            for name in nodes:
                if not isinstance(name, str) or not _NODE_NAME.match(name):
                    problems.append(("nodes", f"node name {name!r} must be letters, digits, '_', '.' or '-'"))
                    break
            nodes_ok = len(problems) == before
    default = data.get("default_node")
    if default is not None:
        if not isinstance(default, str):
            problems.append(("default_node", "Input should be a valid string"))
        elif nodes_ok and default not in nodes:   # type: ignore[operator]
            problems.append(("default_node", f"{default!r} is not one of the nodes: {', '.join(sorted(nodes))}"))
    return problems


def _node_problems(node: Any, where: str, *, verify: bool) -> _Problems:
    def at(name: str) -> str:
        return f"{where}.{name}" if where else name

    if not isinstance(node, dict):
        return [(where, "Input should be a valid dictionary or instance of NodeConfig")]
    problems = _unknown_keys(node, _NODE_FIELDS, where)
    for name in _NODE_FIELDS:
        if name not in node:
            problems.append((at(name), "required field is missing"))
        elif not isinstance(node[name], str):
            problems.append((at(name), "Input should be a valid string"))
    bad = {name for name in _NODE_FIELDS if any(where_ == at(name) for where_, _ in problems)}
    if "address" not in bad:
        try:
            parse_address(node["address"])
        except ValueError as exc:
            problems.append((at("address"), str(exc)))
    checks = _crypto_checks if verify else _shape_checks
    problems += [(at(name), message) for name, message in checks(node, bad)]
    return problems


def _shape_checks(node: dict[str, str], bad: set[str]) -> list[tuple[str, str]]:
    """PEM blocks of the right kind are present; whether they parse is left to :func:`_crypto_checks`."""
    out = []
    for name, labels in (("ca_pem", ("CERTIFICATE",)), ("cert_pem", ("CERTIFICATE",)),
                         ("key_pem", ("PRIVATE KEY", "EC PRIVATE KEY"))):
        if name not in bad:
            match = _PEM_BLOCK.search(node[name])
            if match is None or match.group(1) not in labels:
                out.append((name, f"no PEM {labels[0].lower()} block"))
    return out


def _crypto_checks(node: dict[str, str], bad: set[str]) -> list[tuple[str, str]]:
    from capsa.config import fields
    from capsa.errors import CapsaError
    from capsa.pki.certs import load_certificate, load_private_key

    out = []
    if "ca_pem" not in bad:
        try:
            fields._ca_pem(node["ca_pem"])
        except ValueError as exc:
            out.append(("ca_pem", str(exc)))
    cert_ok = "cert_pem" not in bad
    for name, kind, loader in (("cert_pem", "certificate", load_certificate),
                               ("key_pem", "private key", load_private_key)):
        if name in bad:
            continue
        try:
            loader(node[name])
        except CapsaError as exc:
            out.append((name, f"invalid {kind}: {exc.message}"))
            cert_ok = cert_ok and name != "cert_pem"
            continue
        if name == "key_pem" and cert_ok:
            try:
                fields.key_belongs_to(node["cert_pem"], node["key_pem"])
            except ValueError as exc:
                out.append(("key_pem", str(exc)))
    return out


def _unknown_keys(data: dict[str, Any], allowed: tuple[str, ...], where: str) -> _Problems:
    problems: _Problems = []
    for key in data:
        if key in allowed:
            continue
        import difflib

        close = difflib.get_close_matches(str(key), allowed, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        path = f"{where}.{key}" if where and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(key)) else (
            f"{where}[{key!r}]" if where else str(key))
        problems.append((path, f"unknown key ({hint}allowed: {', '.join(allowed)})"))
    return problems


def _error(problems: _Problems, source: str) -> InvalidArgument:
    lines = [f"{source}: {where}: {message}" for where, message in problems]
    head = lines[0] if len(lines) == 1 else (
        f"{source}: {len(lines)} errors in ClientConfig:\n  " + "\n  ".join(lines))
    return InvalidArgument(head, detail={"path": source,
                                         "errors": [{"field": f, "message": m} for f, m in problems]})


# --------------------------------------------------------------------------- finding the file


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
