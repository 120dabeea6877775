"""TLS material for a dashboard bound to a non-loopback address.

Either the operator brings a certificate and key, or ``--tls-dir DIR`` makes (once) a small CA of
the dashboard's own and a server certificate for the given hosts with :mod:`capsa.pki`, and says
which CA file browsers must trust. The daemon's own CA cannot sign it: bootstrap keeps only the
CA *certificate* (the key is discarded after the first certificates are issued, on purpose), so a
separate web CA is the honest option.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from capsa.config.io import write_private_file
from capsa.errors import InvalidArgument
from capsa.pki import create_ca, issue_server_cert, load_certificate

__all__ = ["TlsFiles", "ensure_web_cert", "is_loopback"]


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    ca: Path | None = None   # what browsers must trust, when we made the CA


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def ensure_web_cert(directory: Path, hosts: list[str]) -> TlsFiles:
    """``web-ca.pem``, ``web-cert.pem`` and ``web-key.pem`` in ``directory``, made when missing.

    An existing certificate is reused when it covers every host; otherwise a new one is issued by
    the same CA, so browsers that trust the CA keep trusting the dashboard.
    """
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca_cert, ca_key = directory / "web-ca.pem", directory / "web-ca-key.pem"
    cert, key = directory / "web-cert.pem", directory / "web-key.pem"
    if not hosts:
        raise InvalidArgument("a web certificate needs at least one host name or address")
    if not (ca_cert.exists() and ca_key.exists()):
        ca = create_ca("capsa web CA")
        write_private_file(ca_key, ca.key_pem, overwrite=True)
        write_private_file(ca_cert, ca.cert_pem, overwrite=True)
    if not (cert.exists() and key.exists() and _covers(cert, hosts)):
        from capsa.pki import IssuedCert

        ca = IssuedCert(cert_pem=ca_cert.read_text(), key_pem=ca_key.read_text())
        issued = issue_server_cert(ca, hosts=hosts)
        write_private_file(key, issued.key_pem, overwrite=True)
        write_private_file(cert, issued.cert_pem + ca.cert_pem, overwrite=True)
    return TlsFiles(cert=cert, key=key, ca=ca_cert)


def _covers(cert_path: Path, hosts: list[str]) -> bool:
    from cryptography import x509

    try:
        cert = load_certificate(cert_path.read_text().split("-----END CERTIFICATE-----")[0]
                                + "-----END CERTIFICATE-----\n")
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except Exception:   # unreadable or without SANs: issue a fresh one
        return False
    names = {str(n) for n in san.get_values_for_type(x509.DNSName)}
    names |= {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    return all(h.strip("[]").lower() in names for h in hosts)
