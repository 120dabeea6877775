"""Registry credentials, transport policy and auth challenges (no network here).

* :class:`RegistryConfig` — credentials by host, a docker ``config.json``-style
  auth file, the hosts allowed over plain HTTP, CA file and timeouts.
* :func:`load_auth_file` — ``auths.<host>.auth`` (base64 ``user:password``),
  ``username``/``password``, ``identitytoken`` (an OAuth2 refresh token) and
  ``registrytoken`` (a bearer token used as is). Keys may be URLs
  (``https://index.docker.io/v1/``); Docker Hub's names are interchangeable.
* Plain HTTP is allowed only for loopback hosts (``localhost``, ``127.0.0.0/8``,
  ``::1``) and hosts listed as insecure.
* :func:`parse_challenges` — ``WWW-Authenticate`` headers, with quoted values
  that may contain commas (``scope="repository:a:pull,push"``).
"""

from __future__ import annotations

import base64
import ipaddress
import json
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from capsa.errors import InvalidArgument, NotFound
from capsa.images.reference import DOCKER_HUB

__all__ = ["Credentials", "RegistryConfig", "is_loopback_host", "load_auth_file", "parse_challenges"]

_DOCKER_HUB_HOSTS = (DOCKER_HUB, "registry-1.docker.io", "index.docker.io")


@dataclass(frozen=True)
class Credentials:
    username: str | None = None
    password: str | None = None
    identity_token: str | None = None  # OAuth2 refresh token ("identitytoken")
    registry_token: str | None = None  # a bearer token sent as is ("registrytoken")

    def __repr__(self) -> str:  # never print secrets
        return f"Credentials(username={self.username!r}, secrets=***)"


@dataclass(frozen=True)
class RegistryConfig:
    credentials: Mapping[str, Credentials] = field(default_factory=dict)  # by host[:port]
    auth_file: Path | None = None  # docker config.json format
    insecure: frozenset[str] = frozenset()  # host or host:port allowed over plain HTTP
    ca_file: Path | None = None
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    max_redirects: int = 5
    user_agent: str = "capsa"

    def credentials_for(self, host: str) -> Credentials | None:
        names = [host]
        if host in _DOCKER_HUB_HOSTS:  # users write docker.io, the API lives on registry-1.docker.io
            names += [h for h in _DOCKER_HUB_HOSTS if h != host]
        from_file = load_auth_file(self.auth_file) if self.auth_file is not None else {}
        for source in (self.credentials, from_file):
            for name in names:
                if name in source:
                    return source[name]
        return None

    def allows_http(self, host: str) -> bool:
        hostname = _split_hostport(host)[0]
        return is_loopback_host(hostname) or host in self.insecure or hostname in self.insecure


def load_auth_file(path: Path) -> dict[str, Credentials]:
    """Read a docker ``config.json``-style auth file into credentials by host[:port].

    Keys may be bare hosts or URLs (``https://index.docker.io/v1/`` becomes
    ``index.docker.io``, which :meth:`RegistryConfig.credentials_for` treats as
    Docker Hub).
    """
    try:
        doc = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise NotFound(f"registry auth file {path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise InvalidArgument(f"registry auth file {path} is unreadable: {exc}") from None
    auths = doc.get("auths") if isinstance(doc, dict) else None
    if not isinstance(auths, dict):
        raise InvalidArgument(f"registry auth file {path} has no 'auths' object")
    out: dict[str, Credentials] = {}
    for key, entry in auths.items():
        if not isinstance(entry, dict):
            continue
        username, password = entry.get("username"), entry.get("password")
        if entry.get("auth"):
            try:
                decoded = base64.b64decode(entry["auth"], validate=True).decode()
            except (ValueError, UnicodeDecodeError):
                raise InvalidArgument(f"registry auth file {path}: 'auth' for {key!r} is not base64 of user:password") from None
            username, sep, password = decoded.partition(":")
            if not sep:
                raise InvalidArgument(f"registry auth file {path}: 'auth' for {key!r} has no ':' between user and password")
        creds = Credentials(
            username=username or None, password=password or None,
            identity_token=entry.get("identitytoken") or None, registry_token=entry.get("registrytoken") or None,
        )
        out[_normalize_auth_key(key)] = creds
    return out


def _normalize_auth_key(key: str) -> str:
    if "://" in key:
        key = urllib.parse.urlsplit(key).netloc
    return key.split("/", 1)[0]


def is_loopback_host(hostname: str) -> bool:
    hostname = hostname.strip("[]")
    if hostname == "localhost" or hostname.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def _split_hostport(host: str) -> tuple[str, str | None]:
    if host.startswith("["):
        end = host.find("]")
        rest = host[end + 1:]
        return host[1:end], (rest[1:] if rest.startswith(":") else None)
    if host.count(":") == 1:
        name, port = host.split(":")
        return name, port
    return host, None


# -- WWW-Authenticate ----------------------------------------------------------------------------

_CHALLENGE_PARAM = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))\s*(?:,|$)')


def parse_challenges(values: list[str]) -> list[tuple[str, dict[str, str]]]:
    """``[(scheme, params)]`` from WWW-Authenticate headers (quoted values may hold commas)."""
    out: list[tuple[str, dict[str, str]]] = []
    for value in values:
        rest = value.strip()
        while rest:
            scheme, _, rest = rest.partition(" ")
            params: dict[str, str] = {}
            while True:
                match = _CHALLENGE_PARAM.match(rest)
                if not match:
                    break
                params[match.group(1).lower()] = (
                    match.group(2).replace('\\"', '"') if match.group(2) is not None else match.group(3)
                )
                rest = rest[match.end():]
            out.append((scheme.strip().lower(), params))
            rest = rest.strip().lstrip(",").strip()
    return out
