"""verify_layout: the post-unpack check finds what the unpacker must never leave behind."""

from __future__ import annotations

import io
import os
import subprocess
from pathlib import Path

import pytest

from capsa.errors import FailedPrecondition, UnsafeArchive
from capsa.images.unpack import apply_layer, verify_layout
from tests.integration.images.unpack.unpack_tarwriter import TarWriter


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    tar = (TarWriter().dir("etc").file("etc/passwd", "root").symlink("bin", "usr/bin")
           .symlink("etc/abs", "/usr/lib/os-release").hardlink("etc/passwd-", "etc/passwd")
           .dir("var/mail", mode=0o2775).node("run/initctl", b"6").file("usr/bin/su", "x", mode=0o4755).end())
    apply_layer(io.BytesIO(tar), root)
    verify_layout(root)  # the clean tree passes
    return root


def _refused(root: Path, name: str, **kw: bool) -> None:
    with pytest.raises(UnsafeArchive, match=name):
        verify_layout(root, **kw)


def test_a_symlink_climbing_above_the_root(root: Path) -> None:
    os.symlink("../../../etc/shadow", root / "etc" / "shadow")
    _refused(root, "etc/shadow")


def test_a_hardlink_shared_with_a_file_outside(root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "host-file"
    outside.write_text("host\n")
    os.link(outside, root / "etc" / "innocent")
    _refused(root, "etc/innocent")


def test_a_symlink_with_a_second_hard_link(root: Path) -> None:
    os.link(root / "bin", root / "bin2", follow_symlinks=False)
    _refused(root, "bin")


def test_device_nodes_unless_allowed(root: Path) -> None:
    os.mknod(root / "mem", 0o600 | 0o020000, os.makedev(1, 1))
    _refused(root, "mem")
    verify_layout(root, allow_devices=True)


def test_overlay_output_passes(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    upper.mkdir()
    apply_layer(io.BytesIO(TarWriter().whiteout("gone").opaque("o").file("o/x").end()), upper,
                whiteout_mode="overlay")
    verify_layout(upper)


def test_setuid_on_a_directory_and_setgid_on_a_fifo(root: Path) -> None:
    os.chmod(root / "var" / "mail", 0o4775)
    _refused(root, "var/mail")
    os.chmod(root / "var" / "mail", 0o2775)
    os.chmod(root / "run" / "initctl", 0o2644)
    _refused(root, "run/initctl")


def test_a_leftover_whiteout_file(root: Path) -> None:
    (root / "etc" / ".wh.passwd").write_text("")
    _refused(root, "etc/.wh.passwd")


def test_overlay_metadata_other_than_opaque(root: Path) -> None:
    os.setxattr(root / "etc", "trusted.overlay.opaque", b"y")
    verify_layout(root)
    os.setxattr(root / "etc" / "passwd", "trusted.overlay.opaque", b"y")
    _refused(root, "etc/passwd")
    os.removexattr(root / "etc" / "passwd", "trusted.overlay.opaque")
    os.setxattr(root / "var", "trusted.overlay.redirect", b"/etc")
    _refused(root, "trusted.overlay.redirect")


def test_a_mount_point_inside_the_root(root: Path) -> None:
    target = root / "mnt"
    target.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(target)], check=True)
    try:
        _refused(root, "another filesystem")
    finally:
        subprocess.run(["umount", str(target)], check=True)


def test_the_root_itself_must_be_a_real_directory(root: Path, tmp_path: Path) -> None:
    os.symlink(root, tmp_path / "alias")
    with pytest.raises(FailedPrecondition, match="symlink"):
        verify_layout(tmp_path / "alias")
    with pytest.raises(FailedPrecondition, match="symlink"):
        apply_layer(io.BytesIO(TarWriter().end()), tmp_path / "alias")
