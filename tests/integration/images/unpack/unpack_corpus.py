"""The hostile corpus: generated archives, each with the outcome the unpacker must produce.

A :class:`Case` builds one tar per layer for a :class:`Ctx` (which knows where the
root and the *sentinel* — a host directory next to the root that no archive may
touch — live), and expects either an error of a given class whose message names
the offending entry, or success with a given layout. ``test_unpack_corpus.py``
applies every case and additionally checks the sentinel and the root's
surroundings are untouched.

Sources of the attack classes: containerd's archive ``TestBreakouts``, the CPython
tarfile filter bypasses (CVE-2025-4517 PATH_MAX realpath trick, hardlink to
symlink), GNU tar CVE-2025-45582 (symlink planted by one layer, written through
by the next), OCI whiteout tricks, header-level malformations and limits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from capsa.errors import LimitExceeded, UnsafeArchive
from capsa.images.unpack import UnpackLimits

from .unpack_tarwriter import TarWriter as W

__all__ = ["CASES", "Absent", "Case", "Ctx", "Dev", "Dir", "Fifo", "File", "Link", "Same", "Spec"]


@dataclass(frozen=True)
class Ctx:
    root: Path
    sentinel: Path  # absolute; holds "secret" and "sub/file"

    @property
    def s(self) -> str:
        """The sentinel's absolute path, as an attacker would write it."""
        return str(self.sentinel)

    @property
    def s_in_root(self) -> str:
        """Where that absolute path lands when resolved inside the root."""
        return str(self.sentinel).lstrip("/")


@dataclass(frozen=True)
class File:
    content: bytes
    mode: int | None = None


@dataclass(frozen=True)
class Dir:
    mode: int | None = None


@dataclass(frozen=True)
class Link:
    target: str


@dataclass(frozen=True)
class Fifo:
    pass


@dataclass(frozen=True)
class Dev:
    kind: str  # "c" or "b"
    major: int
    minor: int


@dataclass(frozen=True)
class Same:
    """A hardlink: the same inode as ``other``."""

    other: str


@dataclass(frozen=True)
class Absent:
    pass


Spec = File | Dir | Link | Fifo | Dev | Same | Absent
Layers = Callable[[Ctx], list[bytes]]


@dataclass(frozen=True)
class Case:
    name: str
    build: Layers
    raises: type[Exception] | None = None
    names: str = ""  # the error message must contain this (the offending entry)
    layout: Callable[[Ctx], dict[str, Spec]] = field(default=lambda c: {})
    limits: UnpackLimits = field(default_factory=UnpackLimits)
    overlay: bool = True  # single-layer cases without whiteouts also run in overlay mode


def one(w: W) -> Layers:
    return lambda c: [w.end()]


CASES: list[Case] = []


def case(name: str, build: Layers, **kw: object) -> None:
    multi = kw.pop("multi", False)
    CASES.append(Case(name, build, overlay=not multi and kw.pop("overlay", True), **kw))  # type: ignore[arg-type]


# -- path escapes --------------------------------------------------------------------------
case("dotdot_file", one(W().file("../escape", "x")), raises=UnsafeArchive, names="'../escape'")
case("dotdot_deep", one(W().dir("a").file("a/b/../../../escape", "x")), raises=UnsafeArchive,
     names="a/b/../../../escape")
case("dotdot_dir", one(W().dir("../escape")), raises=UnsafeArchive, names="../escape")
case("dotdot_pax_path", lambda c: [W().pax({"path": "ok/../../escape"}).file("ok", "x").end()],
     raises=UnsafeArchive, names="ok/../../escape")
case("dotdot_gnu_longname", lambda c: [W().longname("../" * 40 + "escape").file("short", "x").end()],
     raises=UnsafeArchive, names="../../")
case("absolute_name_kept_inside", one(W().file("/etc/passwd", "root")),
     layout=lambda c: {"etc/passwd": File(b"root")})
case("absolute_name_at_sentinel", lambda c: [W().file(c.s + "/secret", "pwned").end()],
     layout=lambda c: {c.s_in_root + "/secret": File(b"pwned")})
