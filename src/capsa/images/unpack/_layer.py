"""apply_layer: one OCI layer onto a root directory."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import BinaryIO, Literal

from capsa.errors import ChecksumMismatch, FailedPrecondition, InvalidArgument

from ._apply import Applier
from ._limits import Guard, LayerStats, UnpackBudget, UnpackLimits
from ._source import open_input
from ._tarheader import TarReader
from ._tree import Tree

__all__ = ["OPAQUE_XATTRS", "WhiteoutMode", "apply_layer", "layer_diff_id"]

WhiteoutMode = Literal["apply", "overlay"]
OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")
_DIFF_ID = re.compile(r"sha256:[0-9a-f]{64}")
_DEFAULT_LIMITS = UnpackLimits()


def apply_layer(
    source: Path | str | BinaryIO,
    root: Path,
    *,
    media_type: str | None = None,
    limits: UnpackLimits = _DEFAULT_LIMITS,
    budget: UnpackBudget | None = None,
    whiteout_mode: WhiteoutMode = "apply",
    expected_diff_id: str | None = None,
    opaque_xattr: str = "trusted.overlay.opaque",
) -> LayerStats:
    """Apply one layer tar (uncompressed, gzip or zstd) onto ``root``.

    ``source`` is a path or a binary file object (an uncompressed tar in a regular
    file takes the fast ``copy_file_range`` path; a file object is read from its
    current position). Compression is detected from the content; ``media_type``,
    when given, must be a supported tar layer type.

    ``whiteout_mode``:

    * ``"apply"`` — ``root`` holds the earlier layers (a plain directory, btrfs
      subvolume, ...). ``.wh.NAME`` deletes NAME and ``.wh..wh..opq`` empties its
      directory, of *lower-layer* content only, wherever they appear in the layer
      (OCI image-spec layer.md); whiteout files never appear in ``root``.
    * ``"overlay"`` — ``root`` is this layer's own, empty overlayfs upper/lower
      directory. Whiteouts become what overlayfs reads: a 0/0 character device
      for a deleted path and ``opaque_xattr`` = ``y`` for an opaque directory
      (``user.overlay.opaque`` for overlays mounted with ``userxattr``); a
      directory that replaces a deleted path is made opaque. containerd converts
      the same way. Hardlinks can only target files of this layer.

    ``budget`` is charged for entries, bytes and time; share one across the layers
    of an image. ``expected_diff_id`` (``sha256:<hex>`` of the uncompressed tar)
    is verified after the last byte. On any error ``root`` is left partially
    written and the caller discards it; nothing is written outside ``root``.

    Raises UnsafeArchive (hostile or malformed entry), LimitExceeded (a limit, named
    with the entry), ChecksumMismatch, Unsupported (media type or compression),
    FailedPrecondition (overlay mode on a non-empty directory).
    """
    if whiteout_mode not in ("apply", "overlay"):
        raise InvalidArgument(f"whiteout_mode must be 'apply' or 'overlay', not {whiteout_mode!r}")
    if opaque_xattr not in OPAQUE_XATTRS:
        raise InvalidArgument(f"opaque_xattr must be one of {OPAQUE_XATTRS}, not {opaque_xattr!r}")
    if expected_diff_id is not None and not _DIFF_ID.fullmatch(expected_diff_id):
        raise InvalidArgument(f"expected_diff_id {expected_diff_id!r} is not sha256:<64 hex digits>")
    overlay = whiteout_mode == "overlay"
    budget = budget if budget is not None else UnpackBudget()
    guard = Guard(limits, budget)
    guard.check_time("before the first entry")  # the image's clock may have run out on earlier layers
    started = budget.clock()
    hasher = hashlib.sha256() if expected_diff_id is not None else None
    tree = Tree(Path(root), opaque_xattr=opaque_xattr if overlay else None)
    try:
        empty = tree.is_empty()
        if overlay and not empty:
            raise FailedPrecondition(f"overlay mode needs an empty directory for the layer; {root} is not empty")
        applier = Applier(tree, limits, guard, overlay=overlay, opaque_xattr=opaque_xattr,
                          track_lower=not overlay and not empty)
        inp = open_input(source, media_type, guard, hasher)
        try:
            reader = TarReader(inp, limits, guard)
            while (entry := reader.next()) is not None:
                applier.apply(entry, inp)
            guard.check_time("after the last entry")  # the clock is read every 64 entries only
            trailing = inp.drain(guard)
            guard.charge_data("data after the end-of-archive marker", trailing, is_file=False)
        finally:
            inp.close()
        root_meta = "" in applier._dirs  # the layer set its root's metadata itself
        applier.finish()
    finally:
        tree.close()
    diff_id = f"sha256:{hasher.hexdigest()}" if hasher is not None else None
    if expected_diff_id is not None and diff_id != expected_diff_id:
        raise ChecksumMismatch(f"layer diff ID is {diff_id}, expected {expected_diff_id}",
                               detail={"expected": expected_diff_id, "actual": diff_id})
    return LayerStats(entries=applier.entries, bytes=applier.bytes, whiteouts=applier.whiteouts,
                      duration_s=budget.clock() - started, diff_id=diff_id, root_meta=root_meta)


def layer_diff_id(source: Path | str) -> str:
    """The OCI diff ID of a stored layer: sha256 of its uncompressed tar, streamed (for verify)."""
    hasher = hashlib.sha256()
    unbounded = UnpackLimits(max_file_bytes=1 << 62, max_total_bytes=1 << 62, max_entries=1 << 62, timeout_s=1e12)
    inp = open_input(source, None, Guard(unbounded, UnpackBudget()), hasher)
    try:
        while inp.read(1 << 20):
            pass
    finally:
        inp.close()
    return f"sha256:{hasher.hexdigest()}"
