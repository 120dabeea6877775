"""Archive names → paths relative to the root, and the symlink-target policy.

A name is split on ``/``; empty and ``.`` components are dropped, which also
turns a leading ``/`` or ``./`` into a path under the root (OCI layers carry
both). Any ``..`` component is refused outright: no image builder emits one, and
refusing them removes every lexical escape before a single syscall is made.
"""

from __future__ import annotations

from capsa.errors import LimitExceeded, UnsafeArchive

from ._limits import UnpackLimits

__all__ = ["WHITEOUT_PREFIX", "byte_len", "split_name", "symlink_escapes", "validate_link_target"]

WHITEOUT_PREFIX = ".wh."


def byte_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogateescape"))


def split_name(name: str, what: str, limits: UnpackLimits, *, field: str = "name") -> tuple[str, str]:
    """``(parent, base)`` of ``name`` under the root: ``parent`` is ``""`` at the top
    level, and ``("", "")`` is the root itself."""
    size = len(name) if name.isascii() else byte_len(name)
    if size > limits.max_path_bytes:
        raise LimitExceeded(f"{what}: {field} is longer than max_path_bytes={limits.max_path_bytes}",
                            detail={"limit": "max_path_bytes", "entry": what})
    if "\0" in name:
        raise UnsafeArchive(f"{what}: {field} contains a NUL byte", detail={"entry": what})
    clean = name.rstrip("/")  # directories often carry a trailing slash
    if clean.startswith("./"):
        clean = clean[2:]
    if clean.startswith("/") or "//" in clean or "/./" in clean or ".." in clean or clean.endswith("/.") \
            or clean.startswith("./") or clean == ".":
        parts = [part for part in clean.split("/") if part and part != "."]
        if ".." in parts:
            raise UnsafeArchive(f"{what}: {field} contains a '..' component", detail={"entry": what})
        clean = "/".join(parts)
    if size > limits.max_name_bytes:  # else no component can be too long
        for part in clean.split("/"):
            if byte_len(part) > limits.max_name_bytes:
                raise LimitExceeded(
                    f"{what}: component {part[:40]!r}... is longer than max_name_bytes={limits.max_name_bytes}",
                    detail={"limit": "max_name_bytes", "entry": what})
    parent, _, base = clean.rpartition("/")
    return parent, base


def symlink_escapes(parent: str, target: str) -> bool:
    """True when ``target`` of a symlink in directory ``parent`` climbs above the root lexically.

    An absolute target starts at the root; a relative one at the link's directory.
    Such links are what Docker and Podman refuse as "breakouts": no image needs one
    (at run time ``/..`` is ``/``), and a host tool that follows them would leave the
    root. Absolute targets that stay inside are legal and kept as they are.
    """
    depth = 0 if target.startswith("/") or not parent else parent.count("/") + 1
    for part in target.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part and part != ".":
            depth += 1
    return False


def validate_link_target(target: str, what: str, limits: UnpackLimits) -> None:
    if not target:
        raise UnsafeArchive(f"{what}: empty link target", detail={"entry": what})
    if "\0" in target:
        raise UnsafeArchive(f"{what}: link target contains a NUL byte", detail={"entry": what})
    if byte_len(target) > limits.max_path_bytes:
        raise LimitExceeded(f"{what}: link target is longer than max_path_bytes={limits.max_path_bytes}",
                            detail={"limit": "max_path_bytes", "entry": what})