case("dot_components", one(W().file("./a/./b//c", "x")), layout=lambda c: {"a/b/c": File(b"x")})
case("nul_in_ustar_name_truncates", one(W().file(b"safe\0/../../escape", "x")),
     layout=lambda c: {"safe": File(b"x")})
case("nul_in_pax_path", lambda c: [W().pax({"path": b"safe\0../../escape"}).file("safe", "x").end()],
     raises=UnsafeArchive, names="NUL")
case("root_named_by_a_file", one(W().file("./", "x")), raises=UnsafeArchive, names="'./'")

# -- symlinks ------------------------------------------------------------------------------
case("symlink_relative_escape", one(W().symlink("evil", "../sentinel")), raises=UnsafeArchive,
     names="'evil'")
case("symlink_relative_escape_deep", one(W().dir("a").symlink("a/evil", "../../../../etc")),
     raises=UnsafeArchive, names="a/evil")
case("symlink_up_and_out", one(W().dir("etc").symlink("evil", "etc/../../escape")),
     raises=UnsafeArchive, names="'evil'")
case("symlink_absolute_dotdot_escape", one(W().symlink("evil", "/../etc")), raises=UnsafeArchive,
     names="'evil'")
case("symlink_absolute_then_write_same_layer",
     lambda c: [W().symlink("evil", c.s).file("evil/pwned", "x").end()],
     layout=lambda c: {"evil": Link(c.s), c.s_in_root + "/pwned": File(b"x")})
case("cve_2025_45582_symlink_from_lower_layer",
     lambda c: [W().symlink("evil", c.s).end(), W().file("evil/pwned", "x").end()], multi=True,
     layout=lambda c: {"evil": Link(c.s), c.s_in_root + "/pwned": File(b"x")})
case("cve_2025_45582_dir_swapped_for_symlink_in_lower_layer",
     lambda c: [W().dir("conf").end(), W().symlink("conf", c.s + "/sub").end(),
                W().file("conf/file", "pwned").end()], multi=True,
     layout=lambda c: {"conf": Link(c.s + "/sub"), c.s_in_root + "/sub/file": File(b"pwned")})
case("symlink_to_slash_then_file", one(W().symlink("top", "/").file("top/etc/pwned", "x")),
     layout=lambda c: {"top": Link("/"), "etc/pwned": File(b"x")})
case("symlink_chain", lambda c: [W().symlink("a", "b").symlink("b", "c").symlink("c", c.s)
                                 .file("a/pwned", "x").end()],
     layout=lambda c: {"a": Link("b"), c.s_in_root + "/pwned": File(b"x")})
case("symlink_loop", one(W().symlink("a", "b").symlink("b", "a").file("a/x", "x")), raises=UnsafeArchive,
     names="symbolic links")
case("symlink_relative_inside_kept", one(W().dir("a").dir("a/b").symlink("a/b/l", "../../c")),
     layout=lambda c: {"a/b/l": Link("../../c")})
case("symlink_replaced_by_file", lambda c: [W().symlink("l", c.s + "/secret").file("l", "mine").end()],
     layout=lambda c: {"l": File(b"mine")})
case("symlink_in_lower_replaced_by_file",
     lambda c: [W().file("f", "one").end(), W().symlink("f", c.s + "/secret").end(), W().file("f", "three").end()],
     multi=True, layout=lambda c: {"f": File(b"three")})
case("containerd_symlink_up_and_out",
     one(W().dir("etc").dir("dummy").symlink("localetc", "/dummy/../etc").file("/localetc/unbroken", "unbroken")),
     layout=lambda c: {"etc/unbroken": File(b"unbroken")})
case("containerd_symlink_multiple_absolute",
     one(W().dir("etc").dir("dummy").symlink("/dummy/etc", "/etc").symlink("localetc", "/dummy/etc")
         .file("/dummy/etc/unbroken", "unbroken")),
     layout=lambda c: {"etc/unbroken": File(b"unbroken"), "localetc": Link("/dummy/etc")})
case("containerd_symlink_multiple_relative",
     one(W().dir("etc").dir("dummy").symlink("/dummy/etc", "/etc").symlink("localetc", "./dummy/etc")
         .file("/dummy/etc/unbroken", "unbroken")),
     layout=lambda c: {"etc/unbroken": File(b"unbroken")})
