"""``host:port`` parsing, shared by the server config, the client config and the bootstrap.

Kept free of pydantic and cryptography: the CLI validates client.yaml with it on every command.
"""

from __future__ import annotations

__all__ = ["parse_address"]


def parse_address(text: str, *, allow_port_zero: bool = False) -> tuple[str, int]:
    """Split ``host:port`` / ``[v6]:port`` into (host, port); ValueError says what is wrong."""
    value = text.strip()
    if value.startswith("["):
        host, sep, port_text = value[1:].partition("]:")
        if not sep:
            raise ValueError(f"{text!r} is not host:port (IPv6 hosts are written [addr]:port)")
        import ipaddress  # only for bracketed hosts: ipaddress costs a few ms to import

        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} in {text!r} is not an IPv6 address") from None
    else:
        host, sep, port_text = value.rpartition(":")
        if not sep or not host:
            raise ValueError(f"{text!r} is not host:port")
        if ":" in host:
            raise ValueError(f"{text!r}: write IPv6 hosts in brackets, e.g. [::1]:7443")
        if any(ch.isspace() or ch in "/@" for ch in host):
            raise ValueError(f"{host!r} in {text!r} is not a host name or IP address")
    if not port_text.isdigit():
        raise ValueError(f"port {port_text!r} in {text!r} is not a number")
    port = int(port_text)
    low = 0 if allow_port_zero else 1
    if not low <= port <= 65535:
        raise ValueError(f"port {port} in {text!r} is outside {low}-65535")
    return host, port
