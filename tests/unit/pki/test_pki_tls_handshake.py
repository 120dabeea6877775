"""Real mutual-TLS handshakes (stdlib ssl, OpenSSL) with capsa-issued certificates.

A tiny threaded server requires a client certificate signed by the capsa CA
and answers with the role in it; certificates that must be refused are.
"""

from __future__ import annotations

import datetime as dt
import queue
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from capsa.config import load_client_config, load_server_config, write_bundle
from capsa.pki import IssuedCert, Role, create_ca, issue_client_cert, issue_server_cert, role_from_cert_pem

TIMEOUT = 5.0


def _pem_files(directory: Path, name: str, cert_pem: str, key_pem: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    cert.write_text(cert_pem)
    key.write_text(key_pem)
    return cert, key


@dataclass
class MtlsServer:
    """Accepts connections one by one; records each one's role or refusal reason."""

    port: int
    results: queue.Queue[str]


def _serve(
    listener: socket.socket, ctx: ssl.SSLContext, results: queue.Queue[str], stop: threading.Event
) -> None:
    while not stop.is_set():
        try:
            conn, _ = listener.accept()
        except OSError:
            return  # listener closed
        conn.settimeout(TIMEOUT)
        try:
            with ctx.wrap_socket(conn, server_side=True) as tls:
                der = tls.getpeercert(binary_form=True)
                assert der is not None
                role = role_from_cert_pem(ssl.DER_cert_to_PEM_cert(der))
                tls.sendall(f"{role.value}\n".encode())
                results.put(f"ok:{role.value}")
        except (ssl.SSLError, OSError) as exc:
            results.put(f"refused:{getattr(exc, 'verify_message', None) or exc}")
        finally:
            conn.close()


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, IssuedCert]:
    ca = create_ca()
    return {"ca": ca, "server": issue_server_cert(ca, hosts=["localhost", "127.0.0.1"])}


def _start_server(tmp_path: Path, ca_pem: str, server: IssuedCert) -> Iterator[MtlsServer]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(*_pem_files(tmp_path, "server", server.cert_pem, server.key_pem))
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=ca_pem)
    listener = socket.create_server(("127.0.0.1", 0))
    results: queue.Queue[str] = queue.Queue()
    stop = threading.Event()
    thread = threading.Thread(target=_serve, args=(listener, ctx, results, stop), daemon=True)
    thread.start()
    try:
        yield MtlsServer(port=listener.getsockname()[1], results=results)
    finally:
        stop.set()
        listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        thread.join(TIMEOUT)
        assert not thread.is_alive()


@pytest.fixture
def server(tmp_path: Path, pki: dict[str, IssuedCert]) -> Iterator[MtlsServer]:
    yield from _start_server(tmp_path, pki["ca"].cert_pem, pki["server"])


def _client_ctx(tmp_path: Path, ca_pem: str, client: IssuedCert | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the server and its host name
    ctx.load_verify_locations(cadata=ca_pem)
    if client is not None:
        ctx.load_cert_chain(*_pem_files(tmp_path, "client", client.cert_pem, client.key_pem))
    return ctx


def _talk(ctx: ssl.SSLContext, port: int, hostname: str = "localhost") -> str:
    """The server's answer, or "" when the connection was refused after the handshake."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw,
        ctx.wrap_socket(raw, server_hostname=hostname) as tls,
    ):
        try:
            # With TLS 1.3 the server checks the client certificate after the client's
            # handshake completes, so a refusal shows up on the first read.
            return tls.recv(64).decode().strip()
        except (ssl.SSLError, ConnectionResetError):
            return ""


@pytest.mark.parametrize("role", list(Role))
@pytest.mark.parametrize("hostname", ["localhost", "127.0.0.1"])
def test_each_role_certificate_is_accepted_and_its_role_seen_by_the_server(
    tmp_path: Path, pki: dict[str, IssuedCert], server: MtlsServer, role: Role, hostname: str
) -> None:
    client = issue_client_cert(pki["ca"], name=f"user-{role.value}", role=role)
    assert _talk(_client_ctx(tmp_path, pki["ca"].cert_pem, client), server.port, hostname) == role.value
    assert server.results.get(timeout=TIMEOUT) == f"ok:{role.value}"


def _refusal(server: MtlsServer) -> str:
    result = server.results.get(timeout=TIMEOUT)
    assert result.startswith("refused:"), result
    return result


def test_certificate_from_another_ca_is_refused(
    tmp_path: Path, pki: dict[str, IssuedCert], server: MtlsServer
) -> None:
    stranger = issue_client_cert(create_ca(), name="mallory", role=Role.ADMIN)
    assert _talk(_client_ctx(tmp_path, pki["ca"].cert_pem, stranger), server.port) == ""
    assert "unable to get local issuer certificate" in _refusal(server)


def test_expired_certificate_is_refused(
    tmp_path: Path, pki: dict[str, IssuedCert], server: MtlsServer
) -> None:
    end = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    expired = issue_client_cert(
        pki["ca"], name="old", role=Role.ADMIN, not_before=end - dt.timedelta(days=1), not_after=end
    )
    assert _talk(_client_ctx(tmp_path, pki["ca"].cert_pem, expired), server.port) == ""
    assert "certificate has expired" in _refusal(server)


def test_server_certificate_cannot_be_used_as_a_client_certificate(
    tmp_path: Path, pki: dict[str, IssuedCert], server: MtlsServer
) -> None:
    assert _talk(_client_ctx(tmp_path, pki["ca"].cert_pem, pki["server"]), server.port) == ""
    assert "certificate purpose" in _refusal(server)  # OpenSSL: "unsuitable ..."


def test_connection_without_a_client_certificate_is_refused(
    tmp_path: Path, pki: dict[str, IssuedCert], server: MtlsServer
) -> None:
    assert _talk(_client_ctx(tmp_path, pki["ca"].cert_pem, None), server.port) == ""
    assert "certificate" in _refusal(server)


def test_client_refuses_a_server_name_outside_the_sans(
    tmp_path: Path, pki: dict[str, IssuedCert], server: MtlsServer
) -> None:
    client = issue_client_cert(pki["ca"], name="alice", role=Role.READER)
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        _talk(_client_ctx(tmp_path, pki["ca"].cert_pem, client), server.port, hostname="other.example")


def test_client_refuses_a_server_from_another_ca(
    tmp_path: Path, pki: dict[str, IssuedCert], server: MtlsServer
) -> None:
    other = create_ca()
    client = issue_client_cert(other, name="alice", role=Role.READER)
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        _talk(_client_ctx(tmp_path, other.cert_pem, client), server.port)
    assert server.results.get(timeout=TIMEOUT).startswith("refused:")


def test_generated_bundle_files_complete_a_handshake_for_every_role(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    write_bundle(bundle, address="127.0.0.1:7443", hosts=["localhost"])
    tls = load_server_config(bundle / "server.yaml").tls
    server_cert = IssuedCert(tls.cert_pem, tls.key_pem)
    for srv in _start_server(tmp_path, tls.ca_pem, server_cert):
        for role in Role:
            node = load_client_config(bundle / f"client-{role.value}.yaml").select()
            ctx = _client_ctx(tmp_path, node.ca_pem, IssuedCert(node.cert_pem, node.key_pem))
            assert _talk(ctx, srv.port, hostname="127.0.0.1") == role.value
            assert srv.results.get(timeout=TIMEOUT) == f"ok:{role.value}"
