"""A thin-pool and the thin devices in it, with their states persisted in SQLite.

Every device-mapper operation is a *transition* (containerd's pattern): the
trying state is committed before dmsetup runs and the success state after, so
after a crash the table says exactly which operation was under way:

    Unknown ─create─▶ Creating ─▶ Created ─activate─▶ Activating ─▶ Activated
    Activated ─suspend/resume─▶ Suspending/Suspended, Resuming/Resumed
    Activated ─deactivate─▶ Deactivating ─▶ Deactivated
    any ─remove─▶ Removing ─▶ Removed (row deleted)          Faulty: never touched again

``Faulty`` marks a thin id that may be used by something we do not own (a
``create_thin``/``create_snap`` that failed or was interrupted): it stays
reserved and is never deleted. :func:`plan_reconcile` decides, purely from
the table and ``dmsetup info``, what to repair on open.
"""

from __future__ import annotations

import enum
import logging
import sqlite3
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from capsa.errors import (
    CapsaError,
    DeviceExistsError,
    DeviceNotFoundError,
    FailedPrecondition,
    LimitExceeded,
    PoolFullError,
)
from capsa.snapshots import _loop
from capsa.snapshots.config import DevmapperConfig
from capsa.snapshots.devmapper.dmsetup import (
    MAX_THIN_ID,
    DeviceInfo,
    Dmsetup,
    PoolStatus,
    create_snap_message,
    create_thin_message,
    delete_message,
    thin_pool_table,
    thin_table,
)
from capsa.state.db import Database

__all__ = ["Action", "DeviceRecord", "DeviceState", "ThinPool", "next_device_id", "plan_reconcile"]

log = logging.getLogger(__name__)


class DeviceState(enum.StrEnum):
    UNKNOWN = "Unknown"
    CREATING = "Creating"
    CREATED = "Created"
    ACTIVATING = "Activating"
    ACTIVATED = "Activated"
    SUSPENDING = "Suspending"
    SUSPENDED = "Suspended"
    RESUMING = "Resuming"
    RESUMED = "Resumed"
    DEACTIVATING = "Deactivating"
    DEACTIVATED = "Deactivated"
    REMOVING = "Removing"
    REMOVED = "Removed"
    FAULTY = "Faulty"


@dataclass(frozen=True)
class DeviceRecord:
    name: str
    pool: str
    dev_id: int
    parent_name: str | None
    size: int
    state: DeviceState
    error: str
    snapshot_id: int | None
    #: bytes mapped right after creation (a fresh ext4, or the shared blocks of the
    #: origin): the layer's own usage is what it maps beyond this
    base_bytes: int | None


@dataclass(frozen=True)
class Action:
    verb: str  # "forget", "faulty", "resume", "activate", "deactivate", "state"
    name: str
    state: DeviceState | None = None


def next_device_id(used: Collection[int]) -> int:
    """One past the highest id in use, or the lowest free id once the 24-bit space wraps."""
    if len(used) >= MAX_THIN_ID:
        raise LimitExceeded(f"all {MAX_THIN_ID} thin device ids are in use")
    taken = set(used)
    candidate = max(taken, default=0) + 1
    if candidate <= MAX_THIN_ID:
        return candidate
    for candidate in range(1, MAX_THIN_ID + 1):
        if candidate not in taken:
            return candidate
    raise LimitExceeded(f"all {MAX_THIN_ID} thin device ids are in use")


