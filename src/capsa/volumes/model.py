"""Volume names, sizes and what ``ls``/``inspect`` return."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

from capsa.errors import InvalidArgument

__all__ = ["FILESYSTEM", "MEMORY", "VOLUME_TYPES", "Volume", "VolumeReconcileReport", "format_size",
           "parse_size", "validate_volume_name"]

FILESYSTEM, MEMORY = "filesystem", "memory"
VOLUME_TYPES = (FILESYSTEM, MEMORY)

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")
# KB/MB/GB/TB are SI (powers of 1000) and KiB/MiB/GiB/TiB IEC (powers of 1024), as the
# standards say; a bare K/M/G/T (Docker's "-m 512m") is binary.
_UNITS: dict[str, int] = {"": 1, "b": 1}
for _i, _letter in enumerate("kmgt", start=1):
    _UNITS[_letter] = 1024**_i
    _UNITS[_letter + "b"] = 1000**_i
    _UNITS[_letter + "i"] = 1024**_i
    _UNITS[_letter + "ib"] = 1024**_i


def validate_volume_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise InvalidArgument(
            f"invalid volume name {name!r}: use 1-64 of A-Z a-z 0-9 _ . - starting with a letter or digit"
        )
    return name


def parse_size(value: int | str) -> int:
    """Bytes from ``1073741824``, ``"1GB"`` (10^9), ``"1GiB"``/``"1G"`` (2^30), ``"512MiB"``, ``"1.5GB"``."""
    if isinstance(value, bool):
        raise InvalidArgument(f"invalid size {value!r}")
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE_RE.match(str(value))
        unit = match.group(2).lower() if match else ""
        if not match or unit not in _UNITS:
            raise InvalidArgument(
                f"invalid size {value!r}: use a number with an optional unit B, KB/MB/GB/TB (powers of 1000)"
                " or KiB/MiB/GiB/TiB, K/M/G/T (powers of 1024), e.g. 1GB or 512MiB"
            )
        try:
            size = int(Decimal(match.group(1)) * _UNITS[unit])
        except InvalidOperation as exc:  # pragma: no cover - the regex admits only decimals
            raise InvalidArgument(f"invalid size {value!r}") from exc
    if size <= 0:
        raise InvalidArgument(f"invalid size {value!r}: must be positive")
    return size


def format_size(size: int) -> str:
    for unit, factor in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= factor:
            return f"{size / factor:.1f} {unit}".replace(".0 ", " ")
    return f"{size} B"


@dataclass(frozen=True)
class Volume:
    name: str
    type: str                        # filesystem | memory
    size_bytes: int
    created_ns: int
    state: str                       # ready | missing (its image file is gone)
    path: str                        # host directory a job binds (the mount point)
    users: tuple[str, ...] = ()      # job ids holding it (acquired and not released)
    mounted: bool = False
    capacity_bytes: int | None = None  # usable bytes (the filesystem's own figure) when mounted
    used_bytes: int | None = None


@dataclass
class VolumeReconcileReport:
    released: list[str] = field(default_factory=list)   # "volume:job" users dropped (job no longer runs)
    mounted: list[str] = field(default_factory=list)    # volumes (re)mounted for their users
    unmounted: list[str] = field(default_factory=list)  # volumes unmounted: nobody uses them
    recreated: list[str] = field(default_factory=list)  # memory volumes mounted afresh (content lost)
    removed: list[str] = field(default_factory=list)    # half-created/half-removed volumes, stray dirs
    missing: list[str] = field(default_factory=list)    # filesystem volumes whose image file is gone
