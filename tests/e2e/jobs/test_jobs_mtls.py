"""Mutual TLS: the daemon accepts only clients whose certificate chains to its CA and is valid now,
over TLS >= 1.2; the client explains refusals in one clear line.

This module's daemon runs on a bundle made here from a CA whose key the test keeps, so it can mint an
expired certificate that the daemon's own CA signed (capsa discards its bootstrap CA key on purpose).
"""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from capsa.api.client import CapsaClient
from capsa.api.gen.capsa.v1 import common_pb2
from capsa.api.gen.capsa.v1 import jobs_pb2_grpc as pb_grpc
from capsa.config import ClientConfig, NodeConfig, ServerConfig, ServerTLS, dump_yaml
from capsa.errors import Unauthorized, Unavailable
from capsa.pki import IssuedCert, Role, create_ca, issue_client_cert, issue_server_cert
from tests.fixtures.daemon import RunningDaemon, free_port, running_daemon


def _client_yaml(address: str, ca_pem: str, cert: IssuedCert) -> str:
    node = NodeConfig(address=address, ca_pem=ca_pem, cert_pem=cert.cert_pem, key_pem=cert.key_pem)
    return dump_yaml(ClientConfig(nodes={"default": node}, default_node="default"))


@pytest.fixture(scope="module")
def ca() -> IssuedCert:
    return create_ca("capsa e2e mtls CA")


@pytest.fixture(scope="module")
def tls_daemon(tmp_path_factory: pytest.TempPathFactory, ca: IssuedCert) -> Iterator[RunningDaemon]:
    home = tmp_path_factory.mktemp("mtls") / "home"
    home.mkdir(mode=0o700)
    port = free_port()
    address = f"127.0.0.1:{port}"
    server = issue_server_cert(ca, hosts=["127.0.0.1", "localhost"])
    config = ServerConfig.model_validate({
        "listen": address, "tls": ServerTLS(ca_pem=ca.cert_pem, cert_pem=server.cert_pem, key_pem=server.key_pem)})
    (home / "server.yaml").write_text(dump_yaml(config, only_set=True))
    for role in Role:
        text = _client_yaml(address, ca.cert_pem, issue_client_cert(ca, name=f"e2e-{role.value}", role=role))
        (home / f"client-{role.value}.yaml").write_text(text)
    (home / "client.yaml").write_text((home / "client-admin.yaml").read_text())
    with running_daemon(home, port=port) as daemon:
        yield daemon


def _raw_whoami(address: str, creds: grpc.ChannelCredentials | None) -> grpc.StatusCode | str:
    channel = grpc.insecure_channel(address) if creds is None else grpc.secure_channel(address, creds)
    with channel:
        try:
            return pb_grpc.NodeServiceStub(channel).WhoAmI(common_pb2.Empty(), timeout=10).role
        except grpc.RpcError as exc:
            return exc.code()


def _creds(ca_pem: str, cert: IssuedCert | None) -> grpc.ChannelCredentials:
    if cert is None:
        return grpc.ssl_channel_credentials(root_certificates=ca_pem.encode())
    return grpc.ssl_channel_credentials(root_certificates=ca_pem.encode(), private_key=cert.key_pem.encode(),
                                        certificate_chain=cert.cert_pem.encode())


def test_a_valid_client_certificate_is_accepted(tls_daemon: RunningDaemon, ca: IssuedCert) -> None:
    """Control for the refusals below: same channel code, a good certificate."""
    good = issue_client_cert(ca, name="good", role=Role.DEVELOPER)
    assert _raw_whoami(tls_daemon.address, _creds(ca.cert_pem, good)) == "developer"


def test_no_client_certificate_is_refused(tls_daemon: RunningDaemon, ca: IssuedCert) -> None:
    assert _raw_whoami(tls_daemon.address, _creds(ca.cert_pem, None)) == grpc.StatusCode.UNAVAILABLE
    assert _raw_whoami(tls_daemon.address, None) == grpc.StatusCode.UNAVAILABLE   # plaintext


