"""Typed configuration of the snapshotter backends.

``open_snapshotter`` accepts one of these dataclasses, or a plain mapping with
the same field names (as read from capsa's YAML config), or ``None`` for the
defaults (devmapper has no usable default: it needs a pool name).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from capsa.errors import InvalidArgument, LimitExceeded

__all__ = ["BtrfsConfig", "DevmapperConfig", "OverlayConfig", "config_from"]

GiB = 1024**3
MiB = 1024**2
SECTOR = 512


@dataclass(frozen=True)
class OverlayConfig:
    #: add ``index=off`` (None: whenever the kernel knows the option, as containerd does)
    index_off: bool | None = None
    #: add ``userxattr`` (None: when running inside a user namespace, where
    #: trusted.* xattrs are unavailable; needs kernel >= 5.11)
    userxattr: bool | None = None


@dataclass(frozen=True)
class BtrfsConfig:
    #: a loop-backed btrfs filesystem image to create (if absent) and mount at the
    #: snapshotter root; ``None`` means the root must already be on btrfs
    image_path: Path | None = None
    size_bytes: int = 10 * GiB
    #: enable quota groups and report sizes from them (exact for shared extents)
    quota: bool = True

    def validate(self) -> None:
        if self.image_path is not None and self.size_bytes < 128 * MiB:
            raise InvalidArgument(f"btrfs image size {self.size_bytes} is below mkfs.btrfs's minimum (128 MiB)")


_POOL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,95}$")


@dataclass(frozen=True)
class DevmapperConfig:
    #: the thin-pool's device-mapper name (``/dev/mapper/<pool_name>``)
    pool_name: str
    #: virtual size of every thin device (thin: costs nothing until written)
    base_image_size: int = 10 * GiB
    #: upper bound for ``base_image_size`` (image ADR-005: 100 GB per device)
    max_device_size: int = 100 * GiB
    fs_type: str = "ext4"
    #: mkfs.ext4 ``-E`` options; containerd's default initialises inode tables eagerly
    fs_options: str = "nodiscard,lazy_itable_init=0,lazy_journal_init=0"
    #: when both are set, the pool is built from these files on loop devices
    #: (created sparse when missing); otherwise ``pool_name`` must already exist
    data_file: Path | None = None
    metadata_file: Path | None = None
    data_size: int = 10 * GiB
    metadata_size: int = 128 * MiB
    #: thin-pool data block size in 512-byte sectors (64 KiB .. 1 GiB, multiple of 64 KiB)
    block_size_sectors: int = 128
    #: thin-pool low water mark in data blocks (containerd's value; clamped to the pool)
    low_water_mark_blocks: int = 32768
    #: fail writes at once when the pool is out of space instead of queueing them
    #: (the kernel default queues for ``no_space_timeout``, 60 s) — pool built from files only
    error_if_no_space: bool = False

    def validate(self) -> None:
        if not _POOL_NAME.match(self.pool_name or ""):
            raise InvalidArgument(f"devmapper pool name {self.pool_name!r} is not a valid device-mapper name")
        if self.fs_type != "ext4":
            raise InvalidArgument(f"devmapper fs_type {self.fs_type!r} is not supported (only ext4)")
        if self.base_image_size <= 0 or self.base_image_size % SECTOR:
            raise InvalidArgument(f"devmapper base_image_size {self.base_image_size} must be a positive multiple of 512")
        if self.base_image_size > self.max_device_size:
            raise LimitExceeded(
                f"devmapper base_image_size {self.base_image_size} exceeds max_device_size {self.max_device_size}"
            )
        bs = self.block_size_sectors
        if bs < 128 or bs > 2097152 or bs % 128:
            raise InvalidArgument(f"thin-pool block size {bs} sectors must be 128..2097152 and a multiple of 128")
        if (self.data_file is None) != (self.metadata_file is None):
            raise InvalidArgument("devmapper data_file and metadata_file must be given together")
        if self.data_file is not None and (self.data_size <= 0 or self.metadata_size < 2 * MiB):
            raise InvalidArgument("devmapper data_size must be positive and metadata_size at least 2 MiB")


def config_from(cls: type[Any], value: object) -> Any:
    """Build config ``cls`` from an instance, a mapping of its fields, or ``None`` (defaults)."""
    if value is None:
        try:
            cfg = cls()
        except TypeError as exc:
            raise InvalidArgument(f"{cls.__name__} has required fields: {exc}") from exc
    elif isinstance(value, cls):
        cfg = value
    elif isinstance(value, Mapping):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(value) - names
        if unknown:
            raise InvalidArgument(f"unknown {cls.__name__} field(s): {sorted(unknown)}")
        kwargs = dict(value)
        for key in ("image_path", "data_file", "metadata_file"):
            if kwargs.get(key) is not None:
                kwargs[key] = Path(kwargs[key])
        try:
            cfg = cls(**kwargs)
        except TypeError as exc:
            raise InvalidArgument(f"bad {cls.__name__}: {exc}") from exc
    else:
        raise InvalidArgument(f"expected {cls.__name__} or a mapping, got {type(value).__name__}")
    validate = getattr(cfg, "validate", None)
    if validate is not None:
        validate()
    return cfg
