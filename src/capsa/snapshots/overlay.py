"""overlayfs snapshotter (capsa's default backend here).

Layout, as containerd's: ``root/snapshots/<id>/fs`` holds one layer's own
files (overlay whiteouts included) and ``root/snapshots/<id>/work`` is the
overlay workdir of an active snapshot. Mounts:

* active, no parent: bind (rw) of its ``fs``;
* view, no parent: bind (ro) of its (empty) ``fs``;
* view of a single committed layer: bind (ro) of that layer's ``fs``;
* otherwise ``overlay`` with ``lowerdir=`` the parents nearest first, and for
  an active snapshot ``upperdir``/``workdir``; a view has lowerdirs only,
  which makes the overlay read-only.

Depth limit. mount(2) takes at most 4095 bytes of option data and overlayfs
stacks at most 500 lower layers. Snapshot ids are short integers (not
digests) to keep each ``lowerdir`` entry to ``len(root) + ~20`` bytes; the
resulting maximum depth is ``OverlaySnapshotter.max_depth`` — e.g. 73 layers
for a 31-character root such as ``/var/lib/capsa/snapshots/overlay`` with ids
below 10^7. Deeper prepares/views fail up front with ``LimitExceeded``
instead of producing an unmountable description.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Sequence
from pathlib import Path

from capsa.errors import InvalidArgument, LimitExceeded, Unsupported
from capsa.snapshots._common import DirSnapshotter
from capsa.snapshots._fsutil import disk_usage, fs_type_of, remove_tree
from capsa.snapshots._store import Row
from capsa.snapshots.base import ApplyStyle, Kind, Mount, Usage
from capsa.snapshots.config import OverlayConfig
from capsa.snapshots.mount import MAX_MOUNT_DATA, is_mountpoint, mount_all, mount_data, unmount
from capsa.state.db import Database

__all__ = [
    "OVERLAY_MAX_STACK",
    "OverlaySnapshotter",
    "in_user_namespace",
    "max_overlay_depth",
    "overlay_mounts",
    "supports_index",
]

#: overlayfs's compile-time limit on stacked lower layers (OVL_MAX_STACK)
OVERLAY_MAX_STACK = 500


def supports_index() -> bool:
    """Whether the kernel knows ``index=``; containerd turns it off when it can."""
    return os.path.exists("/sys/module/overlay/parameters/index")


def in_user_namespace() -> bool:
    """True unless this process sees the initial user namespace's full identity map."""
    try:
        with open("/proc/self/uid_map", encoding="ascii") as f:
            fields = f.read().split()
    except OSError:
        return False
    return fields != ["0", "0", "4294967295"]


def overlay_mounts(
    kind: Kind,
    upper: Path,
    work: Path,
    lowers: Sequence[Path],
    *,
    index_off: bool,
    userxattr: bool,
) -> list[Mount]:
    """The mount description of a snapshot whose own dir is ``upper`` and whose
    committed parents' dirs are ``lowers`` (nearest first)."""
    if not lowers:
        return [Mount("bind", str(upper), ("ro" if kind is Kind.VIEW else "rw", "rbind"))]
    if kind is Kind.VIEW and len(lowers) == 1:
        return [Mount("bind", str(lowers[0]), ("ro", "rbind"))]
    options: list[str] = []
    if index_off:
        options.append("index=off")
    if userxattr:
        options.append("userxattr")
    if kind is Kind.ACTIVE:
        options += [f"workdir={work}", f"upperdir={upper}"]
    options.append("lowerdir=" + ":".join(str(p) for p in lowers))
    return [Mount("overlay", "overlay", tuple(options))]


