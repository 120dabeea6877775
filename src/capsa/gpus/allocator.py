"""Exclusive allocation of whole GPUs to jobs, persisted in SQLite.

A GPU (named by its device minor, ``/dev/nvidia<minor>``) belongs to at most one job:
``gpu_allocations.minor`` is the primary key, so two daemons threads racing for the same
GPU cannot both commit. An allocation lives from just before the job starts until the
job ends, fails to start or is removed (:meth:`GpuAllocator.release`, idempotent), and a
daemon restart drops the allocations of jobs that are no longer running
(:meth:`GpuAllocator.reconcile`).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from capsa.errors import FailedPrecondition, InvalidArgument, LimitExceeded
from capsa.gpus.discovery import Gpu, device_nodes, discover, driver_libraries
from capsa.runtime.spec import DeviceSpec
from capsa.state import Database

__all__ = ["MIGRATIONS", "GpuAllocator", "GpuGrant"]

MIGRATIONS = [
    """
    CREATE TABLE gpu_allocations (
        minor INTEGER PRIMARY KEY,          -- /dev/nvidia<minor>: one job per GPU
        uuid TEXT NOT NULL DEFAULT '',
        job_id TEXT NOT NULL,
        allocated_ns INTEGER NOT NULL
    );
    CREATE INDEX gpu_allocations_job ON gpu_allocations(job_id);
    CREATE UNIQUE INDEX gpu_allocations_uuid ON gpu_allocations(uuid) WHERE uuid != '';
    """,
]


@dataclass(frozen=True)
class GpuGrant:
    """What a job gets for its GPUs: nodes to bind, device-cgroup rules, environment, libraries."""

    job_id: str
    gpus: tuple[Gpu, ...]
    devices: tuple[DeviceSpec, ...] = ()
    device_allow: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    libraries: tuple[str, ...] = ()

    @property
    def names(self) -> list[str]:
        """How the job's GPUs are shown (``inspect``): the UUID when known, else nvidia<minor>."""
        return [g.uuid or g.name for g in self.gpus]


def visible_devices(gpus: Iterable[Gpu]) -> str:
    """CUDA_VISIBLE_DEVICES / NVIDIA_VISIBLE_DEVICES: UUIDs select exactly these GPUs whatever the
    enumeration order; without UUIDs, the ordinals the job itself sees (it has only these nodes)."""
    chosen = list(gpus)
    if chosen and all(g.uuid for g in chosen):
        return ",".join(g.uuid for g in chosen)
    return ",".join(str(i) for i in range(len(chosen)))


class GpuAllocator:
    """Hands out whole GPUs found under ``root`` (``/`` on a real host; a fake tree in tests)."""

    def __init__(self, db: Database, *, root: Path = Path("/"), nvidia_smi: str | None = None,
                 libraries: Callable[[], list[str]] = driver_libraries) -> None:
        self.db = db
        self.root = Path(root)
        self._nvidia_smi = nvidia_smi
        self._libraries = libraries
        db.migrate("gpus", MIGRATIONS)

    def inventory(self) -> list[Gpu]:
        """The GPUs the driver reports now, excluded ones left out."""
        return [g for g in discover(self.root, nvidia_smi=self._nvidia_smi) if not g.excluded]

    def allocations(self) -> dict[int, str]:
        """GPU minor -> the job holding it."""
        return {int(r["minor"]): str(r["job_id"])
                for r in self.db.query("SELECT minor, job_id FROM gpu_allocations ORDER BY minor")}

    def held_by(self, job_id: str) -> list[int]:
        rows = self.db.query("SELECT minor FROM gpu_allocations WHERE job_id = ? ORDER BY minor", (job_id,))
        return [int(r["minor"]) for r in rows]

    def check_request(self, count: int) -> None:
        """Refuse at submission what can never be granted on this node."""
        if count < 0:
            raise InvalidArgument(f"--gpus must be zero or positive, got {count}")
        if count:
            total = len(self.inventory())
            if count > total:
                raise FailedPrecondition(f"--gpus {count}: this node has {total} usable GPU"
                                         f"{'' if total == 1 else 's'}")

    def allocate(self, job_id: str, count: int) -> GpuGrant:
        """Give ``job_id`` ``count`` free GPUs (lowest minors first), exclusively.

        ``LimitExceeded`` when fewer are free (naming the jobs holding the rest);
        ``FailedPrecondition`` when the node has fewer GPUs at all or a GPU's node is missing.
        Asking again for the same job returns what it already holds.
        """
        self.check_request(count)
        if count == 0:
            return GpuGrant(job_id=job_id, gpus=())
        gpus = self.inventory()
        by_minor = {g.minor: g for g in gpus}
        try:
            with self.db.tx() as conn:
                held = {int(r["minor"]): str(r["job_id"])
                        for r in conn.execute("SELECT minor, job_id FROM gpu_allocations")}
                mine = sorted(m for m, j in held.items() if j == job_id)
                if mine:
                    chosen = [by_minor[m] for m in mine if m in by_minor]
                    if len(chosen) != count:
                        raise FailedPrecondition(f"job {job_id[:12]} already holds GPUs {mine}")
                else:
                    free = [g for g in gpus if g.minor not in held]
                    if len(free) < count:
                        users = sorted({j[:12] for j in held.values()})
                        raise LimitExceeded(
                            f"--gpus {count}: only {len(free)} of {len(gpus)} GPUs are free "
                            f"(in use by job{'s' if len(users) != 1 else ''} {', '.join(users)})")
                    chosen = free[:count]
                    now = time.time_ns()
                    conn.executemany(
                        "INSERT INTO gpu_allocations(minor, uuid, job_id, allocated_ns) VALUES(?,?,?,?)",
                        [(g.minor, g.uuid, job_id, now) for g in chosen])
        except sqlite3.IntegrityError:
            raise LimitExceeded(f"--gpus {count}: another job took the GPUs at the same moment") from None
        try:
            return self._grant(job_id, chosen)
        except BaseException:
            self.release(job_id)
            raise

    def _grant(self, job_id: str, gpus: list[Gpu]) -> GpuGrant:
        devices, rules = device_nodes(self.root, gpus)
        visible = visible_devices(gpus)
        return GpuGrant(job_id=job_id, gpus=tuple(gpus), devices=devices, device_allow=rules,
                        env={"CUDA_VISIBLE_DEVICES": visible, "NVIDIA_VISIBLE_DEVICES": visible},
                        libraries=tuple(self._libraries()))

    def release(self, job_id: str) -> list[int]:
        """Free the job's GPUs; returns their minors (empty when it held none)."""
        with self.db.tx() as conn:
            rows = conn.execute("SELECT minor FROM gpu_allocations WHERE job_id = ?", (job_id,)).fetchall()
            conn.execute("DELETE FROM gpu_allocations WHERE job_id = ?", (job_id,))
        return sorted(int(r["minor"]) for r in rows)

    def reconcile(self, running: Iterable[str]) -> list[str]:
        """Drop allocations of jobs not in ``running`` (ended while the daemon was down); returns those jobs."""
        alive = set(running)
        with self.db.tx() as conn:
            stale = sorted({str(r["job_id"]) for r in conn.execute("SELECT job_id FROM gpu_allocations")} - alive)
            conn.executemany("DELETE FROM gpu_allocations WHERE job_id = ?", [(j,) for j in stale])
        return stale
