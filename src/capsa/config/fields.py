"""Shared building blocks of capsa's config models: strict base model, addresses, PEM fields."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from cryptography import x509
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from capsa.config.addresses import parse_address
from capsa.errors import CapsaError
from capsa.pki.certs import check_key_pair, load_certificate, load_private_key

__all__ = [
    "Address",
    "CaCertPem",
    "CertPem",
    "KeyPem",
    "ListenAddress",
    "StrictModel",
    "key_belongs_to",
    "parse_address",
]


class StrictModel(BaseModel):
    """Unknown keys are errors (a typo must not silently fall back to a default); models are immutable."""

    # Attribute docstrings become field descriptions, so docs can be generated from the models.
    model_config = ConfigDict(
        extra="forbid", frozen=True, validate_default=True, use_attribute_docstrings=True
    )


def _address(value: str) -> str:
    parse_address(value)
    return value.strip()


def _listen_address(value: str) -> str:
    # Port 0 lets tests and ad-hoc servers ask the kernel for a free port.
    parse_address(value, allow_port_zero=True)
    return value.strip()


def _pem_check(kind: str, loader: Callable[[str], object]) -> AfterValidator:
    def check(value: str) -> str:
        try:
            loader(value)
        except CapsaError as exc:
            raise ValueError(f"invalid {kind}: {exc.message}") from None
        return value

    return AfterValidator(check)


def _ca_pem(value: str) -> str:
    try:
        cert = load_certificate(value)
    except CapsaError as exc:
        raise ValueError(f"invalid CA certificate: {exc.message}") from None
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise ValueError(f"{cert.subject.rfc4514_string()!r} is not a CA certificate")
    return value


Address = Annotated[str, AfterValidator(_address), Field(description="host:port or [ipv6]:port")]
ListenAddress = Annotated[str, AfterValidator(_listen_address), Field(description="host:port to bind")]
CertPem = Annotated[str, _pem_check("certificate", load_certificate)]
CaCertPem = Annotated[str, AfterValidator(_ca_pem)]
# repr=False: private keys must never reach logs through a model's repr.
KeyPem = Annotated[str, _pem_check("private key", load_private_key), Field(repr=False)]


def key_belongs_to(cert_pem: str | None, key_pem: str) -> str:
    """``key_pem`` if it is the private key of ``cert_pem``; ValueError otherwise.

    Checked at load time because a mismatch otherwise surfaces much later as
    an opaque TLS handshake failure. ``cert_pem`` is None when it failed its
    own validation, which is then the error worth reporting.
    """
    if cert_pem is None:
        return key_pem
    try:
        check_key_pair(cert_pem, key_pem)
    except CapsaError as exc:
        raise ValueError(exc.message) from None
    return key_pem
