"""Defensive import: what a hostile directory or tar cannot do."""

from __future__ import annotations

import io
import os
import secrets
import stat
import tarfile
from pathlib import Path

import pytest

from capsa.capsules.importer import CapsuleLimits, import_source
from capsa.errors import InvalidArgument, LimitExceeded, UnsafeArchive


def make_tar(path: Path, *entries: tuple[str, bytes, str | bytes]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as archive:
        for name, kind, payload in entries:
            info = tarfile.TarInfo(name)
            info.type = kind
            data = None
            if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                info.linkname = str(payload)
            elif kind == tarfile.REGTYPE:
                raw = payload if isinstance(payload, bytes) else payload.encode()
                info.size, data = len(raw), io.BytesIO(raw)
            archive.addfile(info, data)
    return path


REG, DIR, SYM, LNK = tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE


def refused(tmp_path: Path, *entries: tuple[str, bytes, str | bytes], match: str) -> None:
    token = secrets.token_hex(4)
    archive = make_tar(tmp_path / f"evil-{token}.tar", *entries)
    with pytest.raises(UnsafeArchive, match=match):
        import_source(archive, tmp_path / f"out-{token}")


def test_absolute_names_are_refused(tmp_path: Path) -> None:
    refused(tmp_path, ("/etc/passwd", REG, "x"), match="absolute path")


def test_dotdot_names_are_refused(tmp_path: Path) -> None:
    refused(tmp_path, ("a/../../x", REG, "x"), match=r"contains '\.\.'")


def test_devices_and_fifos_in_a_tar_are_refused(tmp_path: Path) -> None:
    refused(tmp_path, ("null", tarfile.CHRTYPE, ""), match="character device")
    refused(tmp_path, ("pipe", tarfile.FIFOTYPE, ""), match="FIFO")


def test_fifo_in_a_directory_source_is_refused(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    os.mkfifo(tmp_path / "src" / "pipe")
    with pytest.raises(UnsafeArchive, match="'pipe' is a FIFO"):
        import_source(tmp_path / "src", tmp_path / "out")


def test_absolute_symlinks_are_refused(tmp_path: Path) -> None:
    refused(tmp_path, ("etc", SYM, "/etc"), match="absolute")


def test_symlinks_climbing_out_are_refused(tmp_path: Path) -> None:
    refused(tmp_path, ("a/up", SYM, "../../x"), match="outside the capsule")


def test_symlink_chains_that_escape_only_when_followed_are_refused(tmp_path: Path) -> None:
    # lexically "s/.." is the root, but s -> "." makes the kernel climb above it
    refused(tmp_path, ("s", SYM, "."), ("l", SYM, "s/.."), match="'l' -> 's/..' points outside")
    refused(tmp_path, ("d/s", SYM, ".."), ("l", SYM, "d/s/.."), match="outside the capsule")


def test_symlink_loops_are_refused(tmp_path: Path) -> None:
    refused(tmp_path, ("a", SYM, "b"), ("b", SYM, "a"), match="hop limit")


def test_writing_through_a_planted_symlink_is_refused(tmp_path: Path) -> None:
    refused(tmp_path, ("l", SYM, "d"), ("d/", DIR, ""), ("l/x", REG, "x"), match="through the symlink 'l'")


def test_type_swaps_and_duplicates_are_refused(tmp_path: Path) -> None:
    refused(tmp_path, ("a", REG, "1"), ("a/", DIR, ""), match="appears twice")
    refused(tmp_path, ("a", REG, "1"), ("a", REG, "2"), match="appears twice")


def test_hardlinks_must_point_to_an_earlier_regular_file(tmp_path: Path) -> None:
    refused(tmp_path, ("h", LNK, "missing"), match="hard link")
    refused(tmp_path, ("s", SYM, "t"), ("t", REG, "x"), ("h", LNK, "s"), match="hard link")
    refused(tmp_path, ("h", LNK, "../../etc/passwd"), match=r"contains '\.\.'")


def test_a_well_formed_tar_is_materialised_read_only(tmp_path: Path) -> None:
    archive = make_tar(
        tmp_path / "ok.tar",
        ("./a/b/file", REG, "hello"),
        ("a//c/", DIR, ""),
        ("a/link", SYM, "b/file"),
        ("a/dangling", SYM, "b/not-there"),
        ("a/hard", LNK, "a/b/file"),
        ("top", SYM, "a/b"),
    )
    stats = import_source(archive, tmp_path / "out")
    out = tmp_path / "out"
    assert (out / "a" / "link").read_text() == "hello"
    assert (out / "a" / "hard").read_text() == "hello"
    assert os.readlink(out / "top") == "a/b"
    assert stat.S_IMODE(os.stat(out / "a" / "b" / "file").st_mode) == 0o444
    assert stat.S_IMODE(os.stat(out / "a" / "c").st_mode) == 0o555
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o555
    assert stats.total_bytes == 10 and stats.entries == 8


def test_limits_are_enforced_before_writing(tmp_path: Path) -> None:
    big = make_tar(tmp_path / "big.tar", ("f", REG, b"x" * 2048))
    with pytest.raises(LimitExceeded, match="per-file limit of 1024"):
        import_source(big, tmp_path / "o1", CapsuleLimits(max_file_bytes=1024))
    many = make_tar(tmp_path / "many.tar", *((f"f{i}", REG, b"x") for i in range(5)))
    with pytest.raises(LimitExceeded, match="limit of 3 entries"):
        import_source(many, tmp_path / "o2", CapsuleLimits(max_entries=3))
    with pytest.raises(LimitExceeded, match="size limit of 3 bytes"):
        import_source(many, tmp_path / "o3", CapsuleLimits(max_total_bytes=3))
    deep = make_tar(tmp_path / "deep.tar", ("/".join(["d"] * 10) + "/f", REG, b"x"))
    with pytest.raises(LimitExceeded, match="deeper than 5"):
        import_source(deep, tmp_path / "o4", CapsuleLimits(max_depth=5))


def test_non_utf8_names_in_a_directory_are_refused(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (Path(os.fsdecode(bytes(src) + b"/bad\xff"))).write_text("x")
    with pytest.raises(UnsafeArchive, match="not valid UTF-8"):
        import_source(src, tmp_path / "out")


def test_garbage_is_not_a_tar(tmp_path: Path) -> None:
    (tmp_path / "junk").write_bytes(b"not a tar at all" * 100)
    with pytest.raises(InvalidArgument, match="not a readable tar"):
        import_source(tmp_path / "junk", tmp_path / "out")


def test_oversized_pax_headers_are_refused_before_being_read(tmp_path: Path) -> None:
    archive = tmp_path / "pax.tar"
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as out:
        info = tarfile.TarInfo("f")
        info.pax_headers = {"comment": "x" * (1 << 20)}
        out.addfile(info, io.BytesIO(b""))
    with pytest.raises(LimitExceeded, match="extended header"):
        import_source(archive, tmp_path / "out")