case("containerd_symlink_empty_file",
     one(W().dir("etc").file("etc/emptied", "notempty").symlink("localetc", "/etc").file("/localetc/emptied", "")),
     layout=lambda c: {"etc/emptied": File(b"")})
case("chmod_through_symlink_replaces_it",
     lambda c: [W().symlink("d", c.s).dir("d", mode=0o777).end()],
     layout=lambda c: {"d": Dir(0o777)})
case("gnu_longlink_symlink_escape", lambda c: [W().longname("../" * 40 + "etc", type=b"K")
                                               .symlink("evil", "placeholder").end()],
     raises=UnsafeArchive, names="'evil'")

# -- hardlinks -----------------------------------------------------------------------------
case("hardlink_relative_outside", one(W().hardlink("h", "../sentinel/secret")), raises=UnsafeArchive,
     names="'h'")
case("hardlink_absolute_outside", lambda c: [W().hardlink("h", c.s + "/secret").end()],
     raises=UnsafeArchive, names="does not exist")
case("hardlink_to_symlink", lambda c: [W().symlink("s", c.s + "/secret").hardlink("h", "s").end()],
     raises=UnsafeArchive, names="not a regular file")
case("hardlink_nonexistent", one(W().hardlink("h", "nope")), raises=UnsafeArchive, names="does not exist")
case("hardlink_via_symlinked_dir", lambda c: [W().symlink("d", c.s).hardlink("h", "d/secret").end()],
     raises=UnsafeArchive, names="symlink")
case("containerd_hardlink_absolute_via_symlink",
     one(W().dir("etc").file("etc/passwd", "inside").symlink("localetc", "/etc")
         .hardlink("localpasswd", "/localetc/passwd")),
     raises=UnsafeArchive, names="'localpasswd'")
case("containerd_hardlink_symlink_absolute",
     one(W().dir("etc").file("etc/passwd", "inside").symlink("passwdlink", "/etc/passwd")
         .hardlink("localpasswd", "/passwdlink")),
     raises=UnsafeArchive, names="not a regular file")
case("containerd_hardlink_direct_absolute",
     one(W().dir("etc").file("etc/passwd", "inside").hardlink("localpasswd", "/etc/passwd")),
     layout=lambda c: {"localpasswd": Same("etc/passwd"), "etc/passwd": File(b"inside")})
case("containerd_hardlink_direct_relative",
     one(W().dir("etc").file("etc/passwd", "inside").hardlink("localpasswd", "../../../../../etc/passwd")),
     raises=UnsafeArchive, names="'localpasswd'")
case("hardlink_then_write_does_not_write_through",
     lambda c: [W().dir("etc").file("etc/passwd", "lower").end(),
                W().hardlink("x", "etc/passwd").file("x", "overwritten").end()], multi=True,
     layout=lambda c: {"etc/passwd": File(b"lower"), "x": File(b"overwritten")})
case("hardlink_to_directory", one(W().dir("d").hardlink("h", "d")), raises=UnsafeArchive,
     names="not a regular file")
case("hardlink_to_itself", one(W().file("f", "x").hardlink("f", "f")), raises=UnsafeArchive, names="itself")
case("hardlink_to_lower_layer_file", lambda c: [W().file("f", "x").end(), W().hardlink("h", "f").end()],
     multi=True, layout=lambda c: {"h": Same("f")})

# -- type swaps ----------------------------------------------------------------------------
case("dir_swapped_for_symlink_then_write",
     lambda c: [W().dir("d").file("d/x", "1").symlink("d", c.s).file("d/pwned", "2").end()],
     layout=lambda c: {"d": Link(c.s), c.s_in_root + "/pwned": File(b"2")})
case("file_swapped_for_dir", one(W().file("f", "1").dir("f").file("f/x", "2")),
     layout=lambda c: {"f": Dir(), "f/x": File(b"2")})
case("dir_swapped_for_file", one(W().dir("d").file("d/x", "1").file("d", "2")), layout=lambda c: {"d": File(b"2")})
case("symlink_swapped_for_dir", lambda c: [W().symlink("l", c.s).dir("l").file("l/x", "1").end()],
     layout=lambda c: {"l": Dir(), "l/x": File(b"1")})
