"""Limits, the per-image budget they are charged against, and per-layer statistics."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from capsa.errors import LimitExceeded

__all__ = ["Guard", "LayerStats", "UnpackBudget", "UnpackLimits"]


@dataclass(frozen=True)
class UnpackLimits:
    """Hard limits (image ADR-005); exceeding any raises :class:`~capsa.errors.LimitExceeded`.

    ``max_entries``, ``max_total_bytes`` and ``timeout_s`` are charged against an
    :class:`UnpackBudget`, so they are per image when the caller shares one budget
    across the layers of an image, and per layer otherwise.
    """

    max_file_bytes: int = 1 << 30
    max_total_bytes: int = 10 << 30
    max_entries: int = 100_000
    timeout_s: float = 1800.0
    max_path_bytes: int = 4096
    max_name_bytes: int = 255
    max_header_bytes: int = 1 << 20
    """Largest pax / GNU long-name payload, and the most such metadata one entry may carry."""
    allow_devices: bool = False
    """Create character and block device nodes (never needed by ordinary images)."""

    def __post_init__(self) -> None:
        for name in ("max_file_bytes", "max_total_bytes", "max_entries", "max_path_bytes",
                     "max_name_bytes", "max_header_bytes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"UnpackLimits.{name} must be positive")
        if self.timeout_s <= 0:
            raise ValueError("UnpackLimits.timeout_s must be positive")


@dataclass
class UnpackBudget:
    """What one image has used so far; share one instance across its layers.

    ``bytes`` counts every byte of entry data the unpacker consumed (file contents,
    skipped payloads of whiteouts, trailing data after the end-of-archive marker);
    ``started`` is a ``clock()`` timestamp that the timeout runs from: one clock for all
    the layers of an image (:meth:`since` starts it where an earlier process left it).
    """

    entries: int = 0
    bytes: int = 0
    started: float = field(default_factory=time.monotonic)
    clock: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)

    @classmethod
    def since(cls, started_wall: float, *, entries: int = 0, bytes: int = 0,
              clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> UnpackBudget:
        """A budget whose clock started at Unix time ``started_wall`` (persisted by the pull),
        so an image's extraction time keeps counting across layers, retries and restarts."""
        return cls(entries=entries, bytes=bytes, started=clock() - max(0.0, wall() - started_wall), clock=clock)


@dataclass(frozen=True)
class LayerStats:
    """What applying one layer did. ``bytes`` is the size of regular-file content written."""

    entries: int
    bytes: int
    whiteouts: int
    duration_s: float
    diff_id: str | None = None
    """``sha256:<hex>`` of the uncompressed tar, when the caller asked for it to be verified."""
    root_meta: bool = False
    """The layer carried an entry for its root directory (``./``) and set its metadata."""


class Guard:
    """Charges entries and bytes against the limits; raised errors name the entry."""

    __slots__ = ("budget", "deadline", "limits")

    def __init__(self, limits: UnpackLimits, budget: UnpackBudget) -> None:
        self.limits = limits
        self.budget = budget
        self.deadline = budget.started + limits.timeout_s

    def check_time(self, what: str) -> None:
        if self.budget.clock() > self.deadline:
            raise LimitExceeded(
                f"{what}: unpack took longer than timeout_s={self.limits.timeout_s:g}s",
                detail={"limit": "timeout_s", "entry": what},
            )

    def charge_entry(self, what: str) -> None:
        budget = self.budget
        if budget.entries >= self.limits.max_entries:
            raise LimitExceeded(
                f"{what}: more than max_entries={self.limits.max_entries} entries",
                detail={"limit": "max_entries", "entry": what},
            )
        budget.entries += 1
        self.check_time(what)

    def charge_data(self, what: str, size: int, *, is_file: bool) -> None:
        """Charge ``size`` bytes of entry data before any of it is written."""
        limits = self.limits
        if is_file and size > limits.max_file_bytes:
            raise LimitExceeded(
                f"{what}: file of {size} bytes exceeds max_file_bytes={limits.max_file_bytes}",
                detail={"limit": "max_file_bytes", "entry": what},
            )
        if self.budget.bytes + size > limits.max_total_bytes:
            raise LimitExceeded(
                f"{what}: {size} more bytes would exceed max_total_bytes={limits.max_total_bytes} "
                f"({self.budget.bytes} used)",
                detail={"limit": "max_total_bytes", "entry": what},
            )
        self.budget.bytes += size
