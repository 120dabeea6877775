"""Capsule names, versions and requirements: PEP 440 / PEP 508, via ``packaging``.

Why PEP 440 rather than SemVer: the resolver (resolvelib) and the specifier
language (``dataset>=1.2,<2``, ``~=1.4``, ``==1.*``, ``!=1.3.1``) come for free
and are the ones Python users already write; ordering handles pre-, post- and
dev-releases precisely; and ``packaging`` is a pinned dependency already.
Consequences, made explicit here:

* ``1.2`` and ``1.2.0`` are the *same* version (PEP 440 equality). The store
  keys versions by :func:`version_key` so they can never name two contents.
* Pre-releases (``2.0rc1``) satisfy a requirement only when the requirement
  itself names a pre-release (``>=2.0rc1``, ``==2.0rc1``), as PEP 440 says;
  this module decides that explicitly instead of relying on a library default.
* Capsule names are PEP 503-normalised already (lowercase letters, digits and
  single hyphens), so a name is also a safe directory name (``/capsules/NAME``)
  and requirement names never need a second normalisation.
"""

from __future__ import annotations

import re

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name, canonicalize_version
from packaging.version import InvalidVersion, Version

from capsa.errors import InvalidArgument

__all__ = [
    "check_labels",
    "check_name",
    "parse_reference",
    "parse_requirement",
    "parse_version",
    "satisfies",
    "version_key",
]

_NAME = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
_NAME_MAX = 63
_LABEL_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$")
_LABEL_VALUE_MAX = 256


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid capsule name, else raise ``InvalidArgument``."""
    if not isinstance(name, str) or len(name) > _NAME_MAX or not _NAME.fullmatch(name):
        hint = ""
        if isinstance(name, str) and name and canonicalize_name(name) != name:
            hint = f" (did you mean {canonicalize_name(name)!r}?)"
        raise InvalidArgument(
            f"invalid capsule name {name!r}: use 1-{_NAME_MAX} lowercase letters, digits and "
            f"single hyphens{hint}"
        )
    return name


def parse_version(text: str | Version) -> Version:
    if isinstance(text, Version):
        return text
    try:
        return Version(text)
    except (InvalidVersion, TypeError):
        raise InvalidArgument(
            f"invalid capsule version {text!r}: versions follow PEP 440 (e.g. 1.2.0)"
        ) from None


def version_key(version: str | Version) -> str:
    """The identity of a version under PEP 440 equality (``1.2`` == ``1.2.0`` -> ``"1.2"``)."""
    return canonicalize_version(parse_version(version), strip_trailing_zero=True)


def parse_requirement(text: str) -> Requirement:
    """Parse ``dataset>=1.2,<2`` into a normalised requirement (name + specifiers only)."""
    try:
        req = Requirement(text)
    except (InvalidRequirement, TypeError):
        raise InvalidArgument(
            f"invalid capsule requirement {text!r}: write NAME followed by PEP 440 specifiers, "
            "e.g. 'dataset>=1.2,<2'"
        ) from None
    if req.url or req.extras or req.marker:
        raise InvalidArgument(f"capsule requirement {text!r} may only hold a name and version specifiers")
    name = canonicalize_name(req.name)
    check_name(name)
    return Requirement(f"{name}{req.specifier}")


def parse_reference(text: str) -> tuple[str, Version]:
    """Split ``name@version`` (an exact reference, as the CLI shows them)."""
    name, sep, version = text.partition("@")
    if not sep or not version:
        raise InvalidArgument(f"invalid capsule reference {text!r}: expected NAME@VERSION")
    return check_name(name), parse_version(version)


def satisfies(requirement: Requirement, version: str | Version) -> bool:
    """PEP 440 match; pre-releases only when the requirement itself names one."""
    spec = requirement.specifier
    return spec.contains(parse_version(version), prereleases=spec.prereleases is True)


def check_labels(labels: dict[str, str] | None) -> dict[str, str]:
    """Validate user labels (``team=ml``); returns a plain sorted copy."""
    result: dict[str, str] = {}
    for key, value in sorted((labels or {}).items()):
        if not isinstance(key, str) or not _LABEL_KEY.fullmatch(key):
            raise InvalidArgument(f"invalid label key {key!r}: 1-63 of letters, digits, '.', '_', '/', '-'")
        if not isinstance(value, str) or len(value) > _LABEL_VALUE_MAX or "\0" in value:
            raise InvalidArgument(f"label {key!r} must be a string of at most {_LABEL_VALUE_MAX} characters")
        result[key] = value
    return result
