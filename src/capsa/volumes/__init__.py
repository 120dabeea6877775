"""Named volumes: storage that outlives a job, mounted into the jobs that ask for it.

Two types:

- **filesystem** — a sparse file ``<root>/<name>/image.ext4`` holding an ext4
  filesystem of exactly the requested size (a journal is kept; ``-m 0`` so
  nothing is reserved for root; inode tables are initialised lazily so that
  creation takes milliseconds). It is loop-mounted at ``<root>/<name>/mnt`` while
  at least one job holds it and unmounted when the last one releases it; the
  loop device is set up with auto-clear, so unmounting also detaches it. The
  size is enforced by the filesystem itself: a write beyond it fails with
  ``ENOSPC``. Usable space is the size minus ext4's metadata and journal
  (``inspect`` shows ``capacity_bytes``: measured 85 % of 64 MiB, 95 % of 1 GiB).
  Data persists across jobs, daemon restarts and host reboots.
- **memory** — a tmpfs of the requested size mounted at ``<root>/<name>/mnt``
  from ``create`` until ``rm``. Decision: its content persists across jobs
  and daemon restarts (the mount is kernel state, untouched by a daemon
  restart) and is lost only when the host reboots, after which ``reconcile``
  mounts it again, empty. Its pages are charged to the memory cgroup of the
  job that first writes them (and stay charged to that cgroup's remains after
  the job ends, as for any tmpfs).

Sizes are bytes or a number with a unit: ``KB``/``MB``/``GB``/``TB`` are powers of
1000, ``KiB``/``MiB``/``GiB``/``TiB`` and the bare ``K``/``M``/``G``/``T`` powers of 1024
(``1GB`` = 10^9 bytes, ``1G`` = ``1GiB`` = 2^30). Minimum 8 MiB (filesystem), 1 MiB
(memory); a filesystem volume larger than the free disk space, or a memory volume
larger than the host's RAM, is refused.

Lending: ``acquire(name, job_id)`` returns the host directory to bind into the
job (read-write or read-only is the bind's business); it is reference-counted
per job and persisted, so a restarted daemon knows who holds what.
``release(name, job_id)`` (or ``release_all(job_id)`` at job end) gives it back.
``rm`` is refused while any job holds the volume.

Known limit: a mount copied into a long-lived foreign mount namespace (one
created while the volume was mounted, outside capsa) keeps the ext4 instance
and its loop device alive after capsa unmounts it; capsa then re-mounts that
same device rather than attaching a second one (which would corrupt the image).
"""

from capsa.volumes.manager import VolumeManager
from capsa.volumes.model import (
    FILESYSTEM,
    MEMORY,
    VOLUME_TYPES,
    Volume,
    VolumeReconcileReport,
    format_size,
    parse_size,
    validate_volume_name,
)

__all__ = [
    "FILESYSTEM",
    "MEMORY",
    "VOLUME_TYPES",
    "Volume",
    "VolumeManager",
    "VolumeReconcileReport",
    "format_size",
    "parse_size",
    "validate_volume_name",
]
