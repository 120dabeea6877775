"""Layer plumbing for runtime builds: snapshots in, layer blobs out, and back.

* :func:`export_active` turns an active snapshot's own changes into a layer blob in the
  content store (via :mod:`capsa.runtimes._export`) and commits the snapshot with labels
  naming that blob, so a later build reusing the snapshot knows its layer;
* :func:`import_layer` does the reverse for a cached blob: unpack it with capsa's defensive
  unpacker into a fresh snapshot and commit it under the step's key;
* :func:`committed_layer` reads a committed step snapshot's layer back from its labels;
* :func:`host_dns` lends a build job the host's ``/etc/resolv.conf`` for the duration of a
  step and takes it away again before the snapshot is exported, so no host file ends up in
  a runtime.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from capsa.errors import AlreadyExists, CapsaError, NotFound, Unsupported
from capsa.images.content import ContentStore
from capsa.images.oci import OCI_LAYER_TAR
from capsa.images.unpack import UnpackLimits, apply_layer
from capsa.runtimes._export import ExportStats, export_tree
from capsa.snapshots import ApplyStyle, Snapshotter

__all__ = ["LABEL_DIGEST", "LayerRef", "committed_layer", "export_active", "host_dns", "import_layer"]

LABEL_DIGEST = "capsa/runtime-layer"
LABEL_SIZE = "capsa/runtime-layer-size"
LABEL_MEDIA_TYPE = "capsa/runtime-layer-media-type"


@dataclass(frozen=True)
class LayerRef:
    """A layer of a runtime: its snapshot key and its blob (digest == diff ID: stored uncompressed)."""

    key: str
    digest: str
    size: int
    media_type: str = OCI_LAYER_TAR

    def to_json(self) -> dict[str, object]:
        return {"key": self.key, "digest": self.digest, "size": self.size, "media_type": self.media_type}


def _labels(digest: str, size: int, media_type: str) -> dict[str, str]:
    return {LABEL_DIGEST: digest, LABEL_SIZE: str(size), LABEL_MEDIA_TYPE: media_type}


def committed_layer(sn: Snapshotter, content: ContentStore, key: str) -> LayerRef | None:
    """The layer of committed step snapshot ``key``; None when there is no usable one."""
    try:
        info = sn.stat(key)
    except NotFound:
        return None
    digest = info.labels.get(LABEL_DIGEST)
    if info.kind.value != "committed" or not digest or not content.exists(digest):
        return None
    return LayerRef(key=key, digest=digest, size=int(info.labels.get(LABEL_SIZE, "0")),
                    media_type=info.labels.get(LABEL_MEDIA_TYPE, OCI_LAYER_TAR))


def export_active(sn: Snapshotter, content: ContentStore, active: str, key: str, *,
                  drop_empty: tuple[str, ...] = ()) -> tuple[LayerRef, ExportStats]:
    """Write active snapshot ``active``'s changes as a layer blob and commit it as ``key``.

    ``drop_empty``: top-level directories to remove first when they are empty (mount points the
    job runtime made, which say nothing about the layer); the snapshot and its blob stay equal.
    """
    if sn.apply_style != ApplyStyle.OVERLAY_UPPER:
        raise Unsupported(f"runtime builds need a snapshotter that keeps each layer's changes apart"
                          f" (overlay); {sn.name} keeps full trees, whose diff capsa does not compute yet")
    upper = sn.upper_dir(active)
    for name in drop_empty:
        path = upper / name if upper is not None else None
        if path is not None and not path.is_symlink() and path.is_dir():
            with contextlib.suppress(OSError):
                os.rmdir(path)  # fails, and keeps it, unless empty
    with content.writer(f"runtime-export-{active}") as writer:
        if writer.offset:
            writer.truncate(0)  # an export interrupted by a crash: start over
        with sn.writable(active) as tree:
            stats = export_tree(Path(tree), writer, overlay=True)
        blob = writer.commit(media_type=OCI_LAYER_TAR)
    layer = LayerRef(key=key, digest=str(blob.digest), size=blob.size)
    try:
        sn.commit(key, active, labels=_labels(layer.digest, layer.size, layer.media_type))
    except AlreadyExists:
        # Another build made the same step meanwhile: theirs is as good as ours.
        existing = committed_layer(sn, content, key)
        if existing is None:
            raise
        with contextlib.suppress(CapsaError):
            sn.remove(active)
        return existing, stats
    return layer, stats


def import_layer(sn: Snapshotter, content: ContentStore, limits: UnpackLimits, blob: Path, digest: str,
                 size: int, parent: str | None, key: str, scratch: str) -> LayerRef:
    """Store ``blob`` in the content store, unpack it on ``parent`` and commit the result as ``key``."""
    if not content.exists(digest):
        with content.writer(f"runtime-import-{digest}", expected=digest, expected_size=size) as writer:
            if writer.offset:
                writer.truncate(0)
            with open(blob, "rb") as f:
                while chunk := f.read(1 << 20):
                    writer.write(chunk)
            writer.commit(size, digest, media_type=OCI_LAYER_TAR)
    with contextlib.suppress(NotFound):
        sn.remove(scratch)
    sn.prepare(scratch, parent)
    mode = "overlay" if sn.apply_style == ApplyStyle.OVERLAY_UPPER else "apply"
    try:
        with sn.writable(scratch) as tree:
            apply_layer(content.path(digest), Path(tree), limits=limits, whiteout_mode=mode,
                        opaque_xattr=getattr(sn, "opaque_xattr", "trusted.overlay.opaque"))
        sn.commit(key, scratch, labels=_labels(digest, size, OCI_LAYER_TAR))
    except AlreadyExists:
        with contextlib.suppress(CapsaError):
            sn.remove(scratch)
    except BaseException:
        with contextlib.suppress(CapsaError):
            sn.remove(scratch)
        raise
    return LayerRef(key=key, digest=digest, size=size)


# -- DNS for build jobs ---------------------------------------------------------------------------


def _lowerdirs(sn: Snapshotter, active: str) -> list[Path]:
    for m in sn.mounts(active):
        for opt in m.options:
            if opt.startswith("lowerdir="):
                return [Path(p) for p in opt.removeprefix("lowerdir=").split(":")]
    return []


@contextlib.contextmanager
def host_dns(sn: Snapshotter, active: str, resolv_conf: Path = Path("/etc/resolv.conf")) -> Iterator[bool]:
    """Give the build job in ``active`` the host's resolver config; yields whether it could.

    The file is written into the snapshot's own layer, never through a path of the image (an
    image's ``/etc`` may be a symlink: then the job simply gets no resolver config), and
    removed again afterwards, together with anything the job did to that one path; the
    layer's ``etc`` directory takes the attributes of the image's, as overlayfs's copy-up would.
    """
    try:
        data = resolv_conf.read_bytes()
    except OSError:
        yield False
        return
    if sn.apply_style != ApplyStyle.OVERLAY_UPPER:
        yield False
        return
    upper = sn.upper_dir(active)
    if upper is None:
        yield False
        return
    lower_etc = next((d / "etc" for d in _lowerdirs(sn, active) if os.path.lexists(d / "etc")), None)
    own_etc = upper / "etc"
    if lower_etc is not None:
        st = os.lstat(lower_etc)
        if not stat.S_ISDIR(st.st_mode):  # a whiteout, a symlink or a file: leave the image alone
            yield False
            return
    elif not os.path.lexists(own_etc):
        yield False  # an image without /etc has no use for a resolver config
        return
    made_etc = False
    if not os.path.lexists(own_etc):
        os.mkdir(own_etc, 0o700)
        assert lower_etc is not None
        st = os.lstat(lower_etc)
        os.chown(own_etc, st.st_uid, st.st_gid)
        os.chmod(own_etc, stat.S_IMODE(st.st_mode))
        made_etc = True
    elif not stat.S_ISDIR(os.lstat(own_etc).st_mode):
        yield False
        return
    target = own_etc / "resolv.conf"
    _remove_any(target)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    try:
        yield True
    finally:
        _remove_any(target)
        if made_etc:
            with contextlib.suppress(OSError):
                os.rmdir(own_etc)  # only when the job left nothing else in /etc


def _remove_any(path: Path) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)

