"""capsa.tarstream and capsa.jobs.copying.place without a daemon: round trips, and hostile tars
(from a compromised daemon, or a job's planted names) refused with nothing left behind."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from capsa import tarstream
from capsa.copy_tree import place, split_job_path
from capsa.errors import UnsafeArchive
from capsa.upload_items import walk_local


def _tar(members: list[tuple[str, bytes | str | None]]) -> bytes:
    """name -> bytes (file), str (symlink target) or None (directory)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, value in members:
            info = tarfile.TarInfo(name)
            if value is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif isinstance(value, str):
                info.type, info.linkname = tarfile.SYMTYPE, value
                tar.addfile(info)
            else:
                info.size = len(value)
                tar.addfile(info, io.BytesIO(value))
    return buf.getvalue()


def _place(data: bytes, dest: Path, new_name: str | None = None) -> str:
    fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
    try:
        chunks = [data[i:i + 1000] for i in range(0, len(data), 1000)]   # headers split across chunks
        return place(tarstream.decode(chunks), fd, new_name).name
    finally:
        os.close(fd)


def test_encode_decode_round_trip_keeps_bytes_modes_and_links(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "d" / "e").mkdir(parents=True)
    (src / "d" / "f.bin").write_bytes(os.urandom(3 * (1 << 20) + 7))
    (src / ("n" * 200)).write_text("a long name needs a PAX header")
    os.chmod(src / "d" / "e", 0o710)
    os.symlink("../d/f.bin", src / "d" / "e" / "ln")
    dest = tmp_path / "dest"
    dest.mkdir()
    fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert place(tarstream.decode(tarstream.encode(walk_local([src]))), fd, "copy").name == "copy"
    finally:
        os.close(fd)
    out = dest / "copy"
    assert (out / "d" / "f.bin").read_bytes() == (src / "d" / "f.bin").read_bytes()
    assert (out / ("n" * 200)).read_text() == "a long name needs a PAX header"
    assert os.readlink(out / "d" / "e" / "ln") == "../d/f.bin"
    assert (out / "d" / "e").stat().st_mode & 0o7777 == 0o710
    assert os.listdir(dest) == ["copy"]


@pytest.mark.parametrize("members", [
    [("../evil", b"x")],
    [("/abs/evil", b"x")],
    [("top", None), ("top/../../evil", b"x")],
    [("top", None), ("top/a", "/tmp"), ("top/a/evil", b"x")],   # a symlinked parent
], ids=["dotdot", "absolute", "nested-dotdot", "symlinked-parent"])
def test_hostile_tars_are_refused_and_leave_nothing(tmp_path: Path, members: list) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(UnsafeArchive, match="refused|may not be placed through"):
        _place(_tar(members), dest)
    assert os.listdir(dest) == []
    assert not Path("/tmp/evil").exists()


def test_the_same_tree_without_the_hostile_entry_is_placed(tmp_path: Path) -> None:
    assert _place(_tar([("top", None), ("top/a", "/tmp"), ("top/b", b"x")]), tmp_path) == "top"
    assert os.readlink(tmp_path / "top" / "a") == "/tmp"
    assert os.listdir(tmp_path) == ["top"]


def test_hard_links_are_refused(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("top")
        info.type, info.linkname = tarfile.LNKTYPE, "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(UnsafeArchive, match="hard links"):
        _place(buf.getvalue(), tmp_path)
    assert os.listdir(tmp_path) == []


def test_job_paths_are_checked() -> None:
    assert split_job_path("/work") == []
    assert split_job_path("/work/a/./b/") == ["a", "b"]
    assert split_job_path("a/b") == ["a", "b"]
    with pytest.raises(UnsafeArchive):
        split_job_path("/work/../etc")


@pytest.mark.parametrize("fmt", ["gnu", "pax", "ustar"])
def test_tars_written_by_gnu_tar_are_read(tmp_path: Path, fmt: str) -> None:
    import shutil
    import subprocess

    if shutil.which("tar") is None:
        pytest.skip("needs GNU tar")
    src = tmp_path / "top"
    deep = src / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    (deep / "f.bin").write_bytes(os.urandom(70_000))
    os.symlink("e" * 60 + "/f.bin", src / ("d" * 60) / "ln")
    data = subprocess.run(["tar", "-C", str(tmp_path), f"--format={fmt}", "-cf", "-", "top"],
                          check=True, capture_output=True).stdout
    dest = tmp_path / "dest"
    dest.mkdir()
    assert _place(data, dest) == "top"
    out = dest / "top" / ("d" * 60)
    assert (out / ("e" * 60) / "f.bin").read_bytes() == (deep / "f.bin").read_bytes()
    assert os.readlink(out / "ln") == "e" * 60 + "/f.bin"
