"""``--secret-env`` for pool jobs: the values sealed to each node that may run the job, never in etcd in clear.

Every node publishes its ``node`` certificate in its record. At submit time the serving node (which
receives the values over mutual TLS, as for a local run) checks each READY node's certificate against
the pool's CA and its name, and seals the values to that node's public key: ECIES on P-256 — an
ephemeral key, ECDH, HKDF-SHA256, AES-256-GCM with the job id and node name as associated data, so a
sealed box cannot be moved to another job or node. The job record holds one box per node and is placed
only on those nodes; the chosen node opens its box with its node key and hands the values to its
ordinary start path (they live only in memory there, as for a local ``--secret-env``). A node that
joins later cannot run the job: the values would have to be sealed again by someone who has them.
Whoever holds a node's key can open the boxes sealed to that node — it is as sensitive as the node's
TLS key, which it is.
"""

from __future__ import annotations

import base64
import json
import os

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.x509.oid import NameOID

from capsa.errors import FailedPrecondition, Unauthorized
from capsa.pki import NodeRole
from capsa.pki.certs import load_certificate, load_private_key, role_from_cert_pem, verify_chain

__all__ = ["node_cert_name", "open_sealed", "seal"]

_INFO = b"capsa pool secret-env v1"
_POINT = 65   # an uncompressed P-256 point


def node_cert_name(node: str) -> str:
    """The common name of a node's ``node`` certificate (capsa.pki.issue_node_cert)."""
    return f"node:{node}"[:64]


def _key(shared: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(shared)


def _aad(job_id: str, node: str) -> bytes:
    return f"{job_id}\0{node}".encode()


def seal(values: dict[str, str], *, job_id: str, node: str, cert_pem: str, ca_pem: str) -> str:
    """A box only ``node``'s key opens, for job ``job_id``. Unauthorized if ``cert_pem`` is not that node's
    ``node`` certificate from the pool's CA (etcd is writable by every node: the record alone proves nothing)."""
    verify_chain(cert_pem, ca_pem)
    cert = load_certificate(cert_pem)
    names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if names != [node_cert_name(node)] or role_from_cert_pem(cert_pem) is not NodeRole.NODE:
        raise Unauthorized(f"the certificate published for node {node} is not that node's node certificate")
    public = cert.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey) or not isinstance(public.curve, ec.SECP256R1):
        raise Unauthorized(f"node {node}'s certificate does not hold a P-256 key")
    ephemeral = ec.generate_private_key(ec.SECP256R1())
    nonce = os.urandom(12)
    box = AESGCM(_key(ephemeral.exchange(ec.ECDH(), public))).encrypt(
        nonce, json.dumps(values, sort_keys=True).encode(), _aad(job_id, node))
    point = ephemeral.public_key().public_bytes(serialization.Encoding.X962,
                                                serialization.PublicFormat.UncompressedPoint)
    return base64.b64encode(point + nonce + box).decode()


def open_sealed(blob: str, *, job_id: str, node: str, key_pem: str) -> dict[str, str]:
    """The values in a box sealed to ``node`` for ``job_id``; FailedPrecondition (naming no value) if it
    does not open with this key."""
    try:
        raw = base64.b64decode(blob, validate=True)
        point, nonce, box = raw[:_POINT], raw[_POINT:_POINT + 12], raw[_POINT + 12:]
        peer = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
        key = load_private_key(key_pem)
        plain = AESGCM(_key(key.exchange(ec.ECDH(), peer))).decrypt(nonce, box, _aad(job_id, node))
        values = json.loads(plain)
    except Exception as exc:   # bad base64, point, tag or JSON: all one answer, and no detail of the content
        raise FailedPrecondition(f"the secret environment of pool job {job_id[:12]} does not open with node"
                                 f" {node}'s key ({type(exc).__name__})") from None
    if not isinstance(values, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in values.items()):
        raise FailedPrecondition(f"the secret environment of pool job {job_id[:12]} is not a map of strings")
    return values
