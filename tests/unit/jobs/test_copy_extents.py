"""Holes in capsa cp: data extents found with SEEK_DATA, sent as a sparse map in the tar stream or
copied from a passed descriptor, and written back so that holes stay holes (capsa.extents)."""

from __future__ import annotations

import hashlib
import os
import socket
from functools import partial
from pathlib import Path

import pytest

from capsa import tarstream
from capsa.copy_tree import place
from capsa.errors import FailedPrecondition, InvalidArgument
from capsa.extents import MAX_EXTENTS, check_extents, copy_extents, data_extents, parse_map, render_map
from capsa.fdpass import FAST_MIN_BYTES, recv_fd, send_fd
from capsa.upload_items import EntryKind, UploadEntry, walk_local

MiB = 1 << 20


def _sparse(path: Path, size: int, pieces: list[tuple[int, bytes]]) -> None:
    with open(path, "wb") as f:
        f.truncate(size)
        for where, data in pieces:
            f.seek(where)
            f.write(data)


def _extents(path: Path) -> list[tuple[int, int]]:
    fd = os.open(path, os.O_RDONLY)
    try:
        return data_extents(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _place(items: object, dest: Path, **kw: object) -> None:
    fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
    try:
        place(items, fd, None, **kw)   # type: ignore[arg-type]
    finally:
        os.close(fd)


def test_data_extents_name_the_written_regions_only(tmp_path: Path) -> None:
    f = tmp_path / "f"
    _sparse(f, 64 * MiB, [(MiB, b"a" * MiB), (40 * MiB, b"b" * 10)])
    found = _extents(f)
    # File systems allocate in blocks: the second extent is one block (4 KiB on ext4/xfs), not 10 bytes.
    assert [off for off, _ in found] == [MiB, 40 * MiB]
    assert found[0][1] == MiB and 10 <= found[1][1] <= 64 << 10
    holes = tmp_path / "holes"
    _sparse(holes, 8 * MiB, [])
    assert _extents(holes) == []
    dense = tmp_path / "dense"
    dense.write_bytes(os.urandom(3 * MiB))
    assert _extents(dense) == [(0, 3 * MiB)]
    (tmp_path / "empty").write_bytes(b"")
    assert _extents(tmp_path / "empty") == []


def test_data_extents_are_cut_at_the_size_asked(tmp_path: Path) -> None:
    f = tmp_path / "f"
    _sparse(f, 10 * MiB, [(0, b"x" * (2 * MiB)), (8 * MiB, b"y" * MiB)])
    fd = os.open(f, os.O_RDONLY)
    try:
        assert data_extents(fd, MiB) == [(0, MiB)]          # a file grown since its size was taken
        assert data_extents(fd, 5 * MiB) == [(0, 2 * MiB)]
    finally:
        os.close(fd)


def test_too_many_extents_are_merged_not_refused(tmp_path: Path) -> None:
    f = tmp_path / "f"
    count = MAX_EXTENTS + 100
    _sparse(f, count * 8192, [(i * 8192, b"d") for i in range(count)])
    found = _extents(f)
    assert len(found) <= MAX_EXTENTS
    check_extents(found, count * 8192, "f")
    out = tmp_path / "out"
    src, dst = os.open(f, os.O_RDONLY), os.open(out, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        copy_extents(src, dst, count * 8192, "f")
    finally:
        os.close(src)
        os.close(dst)
    assert _digest(out) == _digest(f)


@pytest.mark.parametrize("text", ["0,10,5,10", "5,10,0,2", "0,0", "0,11", "1,2,3", "a,b", "-1,2"])
def test_malformed_sparse_maps_are_refused(text: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_map(text, 10, "f")


def test_maps_render_and_parse_back() -> None:
    extents = [(0, 4096), (1 << 40, 8192)]
    assert parse_map(render_map(extents), (1 << 40) + 8192, "f") == extents
    assert parse_map("", 100, "f") == []


def test_copy_extents_keeps_holes_and_bytes(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _sparse(src, 256 * MiB, [(MiB, os.urandom(MiB)), (200 * MiB, os.urandom(MiB))])
    dst = tmp_path / "dst"
    s, d = os.open(src, os.O_RDONLY), os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        moved = copy_extents(s, d, 256 * MiB, "src")
    finally:
        os.close(s)
        os.close(d)
    assert moved == 2 * MiB
    assert os.stat(dst).st_size == 256 * MiB
    assert os.stat(dst).st_blocks == os.stat(src).st_blocks
    assert _extents(dst) == _extents(src)
    assert _digest(dst) == _digest(src)


def test_copy_extents_of_a_shrunk_source_fails(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"x" * MiB)
    s, d = os.open(src, os.O_RDONLY), os.open(tmp_path / "dst", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with pytest.raises(FailedPrecondition, match="shrank"):
            copy_extents(s, d, 2 * MiB, "src")   # the size taken before the file was cut
    finally:
        os.close(s)
        os.close(d)


def test_the_stream_sends_only_data_extents_and_keeps_holes(tmp_path: Path) -> None:
    src = tmp_path / "tree"
    src.mkdir()
    _sparse(src / "sparse.img", 1 << 30, [(4096, b"head"), (700 * MiB, os.urandom(MiB))])
    _sparse(src / "all-holes", 8 * MiB, [])
    (src / "dense").write_bytes(os.urandom(MiB + 7))
    chunks = list(tarstream.encode(walk_local([src], sparse=True)))
    assert sum(len(c) for c in chunks) < 3 * MiB   # not the 1 GiB the file claims
    out = tmp_path / "out"
    out.mkdir()
    _place(tarstream.decode(chunks), out)
    for name in ("sparse.img", "all-holes", "dense"):
        a, b = src / name, out / "tree" / name
        assert os.stat(b).st_size == os.stat(a).st_size, name
        assert _extents(b) == _extents(a), name
        assert os.stat(b).st_blocks == os.stat(a).st_blocks, name
    assert _digest(out / "tree" / "dense") == _digest(src / "dense")
    with open(out / "tree" / "sparse.img", "rb") as f:
        f.seek(700 * MiB)
        assert f.read(MiB) == (src / "sparse.img").open("rb").read(700 * MiB + MiB)[700 * MiB:]


def test_without_sparse_the_upload_stream_stays_dense(tmp_path: Path) -> None:
    """capsa run --upload's wire (pb.UploadEntry) has no map: its walker sends every byte."""
    f = tmp_path / "f"
    _sparse(f, 2 * MiB, [(0, b"x")])
    entries = [e for e, _ in walk_local([f]) if e is not None]
    assert entries[0].extents is None and entries[0].data_bytes == 2 * MiB


def test_a_stream_whose_data_disagrees_with_its_map_is_refused(tmp_path: Path) -> None:
    entry = UploadEntry("f", EntryKind.FILE, 0o644, 100, extents=((0, 10), (50, 10)))
    chunks = list(tarstream.encode([(entry, b"x" * 20)]))
    good = list(tarstream.decode(chunks))
    assert good[0][0] == entry
    forged = b"".join(chunks).replace(b"0,10,50,10", b"0,10,50,11")
    with pytest.raises(InvalidArgument):
        list(tarstream.decode([forged]))


def test_passed_descriptors_are_copied_in_stream_order(tmp_path: Path) -> None:
    src = tmp_path / "tree"
    (src / "sub").mkdir(parents=True)
    (src / "a.bin").write_bytes(os.urandom(FAST_MIN_BYTES + 1))
    _sparse(src / "sub" / "b.img", 64 * MiB, [(MiB, os.urandom(MiB))])
    (src / "small").write_bytes(b"small files stay in the stream")
    left, right = socket.socketpair()
    with left, right:
        items = list(walk_local([src], sparse=True, send_fd=partial(send_fd, left)))
        passed = [e.path for e, _ in items if e is not None and e.passed]
        assert passed == ["tree/a.bin", "tree/sub/b.img"]
        out = tmp_path / "out"
        out.mkdir()
        _place(tarstream.decode(tarstream.encode(items)), out, take_fd=partial(recv_fd, right))
    for name in ("a.bin", "sub/b.img", "small"):
        assert _digest(out / "tree" / name) == _digest(src / name), name
        assert _extents(out / "tree" / name) == _extents(src / name), name


def test_a_passed_entry_without_a_connection_is_refused(tmp_path: Path) -> None:
    entry = UploadEntry("f", EntryKind.FILE, 0o644, MiB, passed=True)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(InvalidArgument, match="descriptor"):
        _place(tarstream.decode(tarstream.encode([(entry, b"")])), out)
    assert os.listdir(out) == []


def test_a_passed_entry_leaves_the_encoder_before_the_next_item_is_read() -> None:
    """The sender may block passing the next descriptor until this entry is taken: it must be on the wire."""
    pulled: list[str] = []

    def items():  # type: ignore[no-untyped-def]
        for name in ("a", "b"):
            pulled.append(name)
            yield UploadEntry(name, EntryKind.FILE, 0o644, MiB, passed=True), b""

    chunks = tarstream.encode(items())
    first = next(chunks)
    assert pulled == ["a"]
    assert [e.path for e, _ in tarstream.decode([first + b"\0" * 1024]) if e is not None] == ["a"]


def test_a_connection_lost_mid_copy_leaves_nothing(tmp_path: Path) -> None:
    src = tmp_path / "tree"
    src.mkdir()
    (src / "a.bin").write_bytes(os.urandom(FAST_MIN_BYTES))
    (src / "b.bin").write_bytes(os.urandom(FAST_MIN_BYTES))
    left, right = socket.socketpair()
    with right:
        with left:
            items = list(walk_local([src], sparse=True, send_fd=partial(send_fd, left)))
        os.close(recv_fd(right))   # a.bin's descriptor is lost; b.bin's is the only one left, then EOF
        out = tmp_path / "out"
        out.mkdir()
        with pytest.raises(InvalidArgument, match="no descriptor"):
            _place(tarstream.decode(tarstream.encode(items)), out, take_fd=partial(recv_fd, right))
    assert os.listdir(out) == []