case("lower_symlink_swapped_for_dir", lambda c: [W().symlink("l", c.s).end(), W().dir("l").file("l/x", "1").end()],
     multi=True, layout=lambda c: {"l": Dir(), "l/x": File(b"1")})
case("file_used_as_parent", one(W().file("f", "1").file("f/x", "2")), raises=UnsafeArchive,
     names="not a directory")

# -- whiteouts -----------------------------------------------------------------------------
case("whiteout_dotdot", one(W().dir("a").file("a/.wh...", "")), raises=UnsafeArchive, names="no valid file")
case("whiteout_dot", one(W().file(".wh..", "")), raises=UnsafeArchive, names="no valid file")
case("whiteout_empty_name", one(W().file(".wh.", "")), raises=UnsafeArchive, names="no valid file")
case("whiteout_escape", one(W().file("../.wh.sentinel", "")), raises=UnsafeArchive, names="'../.wh.sentinel'")
case("whiteout_absolute_stays_inside",
     lambda c: [W().file("x", "1").file("y", "2").end(), W().file("/.wh.x", "").end()], multi=True,
     layout=lambda c: {"x": Absent(), "y": File(b"2")})
case("whiteout_through_symlink",
     lambda c: [W().symlink("l", c.s).end(), W().file("l/.wh.secret", "").end()], multi=True,
     raises=UnsafeArchive, names="symlink")
case("opaque_on_symlinked_dir",
     lambda c: [W().symlink("l", c.s).end(), W().file("l/.wh..wh..opq", "").end()], multi=True,
     raises=UnsafeArchive, names="symlink")
case("whiteout_name_as_directory", one(W().dir(".wh.x").file(".wh.x/y", "1")), raises=UnsafeArchive,
     names="used as a directory", overlay=False)
case("whiteout_of_symlink_removes_only_the_link",
     lambda c: [W().symlink("l", c.s + "/secret").end(), W().whiteout("l").end()], multi=True,
     layout=lambda c: {"l": Absent()})
case("whiteout_of_dir_holding_escaping_links",
     lambda c: [W().dir("d").symlink("d/l", c.s).symlink("d/m", c.s + "/secret").end(), W().whiteout("d").end()],
     multi=True, layout=lambda c: {"d": Absent()})
case("aufs_metadata_ignored", lambda c: [W().file("x", "1").end(), W().file(".wh..wh.aufs", "").end()], multi=True,
     layout=lambda c: {"x": File(b"1"), ".wh..wh.aufs": Absent()})
case("whiteout_with_payload_is_skipped", lambda c: [W().file("x", "1").end(), W().file(".wh.x", "junk" * 300).end()],
     multi=True, layout=lambda c: {"x": Absent()})

# -- devices, fifos, setuid ----------------------------------------------------------------
case("char_device_refused", one(W().node("dev/mem", b"3", 1, 1)), raises=UnsafeArchive, names="'dev/mem'")
case("block_device_refused", one(W().node("dev/sda", b"4", 8, 0)), raises=UnsafeArchive, names="'dev/sda'")
case("whiteout_device_in_tar_refused", one(W().node("wh", b"3", 0, 0)), raises=UnsafeArchive, names="'wh'")
case("char_device_allowed_when_asked", one(W().node("dev/null", b"3", 1, 3, mode=0o666)),
     limits=UnpackLimits(allow_devices=True), layout=lambda c: {"dev/null": Dev("c", 1, 3)})
case("fifo_allowed", one(W().node("run/fifo", b"6", mode=0o600)), layout=lambda c: {"run/fifo": Fifo()})
case("setuid_file_kept", one(W().file("bin/su", "x", mode=0o4755)),
     layout=lambda c: {"bin/su": File(b"x", 0o4755)})
case("setuid_dir_dropped_setgid_kept", one(W().dir("d", mode=0o6775).dir("e", mode=0o4755)),
     layout=lambda c: {"d": Dir(0o2775), "e": Dir(0o755)})
case("setuid_fifo_dropped", one(W().node("f", b"6", mode=0o6755)), layout=lambda c: {"f": Fifo()})
case("overlay_xattr_refused", lambda c: [W().pax({"SCHILY.xattr.trusted.overlay.redirect": "/etc"}).dir("d").end()],
     raises=UnsafeArchive, names="trusted.overlay.redirect")