def test_a_certificate_from_another_ca_is_refused_with_a_clear_message(tls_daemon: RunningDaemon,
                                                                      ca: IssuedCert) -> None:
    other_ca = create_ca("someone else's CA")
    foreign = issue_client_cert(other_ca, name="mallory", role=Role.ADMIN)
    assert _raw_whoami(tls_daemon.address, _creds(ca.cert_pem, foreign)) == grpc.StatusCode.UNAVAILABLE

    node = NodeConfig(address=tls_daemon.address, ca_pem=ca.cert_pem, cert_pem=foreign.cert_pem,
                      key_pem=foreign.key_pem)
    with pytest.raises(Unavailable, match="TLS handshake failed"), CapsaClient(node) as client:
        client.whoami()

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "foreign.yaml"
        path.write_text(_client_yaml(tls_daemon.address, ca.cert_pem, foreign))
        res = tls_daemon.cli("--config", str(path), "ps")
    # daemon.cli passes its own --config first; the last one given wins in click.
    err = res.stderr.decode()
    assert res.returncode == Unavailable.exit_code, err
    assert "TLS handshake failed" in err and err.count("\n") == 1 and "Traceback" not in err


def test_a_client_that_does_not_trust_the_server_says_so(tls_daemon: RunningDaemon, ca: IssuedCert) -> None:
    good = issue_client_cert(ca, name="good", role=Role.READER)
    node = NodeConfig(address=tls_daemon.address, ca_pem=create_ca("wrong trust").cert_pem,
                      cert_pem=good.cert_pem, key_pem=good.key_pem)
    with pytest.raises(Unavailable, match="TLS handshake failed"), CapsaClient(node) as client:
        client.whoami()


def test_an_expired_certificate_is_refused_by_client_and_server(tls_daemon: RunningDaemon, ca: IssuedCert) -> None:
    now = dt.datetime.now(dt.UTC)
    expired = issue_client_cert(ca, name="old", role=Role.ADMIN, not_before=now - dt.timedelta(days=30),
                                not_after=now - dt.timedelta(days=1))
    node = NodeConfig(address=tls_daemon.address, ca_pem=ca.cert_pem, cert_pem=expired.cert_pem,
                      key_pem=expired.key_pem)
    # Client side: refused before dialling, with the date and what to do.
    with pytest.raises(Unauthorized, match="expired on"):
        CapsaClient(node)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "expired.yaml"
        path.write_text(_client_yaml(tls_daemon.address, ca.cert_pem, expired))
        res = tls_daemon.cli("--config", str(path), "ps")
    err = res.stderr.decode()
    assert res.returncode == Unauthorized.exit_code, err
    assert "expired" in err and err.count("\n") == 1 and "Traceback" not in err
    # Server side: the same certificate on a hand-built channel (no client-side check) is refused.
    assert _raw_whoami(tls_daemon.address, _creds(ca.cert_pem, expired)) == grpc.StatusCode.UNAVAILABLE


def test_a_not_yet_valid_certificate_is_refused_by_the_server(tls_daemon: RunningDaemon, ca: IssuedCert) -> None:
    now = dt.datetime.now(dt.UTC)
    future = issue_client_cert(ca, name="future", role=Role.ADMIN, not_before=now + dt.timedelta(days=1),
                               not_after=now + dt.timedelta(days=30))
    assert _raw_whoami(tls_daemon.address, _creds(ca.cert_pem, future)) == grpc.StatusCode.UNAVAILABLE


def _handshake(address: str, ca: IssuedCert, cert: IssuedCert, version: ssl.TLSVersion) -> str:
    host, port = address.rsplit(":", 1)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=ca.cert_pem)
    with tempfile.NamedTemporaryFile("w", suffix=".pem") as pem:
        pem.write(cert.cert_pem + cert.key_pem)
        pem.flush()
        ctx.load_cert_chain(pem.name)
    ctx.set_ciphers("ALL:@SECLEVEL=0")   # let *our* side offer old versions; the server must refuse them
    ctx.minimum_version = ctx.maximum_version = version
    ctx.set_alpn_protocols(["h2"])
    try:
        with socket.create_connection((host, int(port)), timeout=10) as raw, \
                ctx.wrap_socket(raw, server_hostname=host) as tls:
            return str(tls.version())
    except ssl.SSLError as exc:
        return f"refused: {exc.reason}"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_tls_below_1_2_is_refused(tls_daemon: RunningDaemon, ca: IssuedCert) -> None:
    cert = issue_client_cert(ca, name="tls", role=Role.READER)
    assert _handshake(tls_daemon.address, ca, cert, ssl.TLSVersion.TLSv1_2) == "TLSv1.2"
    old = _handshake(tls_daemon.address, ca, cert, ssl.TLSVersion.TLSv1_1)
    if "NO_PROTOCOLS_AVAILABLE" in old:
        pytest.skip(f"this OpenSSL cannot even offer TLS 1.1 ({old}); the server side is not exercised")
    assert old.startswith("refused"), old   # the server hangs up on a TLS 1.1 ClientHello
