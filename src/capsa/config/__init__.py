"""capsa's typed configuration: server.yaml, client.yaml, the home layout and first-start bootstrap.

Certificates are embedded in the YAML files as PEM text (joblet ADR-006).
Every loading error is an :class:`capsa.errors.InvalidArgument` naming the
file and the field path.
"""

from capsa.config.bootstrap import (
    BUNDLE_ROLES,
    DEFAULT_NODE_NAME,
    bundle_file_names,
    ensure_home,
    write_bundle,
)
from capsa.config.client import ClientConfig, NodeConfig, find_client_config
from capsa.config.fields import parse_address
from capsa.config.io import (
    dump_yaml,
    load_client_config,
    load_server_config,
    parse_config,
    save_config,
    write_private_file,
)
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

__all__ = [
    "BUNDLE_ROLES",
    "DEFAULT_HOME",
    "DEFAULT_NODE_NAME",
    "DEFAULT_QUEUES",
    "ApiConfig",
    "BtrfsConfig",
    "ClientConfig",
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
