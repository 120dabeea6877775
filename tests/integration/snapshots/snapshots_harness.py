"""Test harness for the snapshotter backends: opening, crash simulation, layer writing."""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from capsa.snapshots import (
    ApplyStyle,
    BtrfsConfig,
    DevmapperConfig,
    Mount,
    Snapshotter,
    mounted,
    open_snapshotter,
    thin_pool_available,
)
from capsa.state.db import Database

MiB = 1024 * 1024


def btrfs_unavailable() -> str:
    if shutil.which("mkfs.btrfs") is None or shutil.which("btrfs") is None:
        return "btrfs-progs (mkfs.btrfs, btrfs) not installed"
    if not os.path.exists("/dev/loop-control"):
        return "no loop device support (/dev/loop-control missing)"
    with open("/proc/filesystems", encoding="ascii") as f:
        if "btrfs" not in f.read():
            return "kernel has no btrfs"
    return ""


# Run in a child process: open the snapshotter, then die by SIGKILL half-way through
# prepare — after the storage is in place but before the metadata commits.
_CRASH_CHILD = """
import json, os, sys
import capsa.snapshots.devmapper.pool as pool
from capsa.snapshots import open_snapshotter
from capsa.state.db import Database

spec = json.loads(sys.argv[1])
sn = open_snapshotter(spec["kind"], spec["root"], Database(spec["db"]), spec["config"])

def die(*args, **kwargs):
    os.kill(os.getpid(), 9)

if spec["kind"] == "devmapper":
    pool.ThinPool.link = die  # the device exists; the snapshot row is not written yet
else:
    real_rename = os.rename
    def rename(src, dst, *args, **kwargs):
        real_rename(src, dst)
        if os.path.basename(dst).isdigit():
            die()  # renamed to its id inside the uncommitted transaction
    os.rename = rename
sn.prepare(spec["key"], spec["parent"])
"""


@dataclass
class Harness:
    kind: str
    root: Path
    db: Database
    config: object
    make_orphan: Callable[[Harness], Callable[[], bool]]
    lose_storage: Callable[[Harness, str], None]
    sn: Snapshotter = field(init=False)

    def __post_init__(self) -> None:
        self.sn = self._open()

    def _open(self) -> Snapshotter:
        return open_snapshotter(self.kind, self.root, self.db, self.config)  # type: ignore[arg-type]

    def reopen(self) -> Snapshotter:
        """Close and open again, as a daemon restart does."""
        self.sn.close()
        self.sn = self._open()
        return self.sn

    def crash_during_prepare(self, key: str, parent: str | None) -> int:
        """Have another process SIGKILLed in the middle of ``prepare``; its exit status."""
        config = None
        if self.config is not None:
            config = {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(self.config).items()}
        spec = {"kind": self.kind, "root": str(self.root), "db": str(self.db.path), "config": config}
        spec.update(key=key, parent=parent)
        proc = subprocess.run([sys.executable, "-c", _CRASH_CHILD, json.dumps(spec)], capture_output=True, timeout=60)
        return proc.returncode

    def teardown(self) -> None:
        # leaves first: a parent cannot go before its children
        infos = self.sn.walk()
        parents = {i.parent for i in infos}
        while infos:
            leaves = [i for i in infos if i.key not in parents]
            for info in leaves:
                self.sn.remove(info.key)
            infos = self.sn.walk()
            parents = {i.parent for i in infos}
        self.sn.close()
        self.db.close()


def _overlay_orphan(h: Harness) -> Callable[[], bool]:
    orphan = h.root / "snapshots" / "99999"
    (orphan / "fs").mkdir(parents=True)
    (orphan / "fs" / "blob").write_bytes(os.urandom(64 * 1024))
    tmp = h.root / "snapshots" / "new-deadbeef"
    (tmp / "fs").mkdir(parents=True)
    return lambda: orphan.exists() or tmp.exists()


def _btrfs_orphan(h: Harness) -> Callable[[], bool]:
    orphan = h.root / "snapshots" / "new-deadbeef"
    subprocess.run(["btrfs", "subvolume", "create", str(orphan)], check=True, capture_output=True)
    (orphan / "blob").write_bytes(os.urandom(64 * 1024))
    return orphan.exists


