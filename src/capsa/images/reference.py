"""Image references: what a user types after ``capsa image pull``.

Four kinds, told apart by their prefix:

==================  ==================================================================
``registry``        ``[host[:port]/]path[:tag][@sha256:...]`` — Docker's grammar:
                    ``alpine`` means ``docker.io/library/alpine:latest``; the first
                    component is a host only if it has a ``.`` or ``:`` or is
                    ``localhost``. ``docker://`` may precede it.
``s3``              ``s3://bucket/prefix/`` — a layered image: the ``<n>.tar`` objects
                    directly under the prefix, in numeric order; or
                    ``s3://bucket/key.tar`` — one object, a single-layer image.
``oci``             ``oci:PATH[:TAG]`` — an OCI image layout directory.
``docker-archive``  ``docker-archive:PATH[:NAME:TAG]`` — ``docker save`` output.
==================  ==================================================================

For the two local kinds the path ends at the first ``:`` (as in
containers/image), so such paths cannot contain one.

Parsing never touches the network or the filesystem; every refusal is an
InvalidArgument that names what is wrong. S3 keys are validated as image ADR-004
asks: AWS "safe" characters only, no ``..`` or ``.`` segment, no leading ``/``,
no empty segment, at most 1024 bytes.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from capsa.errors import CapsaError, InvalidArgument
from capsa.images.oci import Digest

__all__ = [
    "DOCKER_HUB",
    "RefKind",
    "Reference",
    "parse_reference",
    "validate_s3_bucket",
    "validate_s3_key",
]

DOCKER_HUB = "docker.io"
_DOCKER_HUB_API = "registry-1.docker.io"
_DEFAULT_TAG = "latest"

_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_PATH_COMPONENT_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_HOST_LABEL_RE = re.compile(r"^(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])$")
_MAX_NAME = 255

_S3_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
# AWS documents these as the characters safe in any key; anything else is refused
# rather than escaped, because keys are also turned into log lines and file names.
_S3_KEY_SEGMENT_RE = re.compile(r"^[A-Za-z0-9!_.*'()=+,@-]+$")
_S3_MAX_KEY = 1024
_S3_LAYER_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.zst")


class RefKind(enum.StrEnum):
    REGISTRY = "registry"
    S3 = "s3"
    OCI_LAYOUT = "oci"
    DOCKER_ARCHIVE = "docker-archive"


@dataclass(frozen=True)
class Reference:
    """A parsed reference. Which fields are set depends on :attr:`kind`.

    * registry: ``registry`` (``docker.io``, ``127.0.0.1:5000``), ``repository``
      (``library/alpine``), ``tag`` (``latest`` unless only a digest was given),
      ``digest``.
    * s3: ``bucket``, ``key`` (a prefix ending in ``/``, or an object key).
    * oci: ``path``, ``tag`` (``None``: the layout's only image).
    * docker-archive: ``path``, ``tag`` (``None``, or ``name:tag`` to pick one image).
    """

    kind: RefKind
    registry: str | None = None
    repository: str | None = None
    tag: str | None = None
    digest: Digest | None = None
    bucket: str | None = None
    key: str | None = None
    path: Path | None = None

    # -- derived -------------------------------------------------------------------------
    @property
    def canonical(self) -> str:
        """The fully-qualified string form; parsing it gives back an equal Reference."""
        if self.kind is RefKind.REGISTRY:
            out = f"{self.registry}/{self.repository}"
            if self.tag:
                out += f":{self.tag}"
            if self.digest:
                out += f"@{self.digest}"
            return out
        if self.kind is RefKind.S3:
            return f"s3://{self.bucket}/{self.key}"
        out = f"{self.kind.value}:{self.path}"
        return f"{out}:{self.tag}" if self.tag else out

    def __str__(self) -> str:
        return self.canonical

    @property
    def is_s3_prefix(self) -> bool:
        """``s3://bucket/prefix/``: a layered image of ``<n>.tar`` objects."""
        return self.kind is RefKind.S3 and (self.key == "" or (self.key or "").endswith("/"))

    @property
    def api_host(self) -> str | None:
        """The host[:port] that serves the Registry API (Docker Hub's differs from its name)."""
        if self.kind is not RefKind.REGISTRY:
            return None
        return _DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def manifest_reference(self) -> str | None:
        """What goes after ``/manifests/``: the digest when known, else the tag."""
        return self.digest or self.tag

    def with_base_dir(self, base: Path) -> Reference:
        """Make a local reference's relative path absolute against ``base`` (the CLI's cwd)."""
        if self.path is None or self.path.is_absolute():
            return self
        return replace(self, path=(base / self.path))


def parse_reference(text: str, *, base_dir: Path | None = None) -> Reference:
    """Parse ``text`` into a :class:`Reference`; InvalidArgument names what is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidArgument("image reference is empty")
    if text != text.strip() or any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise InvalidArgument(f"image reference {text!r} contains whitespace or control characters")
    try:
        if text.startswith("s3://"):
            ref = _parse_s3(text)
        elif text.startswith("oci:"):
            ref = _parse_local(text, RefKind.OCI_LAYOUT, len("oci:"))
        elif text.startswith("docker-archive:"):
            ref = _parse_local(text, RefKind.DOCKER_ARCHIVE, len("docker-archive:"))
        elif text.startswith("docker://"):
            ref = _parse_registry(text[len("docker://"):], text)
        elif "://" in text:
            scheme = text.split("://", 1)[0]
            raise InvalidArgument(
                f"image reference {text!r}: scheme {scheme + '://'!r} is not supported "
                "(use a registry reference, s3://, oci: or docker-archive:)"
            )
        else:
            ref = _parse_registry(text, text)
    except InvalidArgument:
        raise
    except CapsaError as exc:  # e.g. Unsupported digest algorithm: same kind, prefixed
        raise type(exc)(f"image reference {text!r}: {exc.message}") from None
    return ref.with_base_dir(base_dir) if base_dir is not None else ref


# -- registry ------------------------------------------------------------------------------


def _parse_registry(body: str, original: str) -> Reference:
    def bad(why: str) -> InvalidArgument:
        return InvalidArgument(f"image reference {original!r}: {why}")

    if not body:
        raise bad("no repository name")
    digest: Digest | None = None
    if "@" in body:
        body, _, digest_text = body.partition("@")
        try:
            digest = Digest(digest_text)
        except InvalidArgument as exc:
            raise bad(exc.message) from None
    registry, remainder = _split_domain(body)
    tag: str | None = None
    last = remainder.rsplit("/", 1)[-1]
    if ":" in last:
        remainder, _, tag = remainder.rpartition(":")
        if not _TAG_RE.match(tag):
            raise bad(f"tag {tag!r} is invalid (letters, digits, '_', '.', '-'; at most 128; not starting with '.' or '-')")
    if not remainder:
        raise bad("no repository name")
    if registry is None:
        registry = DOCKER_HUB
    else:
        _validate_host(registry, bad)
    if registry in ("index.docker.io", "registry-1.docker.io"):
        registry = DOCKER_HUB
    if registry == DOCKER_HUB and "/" not in remainder:
        remainder = "library/" + remainder
    for component in remainder.split("/"):
        if not component:
            raise bad("repository has an empty path component")
        if not _PATH_COMPONENT_RE.match(component):
            if component.lower() != component and _PATH_COMPONENT_RE.match(component.lower()):
                raise bad(f"repository component {component!r} must be lowercase")
            raise bad(
                f"repository component {component!r} is invalid (lowercase letters and digits, "
                "separated by '.', '_', '__' or '-')"
            )
    if len(registry) + 1 + len(remainder) > _MAX_NAME:
        raise bad(f"name is longer than {_MAX_NAME} characters")
    if tag is None and digest is None:
        tag = _DEFAULT_TAG
    return Reference(kind=RefKind.REGISTRY, registry=registry, repository=remainder, tag=tag, digest=digest)


def _split_domain(name: str) -> tuple[str | None, str]:
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        return first, rest
    return None, name


def _validate_host(host: str, bad: Callable[[str], InvalidArgument]) -> None:
    hostname, port = host, None
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            raise bad("registry host has an unterminated '[' (IPv6 literal)")
        hostname, rest = host[1:end], host[end + 1:]
        try:
            ipaddress.IPv6Address(hostname)
        except ValueError:
            raise bad(f"registry host {host!r} is not a valid IPv6 literal") from None
        if rest and not rest.startswith(":"):
            raise bad(f"registry host {host!r} is malformed")
        port = rest[1:] if rest else None
    else:
        if ":" in host:
            hostname, port = host.rsplit(":", 1)
        labels = hostname.split(".")
        if not hostname or len(hostname) > 253 or not all(_HOST_LABEL_RE.match(x) and len(x) <= 63 for x in labels):
            raise bad(f"registry host {hostname!r} is not a valid host name or address")
    if port is not None and (not port.isdigit() or not 0 < int(port) < 65536):
        raise bad(f"registry port {port!r} is not a number from 1 to 65535")


# -- s3 -------------------------------------------------------------------------------------


def validate_s3_bucket(bucket: str) -> str:
    """Bucket naming rules (3–63 of a-z 0-9 . -, alphanumeric at both ends, not an IP)."""
    if not _S3_BUCKET_RE.match(bucket) or ".." in bucket or ".-" in bucket or "-." in bucket:
        raise InvalidArgument(
            f"S3 bucket name {bucket!r} is invalid (3-63 lowercase letters, digits, '.' or '-', "
            "starting and ending with a letter or digit)"
        )
    try:
        ipaddress.IPv4Address(bucket)
    except ValueError:
        return bucket
    raise InvalidArgument(f"S3 bucket name {bucket!r} must not look like an IP address")


def validate_s3_key(key: str, *, prefix: bool = False) -> str:
    """Image ADR-004: refuse keys that could escape, confuse or smuggle.

    ``prefix=True`` accepts ``""`` (the bucket root) and requires a trailing ``/``.
    """
    if prefix and key == "":
        return key
    if not key:
        raise InvalidArgument("S3 key is empty")
    if len(key.encode()) > _S3_MAX_KEY:
        raise InvalidArgument(f"S3 key is {len(key.encode())} bytes, longer than the {_S3_MAX_KEY}-byte maximum")
    if key.startswith("/"):
        raise InvalidArgument(f"S3 key {key!r} must not start with '/'")
    if prefix != key.endswith("/"):
        raise InvalidArgument(f"S3 {'prefix' if prefix else 'object key'} {key!r} " + (
            "must end with '/'" if prefix else "must not end with '/'"))
    segments = key[:-1].split("/") if prefix else key.split("/")
    for segment in segments:
        if segment == "":
            raise InvalidArgument(f"S3 key {key!r} has an empty path segment ('//')")
        if segment in (".", ".."):
            raise InvalidArgument(f"S3 key {key!r} has a {segment!r} path segment")
        if not _S3_KEY_SEGMENT_RE.match(segment):
            bad_chars = sorted({c for c in segment if not _S3_KEY_SEGMENT_RE.match(c)})
            raise InvalidArgument(
                f"S3 key {key!r} contains characters outside the allowed set "
                f"(letters, digits and !_.*'()=+,@-): {''.join(bad_chars)!r}"
            )
    return key


def _parse_s3(text: str) -> Reference:
    body = text[len("s3://"):]
    bucket, sep, key = body.partition("/")
    if not bucket:
        raise InvalidArgument(f"image reference {text!r}: no bucket after 's3://'")
    validate_s3_bucket(bucket)
    if not sep:
        raise InvalidArgument(
            f"image reference {text!r}: add '/' for the bucket root, 'prefix/' for a layered image "
            "or 'key.tar' for a single-layer image"
        )
    if key == "" or key.endswith("/"):
        validate_s3_key(key, prefix=True)
    else:
        validate_s3_key(key)
        if not key.endswith(_S3_LAYER_SUFFIXES):
            raise InvalidArgument(
                f"image reference {text!r}: an S3 image is a prefix ending in '/' (layers <n>.tar) "
                f"or one object ending in {', '.join(_S3_LAYER_SUFFIXES)}"
            )
    return Reference(kind=RefKind.S3, bucket=bucket, key=key)


# -- local ------------------------------------------------------------------------------------


def _parse_local(text: str, kind: RefKind, skip: int) -> Reference:
    body = text[skip:]
    path_text, sep, selector = body.partition(":")
    if not path_text:
        raise InvalidArgument(f"image reference {text!r}: no path after '{kind.value}:'")
    if "\0" in path_text:
        raise InvalidArgument(f"image reference {text!r}: path contains NUL")
    tag: str | None = None
    if sep:
        if not selector:
            raise InvalidArgument(f"image reference {text!r}: empty {'tag' if kind is RefKind.OCI_LAYOUT else 'image name'} after ':'")
        if kind is RefKind.OCI_LAYOUT:
            # OCI ref names are freer than Docker tags, but a layout tag that is also a
            # path or has spaces is a typo, not a name.
            if "/" in selector or len(selector) > 255:
                raise InvalidArgument(f"image reference {text!r}: OCI layout tag {selector!r} is invalid")
            tag = selector
        else:
            name_ref = _parse_registry(selector, text)  # NAME:TAG as docker would store it
            tag = f"{name_ref.registry}/{name_ref.repository}:{name_ref.tag}"
    return Reference(kind=kind, path=Path(path_text), tag=tag)
