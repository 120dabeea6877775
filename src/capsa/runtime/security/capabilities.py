"""Privileges of a job's process: capabilities, ``no_new_privs`` and resource limits.

Called in stage two, after the root is built and *before* the uid switch and
the seccomp filter (see :mod:`capsa.runtime.security` for the full order).

Default capability set (:data:`DEFAULT_CAPABILITIES`): Docker's default minus
``MKNOD`` and ``NET_RAW``:

* ``MKNOD`` — a job's ``/dev`` is prepared by the runtime; the only use of
  ``mknod`` inside a job would be to reach a device node the runtime did not
  give it. The device cgroup refuses opening such a node, but dropping the
  capability makes the attempt fail one step earlier, so a device-cgroup
  mistake (or a host without the controller) is not an open door.
* ``NET_RAW`` — raw and packet sockets sniff and forge traffic; in ``host``
  network mode that would be the host's traffic, and in ``none`` mode raw
  sockets must not exist at all. ``ping`` keeps working through ICMP datagram
  sockets where ``net.ipv4.ping_group_range`` allows them.

The inheritable set is always emptied (not set to the kept set as Docker did
before CVE-2022-24769): with it non-empty a program with inheritable file
capabilities would gain them across ``execve`` even for a non-root user.
"""

from __future__ import annotations

import errno
import functools
import os
import resource
import select
import signal
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from capsa.errors import InvalidArgument
from capsa.runtime.security import _kernel

__all__ = [
    "CAPABILITIES",
    "DEFAULT_CAPABILITIES",
    "DEFAULT_RLIMITS",
    "CapabilitySets",
    "die_with_parent",
    "apply_rlimits",
    "current_capabilities",
    "drop_capabilities",
    "no_new_privs",
    "parse_capabilities",
    "set_no_new_privs",
    "validate_rlimits",
]

# uapi linux/capability.h numbering.
CAPABILITIES: dict[str, int] = {
    name: number
    for number, name in enumerate(
        (
            "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
            "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
            "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
            "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD",
            "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG",
            "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
        )
    )
}
_NAMES = {number: name for name, number in CAPABILITIES.items()}

DEFAULT_CAPABILITIES: frozenset[str] = frozenset(
    {
        "CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "SETGID", "SETUID", "SETFCAP", "SETPCAP",
        "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE",
    }
)

# nofile 1024 keeps select(2)-based programs safe (FD_SETSIZE) and matches runc's example spec;
# core 0 so a crashing job cannot fill the disk or leak its memory into a core file.
DEFAULT_RLIMITS: Mapping[str, tuple[int, int]] = {"nofile": (1024, 1024), "core": (0, 0)}

_RLIMITS = {
    "as": resource.RLIMIT_AS,
    "core": resource.RLIMIT_CORE,
    "cpu": resource.RLIMIT_CPU,
    "data": resource.RLIMIT_DATA,
    "fsize": resource.RLIMIT_FSIZE,
    "memlock": resource.RLIMIT_MEMLOCK,
    "msgqueue": resource.RLIMIT_MSGQUEUE,
    "nice": resource.RLIMIT_NICE,
    "nofile": resource.RLIMIT_NOFILE,
    "nproc": resource.RLIMIT_NPROC,
    "rss": resource.RLIMIT_RSS,
    "rtprio": resource.RLIMIT_RTPRIO,
    "rttime": resource.RLIMIT_RTTIME,
    "sigpending": resource.RLIMIT_SIGPENDING,
    "stack": resource.RLIMIT_STACK,
}


def _last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap", "rb") as f:
            return int(f.read())
    except (OSError, ValueError):
        # No /proc: probe the bounding set until the kernel says the number is unknown.
        cap = 0
        while True:
            try:
                _kernel.prctl(_kernel.PR_CAPBSET_READ, cap + 1)
            except OSError:
                return cap
            cap += 1


# Read once at import (in the zygote): stage two may run where /proc is not the host's.
_LAST_CAP = min(_last_cap(), max(CAPABILITIES.values()))


@dataclass(frozen=True)
class CapabilitySets:
    """A thread's capability sets, as names without the ``CAP_`` prefix."""

    effective: frozenset[str]
    permitted: frozenset[str]
    inheritable: frozenset[str]
    bounding: frozenset[str]
    ambient: frozenset[str]


def parse_capabilities(names: Iterable[str]) -> frozenset[str]:
    """Normalise ``cap_sys_admin`` / ``SYS_ADMIN`` / ``CAP_SYS_ADMIN`` to ``SYS_ADMIN``; reject unknown names."""
    out = set()
    for raw in names:
        name = raw.strip().upper().removeprefix("CAP_")
        if name not in CAPABILITIES:
            raise InvalidArgument(f"unknown capability {raw!r}", detail={"capability": raw})
        out.add(name)
    return frozenset(out)


def _mask(names: Iterable[str]) -> int:
    mask = 0
    for name in parse_capabilities(names):
        mask |= 1 << CAPABILITIES[name]
    return mask


def _names(mask: int) -> frozenset[str]:
    return frozenset(name for number, name in _NAMES.items() if mask >> number & 1)


@functools.lru_cache(maxsize=32)
def _plan(keep: frozenset[str]) -> tuple[int, tuple[int, ...]]:
    """(keep mask, capabilities to drop from the bounding set); cached, so the zygote's first job
    computes it and every later fork inherits the answer."""
    keep_mask = _mask(keep)
    return keep_mask, tuple(cap for cap in range(_LAST_CAP + 1) if not keep_mask >> cap & 1)