def max_overlay_depth(root: Path, *, index_off: bool, userxattr: bool, id_digits: int = 7) -> int:
    """Deepest parent chain an active snapshot under ``root`` can mount, for ids of ``id_digits``."""
    sample = Path(root) / "snapshots" / ("9" * id_digits)
    fixed = overlay_mounts(
        Kind.ACTIVE, sample / "fs", sample / "work", [sample / "fs"], index_off=index_off, userxattr=userxattr
    )[0]
    _, data = mount_data(fixed.options)
    per_layer = len(str(sample / "fs")) + 1  # the path and its ':' separator
    room = MAX_MOUNT_DATA - len(data) + per_layer  # ``data`` already holds one layer
    return max(0, min(OVERLAY_MAX_STACK, room // per_layer))


class OverlaySnapshotter(DirSnapshotter):
    name = "overlay"
    apply_style = ApplyStyle.OVERLAY_UPPER
    detached_layers = True  # an upper dir holds one layer's own changes, whatever lies below

    def __init__(self, root: Path, db: Database, config: OverlayConfig | None = None) -> None:
        if any(c in str(root) for c in ":,\\"):
            raise InvalidArgument(f"overlay root {root} must not contain ':', ',' or '\\' (lowerdir syntax)")
        super().__init__(root, db)
        cfg = config or OverlayConfig()
        self.index_off = supports_index() if cfg.index_off is None else cfg.index_off
        self.userxattr = in_user_namespace() if cfg.userxattr is None else cfg.userxattr
        #: the xattr a layer unpacker sets to make a directory opaque
        self.opaque_xattr = "user.overlay.opaque" if self.userxattr else "trusted.overlay.opaque"
        self.max_depth = max_overlay_depth(self.root, index_off=self.index_off, userxattr=self.userxattr)
        self._probe()
        self._open()

    # -- paths ------------------------------------------------------------------------
    def _fs(self, snap_id: int) -> Path:
        return self._path(snap_id) / "fs"

    def _work(self, snap_id: int) -> Path:
        return self._path(snap_id) / "work"

    def _storage_ok(self, row: Row) -> bool:
        return self._fs(row.id).is_dir()

    def upper_dir(self, key: str) -> Path | None:
        row = self._store.require(key)
        return self._fs(row.id) if row.kind is Kind.ACTIVE else None

    # -- hooks ------------------------------------------------------------------------
    def _make(self, tmp: Path, kind: Kind, parent: Row | None) -> None:
        tmp.mkdir(mode=0o700)
        fs = tmp / "fs"
        fs.mkdir(mode=0o755)
        if kind is Kind.ACTIVE:
            (tmp / "work").mkdir(mode=0o711)
        if parent is not None:
            # the merged root takes the upper's attributes: start from the parent's
            st = os.stat(self._fs(parent.id))
            os.chown(fs, st.st_uid, st.st_gid)
            os.chmod(fs, st.st_mode & 0o7777)

    def attach(self, key: str, parent: str, *, inherit_root: bool = True) -> None:
        with self._db.tx() as conn:
            row = self._store.require(key, conn)
            prow = self._store.require(parent, conn)
            parents = [prow] + self._store.ancestors(prow, conn)
            self._check_depth(row.id, Kind.ACTIVE, parents)
            self._store.set_parent(conn, row, prow)
            if inherit_root:  # what _make does for a snapshot prepared on its parent
                st = os.stat(self._fs(prow.id))
                fs = self._fs(row.id)
                os.chown(fs, st.st_uid, st.st_gid)
                os.chmod(fs, st.st_mode & 0o7777)

    def _check_depth(self, snap_id: int, kind: Kind, parents: list[Row]) -> None:
        if len(parents) > OVERLAY_MAX_STACK:
            raise LimitExceeded(
                f"overlay chain of {len(parents)} layers exceeds overlayfs's {OVERLAY_MAX_STACK}-layer limit"
            )
        described = overlay_mounts(
            kind,
            self._fs(snap_id),
            self._work(snap_id),
            [self._fs(p.id) for p in parents],
            index_off=self.index_off,
            userxattr=self.userxattr,
        )
        try:
            for m in described:
                mount_data(m.options)
        except LimitExceeded as exc:
            raise LimitExceeded(
                f"overlay chain of {len(parents)} layers is too deep to mount under {self.root}"
                f" (max about {self.max_depth}): {exc}"
            ) from exc

    def _measure(self, row: Row) -> Usage:
        return disk_usage(self._fs(row.id))

    def _build_mounts(self, row: Row, parents: list[Row]) -> list[Mount]:
        return overlay_mounts(
            row.kind,
            self._fs(row.id),
            self._work(row.id),
            [self._fs(p.id) for p in parents],
            index_off=self.index_off,
            userxattr=self.userxattr,
        )

    def _destroy(self, path: Path) -> int:
        freed = disk_usage(path).size if path.is_dir() else 0
        remove_tree(path)
        return freed

    # -- start-up probe ---------------------------------------------------------------
    def _probe(self) -> None:
        """Mount a tiny overlay with our options under root, as containerd's check does."""
        for stale in self.root.glob("probe-*"):
            merged = stale / "merged"
            if merged.is_dir() and is_mountpoint(merged):
                unmount(merged, lazy=True)
            remove_tree(stale)
        base = self.root / f"probe-{secrets.token_hex(4)}"
        dirs = {n: base / n for n in ("lower1", "lower2", "upper", "work", "merged")}
        for d in dirs.values():
            d.mkdir(parents=True)
        described = overlay_mounts(
            Kind.ACTIVE,
            dirs["upper"],
            dirs["work"],
            [dirs["lower2"], dirs["lower1"]],
            index_off=self.index_off,
            userxattr=self.userxattr,
        )
        try:
            mount_all(described, dirs["merged"])
            unmount(dirs["merged"])
        except OSError as exc:
            raise Unsupported(
                f"overlayfs cannot be used under {self.root} (on {fs_type_of(self.root) or 'unknown fs'}): {exc}"
            ) from exc
        finally:
            remove_tree(base)
