"""devmapper snapshotter: one thin device (ext4) per snapshot, as containerd's.

* prepare/view with no parent: ``create_thin`` + activate + mkfs.ext4 (and
  ``lost+found`` removed, as containerd does);
* with a parent: ``create_snap <new> <parent>`` (parent suspended if loaded)
  + activate; a view mounts ``ro``;
* commit: record usage, suspend/resume to flush, then deactivate (committed
  devices stay in the pool but out of ``/dev/mapper``, containerd's choice);
* remove: deactivate, ``delete`` the thin id, then drop the metadata;
* mounts: ``ext4`` of ``/dev/mapper/<pool>-snap-<id>`` (activated on demand,
  e.g. after a reboot); ``writable()`` mounts it under ``root/mounts``.

Usage: ``size`` is mapped bytes (``dmsetup status``) minus those mapped at
creation (the fresh ext4's metadata, or the blocks shared with the parent); ``inodes`` counts entries whose (inode, ctime) differ from the
parent's — a thin snapshot is a block-level copy, so untouched entries keep
both — found by mounting the two read-only side by side.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from capsa.errors import AlreadyExists, CapsaError, Conflict, DeviceExistsError, FailedPrecondition
from capsa.snapshots._common import MetadataSnapshotter
from capsa.snapshots._fsutil import diff_usage, disk_usage, remove_tree
from capsa.snapshots._store import Row, check_labels
from capsa.snapshots.base import ApplyStyle, Kind, Mount, Usage
from capsa.snapshots.config import DevmapperConfig
from capsa.snapshots.devmapper.dmsetup import Dmsetup, device_path
from capsa.snapshots.devmapper.ext4 import mkfs_ext4
from capsa.snapshots.devmapper.pool import DeviceRecord, DeviceState, ThinPool, plan_reconcile
from capsa.snapshots.mount import is_mountpoint, mount_all, unmount
from capsa.state.db import Database

__all__ = ["DevmapperSnapshotter"]

log = logging.getLogger(__name__)


class DevmapperSnapshotter(MetadataSnapshotter):
    name = "devmapper"
    apply_style = ApplyStyle.FULL_TREE

    def __init__(
        self, root: Path, db: Database, config: DevmapperConfig, dmsetup: Dmsetup | None = None
    ) -> None:
        config.validate()
        super().__init__(root, db)
        self.config = config
        self.mounts_dir = self.root / "mounts"
        self.mounts_dir.mkdir(exist_ok=True)
        self._lock = threading.Lock()
        self._inflight: set[str] = set()  # devices being created by this process, not yet linked
        self._mount_dirs: set[Path] = set()  # writable() mounts of this process
        self._pool = ThinPool.open(config, db, dmsetup)
        try:
            for entry in self.mounts_dir.iterdir():
                if is_mountpoint(entry):
                    unmount(entry, lazy=True)  # left by a crashed process; keeps its device busy
            self._reconcile()
            self.cleanup()
        except BaseException:
            self._pool.close()
            raise

    @property
    def pool(self) -> ThinPool:
        return self._pool

    def close(self) -> None:
        self._pool.close()

    # -- helpers ----------------------------------------------------------------------
    def _device(self, row: Row) -> DeviceRecord:
        rec = self._pool.by_snapshot(row.id)
        if rec is None:
            raise FailedPrecondition(f"snapshot {row.key!r} has no thin device (removed outside capsa?)")
        return rec

    def _storage_ok(self, row: Row) -> bool:
        rec = self._pool.by_snapshot(row.id)
        return rec is not None and rec.state not in (
            DeviceState.FAULTY,
            DeviceState.REMOVING,
            DeviceState.REMOVED,
        )

    def _reconcile(self) -> None:
        want_active, committed = set(), set()
        for row in self._store.all():
            rec = self._pool.by_snapshot(row.id)
            if rec is not None:
                (committed if row.kind is Kind.COMMITTED else want_active).add(rec.name)
        actions = plan_reconcile(self._pool.records(), self._pool.live(), want_active, committed)
        self._pool.apply(actions)

    @contextmanager
    def _mounted(self, rec: DeviceRecord, *, readonly: bool = False) -> Iterator[Path]:
        target = self.mounts_dir / f"{rec.dev_id}-{secrets.token_hex(4)}"
        with self._lock:
            self._mount_dirs.add(target)
        try:
            target.mkdir()
            mount_all([Mount("ext4", device_path(rec.name), ("ro",) if readonly else ())], target)
            try:
                yield target
            finally:
                unmount(target)
        finally:
            if target.exists():
                target.rmdir()
            with self._lock:
                self._mount_dirs.discard(target)

    def _format(self, rec: DeviceRecord) -> None:
        mkfs_ext4(device_path(rec.name), self.config.fs_options)
        with self._mounted(rec) as path:
            lost = path / "lost+found"
            if lost.is_dir():
                lost.rmdir()  # images do not expect it (containerd removes it too)

    def _measure(self, rec: DeviceRecord) -> Usage:
        """Live usage of an activated device, excluding its parent."""
        mapped = self._pool.mapped_bytes(rec.name)
        parent = self._pool.get(rec.parent_name) if rec.parent_name else None
        with self._mounted(rec, readonly=True) as path:
            if parent is None:
                walked = disk_usage(path)
            else:
                was_loaded = self._pool.is_loaded(parent.name)
                self._pool.activate(parent)
                try:
                    with self._mounted(parent, readonly=True) as parent_path:
                        walked = diff_usage(path, parent_path)
                finally:
                    if not was_loaded:
                        self._pool.deactivate(parent.name)
        return Usage(size=max(0, mapped - (rec.base_bytes or 0)), inodes=walked.inodes)

    # -- verbs ------------------------------------------------------------------------
    def _create(self, kind: Kind, key: str, parent: str | None, labels: Mapping[str, str] | None) -> None:
        clean = check_labels(labels)
        with self._db.tx() as conn:
            prow = self._store.check_new(conn, key, parent)
        origin = self._device(prow) if prow else None
        self._pool.check_space()
        for attempt in range(3):
            size = origin.size if origin else self.config.base_image_size
            rec = self._pool.allocate(size, origin.name if origin else None)
            with self._lock:
                self._inflight.add(rec.name)
            try:
                try:
                    if origin is not None:
                        self._pool.create_snapshot(origin, rec)
                    else:
                        self._pool.create_thin(rec)
                except DeviceExistsError as exc:
                    if exc.detail.get("errno") == "EEXIST" and attempt < 2:
                        # the id is used by a device we do not know: keep it reserved, take another
                        self._pool.discard(rec.name, exc)
                        continue
                    raise
                self._pool.activate(rec)
                if origin is None:
                    self._format(rec)
                self._pool.record_base(rec.name)
                rec = self._pool.get(rec.name) or rec
                with self._db.tx() as conn:
                    again = self._store.check_new(conn, key, parent)
                    if (again.id if again else None) != (prow.id if prow else None):
                        raise FailedPrecondition(f"parent {parent!r} changed while creating {key!r}")
                    snap_id = self._store.insert(conn, key, again, kind, clean)
                    self._pool.link(conn, rec.name, snap_id)
                return
            except BaseException as exc:
                self._pool.discard(rec.name, exc)
                raise
            finally:
                with self._lock:
                    self._inflight.discard(rec.name)

    def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> None:
        clean = None if labels is None else check_labels(labels)
        row = self._require_active(key)
        if self._store.get(name) is not None:
            raise AlreadyExists(f"snapshot {name!r} already exists")
        rec = self._device(row)
        self._pool.activate(rec)
        # flush outstanding I/O before measuring and before the device leaves /dev/mapper
        self._pool.suspend(rec.name)
        self._pool.resume(rec.name)
        usage = self._measure(rec)
        with self._db.tx() as conn:
            current = self._store.require(key, conn)
            if current.id != row.id or current.kind is not Kind.ACTIVE:
                raise FailedPrecondition(f"snapshot {key!r} changed while committing")
            self._store.commit(conn, row, name, clean, usage)
        try:
            self._pool.deactivate(rec.name, deferred=True)
        except CapsaError as exc:
            # committed either way; the next open deactivates unused committed devices
            log.warning("committed %s but could not deactivate %s: %s", name, rec.name, exc)

    def remove(self, key: str) -> None:
        row = self._store.require(key)
        if self._store.has_children(row.id):
            raise Conflict(f"snapshot {key!r} has children; remove them first")
        rec = self._pool.by_snapshot(row.id)
        if rec is not None:
            if self._pool.open_count(rec.name):
                raise FailedPrecondition(f"snapshot {key!r}: device {rec.name} is in use (still mounted?)")
            try:
                self._pool.remove_device(rec.name)
            except DeviceExistsError as exc:
                raise FailedPrecondition(
                    f"snapshot {key!r}: device {rec.name} is busy (still mounted?)", detail=exc.detail
                ) from exc
        with self._db.tx() as conn:
            current = self._store.get(key, conn)
            if current is not None and current.id == row.id:
                self._store.delete(conn, current)

    def mounts(self, key: str) -> list[Mount]:
        row = self._store.require(key)
        if row.kind is Kind.COMMITTED:
            raise FailedPrecondition(f"snapshot {key!r} is committed; mount a view or an active child of it")
        rec = self._device(row)
        if not self._storage_ok(row):
            raise FailedPrecondition(f"thin device {rec.name} of snapshot {key!r} is {rec.state.value}")
        self._pool.activate(rec)
        options = ("ro",) if row.kind is Kind.VIEW else ()
        return [Mount("ext4", device_path(rec.name), options)]

    def usage(self, key: str) -> Usage:
        row = self._store.require(key)
        stored = row.stored_usage()
        if row.kind is Kind.COMMITTED and stored is not None:
            return stored
        rec = self._device(row)
        self._pool.activate(rec)
        return self._measure(rec)

    def upper_dir(self, key: str) -> Path | None:
        self._store.require(key)
        return None  # a thin device has to be mounted first: use writable()

    @contextmanager
    def writable(self, key: str) -> Iterator[Path]:
        row = self._require_active(key)
        rec = self._device(row)
        self._pool.activate(rec)
        # unmounting flushes the filesystem to the device before anyone commits it
        with self._mounted(rec) as path:
            yield path

    def cleanup(self) -> int:
        freed = 0
        with self._lock:
            inflight = set(self._inflight)
            ours = set(self._mount_dirs)
        for entry in list(self.mounts_dir.iterdir()):
            if entry not in ours and not is_mountpoint(entry):
                remove_tree(entry)
        known = set()
        for rec in self._pool.orphans():
            if rec.name in inflight:
                continue
            known.add(rec.name)
            reclaimable = self._reclaimable(rec)
            try:
                self._pool.remove_device(rec.name)
            except CapsaError as exc:
                # e.g. still mounted by someone: keep it for the next cleanup
                log.warning("cleanup could not remove thin device %s yet: %s", rec.name, exc)
                self._pool.mark(rec.name, DeviceState.REMOVING, str(exc))
                continue
            freed += reclaimable
        recorded = {r.name for r in self._pool.records()} | known | inflight
        for name, info in self._pool.live().items():
            if name not in recorded and info.open_count == 0:
                # loaded under our prefix but unknown to the metadata: unload, keep the thin id
                freed += self._pool.mapped_bytes(name)
                self._pool.dm.remove(name, retry=True)
        return freed

    def _reclaimable(self, rec: DeviceRecord) -> int:
        """Bytes a device maps beyond what it shared at creation (deleting frees those)."""
        if not self._pool.is_loaded(rec.name):
            return 0  # status needs the device loaded; not worth activating just to count
        try:
            return max(0, self._pool.mapped_bytes(rec.name) - (rec.base_bytes or 0))
        except CapsaError:
            return 0