def _devmapper_orphan(h: Harness) -> Callable[[], bool]:
    # a crash after the device was created but before the snapshot row was written
    pool = h.sn.pool  # type: ignore[attr-defined]
    rec = pool.allocate(64 * MiB, None)
    pool.create_thin(rec)
    pool.activate(rec)
    return lambda: pool.get(rec.name) is not None or pool.is_loaded(rec.name)


def _overlay_lose(h: Harness, key: str) -> None:
    upper = h.sn.upper_dir(key)
    assert upper is not None
    shutil.rmtree(upper.parent)


def _btrfs_lose(h: Harness, key: str) -> None:
    upper = h.sn.upper_dir(key)
    assert upper is not None
    subprocess.run(["btrfs", "subvolume", "delete", str(upper)], check=True, capture_output=True)


def _devmapper_lose(h: Harness, key: str) -> None:
    sn = h.sn
    row = sn._store.require(key)  # type: ignore[attr-defined]
    rec = sn.pool.by_snapshot(row.id)  # type: ignore[attr-defined]
    sn.pool.remove_device(rec.name)  # type: ignore[attr-defined]


def make_harness(kind: str, tmp_path: Path) -> Harness:
    db = Database(tmp_path / "capsa.db")
    root = tmp_path / kind
    if kind == "overlay":
        return Harness(kind, root, db, None, _overlay_orphan, _overlay_lose)
    if kind == "btrfs":
        btrfs = BtrfsConfig(image_path=tmp_path / "btrfs.img", size_bytes=256 * MiB)
        return Harness(kind, root, db, btrfs, _btrfs_orphan, _btrfs_lose)
    devmapper = DevmapperConfig(
        pool_name=f"capsa-test-{secrets.token_hex(4)}",
        base_image_size=64 * MiB,
        data_file=tmp_path / "pool-data",
        metadata_file=tmp_path / "pool-meta",
        data_size=512 * MiB,
        metadata_size=16 * MiB,
    )
    return Harness(kind, root, db, devmapper, _devmapper_orphan, _devmapper_lose)


def skip_reason(kind: str) -> str:
    if kind == "btrfs":
        return btrfs_unavailable()
    if kind == "devmapper":
        ok, why = thin_pool_available()
        return "" if ok else why
    return ""


@contextmanager
def mounted_at(mounts: list[Mount], tmp_path: Path) -> Iterator[Path]:
    target = Path(tempfile.mkdtemp(dir=tmp_path, prefix="mnt-"))
    with mounted(mounts, target):
        yield target


def write_layer(
    sn: Snapshotter,
    key: str,
    files: dict[str, bytes] | None = None,
    delete: tuple[str, ...] = (),
    opaque: tuple[str, ...] = (),
) -> None:
    """Apply a layer's changes the way an unpacker must for ``sn.apply_style``."""
    with sn.writable(key) as root:
        for name in opaque:
            d = root / name
            if sn.apply_style is ApplyStyle.OVERLAY_UPPER:
                d.mkdir(parents=True, exist_ok=True)
                os.setxattr(d, sn.opaque_xattr, b"y")  # type: ignore[attr-defined]
            else:
                shutil.rmtree(d)
                d.mkdir()
        for name in delete:
            p = root / name
            if sn.apply_style is ApplyStyle.OVERLAY_UPPER:
                p.parent.mkdir(parents=True, exist_ok=True)
                os.mknod(p, stat.S_IFCHR | 0o000, os.makedev(0, 0))  # overlay whiteout
            elif p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
        for name, data in (files or {}).items():
            p = root / name
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)


def tree(root: Path) -> dict[str, bytes | None]:
    """Relative path → file content (None for directories), as seen through a mount."""
    out: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        for d in dirnames:
            out[str(rel / d)] = None
        for f in filenames:
            out[str(rel / f)] = (Path(dirpath) / f).read_bytes()
    out.pop("lost+found", None)
    return {k.removeprefix("./"): v for k, v in out.items()}
