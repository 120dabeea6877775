"""The defensive layer unpacker: one OCI layer tar onto a root directory.

Usage (one image, layers bottom-up, one budget so the limits are per image)::

    budget = UnpackBudget()
    for layer in layers:
        apply_layer(layer.path, rootfs, media_type=layer.media_type, limits=limits,
                    budget=budget, expected_diff_id=layer.diff_id)
    verify_layout(rootfs)

or, per layer into its own overlay upper directory, ``whiteout_mode="overlay"``.

Defence in depth (image ADR-004), each layer in its own module:

1. header validation (``_tarheader``): checksums, octal/base-256 fields, sizes,
   pax records, bounded metadata, required end-of-archive marker;
2. name normalisation (``_names``): leading ``/`` and ``./`` fold into the root,
   any ``..`` is refused, lengths limited;
3. resolution inside the root (``_tree``): component-wise ``openat`` with
   ``O_NOFOLLOW``; symlinks from any layer are resolved with the root as ``/``
   (never by the kernel), refused outright for whiteouts and hardlink targets;
4. safe application (``_apply``): ``O_EXCL`` creates, type swaps remove the old
   entry first, fd-based metadata, hardlinks only to regular files, devices
   refused unless allowed, directory metadata last;
5. layout verification (``_verify``): :func:`verify_layout` re-checks the tree.

Limits (ADR-005) are enforced while streaming, before anything is written.

Speed: a plain tar in a regular file is read with large ``pread``s and big file
bodies move with ``copy_file_range``; gzip (isal) and zstd layers are
decompressed on a helper thread, at most ~24 MiB buffered per unpack.

Policies worth knowing:

* absolute symlink targets are kept as they are (legal; they resolve inside the
  root at run time); a target that climbs above the root with ``..`` is refused,
  as Docker and Podman do;
* fifos are allowed; character/block devices need ``allow_devices``;
* setuid/setgid are kept on regular files; directories keep setgid and sticky,
  lose setuid; other types keep permission bits only;
* xattrs: ``user.*``, POSIX ACLs and ``security.capability`` (regular files) are
  applied; other namespaces are skipped; overlayfs metadata is refused;
* sparse files and global pax headers' records are not supported / ignored;
  chown happens only when running as root.
"""

from ._layer import OPAQUE_XATTRS, WhiteoutMode, apply_layer, layer_diff_id
from ._limits import LayerStats, UnpackBudget, UnpackLimits
from ._source import sniff_compression
from ._verify import verify_layout

__all__ = [
    "OPAQUE_XATTRS",
    "LayerStats",
    "UnpackBudget",
    "UnpackLimits",
    "WhiteoutMode",
    "apply_layer",
    "layer_diff_id",
    "sniff_compression",
    "verify_layout",
]
