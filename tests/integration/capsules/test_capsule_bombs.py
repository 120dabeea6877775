"""Decompression bombs and hostile archives refused by capsule imports, leaving nothing behind."""

from __future__ import annotations

import io
import os
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from capsa.capsules import CapsuleStore
from capsa.errors import LimitExceeded, UnsafeArchive
from capsa.state.db import Database

try:  # ~30x faster than zlib on zeros: keeps a 2 GiB bomb to a fraction of a second
    from isal import isal_zlib as _deflate
except ImportError:  # pragma: no cover
    _deflate = zlib  # type: ignore[assignment]

_ZEROS = bytes(16 << 20)


def write_gzip_bomb(path: Path, files: list[tuple[str, int]]) -> int:
    """A .tar.gz of ``files`` (name, size) full of zeros, compressed as it streams: never on disk expanded."""
    gz = _deflate.compressobj(1, zlib.DEFLATED, 31)  # wbits 31: gzip framing
    with open(path, "wb") as out:
        for name, size in files:
            info = tarfile.TarInfo(name)
            info.size = size
            out.write(gz.compress(info.tobuf(format=tarfile.USTAR_FORMAT)))
            left = size + (-size % 512)  # data, then padding to the next block
            while left:
                n = min(left, len(_ZEROS))
                out.write(gz.compress(_ZEROS[:n]))
                left -= n
        out.write(gz.compress(bytes(1024)))  # end-of-archive blocks
        out.write(gz.flush())
    return path.stat().st_size


def _disk_used(path: Path) -> int:
    total = 0
    for root, _dirs, names in os.walk(path):
        for name in names:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except FileNotFoundError:
                continue
    return total


@pytest.fixture
def store(tmp_path: Path) -> Iterator[CapsuleStore]:
    db = Database(tmp_path / "capsa.db")
    yield CapsuleStore(tmp_path / "store", db)
    db.close()


def _assert_nothing_left(store: CapsuleStore, used_before: int) -> None:
    assert os.listdir(store.layout.ingest) == [], "a staging directory was left behind"
    assert store.list() == []
    assert _disk_used(store.layout.root) <= used_before


def test_two_gib_gzip_bomb_is_refused_by_the_file_limit(store: CapsuleStore, tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.tar.gz"
    size = write_gzip_bomb(bomb, [("zeros", 2 << 30)])
    assert size < 4 << 20  # ~2 MB that would take 2 GiB of disk
    before = _disk_used(store.layout.root)
    with pytest.raises(LimitExceeded, match="above the per-file limit") as err:
        store.create("bomb", "1.0", bomb)
    assert err.value.exit_code == 9
    _assert_nothing_left(store, before)


def test_bomb_split_below_the_file_limit_is_refused_by_the_expansion_ratio(
    store: CapsuleStore, tmp_path: Path
) -> None:
    bomb = tmp_path / "split.tar.gz"
    write_gzip_bomb(bomb, [(f"part{i}", 512 << 20) for i in range(4)])
    before = _disk_used(store.layout.root)
    with pytest.raises(LimitExceeded, match="max_expansion_ratio"):
        store.create("bomb", "1.0", bomb)
    _assert_nothing_left(store, before)


def test_unsafe_entries_of_a_compressed_upload_are_unsafe_archive(store: CapsuleStore, tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("../escape")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    src = tmp_path / "evil.tar.gz"
    src.write_bytes(buf.getvalue())
    with pytest.raises(UnsafeArchive, match=r"'\.\.'") as err:
        store.create("evil", "1.0", src)
    assert err.value.exit_code == 11
    truncated = tmp_path / "truncated.tar.gz"
    write_gzip_bomb(truncated, [("a", 1 << 20)])
    truncated.write_bytes(truncated.read_bytes()[:-20])
    with pytest.raises(UnsafeArchive, match="corrupt"):
        store.create("cut", "1.0", truncated)
    assert os.listdir(store.layout.ingest) == []


def test_cli_exit_codes_through_the_daemon(daemon: object, tmp_path: Path) -> None:
    """Over the API the refusals keep their class: LimitExceeded exits 9, UnsafeArchive 11, never internal."""
    bomb = tmp_path / "bomb.tar.gz"
    write_gzip_bomb(bomb, [("zeros", 2 << 30)])
    home: Path = daemon.home  # type: ignore[attr-defined]
    ingest = home / "capsules" / "ingest"
    result = daemon.cli("capsule", "create", "bomb@1.0", str(bomb))  # type: ignore[attr-defined]
    assert result.returncode == 9, result.stderr
    assert b"per-file limit" in result.stderr and b"internal" not in result.stderr
    evil = tmp_path / "evil.tar.gz"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("/etc/passwd")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    evil.write_bytes(buf.getvalue())
    result = daemon.cli("capsule", "create", "evil@1.0", str(evil))  # type: ignore[attr-defined]
    assert result.returncode == 11, result.stderr
    assert b"absolute path" in result.stderr
    assert ingest.is_dir() and os.listdir(ingest) == []
    assert b"bomb" not in daemon.cli("capsule", "ls").stdout  # type: ignore[attr-defined]


def test_upload_path_refuses_the_bomb_and_cleans_its_staging(store: CapsuleStore, tmp_path: Path) -> None:
    """The daemon's Create RPC path (CapsuleDistribution.create_from_upload) with the 2 MB / 2 GiB bomb."""
    from capsa.capsules.distribution import CapsuleDistribution

    bomb = tmp_path / "bomb.tar.gz"
    write_gzip_bomb(bomb, [("zeros", 2 << 30)])
    data = bomb.read_bytes()
    chunks = (data[i : i + (1 << 20)] for i in range(0, len(data), 1 << 20))
    before = _disk_used(store.layout.root)
    with pytest.raises(LimitExceeded, match="per-file limit"):
        CapsuleDistribution(store).create_from_upload("bomb", "1.0", chunks)
    _assert_nothing_left(store, before)
