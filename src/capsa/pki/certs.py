"""Certificate authority and certificate issuance for capsa's mutual TLS.

One private CA signs the daemon's server certificate and every client
certificate. A client's role travels in its certificate subject's OU, so the
server learns who is calling, and what they may do, from the TLS handshake
alone (joblet ADR-006).

Keys are ECDSA P-256: generating one takes well under a millisecond, against
tens of milliseconds for RSA-2048, which keeps bootstrap and tests fast, and
every TLS stack capsa talks to (gRPC/BoringSSL, OpenSSL) supports it.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from capsa.errors import FailedPrecondition, InvalidArgument, Unauthorized
from capsa.pki.roles import NodeRole, Principal, Role

__all__ = [
    "IssuedCert",
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

_ORGANIZATION = "capsa"
# Backdate new certificates a little so that a peer whose clock is slightly
# behind does not see them as "not yet valid".
_CLOCK_SKEW = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class IssuedCert:
    """A certificate and its private key, both PEM text (key: PKCS#8, unencrypted)."""

    cert_pem: str
    key_pem: str = field(repr=False)  # never print private keys into logs


# --------------------------------------------------------------------------- loading


def _as_bytes(pem: str | bytes) -> bytes:
    return pem.encode("ascii", "replace") if isinstance(pem, str) else pem


def load_certificate(pem: str | bytes) -> x509.Certificate:
    """Parse the first certificate of a PEM text; InvalidArgument when it is not one."""
    try:
        return x509.load_pem_x509_certificate(_as_bytes(pem))
    except (ValueError, TypeError) as exc:
        raise InvalidArgument(f"not a PEM certificate: {exc}") from None


def load_private_key(pem: str | bytes) -> ec.EllipticCurvePrivateKey:
    """Parse an unencrypted PEM private key; InvalidArgument when it is not an EC key."""
    try:
        key = serialization.load_pem_private_key(_as_bytes(pem), password=None)
    except (ValueError, TypeError) as exc:
        raise InvalidArgument(f"not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise InvalidArgument(f"expected an EC private key, got {type(key).__name__}")
    return key


def check_key_pair(cert_pem: str | bytes, key_pem: str | bytes) -> None:
    """InvalidArgument unless ``key_pem`` is the private key of ``cert_pem``.

    A mismatch otherwise only shows up later as an opaque TLS handshake failure.
    """
    cert = load_certificate(cert_pem)
    key = load_private_key(key_pem)
    if cert.public_key() != key.public_key():
        raise InvalidArgument(f"private key does not belong to certificate {cert.subject.rfc4514_string()!r}")


def _load_for_auth(pem: str | bytes, what: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(_as_bytes(pem))
    except (ValueError, TypeError) as exc:
        raise Unauthorized(f"{what} is not a valid PEM certificate: {exc}") from None


# --------------------------------------------------------------------------- issuing


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")


def _cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _validity(
    days: int, not_before: dt.datetime | None, not_after: dt.datetime | None
) -> tuple[dt.datetime, dt.datetime]:
    if days <= 0:
        raise InvalidArgument(f"days must be positive, got {days}")
    now = dt.datetime.now(dt.UTC)
    start = _utc(not_before) if not_before is not None else now - _CLOCK_SKEW
    end = _utc(not_after) if not_after is not None else now + dt.timedelta(days=days)
    if end <= start:
        raise InvalidArgument(
            f"not_after ({end.isoformat()}) must be later than not_before ({start.isoformat()})"
        )
    return start, end


def _utc(value: dt.datetime) -> dt.datetime:
    # Naive datetimes are taken as UTC, as cryptography itself does.
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def create_ca(common_name: str = "capsa CA", *, days: int = 3650) -> IssuedCert:
    """A new self-signed CA that may sign leaf certificates only (path length 0)."""
    if not common_name.strip():
        raise InvalidArgument("CA common name must not be empty")
    key = _new_key()
    start, end = _validity(days, None, None)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    return IssuedCert(cert_pem=_cert_pem(cert), key_pem=_key_pem(key))


def _load_ca(ca: IssuedCert) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = load_certificate(ca.cert_pem)
    key = load_private_key(ca.key_pem)
    if cert.public_key() != key.public_key():
        raise InvalidArgument("CA private key does not belong to the CA certificate")
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise InvalidArgument(f"{cert.subject.rfc4514_string()!r} is not a CA certificate")
    if cert.not_valid_after_utc <= dt.datetime.now(dt.UTC):
        raise FailedPrecondition(
            f"CA {cert.subject.rfc4514_string()!r} expired at {cert.not_valid_after_utc.isoformat()}; "
            "certificates it signs would be refused"
        )
    return cert, key


def _leaf_key_usage() -> x509.KeyUsage:
    # ECDSA leaves sign the handshake; key agreement is ephemeral (ECDHE), so
    # digital_signature is the only usage they need.
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def _sign_leaf(
    ca: IssuedCert,
    subject: x509.Name,
    usage: x509.ObjectIdentifier | list[x509.ObjectIdentifier],
    days: int,
    not_before: dt.datetime | None,
    not_after: dt.datetime | None,
    san: x509.SubjectAlternativeName | None = None,
) -> IssuedCert:
    ca_cert, ca_key = _load_ca(ca)
    start, end = _validity(days, not_before, not_after)
    if not_after is None:
        # A leaf cannot outlive its CA in practice; saying so keeps cert_expiry() honest.
        end = min(end, ca_cert.not_valid_after_utc)
    key = _new_key()
    try:
        ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski)
    except x509.ExtensionNotFound:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_leaf_key_usage(), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usage if isinstance(usage, list) else [usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(aki, critical=False)
    )
    if san is not None:
        builder = builder.add_extension(san, critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return IssuedCert(cert_pem=_cert_pem(cert), key_pem=_key_pem(key))


def default_server_hosts() -> list[str]:
    """Names a local client may dial: loopback in both families plus this host's name."""
    return _dedupe(["localhost", "127.0.0.1", "::1", socket.gethostname()])


def _dedupe(items: list[str]) -> list[str]:
    return list(dict.fromkeys(item for item in items if item))


def _general_name(host: str) -> x509.GeneralName:
    text = host.strip().strip("[]")  # accept "[::1]" as written in addresses
    if not text:
        raise InvalidArgument(f"empty host name in server certificate hosts: {host!r}")
    try:
        return x509.IPAddress(ipaddress.ip_address(text))
    except ValueError:
        pass
    if any(ch.isspace() or ch in "/:@" for ch in text):
        raise InvalidArgument(f"{host!r} is neither an IP address nor a DNS name")
    return x509.DNSName(text.lower().rstrip("."))


def issue_server_cert(ca: IssuedCert, *, hosts: list[str] | None = None, days: int = 825) -> IssuedCert:
    """A serverAuth certificate whose SANs are ``hosts`` (DNS names and IP addresses).

    825 days is the longest lifetime mainstream TLS clients still accept for a
    server certificate.
    """
    names = _dedupe([h.strip() for h in (hosts if hosts is not None else default_server_hosts())])
    if not names:
        raise InvalidArgument("a server certificate needs at least one host name or IP address")
    general = list(dict.fromkeys(_general_name(h) for h in names))
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, names[0].strip("[]")[:64]),
        ]
    )
    return _sign_leaf(
        ca, subject, ExtendedKeyUsageOID.SERVER_AUTH, days, None, None, x509.SubjectAlternativeName(general)
    )