def plan_reconcile(
    records: Iterable[DeviceRecord],
    live: Mapping[str, DeviceInfo],
    want_active: set[str],
    committed: set[str],
) -> list[Action]:
    """What to repair after a restart, from the device table and ``dmsetup info``.

    ``want_active`` are devices of active/view snapshots (must be activated),
    ``committed`` those of committed snapshots (deactivated when unused).
    Orphans and unfinished removals are left to ``cleanup()``.
    """
    actions: list[Action] = []
    for rec in records:
        info = live.get(rec.name)
        if rec.state is DeviceState.UNKNOWN:
            actions.append(Action("forget", rec.name))  # id allocated, never sent to the pool
            continue
        if rec.state is DeviceState.CREATING:
            actions.append(Action("faulty", rec.name))
            continue
        if rec.state in (DeviceState.FAULTY, DeviceState.REMOVING, DeviceState.REMOVED):
            continue
        if info is not None and info.suspended:
            actions.append(Action("resume", rec.name))  # a crash between suspend and resume
        if rec.name in want_active:
            if info is None or not info.table_live:
                actions.append(Action("activate", rec.name))
            elif rec.state is not DeviceState.ACTIVATED:
                actions.append(Action("state", rec.name, DeviceState.ACTIVATED))
        elif rec.name in committed and info is not None and info.open_count == 0:
            actions.append(Action("deactivate", rec.name))
        elif info is None and rec.state is not DeviceState.DEACTIVATED:
            actions.append(Action("state", rec.name, DeviceState.DEACTIVATED))
    return actions


def _record(r: sqlite3.Row) -> DeviceRecord:
    return DeviceRecord(
        name=r["name"],
        pool=r["pool"],
        dev_id=int(r["dev_id"]),
        parent_name=r["parent_name"],
        size=int(r["size"]),
        state=DeviceState(r["state"]),
        error=r["error"],
        snapshot_id=r["snapshot_id"],
        base_bytes=r["base_bytes"],
    )


