"""Limits on what one capsule import may contain, mirroring the image unpack limits (image ADR-005).

Every limit is checked *before* the bytes it guards are written: sizes come from
tar headers (or ``lstat`` for directories), so a decompression bomb is refused
by its first oversized header, never by a full disk. Exceeding one raises
:class:`~capsa.errors.LimitExceeded` (exit 9) naming the entry and the limit.
The daemon takes them from ``server.yaml`` ``capsules.limits`` (defaults in
docs/capsules.md).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from capsa.errors import LimitExceeded

__all__ = ["CapsuleLimits", "check_expansion"]


@dataclass(frozen=True)
class CapsuleLimits:
    max_file_bytes: int = 1 << 30
    """Largest regular file (as images: 1 GiB)."""
    max_total_bytes: int = 10 << 30
    """Sum of all regular files of one capsule (as images: 10 GiB)."""
    max_entries: int = 100_000
    """Files, directories and symlinks, implicit parent directories included (as images)."""
    max_path_bytes: int = 4096
    max_name_bytes: int = 255
    """Longest single path component (what Linux filesystems accept)."""
    max_depth: int = 256
    max_symlink_hops: int = 40
    max_header_bytes: int = 1 << 16
    """Largest pax / GNU long-name header: paths are at most 4 KiB, so 64 KiB is plenty."""
    max_expansion_ratio: float = 100.0
    """Archive sources only: file bytes may not exceed this many times the archive's own size ..."""
    expansion_grace_bytes: int = 64 << 20
    """... once they are past this (small archives of compressible text are fine)."""

    def __post_init__(self) -> None:
        for f in fields(self):
            if getattr(self, f.name) <= 0:
                raise ValueError(f"CapsuleLimits.{f.name} must be positive")

    @classmethod
    def from_config(cls, config: Any) -> CapsuleLimits:
        """From ``ServerConfig.capsules.limits`` (or anything with these attributes); missing ones keep defaults."""
        values = {f.name: getattr(config, f.name) for f in fields(cls) if getattr(config, f.name, None) is not None}
        return cls(**{k: (float(v) if k == "max_expansion_ratio" else int(v)) for k, v in values.items()})


def check_expansion(limits: CapsuleLimits, entry: str, total_bytes: int, archive_bytes: int | None) -> None:
    """Refuse an archive whose files add up to more than ``max_expansion_ratio`` times its size.

    Compressed archives only can do that: a plain tar carries every file byte
    itself. ``archive_bytes`` is None for directory sources.
    """
    if archive_bytes is None or total_bytes <= limits.expansion_grace_bytes:
        return
    if total_bytes > limits.max_expansion_ratio * max(archive_bytes, 1):
        raise LimitExceeded(
            f"entry {entry!r}: the archive of {archive_bytes} bytes expands to at least {total_bytes} bytes, "
            f"more than max_expansion_ratio={limits.max_expansion_ratio:g} times its size (a decompression bomb?)",
            detail={"limit": "max_expansion_ratio", "entry": entry},
        )