def issue_client_cert(
    ca: IssuedCert,
    *,
    name: str,
    role: Principal,
    days: int = 365,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> IssuedCert:
    """A clientAuth certificate for ``name`` whose subject OU is ``role``.

    ``not_before``/``not_after`` override the validity window (naive values are
    UTC); tests use them to make expired or not-yet-valid certificates.
    """
    if not name or not name.strip():
        raise InvalidArgument("client certificate name must not be empty")
    if len(name) > 64:
        raise InvalidArgument(f"client certificate name is {len(name)} characters; the limit is 64")
    role = Role.parse(role) if not isinstance(role, Role | NodeRole) else role
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORGANIZATION),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role.value),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ]
    )
    return _sign_leaf(ca, subject, ExtendedKeyUsageOID.CLIENT_AUTH, days, not_before, not_after)


# --------------------------------------------------------------------------- inspecting


def issue_node_cert(ca: IssuedCert, *, node: str, days: int = 365) -> IssuedCert:
    """A client certificate with the ``node`` role, for one pool node calling another."""
    return issue_client_cert(ca, name=f"node:{node}"[:64], role=NodeRole.NODE, days=days)


def issue_etcd_client_cert(ca: IssuedCert, *, name: str, days: int = 365) -> IssuedCert:
    """A clientAuth certificate for talking to etcd only: it carries no role (no OU), so capsa's own
    API refuses it; a stolen etcd credential is not also an API credential."""
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORGANIZATION),
                         x509.NameAttribute(NameOID.COMMON_NAME, f"etcd-client:{name}"[:64])])
    return _sign_leaf(ca, subject, ExtendedKeyUsageOID.CLIENT_AUTH, days, None, None)