def drop_capabilities(keep: Iterable[str] = DEFAULT_CAPABILITIES) -> None:
    """Reduce the bounding set to ``keep``, set effective = permitted = ``keep`` (as far as the
    process holds them), empty the inheritable set and clear the ambient set.

    Order matters: the bounding set is dropped first, because dropping it needs
    ``CAP_SETPCAP`` in the effective set, which ``keep`` need not contain.
    """
    keep_mask, drop = _plan(keep if isinstance(keep, frozenset) else frozenset(keep))
    _kernel.capbset_drop(drop)
    _kernel.prctl(_kernel.PR_CAP_AMBIENT, _kernel.PR_CAP_AMBIENT_CLEAR_ALL)
    _effective, permitted, _inheritable = _kernel.capget()
    kept = permitted & keep_mask  # capset cannot add to the permitted set, only keep a subset
    _kernel.capset(kept, kept, 0)


def current_capabilities() -> CapabilitySets:
    """The calling thread's capability sets (for tests and diagnostics)."""
    effective, permitted, inheritable = _kernel.capget()
    bounding = 0
    ambient = 0
    for cap in range(_LAST_CAP + 1):
        if _kernel.prctl(_kernel.PR_CAPBSET_READ, cap):
            bounding |= 1 << cap
        if _kernel.prctl(_kernel.PR_CAP_AMBIENT, _kernel.PR_CAP_AMBIENT_IS_SET, cap):
            ambient |= 1 << cap
    return CapabilitySets(
        effective=_names(effective),
        permitted=_names(permitted),
        inheritable=_names(inheritable),
        bounding=_names(bounding),
        ambient=_names(ambient),
    )


def set_no_new_privs() -> None:
    """Set ``no_new_privs``: execve can no longer grant privileges (setuid bits and file
    capabilities are ignored); inherited by every descendant and irreversible."""
    _kernel.prctl(_kernel.PR_SET_NO_NEW_PRIVS, 1)


def die_with_parent(parent_pidfd: int = -1) -> None:
    """SIGKILL this process when its parent (the supervisor) dies: ``PR_SET_PDEATHSIG``.

    Set after the uid/gid switch, since the kernel clears it whenever the effective ids change
    (dropping capabilities keeps it, and so does an execve under ``no_new_privs``). The parent may
    have died before this call, which no signal would report: ``parent_pidfd`` (a pidfd of the
    parent, -1 for none) is readable once it has exited, and then this raises ESRCH.
    """
    _kernel.prctl(_kernel.PR_SET_PDEATHSIG, signal.SIGKILL)
    if parent_pidfd >= 0:
        poller = select.poll()
        poller.register(parent_pidfd, select.POLLIN)
        if poller.poll(0):
            raise OSError(errno.ESRCH, "the supervisor exited before the job could start")


def no_new_privs() -> bool:
    return bool(_kernel.prctl(_kernel.PR_GET_NO_NEW_PRIVS))


def validate_rlimits(limits: Mapping[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
    """Check names and values (soft <= hard; -1 means unlimited); returns a normalised copy.

    Meant for submission time, so that a bad limit is an ``InvalidArgument`` for the user rather
    than a failed job start.
    """
    out: dict[str, tuple[int, int]] = {}
    for name, pair in limits.items():
        if name not in _RLIMITS:
            raise InvalidArgument(f"unknown rlimit {name!r} (known: {', '.join(sorted(_RLIMITS))})")
        try:
            soft, hard = (int(v) for v in pair)
        except (TypeError, ValueError):
            raise InvalidArgument(f"rlimit {name}: expected (soft, hard), got {pair!r}") from None
        soft = resource.RLIM_INFINITY if soft < 0 else soft
        hard = resource.RLIM_INFINITY if hard < 0 else hard
        if hard != resource.RLIM_INFINITY and (soft == resource.RLIM_INFINITY or soft > hard):
            raise InvalidArgument(f"rlimit {name}: soft limit {pair[0]} exceeds hard limit {pair[1]}")
        out[name] = (soft, hard)
    return out


@functools.lru_cache(maxsize=32)
def _validated(items: tuple[tuple[str, tuple[int, ...]], ...]) -> tuple[tuple[str, int, int], ...]:
    """validate_rlimits, cached: the zygote's first job pays it, later forks inherit it."""
    return tuple((name, soft, hard) for name, (soft, hard) in validate_rlimits(dict(items)).items())


def apply_rlimits(limits: Mapping[str, tuple[int, int]] = DEFAULT_RLIMITS) -> None:
    """Set each ``{name: (soft, hard)}`` limit on the calling process.

    Raising a hard limit above the current one needs ``CAP_SYS_RESOURCE``: call this before
    :func:`drop_capabilities`. Failures raise :class:`OSError` naming the limit.
    """
    try:
        key = tuple((name, tuple(pair)) for name, pair in limits.items())
        hash(key)
    except TypeError:
        validate_rlimits(limits)  # names the bad entry
        raise
    for name, soft, hard in _validated(key):
        try:
            resource.setrlimit(_RLIMITS[name], (soft, hard))
        except ValueError as exc:  # CPython maps EPERM/EINVAL of setrlimit to ValueError
            code = errno.EPERM if "raise maximum" in str(exc) else errno.EINVAL
            raise OSError(code, f"setrlimit({name}, soft={soft}, hard={hard}): {os.strerror(code)}") from None
        except OSError as exc:
            raise OSError(exc.errno, f"setrlimit({name}, soft={soft}, hard={hard}): {exc.strerror}") from None


# Fill the caches for the defaults at import, i.e. in the zygote: a cache filled in a job's
# stage two dies with it, one filled here is inherited by every fork.
_plan(DEFAULT_CAPABILITIES)
_validated(tuple(DEFAULT_RLIMITS.items()))