# -- limits --------------------------------------------------------------------------------
case("huge_declared_size", one(W().header("big", size=1 << 40)), raises=LimitExceeded, names="'big'")
case("file_over_max_file_bytes", one(W().file("f", b"x" * 2048)), limits=UnpackLimits(max_file_bytes=1024),
     raises=LimitExceeded, names="max_file_bytes")
case("too_many_entries", one(W().file("a").file("b").file("c").file("d")), limits=UnpackLimits(max_entries=3),
     raises=LimitExceeded, names="'d'")
case("total_bytes_across_layers", lambda c: [W().file("a", b"x" * 600).end(), W().file("b", b"y" * 600).end()],
     multi=True, limits=UnpackLimits(max_total_bytes=1000, max_file_bytes=1000), raises=LimitExceeded,
     names="'b'")
case("name_component_too_long", one(W().file("d/" + "n" * 256, "x")), raises=LimitExceeded, names="max_name_bytes")
case("path_too_long", one(W().file("/".join(["d" * 200] * 21), "x")), raises=LimitExceeded,
     names="max_path_bytes")
case("pax_header_too_big", one(W().header("PaxHeaders/x", type=b"x", size=2 << 20)), raises=LimitExceeded,
     names="max_header_bytes")


def _path_max_trick(c: Ctx) -> list[bytes]:
    """CPython CVE-2025-4517: symlinks whose realpath exceeds PATH_MAX fool a realpath-based filter."""
    w, path, steps = W(), "", "abcdefghijklmnop"
    for step in steps:
        w.dir(f"{path}{'d' * 247}").symlink(f"{path}{step}", "d" * 247)
        path += "d" * 247 + "/"
    link = "/".join(steps) + "/" + "l" * 254
    w.symlink(link, "../" * len(steps))
    w.symlink("escape", link + "/.." * 13)
    w.file("escape/pwned", "x")
    return [w.end()]


case("cpython_path_max_realpath_trick", _path_max_trick, layout=lambda c: {"pwned": File(b"x")})

# -- header validation ---------------------------------------------------------------------
case("bad_checksum_mid_archive", one(W().file("a", "1").header("b", checksum_delta=1)), raises=UnsafeArchive,
     names="checksum")
case("negative_size", one(W().header("neg", size=-512)), raises=UnsafeArchive, names="'neg'")
case("non_octal_size", one(W().header("x", fields={"size": b"0000000009\0\0"})), raises=UnsafeArchive,
     names="size")
case("unknown_type", one(W().header("vol", type=b"V")), raises=UnsafeArchive, names="'vol'")
case("gnu_sparse_refused", one(W().header("sparse", type=b"S")), raises=UnsafeArchive, names="'sparse'")
case("truncated_data", lambda c: [bytes(W().header("t", size=4096).raw(b"x" * 100).buf)], raises=UnsafeArchive,
     names="'t'")
case("missing_end_marker", lambda c: [W().file("a", "1").unterminated()], raises=UnsafeArchive,
     names="end-of-archive")
case("uid_minus_one_refused", lambda c: [W().pax({"uid": "4294967295"}).file("u", "x").end()],
     raises=UnsafeArchive, names="'u'")
case("symlink_with_hidden_data", one(W().header("l", type=b"2", linkname=b"t", size=512).raw(b"\0" * 512)),
     raises=UnsafeArchive, names="'l'")
case("unknown_magic", one(W().header("m", magic=b"junk\0\0\0\0")), raises=UnsafeArchive, names="magic")
case("random_garbage", lambda c: [bytes(range(256)) * 8], raises=UnsafeArchive, names="checksum")

# -- duplicates, modes, order --------------------------------------------------------------
case("duplicate_file_last_wins", one(W().file("f", "1").file("f", "2")), layout=lambda c: {"f": File(b"2")})
case("duplicate_dir_last_metadata_wins", one(W().dir("d", mode=0o700).dir("d", mode=0o751)),
     layout=lambda c: {"d": Dir(0o751)})
case("mode_000_dir_filled_then_closed", one(W().dir("locked", mode=0).file("locked/f", "x")),
     layout=lambda c: {"locked": Dir(0), "locked/f": File(b"x")})
