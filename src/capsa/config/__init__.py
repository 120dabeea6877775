"""capsa's typed configuration: server.yaml, client.yaml, the home layout and first-start bootstrap.

Certificates are embedded in the YAML files as PEM text (joblet ADR-006).
Every loading error is an :class:`capsa.errors.InvalidArgument` naming the
file and the field path.

Names are resolved lazily (PEP 562): the CLI imports ``capsa.config.client`` on
every command, and that must not drag in the server models (pydantic), PyYAML
or cryptography, which ``from capsa.config import ServerConfig`` still gets.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from capsa.config.addresses import parse_address
    from capsa.config.bootstrap import (
        BUNDLE_ROLES,
        DEFAULT_NODE_NAME,
        bundle_file_names,
        ensure_home,
        write_bundle,
    )
    from capsa.config.client import ClientConfig, NodeConfig, find_client_config, load_client_config
    from capsa.config.io import dump_yaml, load_server_config, parse_config, save_config, write_private_file
    from capsa.config.paths import DEFAULT_HOME, HomeLayout, capsa_home
    from capsa.config.server import (
        DEFAULT_QUEUES,
        ApiConfig,
        BtrfsConfig,
        DevmapperConfig,
        FsmConfig,
        ImagesConfig,
        JobsConfig,
        MetricsConfig,
        RegistryConfig,
        S3Config,
        ServerConfig,
        ServerTLS,
        SnapshotsConfig,
        UnpackLimits,
    )

_WHERE = {
    "parse_address": "addresses",
    **dict.fromkeys(("BUNDLE_ROLES", "DEFAULT_NODE_NAME", "bundle_file_names", "ensure_home", "write_bundle"),
                    "bootstrap"),
    **dict.fromkeys(("ClientConfig", "NodeConfig", "find_client_config", "load_client_config"), "client"),
    **dict.fromkeys(("dump_yaml", "load_server_config", "parse_config", "save_config", "write_private_file"), "io"),
    **dict.fromkeys(("DEFAULT_HOME", "HomeLayout", "capsa_home"), "paths"),
    **dict.fromkeys(("DEFAULT_QUEUES", "ApiConfig", "BtrfsConfig", "DevmapperConfig", "FsmConfig", "ImagesConfig", "JobsConfig",
                     "MetricsConfig", "RegistryConfig", "S3Config", "ServerConfig", "ServerTLS", "SnapshotsConfig",
                     "UnpackLimits"), "server"),
}

__all__ = [
    "BUNDLE_ROLES",
    "BtrfsConfig",
    "ClientConfig",
    "DEFAULT_HOME",
    "DEFAULT_NODE_NAME",
    "DEFAULT_QUEUES",
    "ApiConfig",
    "DevmapperConfig",
    "FsmConfig",
    "HomeLayout",
    "ImagesConfig",
    "JobsConfig",
    "MetricsConfig",
    "NodeConfig",
    "RegistryConfig",
    "S3Config",
    "ServerConfig",
    "ServerTLS",
    "SnapshotsConfig",
    "UnpackLimits",
    "bundle_file_names",
    "capsa_home",
    "dump_yaml",
    "ensure_home",
    "find_client_config",
    "load_client_config",
    "load_server_config",
    "parse_address",
    "parse_config",
    "save_config",
    "write_bundle",
    "write_private_file",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'capsa.config' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"capsa.config.{module}"), name)
    globals()[name] = value   # resolve once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})