def issue_etcd_member_cert(ca: IssuedCert, *, name: str, hosts: list[str], days: int = 825) -> IssuedCert:
    """A certificate for one etcd member: server and client auth (etcd uses it for both sides of peer
    connections), with ``hosts`` as SANs."""
    general = list(dict.fromkeys(_general_name(h) for h in _dedupe(hosts)))
    if not general:
        raise InvalidArgument("an etcd member certificate needs at least one host name or IP address")
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORGANIZATION),
                         x509.NameAttribute(NameOID.COMMON_NAME, f"etcd:{name}"[:64])])
    return _sign_leaf(ca, subject, [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH], days,
                      None, None, x509.SubjectAlternativeName(general))


def role_from_cert_pem(pem: str | bytes) -> Principal:
    """The role in the certificate subject's OU.

    Does not verify the certificate: call it on a peer certificate the TLS
    layer has already verified. Unauthorized when the OU is missing, repeated
    or not a known role, so a malformed certificate never gets a default role.
    """
    cert = _load_for_auth(pem, "client certificate")
    units = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    subject = cert.subject.rfc4514_string()
    if not units:
        raise Unauthorized(f"client certificate {subject!r} carries no role (no OU in its subject)")
    if len(units) > 1:
        raise Unauthorized(
            f"client certificate {subject!r} has {len(units)} OUs; exactly one role is allowed"
        )
    value = units[0].value
    value = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    if value == NodeRole.NODE.value:
        return NodeRole.NODE
    try:
        return Role(value)
    except ValueError:
        valid = ", ".join(r.value for r in Role)
        raise Unauthorized(
            f"client certificate {subject!r} has unknown role {value!r} (valid roles: {valid})"
        ) from None


def cert_expiry(pem: str | bytes) -> dt.datetime:
    """When the certificate stops being valid (timezone-aware, UTC)."""
    return load_certificate(pem).not_valid_after_utc


def _check_validity(cert: x509.Certificate, what: str, at: dt.datetime) -> None:
    subject = cert.subject.rfc4514_string()
    if at < cert.not_valid_before_utc:
        raise Unauthorized(f"{what} {subject!r} is not valid before {cert.not_valid_before_utc.isoformat()}")
    if at > cert.not_valid_after_utc:
        raise Unauthorized(f"{what} {subject!r} expired at {cert.not_valid_after_utc.isoformat()}")


def verify_chain(cert_pem: str | bytes, ca_pem: str | bytes, *, at: dt.datetime | None = None) -> None:
    """Unauthorized unless ``cert_pem`` was signed by ``ca_pem`` and both are valid at ``at`` (now).

    The signature is checked, not just the issuer name: two CAs both called
    "capsa CA" must not vouch for each other's certificates.
    """
    cert = _load_for_auth(cert_pem, "certificate")
    ca = _load_for_auth(ca_pem, "CA certificate")
    when = _utc(at) if at is not None else dt.datetime.now(dt.UTC)
    subject = cert.subject.rfc4514_string()
    try:
        constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
        is_ca = constraints.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise Unauthorized(f"{ca.subject.rfc4514_string()!r} is not a CA certificate")
    if cert.issuer != ca.subject:
        raise Unauthorized(
            f"certificate {subject!r} was issued by {cert.issuer.rfc4514_string()!r}, "
            f"not by {ca.subject.rfc4514_string()!r}"
        )
    try:
        cert.verify_directly_issued_by(ca)
    except (InvalidSignature, ValueError, TypeError):
        raise Unauthorized(
            f"certificate {subject!r} is not signed by this CA (signature does not verify)"
        ) from None
    _check_validity(ca, "CA certificate", when)
    _check_validity(cert, "certificate", when)
