"""capsa's gRPC API: protos and generated code (``gen/``), servicers, the client, mTLS roles.

The server side (``capsa.api.server.build_server``) is imported by the daemon only, so a client
does not load every domain package. The names below resolve on first use (PEP 562): every CLI
command imports ``capsa.api.client`` through this package, and the role table would pull in
capsa.pki and cryptography, which the CLI does not need (tests/unit/cli/test_import_budget.py).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from capsa.api.client import CapsaClient
    from capsa.api.roles import RPC_ROLES, required_role

__all__ = ["RPC_ROLES", "CapsaClient", "required_role"]

_WHERE = {"CapsaClient": "capsa.api.client", "RPC_ROLES": "capsa.api.roles", "required_role": "capsa.api.roles"}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'capsa.api' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value
