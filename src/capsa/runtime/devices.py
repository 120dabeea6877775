"""Which device nodes a job may open, and how extra nodes (GPUs) get into its /dev.

Every job's device cgroup allows exactly its minimal /dev — ``null zero full random
urandom tty``, the pseudo-terminals of its own devpts (``ptmx`` 5:2, ``pts/*`` 136:*) —
plus what its spec adds (:attr:`JobSpec.device_allow`, e.g. an allocated GPU). Opening or
mknod'ing anything else fails with ``EPERM`` even where a node is reachable, so a mistake
in what is bound into the job (or a node inside an image) is not an open door.

The supervisor applies :func:`job_device_rules` right after creating the job's cgroup
(v1: ``devices.deny a`` + ``devices.allow``; v2: an eBPF program, see
:mod:`capsa.runtime.cgroups.devices_v2`); stage two binds :attr:`JobSpec.devices` into the
job's /dev with :func:`bind_device_nodes`.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable

from capsa import linux
from capsa.errors import InvalidArgument
from capsa.runtime.spec import DeviceSpec, JobSpec

__all__ = ["BASE_DEVICE_RULES", "bind_device_nodes", "job_device_rules", "node_rule", "validate_device_target"]

# The nodes stage two binds into every job's /dev, and its devpts instance (ptmx, pts/N).
# No "m": nodes are made by the runtime, never by the job (which also lacks CAP_MKNOD).
BASE_DEVICE_RULES: tuple[str, ...] = (
    "c 1:3 rw",      # null
    "c 1:5 rw",      # zero
    "c 1:7 rw",      # full
    "c 1:8 rw",      # random
    "c 1:9 rw",      # urandom
    "c 5:0 rw",      # tty (the controlling terminal)
    "c 5:2 rw",      # ptmx
    "c 136:* rw",    # pts/N
)

_DEV_RO_FLAGS = linux.MS_BIND | linux.MS_REMOUNT | linux.MS_NOSUID | linux.MS_NOEXEC


def node_rule(path: str, access: str = "rw") -> str:
    """The device-cgroup rule ("c 195:0 rw") for the node at ``path`` (InvalidArgument if not a device)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise InvalidArgument(f"device node {path}: {exc.strerror}") from None
    if stat.S_ISCHR(st.st_mode):
        kind = "c"
    elif stat.S_ISBLK(st.st_mode):
        kind = "b"
    else:
        raise InvalidArgument(f"{path} is not a device node")
    return f"{kind} {os.major(st.st_rdev)}:{os.minor(st.st_rdev)} {access}"


def _root_block_devices(spec: JobSpec) -> list[str]:
    """A block device in the job's root mounts (devmapper snapshots) is mounted by stage two, inside the
    job's device cgroup, so that one device must be allowed; the job has no node for it in its /dev."""
    rules = []
    for mount in spec.root_mounts:
        if mount.source.startswith("/dev/"):
            try:
                st = os.stat(mount.source)
            except OSError:
                continue
            if stat.S_ISBLK(st.st_mode):
                rules.append(f"b {os.major(st.st_rdev)}:{os.minor(st.st_rdev)} rw")
    return rules


def job_device_rules(spec: JobSpec) -> list[str]:
    """Every device-cgroup allow rule of the job: the minimal /dev, then the spec's extras."""
    return [*BASE_DEVICE_RULES, *spec.device_allow, *_root_block_devices(spec)]


def validate_device_target(target: str) -> str:
    """A device target is an absolute path below /dev without '.', '..' or empty components."""
    parts = target.split("/")
    if not target.startswith("/dev/") or any(p in ("", ".", "..") for p in parts[2:]) or len(target) > 256:
        raise InvalidArgument(f"device target {target!r} must be a plain path below /dev/")
    return target


def bind_device_nodes(root: str, devices: Iterable[DeviceSpec]) -> None:
    """Bind each host node at ``root + target`` (the job's /dev tmpfs is already mounted).

    Runs in stage two before pivot_root. The source must be a device node; the bind is
    remounted without ``nodev`` (a node kept in a directory of a nodev mount must still open)
    but ``nosuid,noexec``. Whether the job may *open* it is the device cgroup's decision.
    """
    for device in devices:
        target = root + validate_device_target(device.target)
        st = os.stat(device.source)
        if not (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)):
            raise OSError(f"{device.source} is not a device node")
        os.makedirs(os.path.dirname(target), 0o755, exist_ok=True)
        os.close(os.open(target, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))
        linux.mount(device.source, target, None, linux.MS_BIND, None)
        linux.mount(None, target, None, _DEV_RO_FLAGS, None)
