"""The snapshotter interface every backend implements (containerd's shape).

A snapshot is a filesystem tree identified by a caller-chosen *key*. It is one
of three kinds: *active* (writable, made by :meth:`Snapshotter.prepare`),
*view* (read-only, made by :meth:`Snapshotter.view`) or *committed*
(immutable, made by :meth:`Snapshotter.commit`; the only kind that can be a
parent). Backends never mount anything for the caller: :meth:`mounts` returns
:class:`Mount` *descriptions* so that the caller decides where, and in which
mount namespace, the tree appears (``capsa.snapshots.mount`` applies them).

Errors are capsa's shared vocabulary: ``NotFound`` (no such key),
``AlreadyExists`` (key taken), ``Conflict`` (removing a snapshot that has
children), ``FailedPrecondition`` (wrong kind for the operation, storage gone),
``LimitExceeded`` (chain deeper than the backend can mount), plus the
device-mapper errors of image ADR-003 from the devmapper backend.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

__all__ = [
    "ApplyStyle",
    "Info",
    "Kind",
    "Mount",
    "Snapshotter",
    "Usage",
    "WalkFn",
]


class Kind(enum.StrEnum):
    ACTIVE = "active"
    VIEW = "view"
    COMMITTED = "committed"


class ApplyStyle(enum.StrEnum):
    """What the directory handed out by ``writable()`` contains.

    A layer unpacker needs to know this to apply OCI deletions correctly.
    """

    #: Only this layer's changes (overlay upperdir): record a deleted path as an
    #: overlay whiteout (character device 0/0) and an opaque directory with the
    #: xattr named by the snapshotter's ``opaque_xattr`` set to ``y``
    #: (``trusted.overlay.opaque``; ``user.overlay.opaque`` under ``userxattr``).
    OVERLAY_UPPER = "overlay-upper"
    #: The complete merged tree (btrfs subvolume, ext4 thin device): delete the
    #: path (or a directory's contents, for opaque) directly.
    FULL_TREE = "full-tree"


@dataclass(frozen=True)
class Mount:
    """One mount to perform, in order, onto the same target.

    ``type`` is a filesystem type ("overlay", "ext4") or "bind"; ``options``
    are mount(8)-style options (flags such as ``ro`` plus filesystem data).
    """

    type: str
    source: str
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class Info:
    key: str
    parent: str | None
    kind: Kind
    labels: dict[str, str] = field(default_factory=dict, hash=False)
    created: float = 0.0
    updated: float = 0.0


@dataclass(frozen=True)
class Usage:
    """Resources used by one snapshot, excluding its parents.

    ``size`` is bytes allocated on disk; ``inodes`` the number of filesystem
    objects the layer itself holds (its root directory not counted).
    """

    size: int
    inodes: int


WalkFn = Callable[[Info], None]


@runtime_checkable
class Snapshotter(Protocol):
    """What every backend offers; callers never need to know which one they hold."""

    #: backend name: "overlay", "btrfs" or "devmapper"
    name: str
    apply_style: ApplyStyle
    #: the xattr a layer unpacker sets to ``y`` to make a directory opaque (OVERLAY_UPPER)
    opaque_xattr: str
    #: True when a layer can be unpacked into an active snapshot prepared *without* its
    #: parent and joined to the parent afterwards with :meth:`attach` (the overlay upper
    #: directory holds only the layer's own changes). Layers of one image can then unpack
    #: in parallel; otherwise each layer needs its parent committed first.
    detached_layers: bool

    def stat(self, key: str) -> Info: ...

    def update(self, key: str, labels: Mapping[str, str]) -> Info:
        """Replace the labels of ``key``."""
        ...

    def usage(self, key: str) -> Usage: ...

    def mounts(self, key: str) -> list[Mount]:
        """Mounts of an active or view snapshot (committed ones are not mountable)."""
        ...

    def prepare(
        self, key: str, parent: str | None = None, labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        """Create an active (writable) snapshot on top of committed ``parent``."""
        ...

    def ensure_active(
        self, key: str, parent: str | None = None, labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        """Idempotent :meth:`prepare`: returns the mounts of an existing active
        snapshot with the same parent (re-creating it if its storage vanished)
        and raises ``AlreadyExists`` only when ``key`` is something else."""
        ...

    def view(self, key: str, parent: str | None, labels: Mapping[str, str] | None = None) -> list[Mount]:
        """Create a read-only snapshot of committed ``parent``."""
        ...

    def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> None:
        """Turn active ``key`` into committed ``name`` (immutable from now on)."""
        ...

    def remove(self, key: str) -> None:
        """Remove ``key``; ``Conflict`` if other snapshots have it as parent."""
        ...

    def walk(self, fn: WalkFn | None = None) -> list[Info]: ...

    def present(self, key: str) -> bool:
        """Whether ``key``'s own storage is there (its metadata alone proves nothing:
        a directory or device removed behind capsa's back leaves the row)."""
        ...

    def attach(self, key: str, parent: str, *, inherit_root: bool = True) -> None:
        """Make committed ``parent`` the parent of active ``key`` prepared without one.

        Only for backends with :attr:`detached_layers`. ``inherit_root`` gives the
        snapshot's root directory the parent's owner and mode, as :meth:`prepare` on the
        parent would have (pass False when the layer set its root's metadata itself).
        """
        ...

    def upper_dir(self, key: str) -> Path | None:
        """The directory to unpack into for an active snapshot, when it exists
        without mounting (overlay, btrfs); ``None`` otherwise (use :meth:`writable`)."""
        ...

    def writable(self, key: str) -> AbstractContextManager[Path]:
        """``with sn.writable(key) as path:`` — the active snapshot's tree,
        mounted first when the backend needs it and unmounted afterwards."""
        ...

    def cleanup(self) -> int:
        """Remove storage that no metadata refers to (left by crashes); bytes freed."""
        ...

    def close(self) -> None: ...