class ThinPool:
    """One thin-pool: its devices' lifecycle, space checks, and (for test pools) its loop files."""

    def __init__(self, name: str, db: Database, dm: Dmsetup, loops: list[str] | None = None) -> None:
        self.name = name
        self._db = db
        self.dm = dm
        self._loops = loops or []

    @classmethod
    def open(cls, config: DevmapperConfig, db: Database, dm: Dmsetup | None = None) -> ThinPool:
        dm = dm or Dmsetup()
        dm.version()  # raises Unsupported where the kernel has no device-mapper
        if config.data_file is None or config.metadata_file is None:
            try:
                dm.pool_status(config.pool_name)
            except DeviceNotFoundError as exc:
                raise FailedPrecondition(f"thin-pool {config.pool_name!r} does not exist") from exc
            return cls(config.pool_name, db, dm)
        for path, size in ((config.data_file, config.data_size), (config.metadata_file, config.metadata_size)):
            if not path.exists():
                _loop.create_sparse(path, size)  # all zeroes: a fresh metadata device
        meta = _loop.attach(config.metadata_file)
        data = _loop.attach(config.data_file)
        try:
            if not cls._loaded(dm, config.pool_name):
                size = Path(config.data_file).stat().st_size
                table = thin_pool_table(
                    meta,
                    data,
                    size,
                    config.block_size_sectors,
                    config.low_water_mark_blocks,
                    error_if_no_space=config.error_if_no_space,
                )
                dm.create(config.pool_name, table)
        except BaseException:
            for dev in (data, meta):
                _loop.detach(dev)
            raise
        return cls(config.pool_name, db, dm, loops=[data, meta])

    @staticmethod
    def _loaded(dm: Dmsetup, name: str) -> bool:
        try:
            return bool(dm.info(name))
        except DeviceNotFoundError:
            return False

    def close(self) -> None:
        """For a pool built from files: deactivate its devices, remove it, detach the loops."""
        if not self._loops:
            return
        for rec in self.records():
            if self.is_loaded(rec.name):
                self.deactivate(rec.name)
        if self._loaded(self.dm, self.name):
            self.dm.remove(self.name, retry=True)
        for dev in self._loops:
            _loop.detach(dev)
        self._loops = []

    # -- space ------------------------------------------------------------------------
    def status(self) -> PoolStatus:
        return self.dm.pool_status(self.name)

    def check_space(self) -> None:
        st = self.status()
        if st.full:
            raise PoolFullError(
                f"thin-pool {self.name} is full: data {st.used_data_blocks}/{st.total_data_blocks} blocks,"
                f" metadata {st.used_metadata_blocks}/{st.total_metadata_blocks} blocks, mode {st.mode}",
                detail={"pool": self.name, "mode": st.mode},
            )

    # -- records ----------------------------------------------------------------------
    def records(self) -> list[DeviceRecord]:
        rows = self._db.query("SELECT * FROM snapshot_devices WHERE pool = ? ORDER BY dev_id", (self.name,))
        return [_record(r) for r in rows]

    def get(self, name: str) -> DeviceRecord | None:
        r = self._db.query_one("SELECT * FROM snapshot_devices WHERE name = ?", (name,))
        return _record(r) if r else None

    def by_snapshot(self, snapshot_id: int) -> DeviceRecord | None:
        r = self._db.query_one("SELECT * FROM snapshot_devices WHERE snapshot_id = ?", (snapshot_id,))
        return _record(r) if r else None

    def orphans(self) -> list[DeviceRecord]:
        """Devices no snapshot refers to, plus unfinished removals (``Faulty`` excluded)."""
        rows = self._db.query(
            "SELECT d.* FROM snapshot_devices d LEFT JOIN snapshots s ON s.id = d.snapshot_id"
            " WHERE d.pool = ? AND d.state NOT IN ('Faulty', 'Unknown', 'Creating')"
            " AND (s.id IS NULL OR d.state IN ('Removing', 'Removed'))",
            (self.name,),
        )
        return [_record(r) for r in rows]

    def allocate(self, size: int, parent_name: str | None) -> DeviceRecord:
        with self._db.tx() as conn:
            used = [r[0] for r in conn.execute("SELECT dev_id FROM snapshot_devices WHERE pool = ?", (self.name,))]
            dev_id = next_device_id(used)
            name = f"{self.name}-snap-{dev_id}"
            conn.execute(
                "INSERT INTO snapshot_devices(name, pool, dev_id, parent_name, size, state, updated)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (name, self.name, dev_id, parent_name, size, DeviceState.UNKNOWN.value, time.time()),
            )
        rec = self.get(name)
        assert rec is not None
        return rec

    def _set(self, name: str, **fields: object) -> None:
        cols = ", ".join(f"{k} = ?" for k in fields)
        self._db.execute(
            f"UPDATE snapshot_devices SET {cols}, updated = ? WHERE name = ?", (*fields.values(), time.time(), name)
        )

    def link(self, conn: sqlite3.Connection, name: str, snapshot_id: int) -> None:
        conn.execute("UPDATE snapshot_devices SET snapshot_id = ? WHERE name = ?", (snapshot_id, name))

    def record_base(self, name: str) -> None:
        self._set(name, base_bytes=self.mapped_bytes(name))

    def mark(self, name: str, state: DeviceState, error: str = "") -> None:
        self._set(name, state=state.value, error=error)

    def forget(self, name: str) -> None:
        self._db.execute("DELETE FROM snapshot_devices WHERE name = ?", (name,))

    # -- transitions ------------------------------------------------------------------
    def _transition(self, name: str, trying: DeviceState, success: DeviceState, op: Callable[[], None]) -> None:
        self.mark(name, trying)
        try:
            op()
        except Exception as exc:
            self._set(name, error=str(exc))  # the state stays at ``trying``: the record tells what failed
            raise
        self.mark(name, success)

    def create_thin(self, rec: DeviceRecord) -> None:
        message = create_thin_message(rec.dev_id)
        self._transition(
            rec.name, DeviceState.CREATING, DeviceState.CREATED, lambda: self.dm.message(self.name, message)
        )

    def create_snapshot(self, origin: DeviceRecord, rec: DeviceRecord) -> None:
        """``create_snap`` with the origin suspended when loaded (thin-provisioning.rst:
        an internal snapshot of an active origin must not race its I/O)."""
        suspended = False
        if self.is_loaded(origin.name):
            self.suspend(origin.name)
            suspended = True
        try:
            message = create_snap_message(rec.dev_id, origin.dev_id)
            self._transition(
                rec.name, DeviceState.CREATING, DeviceState.CREATED, lambda: self.dm.message(self.name, message)
            )
        finally:
            if suspended:
                self.resume(origin.name)

    def activate(self, rec: DeviceRecord) -> None:
        if self.is_activated(rec.name):
            self.mark(rec.name, DeviceState.ACTIVATED)
            return
        table = thin_table(self.name, rec.dev_id, rec.size)
        self._transition(
            rec.name, DeviceState.ACTIVATING, DeviceState.ACTIVATED, lambda: self.dm.create(rec.name, table)
        )

    def suspend(self, name: str) -> None:
        self._transition(name, DeviceState.SUSPENDING, DeviceState.SUSPENDED, lambda: self.dm.suspend(name))

    def resume(self, name: str) -> None:
        self._transition(name, DeviceState.RESUMING, DeviceState.RESUMED, lambda: self.dm.resume(name))

    def deactivate(self, name: str, *, deferred: bool = False, force: bool = False) -> None:
        if not self.is_loaded(name):
            return

        def op() -> None:
            # a device just unmounted can stay busy briefly (udev, flushing): retry like containerd
            for attempt in range(50):
                try:
                    self.dm.remove(name, retry=True, deferred=deferred, force=force)
                    return
                except DeviceExistsError as exc:
                    if exc.detail.get("errno") != "EBUSY" or attempt == 49:
                        raise
                    time.sleep(0.1)
                except DeviceNotFoundError:
                    return

        self._transition(name, DeviceState.DEACTIVATING, DeviceState.DEACTIVATED, op)

    def remove_device(self, name: str) -> None:
        """Deactivate, ``delete`` the thin id (already gone is fine), forget the record."""
        rec = self.get(name)
        if rec is None:
            return
        # never --force: it would make a still-mounted device fail all I/O
        self.deactivate(name)

        def op() -> None:
            try:
                self.dm.message(self.name, delete_message(rec.dev_id))
            except DeviceNotFoundError as exc:
                if exc.detail.get("errno") != "ENODATA":
                    raise

        self._transition(name, DeviceState.REMOVING, DeviceState.REMOVED, op)
        self.forget(name)

    def discard(self, name: str, cause: BaseException | None = None) -> None:
        """Undo a creation that failed half-way, without ever deleting an id we may not own.

        A ``create_thin``/``create_snap`` the kernel refused (pool full, bad
        argument) created nothing, so the record goes; one refused with
        "File exists", or interrupted, leaves the id ``Faulty`` (reserved).
        """
        rec = self.get(name)
        if rec is None:
            return
        if rec.state is DeviceState.UNKNOWN:
            self.forget(name)
        elif rec.state in (DeviceState.CREATING, DeviceState.FAULTY):
            errno_name = cause.detail.get("errno") if isinstance(cause, CapsaError) else None
            if rec.state is DeviceState.CREATING and errno_name and errno_name != "EEXIST":
                self.forget(name)
            else:
                self.mark(name, DeviceState.FAULTY, rec.error)
        else:
            try:
                self.remove_device(name)
            except Exception as exc:
                log.warning("thin device %s could not be removed, left for cleanup: %s", name, exc)
                self.mark(name, DeviceState.REMOVING, str(exc))

    # -- queries ----------------------------------------------------------------------
    def is_loaded(self, name: str) -> bool:
        return self._loaded(self.dm, name)

    def is_activated(self, name: str) -> bool:
        try:
            infos = self.dm.info(name)
        except DeviceNotFoundError:
            return False
        return len(infos) == 1 and infos[0].table_live

    def open_count(self, name: str) -> int:
        """How many holders (mounts, processes) have the device open; 0 when not loaded."""
        try:
            infos = self.dm.info(name)
        except DeviceNotFoundError:
            return 0
        return infos[0].open_count if infos else 0

    def live(self) -> dict[str, DeviceInfo]:
        prefix = f"{self.name}-snap-"
        return {i.name: i for i in self.dm.info() if i.name.startswith(prefix)}

    def mapped_bytes(self, name: str) -> int:
        return self.dm.thin_status(name).mapped_bytes

    def apply(self, actions: Iterable[Action]) -> None:
        for action in actions:
            rec = self.get(action.name)
            if rec is None:
                continue
            if action.verb == "forget":
                self.forget(action.name)
            elif action.verb == "faulty":
                self.mark(action.name, DeviceState.FAULTY, rec.error or "interrupted while creating")
            elif action.verb == "resume":
                self.resume(action.name)
            elif action.verb == "activate":
                self.activate(rec)
            elif action.verb == "deactivate":
                self.deactivate(action.name)
            elif action.verb == "state" and action.state is not None:
                self.mark(action.name, action.state)
