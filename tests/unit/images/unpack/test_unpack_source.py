"""Layer sources: compression detection, decompression errors, streams, files at an offset."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import os
import threading
from pathlib import Path

import pytest
import zstandard

from capsa.errors import ChecksumMismatch, UnsafeArchive, Unsupported
from capsa.images.oci import OCI_LAYER_GZIP, OCI_LAYER_TAR, Compression
from capsa.images.unpack import UnpackBudget, UnpackLimits, apply_layer, sniff_compression
from capsa.images.unpack._limits import Guard
from capsa.images.unpack._source import FileInput, StreamInput, open_input
from tests.integration.images.unpack.unpack_tarwriter import TarWriter

TAR = TarWriter().dir("d").file("d/small", "s" * 100).file("d/large", os.urandom(600_000)).end()


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("kind", ["none", "gzip", "gzip-multi", "zstd", "zstd-multi"])
def test_every_supported_encoding_gives_the_same_tree(kind: str, tmp_path: Path) -> None:
    half = len(TAR) // 2
    blob = {
        "none": TAR,
        "gzip": gzip.compress(TAR),
        "gzip-multi": gzip.compress(TAR[:half]) + gzip.compress(TAR[half:]),
        "zstd": zstandard.ZstdCompressor().compress(TAR),
        "zstd-multi": zstandard.ZstdCompressor().compress(TAR[:half]) + zstandard.ZstdCompressor().compress(TAR[half:]),
    }[kind]
    for source in ("path", "stream"):
        root = tmp_path / f"{source}-root"
        root.mkdir()
        if source == "path":
            (tmp_path / "blob").write_bytes(blob)
            apply_layer(tmp_path / "blob", root)
        else:
            apply_layer(io.BytesIO(blob), root)
        assert _files(root) == {"d/small": b"s" * 100, "d/large": TAR[2048:2048 + 600_000]}


def test_sniffing() -> None:
    assert sniff_compression(TAR[:512]) is Compression.NONE
    assert sniff_compression(gzip.compress(TAR)[:512]) is Compression.GZIP
    assert sniff_compression(zstandard.ZstdCompressor().compress(TAR)[:512]) is Compression.ZSTD
    # a tar whose first name starts with gzip magic is still a tar: its header checksum wins
    assert sniff_compression(TarWriter().file(b"\x1f\x8bname").end()[:512]) is Compression.NONE
    for blob, name in ((bz2.compress(TAR), "bzip2"), (lzma.compress(TAR), "xz")):
        with pytest.raises(Unsupported, match=name):
            sniff_compression(blob[:512])


def test_media_types(tmp_path: Path) -> None:
    with pytest.raises(Unsupported, match="not supported"):
        apply_layer(io.BytesIO(TAR), tmp_path, media_type="application/vnd.oci.image.layer.v1.tar+gzip+encrypted")
    # mislabelled layers still apply: the content decides, as in containerd
    (tmp_path / "a").mkdir()
    apply_layer(io.BytesIO(TAR), tmp_path / "a", media_type=OCI_LAYER_GZIP)
    (tmp_path / "b").mkdir()
    apply_layer(io.BytesIO(gzip.compress(TAR)), tmp_path / "b", media_type=OCI_LAYER_TAR)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")


@pytest.mark.parametrize("damage", ["truncated", "trailing-garbage", "corrupt"])
def test_damaged_gzip_is_an_unsafe_archive(damage: str, tmp_path: Path) -> None:
    blob = gzip.compress(TAR)
    blob = {"truncated": blob[: len(blob) - 10], "trailing-garbage": blob + b"garbage!",
            "corrupt": blob[:200] + bytes(b ^ 0xFF for b in blob[200:260]) + blob[260:]}[damage]
    threads = threading.active_count()
    with pytest.raises(UnsafeArchive):
        apply_layer(io.BytesIO(blob), tmp_path)
    assert threading.active_count() == threads


def test_corrupt_zstd_is_an_unsafe_archive(tmp_path: Path) -> None:
    checked = zstandard.ZstdCompressor(write_checksum=True).compress(TAR)
    with pytest.raises(UnsafeArchive, match="corrupt zstd stream"):
        apply_layer(io.BytesIO(checked[:-6] + bytes(b ^ 1 for b in checked[-6:])), tmp_path)
    # without a frame checksum the damage surfaces as a malformed tar instead
    plain = zstandard.ZstdCompressor().compress(TAR)
    with pytest.raises(UnsafeArchive):
        apply_layer(io.BytesIO(plain[:100] + b"\xff" * 50 + plain[150:]), tmp_path)


def test_file_objects_are_read_from_their_position(tmp_path: Path) -> None:
    blob = tmp_path / "concat"
    blob.write_bytes(b"HEADER!" + TAR)
    root = tmp_path / "root"
    root.mkdir()
    with open(blob, "rb") as f:
        f.read(7)
        apply_layer(f, root)
    assert _files(root)["d/small"] == b"s" * 100


def test_inputs_hash_every_byte_once(tmp_path: Path) -> None:
    (tmp_path / "t").write_bytes(TAR + bytes(10240))  # tar record padding after the end marker
    expected = "sha256:" + hashlib.sha256(TAR + bytes(10240)).hexdigest()
    for n, source in enumerate((tmp_path / "t", io.BytesIO(gzip.compress(TAR + bytes(10240))))):
        root = tmp_path / f"r{n}"
        root.mkdir()
        assert apply_layer(source, root, expected_diff_id=expected).diff_id == expected
    with pytest.raises(ChecksumMismatch):
        apply_layer(io.BytesIO(TAR), tmp_path / "r0", expected_diff_id="sha256:" + "0" * 64)


def test_file_input_copies_large_bodies_in_kernel(tmp_path: Path) -> None:
    (tmp_path / "t").write_bytes(TAR)
    guard = Guard(UnpackLimits(), UnpackBudget())
    inp = open_input(tmp_path / "t", None, guard, None)
    assert isinstance(inp, FileInput)
    try:
        inp.skip(2048, guard, "x")
        fd = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            inp.copy_to(fd, 600_000, guard, "x")
        finally:
            os.close(fd)
        assert inp.offset == 2048 + 600_000
    finally:
        inp.close()
    assert (tmp_path / "out").read_bytes() == TAR[2048:2048 + 600_000]


def test_stream_reader_thread_stops_when_abandoned() -> None:
    guard = Guard(UnpackLimits(), UnpackBudget())
    threads = threading.active_count()
    inp = open_input(io.BytesIO(gzip.compress(os.urandom(1 << 22))), None, guard, None)
    assert isinstance(inp, StreamInput)
    inp.read(512)  # the producer is now blocked on a full queue
    inp.close()
    assert threading.active_count() == threads
