"""capsa's gRPC API: protos and generated code (``gen/``), servicers, the client, mTLS roles.

The server side (``capsa.api.server.build_server``) is imported by the daemon only, so a client
does not load every domain package.
"""

from capsa.api.client import CapsaClient
from capsa.api.roles import RPC_ROLES, required_role

__all__ = ["RPC_ROLES", "CapsaClient", "required_role"]
