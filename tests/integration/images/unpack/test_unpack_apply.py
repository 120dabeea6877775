"""apply_layer on valid layers: fidelity against GNU tar, OCI whiteout semantics, overlay output.

The reference for "what a correct unpack looks like" is GNU tar extracting the same
archive as root (ownership, modes, times, xattrs, links); for whiteouts it is the
OCI image-spec, and for overlay mode it is the kernel's own overlayfs merging the
layer directories we produce.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import struct
import subprocess
import time
from pathlib import Path

import pytest

from capsa.errors import ChecksumMismatch, LimitExceeded
from capsa.images.unpack import UnpackBudget, UnpackLimits, apply_layer, verify_layout
from tests.integration.images.unpack.unpack_tarwriter import TarWriter
from tests.integration.images.unpack.unpack_trees import mounted_overlay, snapshot

OLD = 1_500_000_000


def _host_tree(top: Path) -> None:
    """Every entry type and metadata quirk an image layer carries."""
    top.mkdir()
    (top / "dir" / "sub").mkdir(parents=True)
    (top / "dir" / "file.txt").write_text("hello\n")
    (top / "dir" / "big.bin").write_bytes(os.urandom(3 << 20))  # > the copy_file_range threshold
    (top / "dir" / "empty").write_bytes(b"")
    (top / "dir" / "sub" / "deep.py").write_text("print('deep')\n")
    long_dir = top / ("l" * 120)
    long_dir.mkdir()
    (long_dir / ("f" * 150)).write_text("long names\n")
    (top / "ünïcødé.txt").write_text("utf-8 name\n")
    (top / os.fsdecode(b"raw-\xff-name")).write_text("not utf-8\n")
    os.symlink("/usr/bin/python3", top / "abs-link")
    os.symlink("../dir/file.txt", top / "dir" / "sub" / "rel-link")
    os.symlink("nowhere", top / "dangling")
    os.link(top / "dir" / "file.txt", top / "hardlink.txt")
    os.mkfifo(top / "fifo")
    (top / "su").write_text("#!/bin/sh\n")
    os.chmod(top / "su", 0o4755)
    (top / "shared").mkdir()
    os.chmod(top / "shared", 0o2775)
    (top / "tmp").mkdir()
    os.chmod(top / "tmp", 0o1777)
    (top / "locked").mkdir()
    (top / "locked" / "inside").write_text("in a 0000 dir\n")
    os.chmod(top / "locked", 0)
    (top / "owned").write_text("not root's\n")
    os.chown(top / "owned", 1000, 1001)
    os.chown(top / "dir" / "sub", 3_000_000, 3_000_001)  # needs base-256 / pax ids
    os.lchown(top / "abs-link", 7, 8)
    os.setxattr(top / "dir" / "file.txt", "user.comment", b"a file xattr")
    os.setxattr(top / "shared", "user.note", b"a dir xattr")
    (top / "old").write_text("old\n")
    os.utime(top / "old", ns=(OLD * 10**9 + 123_456_789, OLD * 10**9 + 123_456_789))
    (top / "prehistoric").write_text("1969\n")
    os.utime(top / "prehistoric", (-100, -100))
    for path in sorted(top.rglob("*"), key=lambda p: -len(p.parts)):
        if not path.is_symlink() and path.is_dir():
            os.utime(path, (OLD + len(path.parts), OLD + len(path.parts)))  # distinct, checked after files
    os.utime(top / "abs-link", (OLD, OLD), follow_symlinks=False)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    top = tmp_path_factory.mktemp("reference") / "tree"
    _host_tree(top)
    return top


@pytest.mark.parametrize("fmt", ["gnu", "posix"])
@pytest.mark.parametrize("compress", ["none", "gzip", "zstd"])
def test_result_matches_gnu_tar_extracting_the_same_layer(reference: Path, tmp_path: Path, fmt: str,
                                                          compress: str) -> None:
    flags = {"none": [], "gzip": ["-z"], "zstd": ["--zstd"]}[compress]
    layer = tmp_path / "layer"
    subprocess.run(["tar", f"--format={fmt}", "--xattrs", "--xattrs-include=user.*", *flags, "-C", str(reference),
                    "-cf", str(layer), "."], check=True)
    by_tar, by_us = tmp_path / "by-tar", tmp_path / "by-us"
    by_tar.mkdir()
    by_us.mkdir()
    subprocess.run(["tar", "--xattrs", "--xattrs-include=user.*", "--same-owner", "-xpf", str(layer),
                    "-C", str(by_tar)], check=True)
    stats = apply_layer(layer, by_us)

    theirs, ours = snapshot(by_tar), snapshot(by_us)
    assert ours == theirs
    assert ours["su"][1] == 0o4755 and ours["shared"][1] == 0o2775 and ours["locked"][1] == 0
    assert ours["dir/sub"][2:4] == (3_000_000, 3_000_001)
    assert ours["prehistoric"][4] == -100 * 10**9
    assert ours["dir/file.txt"][6] == {"user.comment": b"a file xattr"}
    assert ours["shared"][6] == {"user.note": b"a dir xattr"}
    assert ours["hardlink.txt"][7] == ours["dir/file.txt"][7] == "hardlink.txt"  # one inode
    assert ours["fifo"][0] == stat.S_IFIFO and ours["abs-link"][5] == "/usr/bin/python3"
    assert stats.bytes == sum(p.stat().st_size for p in reference.rglob("*")
                              if p.is_file() and not p.is_symlink() and p.name != "hardlink.txt")
    verify_layout(by_us)


def test_the_layer_can_be_read_from_an_open_file_or_a_pipe(reference: Path, tmp_path: Path) -> None:
    layer = tmp_path / "layer.tar"
    subprocess.run(["tar", "--format=posix", "-C", str(reference), "-cf", str(layer), "."], check=True)
    from_path, from_file, from_pipe = (tmp_path / n for n in ("path", "file", "pipe"))
    for d in (from_path, from_file, from_pipe):
        d.mkdir()
    apply_layer(layer, from_path)
    with open(layer, "rb") as f:
        apply_layer(f, from_file)
    with subprocess.Popen(["cat", str(layer)], stdout=subprocess.PIPE) as cat:
        assert cat.stdout is not None
        apply_layer(cat.stdout, from_pipe)
    assert snapshot(from_path, inodes=False) == snapshot(from_file, inodes=False) == snapshot(from_pipe, inodes=False)


def test_diff_id_is_verified(tmp_path: Path) -> None:
    tar = TarWriter().file("a", "x").end()
    digest = "sha256:" + hashlib.sha256(tar).hexdigest()
    (tmp_path / "ok").mkdir()
    stats = apply_layer(io.BytesIO(tar), tmp_path / "ok", expected_diff_id=digest)
    assert stats.diff_id == digest
    (tmp_path / "bad").mkdir()
    with pytest.raises(ChecksumMismatch, match=digest):
        apply_layer(io.BytesIO(tar + b"\0" * 512), tmp_path / "bad", expected_diff_id=digest)


def _apply_layers(layers: list[bytes], root: Path, tmp: Path) -> None:
    budget = UnpackBudget()
    for i, tar in enumerate(layers):
        path = tmp / f"layer{i}.tar"
        path.write_bytes(tar)
        apply_layer(path, root, budget=budget)


def test_whiteouts_delete_lower_content_only(tmp_path: Path) -> None:
    lower = (TarWriter().dir("d").file("d/old", "lower").file("keep", "k").file("gone", "g")
             .dir("o").file("o/old", "lower").dir("o/sub").file("o/sub/deep", "lower").end())
    # the same layer recreates what it whites out, in both orders, and adds to an opaque dir
    upper = (TarWriter().dir("d").file("d/new", "upper").whiteout("d").whiteout("gone")
             .file("o/new", "upper").opaque("o").dir("o/sub").file("o/sub/fresh", "upper").end())
    root = tmp_path / "root"
    root.mkdir()
    _apply_layers([lower, upper], root, tmp_path)
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == [
        "d", "d/new", "keep", "o", "o/new", "o/sub", "o/sub/fresh"]
    assert (root / "d" / "new").read_text() == "upper"
    verify_layout(root)


def test_whiteout_before_the_recreating_entries(tmp_path: Path) -> None:
    lower = TarWriter().dir("d").file("d/old", "lower").end()
    upper = TarWriter().whiteout("d").dir("d").file("d/new", "upper").end()
    root = tmp_path / "root"
    root.mkdir()
    _apply_layers([lower, upper], root, tmp_path)
    assert sorted(os.listdir(root / "d")) == ["new"]


def test_whiteout_image_from_the_shared_fixtures(tmp_path: Path) -> None:
    from tests.fixtures.images import whiteout_image

    image = whiteout_image()
    root = tmp_path / "rootfs"
    root.mkdir()
    budget = UnpackBudget()
    for i, layer in enumerate(image.layers):
        blob = tmp_path / f"blob{i}"
        blob.write_bytes(layer.blob)
        apply_layer(blob, root, media_type=layer.media_type, budget=budget, expected_diff_id=layer.diff_id)
    for rel, content in image.expect_files.items():
        assert (root / rel).read_bytes() == content
    for rel, target in image.expect_symlinks.items():
        assert os.readlink(root / rel) == target
    for rel in image.expect_absent:
        assert not os.path.lexists(root / rel)
    verify_layout(root)


SCENARIOS = {
    "whiteouts_opaques_and_type_swaps": [
        TarWriter().dir("etc").file("etc/a", "1").file("etc/b", "1").dir("var").dir("var/lib")
        .file("var/lib/db", "1").dir("swap").file("swap/x", "1").file("toDir", "1").symlink("ln", "/etc")
        .end(),
        TarWriter().whiteout("etc/a").opaque("var/lib").file("var/lib/db2", "2").file("swap", "now a file")
        .dir("toDir").file("toDir/inner", "2").whiteout("ln").dir("ln").file("ln/real", "2").end(),
        TarWriter().whiteout("swap").dir("swap").file("swap/y", "3").file("etc/a", "back").opaque("toDir")
        .file("etc/d", "3").hardlink("etc/c", "etc/d").end(),
    ],
    "same_layer_whiteout_after_recreate": [
        TarWriter().dir("d").file("d/old", "1").file("f", "1").end(),
        TarWriter().dir("d").file("d/new", "2").whiteout("d").file("f2", "2").end(),
    ],
    "implicit_parent_under_a_whiteout": [
        TarWriter().dir("p").file("p/old", "1").end(),
        TarWriter().whiteout("p").file("p/child/new", "2").end(),
    ],
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_overlay_mode_merged_by_the_kernel_equals_apply_mode(scenario: str, tmp_path: Path) -> None:
    layers = SCENARIOS[scenario]
    applied = tmp_path / "applied"
    applied.mkdir()
    _apply_layers(layers, applied, tmp_path)
    dirs = []
    for i, tar in enumerate(layers):
        layer_dir = tmp_path / f"upper{i}"
        layer_dir.mkdir()
        apply_layer(io.BytesIO(tar), layer_dir, whiteout_mode="overlay")
        verify_layout(layer_dir)
        dirs.append(layer_dir)
    try:
        with mounted_overlay(dirs, tmp_path / "merged") as merged:
            seen = snapshot(merged, dir_mtimes=False, inodes=False)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot mount overlayfs here: {exc.stderr.decode(errors='replace').strip()}")
    assert seen == snapshot(applied, dir_mtimes=False, inodes=False)


def test_overlay_mode_writes_what_overlayfs_reads(tmp_path: Path) -> None:
    root = tmp_path / "upper"
    root.mkdir()
    tar = TarWriter().whiteout("gone").opaque("o").file("o/new", "n").dir("recreated").whiteout("recreated").end()
    stats = apply_layer(io.BytesIO(tar), root, whiteout_mode="overlay")
    st = os.lstat(root / "gone")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert os.getxattr(root / "o", "trusted.overlay.opaque") == b"y"
    assert os.getxattr(root / "recreated", "trusted.overlay.opaque") == b"y"
    assert stats.whiteouts == 3


def test_directory_metadata_is_set_after_its_content(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    tar = (TarWriter().dir("d", mode=0o555, mtime=OLD).file("d/f", "x", mtime=OLD + 5)
           .dir("d/e", mode=0o500, mtime=OLD + 1).file("d/e/g", "y").end())
    apply_layer(io.BytesIO(tar), root)
    assert os.stat(root / "d").st_mtime == OLD and stat.S_IMODE(os.stat(root / "d").st_mode) == 0o555
    assert os.stat(root / "d" / "e").st_mtime == OLD + 1
    assert os.stat(root / "d" / "f").st_mtime == OLD + 5


def test_ownership_in_a_setgid_directory_of_a_lower_layer(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    lower = TarWriter().dir("mail", mode=0o2775, gid=8).end()
    upper = TarWriter().file("mail/root-owned", "x", uid=0, gid=0).file("mail/mail-owned", "y", gid=8).end()
    _apply_layers([lower, upper], root, tmp_path)
    assert os.stat(root / "mail" / "root-owned").st_gid == 0  # not the directory's inherited group
    assert os.stat(root / "mail" / "mail-owned").st_gid == 8


def test_xattrs_applied_skipped_or_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    cap = bytes.fromhex("0000000200200000000000000000000000000000")  # cap_net_raw+ep, v2
    tar = (TarWriter().pax({"SCHILY.xattr.user.k": "v", "SCHILY.xattr.security.capability": cap,
                            "SCHILY.xattr.trusted.host": "policy"}).file("ping", "elf", mode=0o755).end())
    apply_layer(io.BytesIO(tar), root)
    assert os.getxattr(root / "ping", "user.k") == b"v"
    assert os.getxattr(root / "ping", "security.capability") == cap
    assert "trusted.host" not in os.listxattr(root / "ping")


def test_budget_spans_layers_and_stats_describe_each(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    budget = UnpackBudget()
    first = apply_layer(io.BytesIO(TarWriter().file("a", "12345").dir("d").end()), root, budget=budget)
    second = apply_layer(io.BytesIO(TarWriter().whiteout("a").end()), root, budget=budget)
    assert (first.entries, first.bytes, first.whiteouts) == (2, 5, 0)
    assert (second.entries, second.bytes, second.whiteouts) == (1, 0, 1)
    assert budget.entries == 3 and budget.bytes >= 5
    with pytest.raises(LimitExceeded, match="max_entries"):
        apply_layer(io.BytesIO(TarWriter().file("b").end()), root, budget=budget,
                    limits=UnpackLimits(max_entries=3))


def test_timeout_is_enforced(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    budget = UnpackBudget(started=time.monotonic() - 10)
    with pytest.raises(LimitExceeded, match="timeout_s"):
        apply_layer(io.BytesIO(TarWriter().file("a").end()), root, budget=budget,
                    limits=UnpackLimits(timeout_s=5))


def test_nothing_is_left_outside_the_root_after_a_failure(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    tar = TarWriter().file("ok", "1").file("big", b"x" * 4096).end()
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(LimitExceeded, match="'big'"):
        apply_layer(io.BytesIO(tar), root, limits=UnpackLimits(max_file_bytes=1024))
    assert sorted(os.listdir(tmp_path)) == before
    assert sorted(os.listdir(root)) == ["ok"]  # the partial snapshot the caller discards
    shutil.rmtree(root)


def test_modes_are_exact_under_a_default_acl(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    undefined = 0xFFFFFFFF
    acl = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", tag, perm, undefined)
                                          for tag, perm in ((0x01, 6), (0x04, 0), (0x20, 0)))  # u::rw-,g::---,o::---
    lower = TarWriter().pax({"SCHILY.xattr.system.posix_acl_default": acl}).dir("acl").end()
    upper = TarWriter().file("acl/tool", "x", mode=0o755).node("acl/pipe", b"6", mode=0o644).end()
    _apply_layers([lower, upper], root, tmp_path)
    assert os.getxattr(root / "acl", "system.posix_acl_default") == acl
    assert stat.S_IMODE(os.stat(root / "acl" / "tool").st_mode) == 0o755  # not narrowed by the ACL
    assert stat.S_IMODE(os.lstat(root / "acl" / "pipe").st_mode) == 0o644
