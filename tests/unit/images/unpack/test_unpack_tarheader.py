"""The strict tar reader: what it accepts, what it refuses, and where tarfile would have differed."""

from __future__ import annotations

import io
import tarfile

import pytest

from capsa.errors import LimitExceeded, UnsafeArchive
from capsa.images.unpack import UnpackBudget, UnpackLimits
from capsa.images.unpack._limits import Guard
from capsa.images.unpack._source import open_input
from capsa.images.unpack._tarheader import DIR, LNK, REG, SYM, Entry, TarReader, is_tar_header
from tests.integration.images.unpack.unpack_tarwriter import TarWriter, octal


def read_all(tar: bytes, limits: UnpackLimits | None = None) -> list[Entry]:
    limits = limits or UnpackLimits()
    guard = Guard(limits, UnpackBudget())
    inp = open_input(io.BytesIO(tar), None, guard, None)
    try:
        reader = TarReader(inp, limits, guard)
        return list(reader)
    finally:
        inp.close()


def test_tarfile_formats_parse_to_the_same_entries() -> None:
    for fmt in (tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
            info = tarfile.TarInfo("dir/")
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o750, 1_600_000_000
            tf.addfile(info)
            info = tarfile.TarInfo("dir/file")
            info.size, info.uid, info.gid, info.mode, info.mtime = 3, 1000, 100, 0o4755, 1_600_000_001
            tf.addfile(info, io.BytesIO(b"abc"))
            info = tarfile.TarInfo("dir/link")
            info.type, info.linkname = tarfile.SYMTYPE, "/abs/target"
            tf.addfile(info)
            info = tarfile.TarInfo("dir/hard")
            info.type, info.linkname = tarfile.LNKTYPE, "dir/file"
            tf.addfile(info)
        got = [(e.name, e.type, e.mode, e.uid, e.gid, e.size, e.mtime_ns, e.linkname) for e in read_all(buf.getvalue())]
        assert got == [
            ("dir/", DIR, 0o750, 0, 0, 0, 1_600_000_000 * 10**9, ""),
            ("dir/file", REG, 0o4755, 1000, 100, 3, 1_600_000_001 * 10**9, ""),
            ("dir/link", SYM, 0o644, 0, 0, 0, 0, "/abs/target"),
            ("dir/hard", LNK, 0o644, 0, 0, 0, 0, "dir/file"),
        ], fmt


def test_a_bad_checksum_mid_archive_is_an_error_not_the_end() -> None:
    tar = TarWriter().file("first", "1").header("second", checksum_delta=3).end()
    # the stdlib quietly treats the broken header as the end of the archive
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        assert tf.getnames() == ["first"]
    with pytest.raises(UnsafeArchive, match=r"'second': bad header checksum \(header at byte 1024\)"):
        read_all(tar)


def test_historic_signed_checksums_are_accepted() -> None:
    tar = bytearray(TarWriter().file("é".encode("latin-1"), "x").end())  # a byte >= 0x80 in the name
    signed = sum(b - 256 if b >= 128 else b for b in tar[:148] + b" " * 8 + tar[156:512])
    tar[148:156] = f"{signed:06o}".encode() + b"\0 "
    assert read_all(bytes(tar))[0].name == "\udce9"  # not UTF-8: kept as the exact byte


def test_base256_numbers_and_their_range() -> None:
    entry = read_all(TarWriter().file("big-ids", "x", uid=3_000_000_000, mtime=-5).end())[0]
    assert (entry.uid, entry.mtime_ns) == (3_000_000_000, -5 * 10**9)
    with pytest.raises(UnsafeArchive, match="'neg': negative size"):
        read_all(TarWriter().header("neg", size=-1).end())
    with pytest.raises(UnsafeArchive, match="invalid mode/uid/gid"):
        read_all(TarWriter().file("max-uid", uid=(1 << 32) - 1).end())
    with pytest.raises(UnsafeArchive, match="out of range"):
        read_all(TarWriter().file("far-future", mtime=1 << 62).end())


@pytest.mark.parametrize("field", [b"12345678\0\0\0\0"[:12], b"0x123\0\0\0\0\0\0\0", b"-12\0\0\0\0\0\0\0\0\0",
                                   b"0000000001_0"])
def test_numeric_fields_must_be_octal(field: bytes) -> None:
    with pytest.raises(UnsafeArchive, match="invalid size field"):
        read_all(TarWriter().header("x", fields={"size": field}).end())


def test_space_and_nul_padding_is_accepted() -> None:
    tar = TarWriter().header("padded", fields={"mode": b"   644 \0", "size": b" 0\0\0\0\0\0\0\0\0\0\0"}).end()
    assert read_all(tar)[0].mode == 0o644


def test_truncation_is_always_an_error() -> None:
    body = TarWriter().file("a", "x" * 700)
    with pytest.raises(UnsafeArchive, match="end-of-archive marker"):
        read_all(body.unterminated())
    with pytest.raises(UnsafeArchive, match="ends inside a header"):
        read_all(body.unterminated() + b"\1" * 100)
    with pytest.raises(UnsafeArchive, match="entry data"):
        read_all(TarWriter().header("b", size=2000).raw(b"y" * 600).unterminated())
    with pytest.raises(UnsafeArchive, match="lone zero block"):
        read_all(bytes(body.buf) + bytes(512) + TarWriter().file("hidden").end())


def test_pax_records_override_the_header() -> None:
    tar = (TarWriter().pax({"path": "a/" + "p" * 300, "linkpath": "/t", "uid": "70000", "mtime": "1700000000.5",
                            "atime": "1600000000.25", "SCHILY.xattr.user.k": b"v\n=", "comment": "ignored"})
           .symlink("short", "x").end())
    entry = read_all(tar)[0]
    assert entry.name == "a/" + "p" * 300 and entry.linkname == "/t" and entry.uid == 70000
    assert (entry.mtime_ns, entry.atime_ns) == (1_700_000_000_500_000_000, 1_600_000_000_250_000_000)
    assert entry.xattrs == {"user.k": b"v\n="}


@pytest.mark.parametrize("payload", [b"11 path=x\n", b"9 path=x\n\n", b"6 path\n", b"x path=a\n", b"999 path=a\n"])
def test_malformed_pax_records_are_refused(payload: bytes) -> None:
    tar = TarWriter().header("PaxHeaders/x", type=b"x", size=len(payload)).data(payload).file("x").end()
    with pytest.raises(UnsafeArchive, match="pax record"):
        read_all(tar)


def test_global_pax_headers_are_ignored() -> None:
    tar = TarWriter().pax({"path": "evil", "comment": "git"}, type=b"g").file("real", "x").end()
    assert [e.name for e in read_all(tar)] == ["real"]


def test_gnu_long_names_and_links() -> None:
    tar = TarWriter().longname("n" * 300).longname("t" * 200, type=b"K").symlink("short", "x").end()
    entry = read_all(tar)[0]
    assert entry.name == "n" * 300 and entry.linkname == "t" * 200


def test_metadata_headers_are_bounded() -> None:
    with pytest.raises(LimitExceeded, match="max_header_bytes"):
        read_all(TarWriter().header("PaxHeaders/x", type=b"x", size=2048).data(b"x" * 2048).end(),
                 UnpackLimits(max_header_bytes=1024))
    chain = TarWriter()
    for _ in range(9):
        chain.pax({"comment": "again"})
    with pytest.raises(UnsafeArchive, match="more than 8 metadata headers"):
        read_all(chain.file("x").end())
    with pytest.raises(UnsafeArchive, match="right after a pax"):
        read_all(TarWriter().pax({"path": "dangling"}).end())


@pytest.mark.parametrize("flag", [b"S", b"V", b"M", b"D", b"N", b"A", b"9"])
def test_exotic_types_are_refused(flag: bytes) -> None:
    with pytest.raises(UnsafeArchive, match="unsupported entry type|sparse"):
        read_all(TarWriter().header("odd", type=flag).end())


def test_pax_sparse_is_refused() -> None:
    with pytest.raises(UnsafeArchive, match="sparse"):
        read_all(TarWriter().pax({"GNU.sparse.major": "1", "GNU.sparse.minor": "0"}).file("s", "x").end())


@pytest.mark.parametrize("flag", [b"1", b"2", b"3", b"4", b"6"])
def test_header_only_types_must_not_carry_data(flag: bytes) -> None:
    with pytest.raises(UnsafeArchive, match="must not carry data"):
        read_all(TarWriter().header("n", type=flag, size=512, linkname=b"t").raw(bytes(512)).end())


def test_a_directory_size_reserves_nothing() -> None:
    tar = TarWriter().header("d/", type=b"5", size=4096).file("after", "x").end()
    assert [(e.name, e.size) for e in read_all(tar)] == [("d/", 0), ("after", 1)]


def test_old_style_directories_and_v7_headers() -> None:
    tar = TarWriter().header("olddir/", type=b"\0", magic=bytes(8)).end()
    assert read_all(tar)[0].type == DIR


def test_ustar_prefix_is_joined_but_gnu_prefix_area_is_not() -> None:
    ustar = TarWriter().header("name", prefix=b"the/prefix").end()
    assert read_all(ustar)[0].name == "the/prefix/name"
    gnu = TarWriter().header("name", prefix=b"\x01\x02atime", magic=b"ustar  \0").end()
    assert read_all(gnu)[0].name == "name"


def test_is_tar_header_and_octal_helper() -> None:
    block = TarWriter().file("x").end()[:512]
    assert is_tar_header(block) and not is_tar_header(bytes(512)) and not is_tar_header(b"\x1f\x8b" + block[2:])
    assert octal(8, 8) == b"0000010\0"
