"""CA and certificate issuance, inspection and chain verification."""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
from collections.abc import Callable

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from capsa.errors import FailedPrecondition, InvalidArgument, Unauthorized
from capsa.pki import (
    IssuedCert,
    Role,
    cert_expiry,
    check_key_pair,
    create_ca,
    issue_client_cert,
    issue_server_cert,
    load_certificate,
    load_private_key,
    role_from_cert_pem,
    verify_chain,
)

NOW = dt.datetime.now(dt.UTC)


@pytest.fixture(scope="module")
def ca() -> IssuedCert:
    return create_ca()


def ext(cert: x509.Certificate, kind: type) -> x509.Extension:
    return cert.extensions.get_extension_for_class(kind)


def test_ca_is_a_self_signed_p256_ca_for_leaves_only(ca: IssuedCert) -> None:
    cert = load_certificate(ca.cert_pem)
    key = load_private_key(ca.key_pem)
    assert isinstance(key.curve, ec.SECP256R1)
    assert ca.key_pem.startswith("-----BEGIN PRIVATE KEY-----")  # PKCS#8, unencrypted
    constraints = ext(cert, x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    usage = ext(cert, x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    ski = ext(cert, x509.SubjectKeyIdentifier).value
    assert ext(cert, x509.AuthorityKeyIdentifier).value.key_identifier == ski.digest
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "capsa CA"
    cert.verify_directly_issued_by(cert)


def issued_between(make: Callable[[], IssuedCert]) -> tuple[dt.datetime, dt.datetime, IssuedCert]:
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)  # certificates keep whole seconds
    issued = make()
    return before, dt.datetime.now(dt.UTC), issued


@pytest.mark.parametrize(("days", "expected"), [(None, 3650), (7, 7)])
def test_ca_lifetime(days: int | None, expected: int) -> None:
    before, after, ca = issued_between(lambda: create_ca() if days is None else create_ca(days=days))
    assert (
        before + dt.timedelta(days=expected)
        <= cert_expiry(ca.cert_pem)
        <= after + dt.timedelta(days=expected)
    )


def test_server_cert_carries_dns_and_ip_sans_and_server_auth_only(ca: IssuedCert) -> None:
    issued = issue_server_cert(ca, hosts=["node1.example", "10.1.2.3", "[::1]", "NODE1.example"])
    cert = load_certificate(issued.cert_pem)
    san = ext(cert, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["node1.example"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.1.2.3"),
        ipaddress.ip_address("::1"),
    ]
    assert ext(cert, x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])
    assert ext(cert, x509.BasicConstraints).value.ca is False
    assert ext(cert, x509.KeyUsage).value.digital_signature
    ca_ski = ext(load_certificate(ca.cert_pem), x509.SubjectKeyIdentifier).value.digest
    assert ext(cert, x509.AuthorityKeyIdentifier).value.key_identifier == ca_ski
    assert ext(cert, x509.SubjectKeyIdentifier).value == x509.SubjectKeyIdentifier.from_public_key(
        cert.public_key()
    )
    check_key_pair(issued.cert_pem, issued.key_pem)
    verify_chain(issued.cert_pem, ca.cert_pem)


def test_server_cert_default_hosts_cover_loopback_and_this_host(ca: IssuedCert) -> None:
    san = ext(load_certificate(issue_server_cert(ca).cert_pem), x509.SubjectAlternativeName).value
    assert {"localhost", socket.gethostname().lower()} <= set(san.get_values_for_type(x509.DNSName))
    assert {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")} <= set(
        san.get_values_for_type(x509.IPAddress)
    )


@pytest.mark.parametrize("hosts", [[], ["bad host"], ["a/b"], ["user@host"]])
def test_server_cert_rejects_missing_or_malformed_hosts(ca: IssuedCert, hosts: list[str]) -> None:
    with pytest.raises(InvalidArgument):
        issue_server_cert(ca, hosts=hosts)


@pytest.mark.parametrize("role", list(Role))
def test_client_cert_round_trips_its_role_through_the_ou(ca: IssuedCert, role: Role) -> None:
    issued = issue_client_cert(ca, name="alice", role=role)
    cert = load_certificate(issued.cert_pem)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "alice"
    assert ext(cert, x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])
    assert role_from_cert_pem(issued.cert_pem) is role
    assert role_from_cert_pem(issued.cert_pem.encode()) is role
    verify_chain(issued.cert_pem, ca.cert_pem)


def test_client_cert_lifetime_defaults_to_a_year(ca: IssuedCert) -> None:
    before, after, issued = issued_between(lambda: issue_client_cert(ca, name="bob", role=Role.READER))
    expiry = cert_expiry(issued.cert_pem)
    assert expiry.tzinfo is not None
    assert before + dt.timedelta(days=365) <= expiry <= after + dt.timedelta(days=365)


def test_server_cert_lifetime_defaults_to_825_days(ca: IssuedCert) -> None:
    before, after, issued = issued_between(lambda: issue_server_cert(ca, hosts=["localhost"]))
    assert before + dt.timedelta(days=825) <= cert_expiry(issued.cert_pem) <= after + dt.timedelta(days=825)


def test_leaf_lifetime_is_clipped_to_the_ca(ca: IssuedCert) -> None:
    short_ca = create_ca(days=30)
    leaf = issue_server_cert(short_ca, hosts=["localhost"])
    assert cert_expiry(leaf.cert_pem) == cert_expiry(short_ca.cert_pem)


