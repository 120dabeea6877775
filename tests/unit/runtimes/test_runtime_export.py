"""Exporting an overlay upper directory as an OCI layer, checked by applying it with capsa's unpacker."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from capsa.errors import Unsupported
from capsa.images.unpack import apply_layer
from capsa.runtimes._cache import BuildCache
from capsa.runtimes._export import export_tree

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="overlay whiteouts (mknod 0/0, trusted.* xattrs) need root")


def export(tree: Path, *, overlay: bool = True) -> tuple[bytes, object]:
    out = io.BytesIO()
    stats = export_tree(tree, out, overlay=overlay)
    return out.getvalue(), stats


def members(blob: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        return {m.name: m for m in tar.getmembers()}


def lower_tree(root: Path) -> Path:
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "group").write_text("root:x:0:\n")
    (root / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (root / "cache" / "old").mkdir(parents=True)
    (root / "cache" / "old" / "f").write_text("old\n")
    return root


@needs_root
def test_whiteouts_and_opaque_directories_become_oci_markers(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    (upper / "etc").mkdir(parents=True)
    os.mknod(upper / "etc" / "group", 0o600 | 0o020000, os.makedev(0, 0))   # overlay whiteout
    (upper / "cache").mkdir()
    os.setxattr(upper / "cache", "trusted.overlay.opaque", b"y")
    (upper / "cache" / "new").write_text("new\n")
    blob, stats = export(upper)
    names = members(blob)
    assert {"etc/.wh.group", "cache/.wh..wh..opq", "cache/new"} <= set(names)
    assert "etc/group" not in names
    assert stats.whiteouts == 2  # type: ignore[attr-defined]
    assert not any("overlay" in k for m in names.values() for k in m.pax_headers)


@needs_root
def test_an_exported_layer_applies_to_what_overlayfs_showed(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    (upper / "etc").mkdir(parents=True)
    os.mknod(upper / "etc" / "group", 0o600 | 0o020000, os.makedev(0, 0))
    (upper / "cache").mkdir()
    os.setxattr(upper / "cache", "trusted.overlay.opaque", b"y")
    (upper / "cache" / "new").write_text("new\n")
    (upper / "opt" / "tool").mkdir(parents=True)
    (upper / "opt" / "tool" / "x").write_text("hi\n")
    os.link(upper / "opt" / "tool" / "x", upper / "opt" / "tool" / "y")
    os.symlink("/opt/tool/x", upper / "opt" / "link")
    os.setxattr(upper / "opt" / "tool" / "x", "user.note", b"\xff\x00binary")
    blob, _ = export(upper)
    root = lower_tree(tmp_path / "root")
    layer = tmp_path / "layer.tar"
    layer.write_bytes(blob)
    apply_layer(layer, root, whiteout_mode="apply")
    assert not (root / "etc" / "group").exists()
    assert (root / "etc" / "passwd").exists()
    assert sorted(os.listdir(root / "cache")) == ["new"]
    assert (root / "opt" / "tool" / "x").read_text() == "hi\n"
    assert os.stat(root / "opt" / "tool" / "x").st_ino == os.stat(root / "opt" / "tool" / "y").st_ino
    assert os.readlink(root / "opt" / "link") == "/opt/tool/x"
    assert os.getxattr(root / "opt" / "tool" / "x", "user.note") == b"\xff\x00binary"


@needs_root
def test_device_nodes_are_left_out_of_a_full_tree(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "dev").mkdir(parents=True)
    os.mknod(tree / "dev" / "null", 0o666 | 0o020000, os.makedev(1, 3))
    os.symlink("/proc/self/fd", tree / "dev" / "fd")
    blob, stats = export(tree, overlay=False)
    assert set(members(blob)) == {"dev", "dev/fd"}
    assert stats.skipped_devices == 1  # type: ignore[attr-defined]


@needs_root
def test_overlay_redirects_are_refused_rather_than_exported_wrong(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    (upper / "moved").mkdir(parents=True)
    os.setxattr(upper / "moved", "trusted.overlay.redirect", b"/orig")
    with pytest.raises(Unsupported, match="redirect"):
        export(upper)


def test_build_cache_round_trip_and_corruption(tmp_path: Path) -> None:
    import hashlib

    blob = tmp_path / "blob"
    blob.write_bytes(b"layer bytes")
    digest = "sha256:" + hashlib.sha256(b"layer bytes").hexdigest()
    key = "sha256:" + "c" * 64
    cache = BuildCache(tmp_path / "cache")
    assert cache.get(key) is None
    cache.put(key, blob, digest, 11, "application/vnd.oci.image.layer.v1.tar")
    hit = cache.get(key)
    assert hit is not None and hit.digest == digest and hit.path.read_bytes() == b"layer bytes"
    hit.path.chmod(0o644)
    hit.path.write_bytes(b"tampered!!!")
    assert cache.get(key) is None          # never imported
    assert not hit.path.exists()           # and dropped
