"""VolumeManager: create, list, remove volumes; lend them to jobs; put things right after a restart.

Layout under ``root`` (mode 0700, so only root on the host reaches the data)::

    root/<name>/image.ext4   filesystem volumes: a sparse file holding an ext4 filesystem
    root/<name>/mnt/         the mount point; the directory a job binds

Crash safety comes from ordering against the database: a volume row exists
(state ``creating``) before any file, and goes (after state ``removing``)
only once the files are gone; a user row is written before mounting and
deleted before unmounting. :meth:`reconcile` finishes whatever a crash
interrupted.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from capsa import linux
from capsa.errors import FailedPrecondition, InvalidArgument, LimitExceeded, Timeout, Unsupported
from capsa.state import Database
from capsa.volumes import _loop
from capsa.volumes._store import Store, VolumeRow
from capsa.volumes.model import (
    FILESYSTEM,
    MEMORY,
    VOLUME_TYPES,
    Volume,
    VolumeReconcileReport,
    format_size,
    parse_size,
    validate_volume_name,
)

__all__ = ["VolumeManager"]

MIN_SIZE = {FILESYSTEM: 8 << 20, MEMORY: 1 << 20}
_MOUNT_FLAGS = linux.MS_NOSUID | linux.MS_NODEV
_JOB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_IMAGE, _MNT = "image.ext4", "mnt"


class VolumeManager:
    """Named volumes that outlive jobs and daemon restarts. The only writer of ``root``."""

    def __init__(self, db: Database, root: Path, *, mkfs: str = "mkfs.ext4") -> None:
        Path(root).mkdir(parents=True, exist_ok=True, mode=0o700)
        # Resolved: loop devices are matched by the kernel's (symlink-free) name of their backing file.
        self.root = Path(root).resolve()
        self._mkfs = mkfs
        self._store = Store(db)
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    # -- volumes -----------------------------------------------------------------------------
    def create(self, name: str, size_bytes: int | str, type: str = FILESYSTEM) -> Volume:
        """A new, empty volume of ``size_bytes`` (an int, or ``"1GB"``, ``"512MiB"`` …); ``type``
        ``filesystem`` or ``memory``."""
        validate_volume_name(name)
        if type not in VOLUME_TYPES:
            raise InvalidArgument(f"invalid volume type {type!r}: use filesystem or memory")
        size_bytes = parse_size(size_bytes)
        if size_bytes < MIN_SIZE[type]:
            raise InvalidArgument(f"a {type} volume needs at least {format_size(MIN_SIZE[type])},"
                                  f" {format_size(size_bytes)} asked")
        self._check_capacity(type, size_bytes)
        with self._lock(name):
            self._store.insert(name, type, size_bytes)
            vdir = self.root / name
            try:
                self._wipe(vdir)  # a stray directory of an earlier, crashed attempt
                vdir.mkdir(mode=0o700)
                (vdir / _MNT).mkdir(mode=0o755)
                if type == FILESYSTEM:
                    self._make_filesystem(vdir / _IMAGE, size_bytes)
                else:
                    self._mount_tmpfs(vdir / _MNT, size_bytes)
                self._store.set_state(name, "ready")
            except BaseException:
                with contextlib.suppress(Exception):
                    self._wipe(vdir)
                self._store.delete(name)
                raise
        return self.get(name)

    def list(self) -> list[Volume]:
        return [self._volume(row) for row in self._store.all() if row.state == "ready"]

    def get(self, name: str) -> Volume:
        return self._volume(self._store.require(name))

    def remove(self, name: str) -> None:
        """Delete a volume and its data; refused (Conflict) while a job holds it."""
        with self._lock(name):
            self._store.begin_remove(name)
            self._wipe(self.root / name)
            self._store.delete(name)
        with self._guard:
            self._locks.pop(name, None)

    # -- lending to jobs -------------------------------------------------------------------------
    def acquire(self, name: str, job_id: str) -> Path:
        """Make ``name`` available to ``job_id``; returns the host directory to bind into the job.

        Reference-counted per job (acquiring twice for one job counts once). A
        filesystem volume is mounted on its first user; a memory volume is
        always mounted.
        """
        _check_job_id(job_id)
        with self._lock(name):
            row = self._store.require(name)
            added = self._store.add_user(name, job_id)
            try:
                self._ensure_mounted(row)
            except BaseException:
                if added:
                    self._store.remove_user(name, job_id)
                raise
        return self.root / name / _MNT

    def release(self, name: str, job_id: str) -> None:
        """``job_id`` is done with ``name``; the last user of a filesystem volume unmounts it."""
        with self._lock(name):
            row = self._store.require(name)
            remaining = self._store.remove_user(name, job_id)
            if remaining == 0 and row.type == FILESYSTEM:
                _unmount(self.root / name / _MNT)

    def release_all(self, job_id: str) -> list[str]:
        """Release every volume ``job_id`` holds (at the end of a job); returns their names."""
        held = sorted({vol for vol, job in self._store.all_users() if job == job_id})
        for name in held:
            self.release(name, job_id)
        return held

    # -- recovery ----------------------------------------------------------------------------------
    def reconcile(self, running_job_ids: Iterable[str] | None = None) -> VolumeReconcileReport:
        """After a restart: finish interrupted creates/removes, drop users that no longer run
        (when ``running_job_ids`` is given), mount what is in use, unmount what is not,
        re-create memory volumes lost with a host reboot, remove stray directories."""
        report = VolumeReconcileReport()
        for row in self._store.all():
            if row.state != "ready":
                with self._lock(row.name):
                    self._wipe(self.root / row.name)
                    self._store.delete(row.name)
                report.removed.append(row.name)
        if running_job_ids is not None:
            running = set(running_job_ids)
            for volume, job in self._store.all_users():
                if job not in running:
                    with self._lock(volume):
                        self._store.remove_user(volume, job)
                    report.released.append(f"{volume}:{job}")
        known = set()
        for row in self._store.all():
            known.add(row.name)
            with self._lock(row.name):
                self._reconcile_one(row, report)
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.root):
                if entry.name not in known and entry.is_dir(follow_symlinks=False):
                    self._wipe(Path(entry.path))
                    report.removed.append(entry.name)
        return report

    def _reconcile_one(self, row: VolumeRow, report: VolumeReconcileReport) -> None:
        mnt = self.root / row.name / _MNT
        mounted = _is_mounted(mnt)
        if row.type == MEMORY:
            if not mounted:
                mnt.mkdir(parents=True, exist_ok=True, mode=0o755)
                self._mount_tmpfs(mnt, row.size_bytes)
                report.recreated.append(row.name)
            return
        if not (self.root / row.name / _IMAGE).is_file():
            report.missing.append(row.name)
            return
        users = self._store.users(row.name)
        if users and not mounted:
            self._ensure_mounted(row)
            report.mounted.append(row.name)
        elif not users and mounted:
            _unmount(mnt)
            report.unmounted.append(row.name)

    # -- internals -----------------------------------------------------------------------------------
    def _lock(self, name: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(name, threading.Lock())

    def _volume(self, row: VolumeRow) -> Volume:
        vdir = self.root / row.name
        mnt = vdir / _MNT
        mounted = _is_mounted(mnt)
        capacity = used = None
        if mounted:
            st = os.statvfs(mnt)
            capacity = st.f_blocks * st.f_frsize
            used = (st.f_blocks - st.f_bfree) * st.f_frsize
        missing = row.type == FILESYSTEM and not (vdir / _IMAGE).is_file()
        return Volume(name=row.name, type=row.type, size_bytes=row.size_bytes, created_ns=row.created_ns,
                      state="missing" if missing else "ready", path=str(mnt),
                      users=tuple(self._store.users(row.name)), mounted=mounted,
                      capacity_bytes=capacity, used_bytes=used)

    def _check_capacity(self, type_: str, size: int) -> None:
        if type_ == FILESYSTEM:
            st = os.statvfs(self.root)
            free = st.f_bavail * st.f_frsize
            if size > free:
                # The image is sparse, but a volume larger than the free disk would fail
                # with I/O errors inside the job instead of ENOSPC: refuse it up front.
                raise LimitExceeded(f"volume size {format_size(size)} exceeds the free space"
                                    f" {format_size(free)} under {self.root}")
        else:
            total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
            if size > total:
                raise LimitExceeded(f"memory volume size {format_size(size)} exceeds the host's memory"
                                    f" {format_size(total)}")

    def _make_filesystem(self, image: Path, size: int) -> None:
        with open(image, "xb") as f:
            f.truncate(size)
        # -m 0: no blocks reserved for root, the job gets the whole size; lazy init keeps mkfs
        # at milliseconds (the kernel zeroes inode tables in the background on first mount).
        _run([self._mkfs, "-q", "-F", "-m", "0", "-E", "lazy_itable_init=1,lazy_journal_init=1", str(image)])

    def _mount_tmpfs(self, mnt: Path, size: int) -> None:
        linux.mount("capsa-volume", mnt, "tmpfs", _MOUNT_FLAGS, f"size={size},mode=0755")

    def _ensure_mounted(self, row: VolumeRow) -> None:
        mnt = self.root / row.name / _MNT
        if _is_mounted(mnt):
            return
        if row.type == MEMORY:
            self._mount_tmpfs(mnt, row.size_bytes)
            return
        image = self.root / row.name / _IMAGE
        if not image.is_file():
            raise FailedPrecondition(f"volume {row.name!r} has lost its image file {image}")
        _mount_image(image, mnt)

    def _wipe(self, vdir: Path) -> None:
        """Unmount and delete a volume directory; never deletes through a mount."""
        if not vdir.exists():
            return
        for mount_point in sorted(_mounts_under(vdir), key=len, reverse=True):
            _unmount(Path(mount_point))
        still = _mounts_under(vdir)
        if still:
            raise FailedPrecondition(f"cannot remove {vdir}: still mounted at {', '.join(still)}")
        shutil.rmtree(vdir)


def _check_job_id(job_id: str) -> None:
    if not isinstance(job_id, str) or not _JOB_ID_RE.fullmatch(job_id):
        raise InvalidArgument(f"invalid job id {job_id!r}")


def _mount_image(image: Path, mnt: Path) -> None:
    """Mount the ext4 image at ``mnt``, reusing its loop device if one is still alive.

    A loop device can outlive an unmount while a copy of the mount lingers in
    another mount namespace; attaching a *second* device to the same image would
    give two independent ext4 instances on one file (corruption). Mounting the
    surviving device instead shares its superblock.
    """
    deadline = time.monotonic() + 5
    while True:
        existing = _loop.devices_for(image)
        if not existing:
            device, fd = _loop.attach(image)
            try:
                linux.mount(device, mnt, "ext4", _MOUNT_FLAGS, None)
            except OSError as exc:
                raise FailedPrecondition(f"cannot mount {image} ({device}) at {mnt}: {exc.strerror}") from exc
            finally:
                os.close(fd)  # auto-clear: from now on the mount alone holds the device
            return
        try:
            linux.mount(existing[0], mnt, "ext4", _MOUNT_FLAGS, None)
            return
        except OSError as exc:  # being auto-cleared right now: wait for it to go
            if time.monotonic() > deadline:
                raise FailedPrecondition(f"loop device {existing[0]} of {image} is stuck: {exc.strerror}") from exc
            time.sleep(0.01)


def _unmount(mnt: Path) -> None:
    for _ in range(16):  # stacked mounts (a crash between two mounts) come off one by one
        try:
            linux.umount2(mnt, linux.UMOUNT_NOFOLLOW)
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.ENOENT):
                return
            if exc.errno != errno.EBUSY:
                raise FailedPrecondition(f"cannot unmount {mnt}: {exc.strerror}") from exc
            # A host process still has a file open in it: detach now, the kernel frees it after.
            linux.umount2(mnt, linux.MNT_DETACH | linux.UMOUNT_NOFOLLOW)


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _mount_points() -> Iterator[str]:
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            yield _unescape(line.split()[4])


def _is_mounted(path: Path) -> bool:
    return str(path) in set(_mount_points())


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path)
    return [m for m in _mount_points() if m == prefix or m.startswith(prefix + "/")]


def _run(argv: list[str]) -> None:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    except FileNotFoundError as exc:
        raise Unsupported(f"{argv[0]} is not installed (needed for filesystem volumes)") from exc
    except subprocess.TimeoutExpired as exc:
        raise Timeout(f"{' '.join(argv)} did not finish within 300 s") from exc
    if out.returncode != 0:
        raise FailedPrecondition(f"{' '.join(argv)} failed (exit {out.returncode}): {out.stderr.strip()}")
