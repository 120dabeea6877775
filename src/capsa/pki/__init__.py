"""Certificate authority, certificate issuance and role extraction for capsa's mutual TLS.

One private CA signs the server certificate and every client certificate; a
client's :class:`Role` is the OU of its certificate subject.
"""

from capsa.pki.certs import (
    IssuedCert,
    cert_expiry,
    check_key_pair,
    create_ca,
    default_server_hosts,
    issue_client_cert,
    issue_etcd_client_cert,
    issue_etcd_member_cert,
    issue_node_cert,
    issue_server_cert,
    load_certificate,
    load_private_key,
    role_from_cert_pem,
    verify_chain,
)
from capsa.pki.roles import NodeRole, Principal, Role

__all__ = [
    "IssuedCert",
    "NodeRole",
    "Principal",
    "Role",
    "cert_expiry",
    "check_key_pair",
    "create_ca",
    "default_server_hosts",
    "issue_client_cert",
    "issue_etcd_client_cert",
    "issue_etcd_member_cert",
    "issue_node_cert",
    "issue_server_cert",
    "load_certificate",
    "load_private_key",
    "role_from_cert_pem",
    "verify_chain",
]
