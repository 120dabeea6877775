"""What every backend shares: metadata verbs, and the directory-per-snapshot skeleton.

:class:`MetadataSnapshotter` implements the verbs that only touch metadata
(``stat``, ``update``, ``walk``, ``ensure_active``). :class:`DirSnapshotter`
adds the crash-safe create/commit/remove/cleanup cycle for backends whose
snapshots are directories under ``root/snapshots/<id>`` (overlay, btrfs):

* create: inside the write transaction, build the storage under a temporary
  name (``new-*``) and rename it to its id; a crash leaves either a temporary
  or an id nobody recorded, both of which ``cleanup()`` removes.
* remove: delete the row and move the storage to ``rm-*`` in one
  transaction, then delete it; a crash leaves ``rm-*``, removed by ``cleanup()``.
* open: reconcile (backend hook), then ``cleanup()``.

``cleanup()`` scans under the database write lock, so it never races a
creation in any process sharing the database.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from capsa.errors import AlreadyExists, CapsaError, FailedPrecondition, NotFound, Unsupported
from capsa.snapshots._store import Row, SnapshotStore, check_labels
from capsa.snapshots.base import ApplyStyle, Info, Kind, Mount, Usage, WalkFn
from capsa.state.db import Database

__all__ = ["DirSnapshotter", "MetadataSnapshotter"]

log = logging.getLogger(__name__)


class MetadataSnapshotter(ABC):
    name: str = ""
    apply_style: ApplyStyle = ApplyStyle.FULL_TREE
    opaque_xattr: str = "trusted.overlay.opaque"
    detached_layers: bool = False

    def __init__(self, root: Path, db: Database) -> None:
        self.root = Path(os.path.abspath(root))
        self.root.mkdir(parents=True, exist_ok=True)
        self._db = db
        self._store = SnapshotStore(db, scope=f"{self.name}:{self.root}")

    # -- metadata-only verbs ---------------------------------------------------------
    def stat(self, key: str) -> Info:
        return self._store.require(key).info()

    def update(self, key: str, labels: Mapping[str, str]) -> Info:
        clean = check_labels(labels)
        with self._db.tx() as conn:
            row = self._store.require(key, conn)
            self._store.set_labels(conn, row, clean)
        return self.stat(key)

    def walk(self, fn: WalkFn | None = None) -> list[Info]:
        infos = [row.info() for row in self._store.all()]
        if fn is not None:
            for info in infos:
                fn(info)
        return infos

    def ensure_active(
        self, key: str, parent: str | None = None, labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        for _ in range(5):
            row = self._store.get(key)
            if row is None:
                try:
                    return self.prepare(key, parent, labels)
                except AlreadyExists:
                    continue  # someone created it meanwhile: look at what they made
            if row.kind is not Kind.ACTIVE or row.parent_key != parent:
                raise AlreadyExists(
                    f"snapshot {key!r} exists as {row.kind.value} on parent {row.parent_key!r},"
                    f" not active on {parent!r}"
                )
            if self._storage_ok(row):
                return self.mounts(key)
            # An active snapshot whose storage vanished holds nothing worth keeping
            # (it was never committed): rebuild it rather than hand out a broken mount.
            try:
                self.remove(key)
            except NotFound:
                pass
        raise AlreadyExists(f"snapshot {key!r} keeps changing under concurrent callers")

    def present(self, key: str) -> bool:
        return self._storage_ok(self._store.require(key))

    def attach(self, key: str, parent: str, *, inherit_root: bool = True) -> None:
        raise Unsupported(f"the {self.name} snapshotter unpacks a layer onto its parent's tree;"
                          " prepare it on the parent instead of attaching it later")

    def _require_active(self, key: str) -> Row:
        row = self._store.require(key)
        if row.kind is not Kind.ACTIVE:
            raise FailedPrecondition(f"snapshot {key!r} is {row.kind.value}, not active")
        return row

    def close(self) -> None:
        """Nothing to release by default (the database belongs to the caller)."""
        return None

    # -- backend hooks ----------------------------------------------------------------
    @abstractmethod
    def _storage_ok(self, row: Row) -> bool: ...

    @abstractmethod
    def _create(self, kind: Kind, key: str, parent: str | None, labels: Mapping[str, str] | None) -> None:
        """Record and make the storage of a new ACTIVE or VIEW snapshot of ``parent``."""

    # -- verbs every backend shares ------------------------------------------------------------
    def prepare(
        self, key: str, parent: str | None = None, labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        self._create(Kind.ACTIVE, key, parent, labels)
        return self.mounts(key)

    def view(self, key: str, parent: str | None, labels: Mapping[str, str] | None = None) -> list[Mount]:
        self._create(Kind.VIEW, key, parent, labels)
        return self.mounts(key)

    @abstractmethod
    def mounts(self, key: str) -> list[Mount]: ...

    @abstractmethod
    def remove(self, key: str) -> None: ...


class DirSnapshotter(MetadataSnapshotter):
    """Snapshots stored as ``root/snapshots/<id>``; backends fill in the storage hooks."""

    def __init__(self, root: Path, db: Database) -> None:
        super().__init__(root, db)
        self.snapshots_dir = self.root / "snapshots"
        self.snapshots_dir.mkdir(exist_ok=True)
        self._lock = threading.Lock()
        self._deleting: set[Path] = set()

    def _open(self) -> None:
        """Reconcile metadata with disk; subclasses call this at the end of ``__init__``."""
        self._reconcile()
        self.cleanup()

    # -- hooks ------------------------------------------------------------------------
    @abstractmethod
    def _make(self, tmp: Path, kind: Kind, parent: Row | None) -> None:
        """Create the storage of a new snapshot at ``tmp`` (renamed to its id after)."""

    @abstractmethod
    def _measure(self, row: Row) -> Usage:
        """Live usage of ``row``'s own layer."""

    @abstractmethod
    def _build_mounts(self, row: Row, parents: list[Row]) -> list[Mount]: ...

    @abstractmethod
    def _destroy(self, path: Path) -> int:
        """Delete storage at ``path``; returns the bytes that frees."""

    def _seal(self, row: Row) -> None:
        """Make committed storage immutable (btrfs: read-only); overlay needs nothing."""

    def _unseal(self, row: Row) -> None:
        """Undo :meth:`_seal` when the commit transaction fails."""

    def _reconcile(self) -> None:
        """Bring storage in line with metadata after a crash (before ``cleanup``)."""

    def _check_depth(self, snap_id: int, kind: Kind, parents: list[Row]) -> None:
        """Refuse a chain the backend cannot mount (overlay); nothing by default."""

    # -- paths ------------------------------------------------------------------------
    def _path(self, snap_id: int) -> Path:
        return self.snapshots_dir / str(snap_id)

    def _storage_ok(self, row: Row) -> bool:
        return self._path(row.id).is_dir()

    # -- verbs ------------------------------------------------------------------------
    def _create(self, kind: Kind, key: str, parent: str | None, labels: Mapping[str, str] | None) -> None:
        clean = check_labels(labels)
        placed: Path | None = None
        try:
            with self._db.tx() as conn:
                prow = self._store.check_new(conn, key, parent)
                parents = ([prow] + self._store.ancestors(prow, conn)) if prow else []
                snap_id = self._store.insert(conn, key, prow, kind, clean)
                self._check_depth(snap_id, kind, parents)
                target = self._path(snap_id)
                if os.path.lexists(target):
                    # an id handed out by a transaction that rolled back after its rename
                    self._destroy(target)
                tmp = self.snapshots_dir / f"new-{secrets.token_hex(6)}"
                try:
                    self._make(tmp, kind, prow)
                    os.rename(tmp, target)
                except BaseException:
                    if os.path.lexists(tmp):
                        self._destroy(tmp)
                    raise
                placed = target
        except BaseException:
            if placed is not None and os.path.lexists(placed):
                self._destroy(placed)  # the transaction did not commit
            raise

    def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> None:
        clean = None if labels is None else check_labels(labels)
        row = self._require_active(key)
        if self._store.get(name) is not None:
            raise AlreadyExists(f"snapshot {name!r} already exists")
        usage = self._measure(row)  # outside the write lock: walking a big layer takes a while
        with self._db.tx() as conn:
            current = self._store.require(key, conn)
            if current.id != row.id or current.kind is not Kind.ACTIVE:
                raise FailedPrecondition(f"snapshot {key!r} changed while committing")
            self._seal(row)
            try:
                self._store.commit(conn, row, name, clean, usage)
            except BaseException:
                self._unseal(row)
                raise

    def remove(self, key: str) -> None:
        trash: Path | None = None
        path: Path | None = None
        try:
            with self._db.tx() as conn:
                row = self._store.require(key, conn)
                self._store.delete(conn, row)
                path = self._path(row.id)
                if os.path.lexists(path):
                    trash = self._trash_path()
                    os.rename(path, trash)
        except BaseException:
            if trash is not None and path is not None and not os.path.lexists(path):
                os.rename(trash, path)  # the delete did not commit: put the storage back
            raise
        if trash is not None:
            try:
                self._destroy_trash(trash)
            except (CapsaError, OSError) as exc:
                # the snapshot is gone as far as anyone can see; cleanup() retries the storage
                log.warning("removed snapshot %r but could not delete %s yet: %s", key, trash, exc)

    def mounts(self, key: str) -> list[Mount]:
        row = self._store.require(key)
        if row.kind is Kind.COMMITTED:
            raise FailedPrecondition(f"snapshot {key!r} is committed; mount a view or an active child of it")
        parents = self._store.ancestors(row)
        missing = [r.key for r in [row, *parents] if not self._storage_ok(r)]
        if missing:
            raise FailedPrecondition(f"storage of snapshot(s) {missing} is missing under {self.snapshots_dir}")
        return self._build_mounts(row, parents)

    def usage(self, key: str) -> Usage:
        row = self._store.require(key)
        stored = row.stored_usage()
        if row.kind is Kind.COMMITTED and stored is not None:
            return stored
        return self._measure(row)

    @contextmanager
    def writable(self, key: str) -> Iterator[Path]:
        path = self.upper_dir(key)
        if path is None:
            raise FailedPrecondition(f"snapshot {key!r} is not active")
        yield path

    def cleanup(self) -> int:
        # Scan and move aside under the write lock (no creation can be half-way),
        # delete outside it (deleting a big tree must not block other writers).
        trash: list[Path] = []
        with self._db.tx() as conn:
            ids = self._store.ids(conn)
            for entry in os.scandir(self.snapshots_dir):
                if entry.name.isdigit() and int(entry.name) in ids:
                    continue
                if entry.name.startswith("rm-"):
                    trash.append(Path(entry.path))
                    continue
                dest = self._trash_path()
                os.rename(entry.path, dest)
                trash.append(dest)
        return sum(self._destroy_trash(path) for path in trash)

    def _trash_path(self) -> Path:
        return self.snapshots_dir / f"rm-{secrets.token_hex(6)}"

    def _destroy_trash(self, path: Path) -> int:
        with self._lock:
            if path in self._deleting:
                return 0  # another thread of ours is already on it
            self._deleting.add(path)
        try:
            return self._destroy(path) if os.path.lexists(path) else 0
        finally:
            with self._lock:
                self._deleting.discard(path)
