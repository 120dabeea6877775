"""Reading a certificate's expiry without cryptography: the CLI checks it before every dial.

An X.509 certificate is DER: ``Certificate ::= SEQUENCE { tbsCertificate SEQUENCE {
[0] version OPTIONAL, serialNumber, signature, issuer, validity SEQUENCE { notBefore,
notAfter }, ... }, ... }``. Walking those few TLVs is microseconds; importing
cryptography to do it costs tens of milliseconds. Anything unexpected falls back to
:func:`capsa.pki.cert_expiry`, so a malformed certificate gets cryptography's error.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re

__all__ = ["cert_expiry"]

_CERT = re.compile(r"-----BEGIN CERTIFICATE-----\s*([A-Za-z0-9+/=\s]+?)\s*-----END CERTIFICATE-----")


class _Malformed(Exception):
    pass


def cert_expiry(pem: str | bytes) -> dt.datetime:
    """When the (first) certificate in ``pem`` stops being valid, timezone-aware UTC."""
    text = pem.decode("ascii", "replace") if isinstance(pem, bytes) else pem
    try:
        match = _CERT.search(text)
        if match is None:
            raise _Malformed
        return _not_after(base64.b64decode("".join(match.group(1).split()), validate=True))
    except (_Malformed, binascii.Error, ValueError, IndexError):
        from capsa.pki.certs import cert_expiry as full

        return full(pem)


def _tlv(der: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of contents, end of contents) of the TLV at ``pos``."""
    tag, length = der[pos], der[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        if not 1 <= count <= 4:
            raise _Malformed
        length = int.from_bytes(der[pos:pos + count], "big")
        pos += count
    if pos + length > len(der):
        raise _Malformed
    return tag, pos, pos + length


def _not_after(der: bytes) -> dt.datetime:
    tag, start, _ = _tlv(der, 0)                 # Certificate
    if tag != 0x30:
        raise _Malformed
    tag, pos, _ = _tlv(der, start)               # tbsCertificate
    if tag != 0x30:
        raise _Malformed
    tag, _, end = _tlv(der, pos)
    if tag == 0xA0:                              # [0] EXPLICIT version
        tag, _, end = _tlv(der, end)
    for expected in (0x02, 0x30, 0x30):          # serialNumber, signature, issuer
        if tag != expected:
            raise _Malformed
        tag, _, next_end = _tlv(der, end)
        pos, end = end, next_end
    if tag != 0x30:                              # validity
        raise _Malformed
    _, _, after_before = _tlv(der, _tlv(der, pos)[1])
    tag, start, stop = _tlv(der, after_before)   # notAfter
    text = der[start:stop].decode("ascii")
    if tag == 0x17:                              # UTCTime YYMMDDHHMMSSZ (RFC 5280: YY < 50 is 20YY)
        if len(text) != 13 or not text.endswith("Z"):
            raise _Malformed
        year = int(text[:2])
        text = f"{2000 + year if year < 50 else 1900 + year}{text[2:]}"
    elif tag != 0x18 or len(text) != 15 or not text.endswith("Z"):   # GeneralizedTime YYYYMMDDHHMMSSZ
        raise _Malformed
    if not text[:14].isdigit():
        raise _Malformed
    # Not strptime: it imports _strptime, locale and calendar, a few ms for one date.
    fields = [int(text[i:j]) for i, j in ((0, 4), (4, 6), (6, 8), (8, 10), (10, 12), (12, 14))]
    return dt.datetime(*fields, tzinfo=dt.UTC)