def test_explicit_validity_window_makes_an_expired_cert(ca: IssuedCert) -> None:
    end = NOW.replace(microsecond=0) - dt.timedelta(days=1)
    issued = issue_client_cert(
        ca, name="old", role=Role.ADMIN, not_before=end - dt.timedelta(days=10), not_after=end
    )
    assert cert_expiry(issued.cert_pem) == end
    with pytest.raises(Unauthorized, match="expired"):
        verify_chain(issued.cert_pem, ca.cert_pem)


def test_verification_time_can_be_chosen(ca: IssuedCert) -> None:
    issued = issue_client_cert(ca, name="day", role=Role.READER, days=1)
    verify_chain(issued.cert_pem, ca.cert_pem, at=NOW + dt.timedelta(hours=12))
    with pytest.raises(Unauthorized, match="expired"):
        verify_chain(issued.cert_pem, ca.cert_pem, at=NOW + dt.timedelta(days=2))


def test_not_yet_valid_cert_is_refused(ca: IssuedCert) -> None:
    start = NOW + dt.timedelta(days=1)
    issued = issue_client_cert(
        ca, name="future", role=Role.READER, not_before=start, not_after=start + dt.timedelta(days=1)
    )
    with pytest.raises(Unauthorized, match="not valid before"):
        verify_chain(issued.cert_pem, ca.cert_pem)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"days": 0},
        {"not_before": NOW, "not_after": NOW - dt.timedelta(seconds=1)},
        {"name": ""},
        {"name": "x" * 65},
    ],
)
def test_client_cert_rejects_bad_arguments(ca: IssuedCert, kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"name": "n", "role": Role.READER, **kwargs}
    with pytest.raises(InvalidArgument):
        issue_client_cert(ca, **args)  # type: ignore[arg-type]


def test_chain_verification_against_another_ca_fails_even_with_the_same_name(ca: IssuedCert) -> None:
    leaf = issue_client_cert(ca, name="alice", role=Role.ADMIN)
    impostor = create_ca()  # also called "capsa CA"
    with pytest.raises(Unauthorized, match="not signed by this CA"):
        verify_chain(leaf.cert_pem, impostor.cert_pem)
    with pytest.raises(Unauthorized, match="issued by"):
        verify_chain(leaf.cert_pem, create_ca("other CA").cert_pem)


def test_chain_verification_needs_a_real_ca(ca: IssuedCert) -> None:
    leaf = issue_client_cert(ca, name="alice", role=Role.ADMIN)
    with pytest.raises(Unauthorized, match="not a CA"):
        verify_chain(leaf.cert_pem, leaf.cert_pem)
    with pytest.raises(Unauthorized, match="not a valid PEM"):
        verify_chain("garbage", ca.cert_pem)


def test_issuing_refuses_a_leaf_or_a_mismatched_ca_key(ca: IssuedCert) -> None:
    leaf = issue_client_cert(ca, name="alice", role=Role.ADMIN)
    with pytest.raises(InvalidArgument, match="not a CA"):
        issue_client_cert(leaf, name="x", role=Role.ADMIN)
    other = create_ca()
    with pytest.raises(InvalidArgument, match="does not belong"):
        issue_client_cert(IssuedCert(ca.cert_pem, other.key_pem), name="x", role=Role.ADMIN)


def _cert_with_subject(ca: IssuedCert, attributes: list[x509.NameAttribute]) -> str:
    ca_cert, ca_key = load_certificate(ca.cert_pem), load_private_key(ca.key_pem)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attributes))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(minutes=1))
        .not_valid_after(NOW + dt.timedelta(days=1))
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(Encoding.PEM).decode()


@pytest.mark.parametrize(
    ("ous", "message"),
    [
        ([], "no OU"),
        (["superuser"], "unknown role 'superuser'"),
        (["ADMIN"], "unknown role 'ADMIN'"),
        (["reader", "admin"], "2 OUs"),
    ],
)
def test_role_from_cert_refuses_missing_unknown_or_ambiguous_ou(
    ca: IssuedCert, ous: list[str], message: str
) -> None:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou) for ou in ous]
    pem = _cert_with_subject(ca, [x509.NameAttribute(NameOID.COMMON_NAME, "mallory"), *attrs])
    with pytest.raises(Unauthorized, match=message):
        role_from_cert_pem(pem)


def test_role_from_server_cert_or_garbage_is_unauthorized(ca: IssuedCert) -> None:
    with pytest.raises(Unauthorized, match="no OU"):
        role_from_cert_pem(issue_server_cert(ca, hosts=["localhost"]).cert_pem)
    with pytest.raises(Unauthorized, match="not a valid PEM"):
        role_from_cert_pem(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")


def test_issued_cert_repr_never_shows_the_private_key(ca: IssuedCert) -> None:
    assert "PRIVATE KEY" not in repr(ca)
    assert "BEGIN CERTIFICATE" in repr(ca)


def test_an_expired_ca_cannot_issue(ca: IssuedCert) -> None:
    key = load_private_key(ca.key_pem)
    end = NOW - dt.timedelta(days=1)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "old CA")])
    old = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(end - dt.timedelta(days=30))
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    expired_ca = IssuedCert(old.public_bytes(Encoding.PEM).decode(), ca.key_pem)
    with pytest.raises(FailedPrecondition, match="expired"):
        issue_client_cert(expired_ca, name="x", role=Role.READER)


def test_check_key_pair_detects_a_foreign_key(ca: IssuedCert) -> None:
    one, two = (issue_client_cert(ca, name=n, role=Role.READER) for n in ("one", "two"))
    check_key_pair(one.cert_pem, one.key_pem)
    with pytest.raises(InvalidArgument, match="does not belong"):
        check_key_pair(one.cert_pem, two.key_pem)
