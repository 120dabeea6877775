"""Live, read-only mounts into a running job: attach, atomic swap, detach.

A *job* here is a process tree in its own mount namespace that has
pivot_root'ed into its own root. It is named by a **pidfd**, never a bare PID,
so a recycled PID can never redirect a mount into the wrong process.

How a mount gets in (all namespace work happens in a short-lived forked helper,
because ``setns(CLONE_NEWNS)`` needs a single-threaded caller and must never
touch the daemon's own namespace; the helper reports ``(code, errno, message)``
back over a pipe):

1. ``open_tree(host_path, OPEN_TREE_CLONE | AT_RECURSIVE)`` clones the host
   directory into a detached mount tree, *before* leaving the host namespace;
2. ``mount_setattr(AT_RECURSIVE)`` makes that whole tree read-only, nosuid,
   nodev and private (so nothing propagates in or out of it);
3. the helper opens ``/proc/<pid>/root`` and then checks the pidfd is still
   alive (so the root it opened belongs to that process), and
   ``setns(pidfd, CLONE_NEWNS)``;
4. the target is resolved **inside the job's root**, one component at a time
   with ``openat2(RESOLVE_NO_SYMLINKS | RESOLVE_BENEATH)``: a symlink anywhere in
   the target is refused, so a job cannot point a mount at its (or the host's)
   ``/etc``. Missing directories are created (``create_target``); this needs a
   *writable* parent — on a read-only job root the runtime must provide a
   writable mount point, which capsa's runtime does with a tmpfs at ``/capsules``;
5. ``move_mount(MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH)`` attaches the
   tree onto the resolved directory fd.

Swap: the new tree is attached with ``MOVE_MOUNT_BENEATH`` *under* the mount at
the target, then the top one is lazily unmounted (``MNT_DETACH``) through the
``/proc/self/fd`` magic link of the fd we resolved (race-free: no second path
walk). Every path lookup in the job therefore sees the complete old tree or the
complete new tree, never a missing or empty target. A reader that needs several
files from *one* version must resolve the directory once (open it, or ``cd``
into it) and read relative to it: two independent absolute lookups can straddle
a swap, exactly as with any atomic-rename scheme. Readers holding files of the
old version keep reading them until they close them.

Fallback without ``MOVE_MOUNT_BENEATH`` (kernels < 6.5, probed once by
:func:`beneath_supported`): the new tree is mounted *on top of* the old one, which
is still atomic for readers. The gap: the covered old version stays mounted
(unreachable by path, but its content stays busy) until :func:`detach`, because
the kernel offers no way to unmount a covered mount without taking the mounts
stacked on it (a lazy unmount through an fd of the covered mount unmounts the
top one instead — measured). :func:`detach` then removes the layers top-down, so
during that detach each older version is briefly visible again.

What the job can and cannot do afterwards: writes fail with ``EROFS``; the job
cannot reach the host path behind the mount (the mount root *is* the capsule).
Remounting read-write or unmounting needs ``CAP_SYS_ADMIN``: an unprivileged job
gets ``EPERM``; a job that still holds ``CAP_SYS_ADMIN`` in the initial user
namespace could undo the flags — dropping that capability and the seccomp filter
on mount syscalls are the runtime's job.

Preconditions on the job: its mounts must not be *shared* with another
namespace (the runtime makes them private); attach refuses a target whose mount
is shared, because the new mount would propagate out of the job.
"""

from __future__ import annotations

import errno
import functools
import gc
import os
import re
import select
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import NoReturn

from capsa import linux
from capsa.errors import (
    AlreadyExists,
    CapsaError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Timeout,
    Unsupported,
    error_from_code,
)

__all__ = [
    "READONLY_ATTRS",
    "MountEntry",
    "attach",
    "beneath_supported",
    "detach",
    "mounted_targets",
    "mountinfo",
    "pid_of",
    "swap",
]

READONLY_ATTRS = linux.MOUNT_ATTR_RDONLY | linux.MOUNT_ATTR_NOSUID | linux.MOUNT_ATTR_NODEV
_HELPER_TIMEOUT_S = 30.0
_MAX_LAYERS = 64  # detach gives up after this many stacked mounts (fallback mode only)
_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
_NO_ESCAPE = linux.RESOLVE_NO_SYMLINKS | linux.RESOLVE_NO_MAGICLINKS | linux.RESOLVE_BENEATH
_EMPTY_PATHS = linux.MOVE_MOUNT_F_EMPTY_PATH | linux.MOVE_MOUNT_T_EMPTY_PATH
_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")

_CODE_BY_ERRNO = {
    errno.ESRCH: NotFound.code,
    errno.ENOENT: NotFound.code,
    errno.EROFS: FailedPrecondition.code,
    errno.ELOOP: FailedPrecondition.code,
    errno.ENOTDIR: FailedPrecondition.code,
    errno.EINVAL: FailedPrecondition.code,
    errno.EBUSY: FailedPrecondition.code,
    errno.EPERM: PermissionDenied.code,
    errno.EACCES: PermissionDenied.code,
    errno.ENOSYS: Unsupported.code,
}


# -- public API ------------------------------------------------------------------------
def attach(pidfd: int, host_path: Path, target: str, *, create_target: bool = True, in_process: bool = False) -> None:
    """Mount ``host_path`` read-only at ``target`` (a path inside the job's root).

    Refuses a target that is already a mount point (use :func:`swap`), a target
    with a symlink in it, and a shared target mount. Raises ``NotFound`` when the
    job is gone or (without ``create_target``) the target does not exist.

    ``in_process``: do the namespace work in this process (which must be single-threaded) and come
    back to its own mount namespace, instead of in a forked helper (see :func:`_run_in_process`).
    """
    parts = _target_parts(target)
    pid = pid_of(pidfd)
    source = os.fsencode(host_path)
    _run(
        lambda fds: _attach_in_helper(fds, pid, pidfd, source, parts, create_target),
        f"attach {os.fsdecode(source)} at {target} in job pid {pid}",
        pidfd,
        in_process,
    )


def swap(pidfd: int, new_host_path: Path, target: str, *, in_process: bool = False) -> None:
    """Atomically replace what is mounted at ``target`` with ``new_host_path``."""
    parts = _target_parts(target)
    pid = pid_of(pidfd)
    source = os.fsencode(new_host_path)
    beneath = beneath_supported()
    _run(
        lambda fds: _swap_in_helper(fds, pid, pidfd, source, parts, beneath),
        f"swap {target} to {os.fsdecode(source)} in job pid {pid}",
        pidfd,
        in_process,
    )


def detach(pidfd: int, target: str, *, in_process: bool = False) -> None:
    """Lazily unmount what capsa mounted at ``target`` (every stacked layer).

    Processes in the job that still hold files open keep them; new lookups see
    the (now empty) directory, which stays in place.
    """
    parts = _target_parts(target)
    pid = pid_of(pidfd)
    _run(lambda fds: _detach_in_helper(fds, pid, pidfd, parts), f"detach {target} in job pid {pid}", pidfd,
         in_process)


@dataclass(frozen=True)
class MountEntry:
    """One line of ``/proc/<pid>/mountinfo``; paths are relative to that process's root."""

    mount_id: int
    parent_id: int
    root: str
    mount_point: str
    options: frozenset[str]
    propagation: tuple[str, ...]
    fs_type: str
    source: str

    @property
    def read_only(self) -> bool:
        return "ro" in self.options


def mountinfo(pid: int | str) -> list[MountEntry]:
    """Parse ``/proc/<pid>/mountinfo`` (``pid`` may be ``"self"``)."""
    with open(f"/proc/{pid}/mountinfo", encoding="utf-8", errors="surrogateescape") as fh:
        return [_parse_mountinfo_line(line) for line in fh if line.strip()]


def mounted_targets(pid: int, under: str = "/") -> list[str]:
    """Distinct mount points of the job at or below ``under``, in mount order."""
    prefix = under.rstrip("/") + "/"
    seen: dict[str, None] = {}
    for entry in mountinfo(pid):
        point = entry.mount_point
        if under == "/" or point == under.rstrip("/") or point.startswith(prefix):
            seen.setdefault(point, None)
    return list(seen)


def pid_of(pidfd: int) -> int:
    """The PID (in our namespace) behind ``pidfd``; ``NotFound`` once it has exited."""
    try:
        with open(f"/proc/self/fdinfo/{pidfd}", encoding="ascii") as fh:
            fields = dict(line.split(":", 1) for line in fh if ":" in line)
    except FileNotFoundError:
        raise InvalidArgument(f"fd {pidfd} is not open") from None
    if "Pid" not in fields:
        raise InvalidArgument(f"fd {pidfd} is not a pidfd")
    pid = int(fields["Pid"])
    if pid <= 0:
        raise NotFound(f"the job process behind pidfd {pidfd} has exited")
    return pid


@functools.cache
def beneath_supported() -> bool:
    """Whether ``move_mount(MOVE_MOUNT_BENEATH)`` works here (probed once, in a throwaway namespace)."""
    child = os.fork()
    if child == 0:
        code = 2
        try:
            code = _probe_beneath()
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    return os.waitstatus_to_exitcode(status) == 0


# -- helper process ----------------------------------------------------------------------
class _Fds:
    """Every descriptor an operation opens, closed when it ends (in-process, nothing may leak)."""

    def __init__(self) -> None:
        self._open: list[int] = []

    def add(self, fd: int) -> int:
        self._open.append(fd)
        return fd

    def close(self, fd: int) -> None:
        self._open.remove(fd)
        os.close(fd)

    def close_all(self) -> None:
        while self._open:
            try:
                os.close(self._open.pop())
            except OSError:
                pass


def _run(operation: Callable[[_Fds], None], what: str, keep: int, in_process: bool) -> None:
    def run() -> None:
        fds = _Fds()
        try:
            operation(fds)
        finally:
            fds.close_all()

    if in_process:
        _run_in_process(run, what)
    else:
        _run_helper(run, what, keep)


def _run_in_process(operation: Callable[[], None], what: str) -> None:
    """Run ``operation`` here, then return to our own mount namespace and working directory.

    This saves the helper's fork, exit and wait (the zygote uses it: it is single-threaded, which
    ``setns(CLONE_NEWNS)`` requires). Failures are reported exactly as a helper's would be. If the
    way back fails, the process exits at once: it must never go on working in a job's namespace.
    The zygote's caller bounds a hung operation by killing the zygote (see supervisor ``_mount``).
    """
    own_ns = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    try:
        cwd = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except BaseException:
        os.close(own_ns)
        raise
    payload = b""
    try:
        operation()
    except BaseException as exc:
        payload = _encode_failure(exc)
    finally:
        try:
            linux.setns(own_ns, linux.CLONE_NEWNS)
            os.fchdir(cwd)
        except BaseException:
            os._exit(70)
        os.close(own_ns)
        os.close(cwd)
    if payload:
        _raise_failure(payload, what)


def _raise_failure(payload: bytes, what: str) -> NoReturn:
    code, err, message = payload.decode("utf-8", "replace").split("\0", 2)
    exc = error_from_code(code, f"{what}: {message}")
    exc.detail["errno"] = int(err)
    raise exc


def _run_helper(operation: Callable[[], None], what: str, keep: int) -> None:
    """Run ``operation`` in a forked child; re-raise its failure here as a CapsaError.

    The child keeps only stdio, ``keep`` (the pidfd) and its report pipe: it
    must not carry the daemon's sockets into a job's namespace, nor hold other
    helpers' pipes open (which would delay their end-of-file).
    """
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    child = os.fork()
    if child == 0:
        status = 0
        try:
            gc.disable()  # no finalizer of an inherited object may close an fd we reuse
            _close_fds_except({keep, write_end})
            operation()
        except BaseException as exc:  # everything must reach the parent, then _exit
            status = 1
            try:
                os.write(write_end, _encode_failure(exc))
            except BaseException:
                status = 2
        finally:
            os._exit(status)
    os.close(write_end)
    try:
        payload = _read_all(read_end, child, what)
    finally:
        os.close(read_end)
    _, status = os.waitpid(child, 0)
    if payload:
        _raise_failure(payload, what)
    if os.waitstatus_to_exitcode(status) != 0:
        raise CapsaError(f"{what}: mount helper failed with status {os.waitstatus_to_exitcode(status)}")


def _close_fds_except(keep: set[int]) -> None:
    low = 3
    for fd in sorted(keep):
        if fd >= low:
            os.closerange(low, fd)
            low = fd + 1
    os.closerange(low, 2**31 - 1)  # one close_range(2) call


def _read_all(fd: int, child: int, what: str) -> bytes:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    chunks: list[bytes] = []
    while True:
        if not poller.poll(_HELPER_TIMEOUT_S * 1000):
            os.kill(child, 9)
            os.waitpid(child, 0)
            raise Timeout(f"{what}: mount helper did not finish in {_HELPER_TIMEOUT_S:.0f} s")
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _encode_failure(exc: BaseException) -> bytes:
    if isinstance(exc, CapsaError):
        code, err, message = exc.code, int(exc.detail.get("errno", 0) or 0), exc.message
    elif isinstance(exc, OSError):
        err = exc.errno or 0
        code, message = _CODE_BY_ERRNO.get(err, CapsaError.code), str(exc)
    else:
        code, err, message = CapsaError.code, 0, f"{type(exc).__name__}: {exc}"
    return f"{code}\0{err}\0{message}".encode("utf-8", "replace")


class _Job:
    """Descriptors the helper holds on the job; entering switches to its mount namespace."""

    def __init__(self, fds: _Fds, pid: int, pidfd: int) -> None:
        self.fds = fds
        self.proc = fds.add(os.open("/proc", _DIR_FLAGS))  # the host's procfs, kept across setns
        try:
            self.root = fds.add(os.open(f"{pid}/root", _DIR_FLAGS, dir_fd=self.proc))
            theirs = os.stat(f"{pid}/ns/mnt", dir_fd=self.proc)
        except (FileNotFoundError, ProcessLookupError):
            raise NotFound(f"job process {pid} has exited") from None
        ours = os.stat("self/ns/mnt", dir_fd=self.proc)
        if (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino):
            raise FailedPrecondition(
                f"process {pid} shares capsa's own mount namespace; refusing to mount outside a job"
            )
        try:
            # Still alive after we opened its root => the PID was not recycled in between.
            linux.pidfd_send_signal(pidfd, 0)
            linux.setns(pidfd, linux.CLONE_NEWNS)
        except ProcessLookupError:
            raise NotFound(f"job process {pid} has exited") from None

    def mnt_id(self, fd: int) -> int:
        fdinfo = os.open(f"self/fdinfo/{fd}", os.O_RDONLY | os.O_CLOEXEC, dir_fd=self.proc)
        try:
            text = os.read(fdinfo, 4096).decode("ascii")
        finally:
            os.close(fdinfo)
        for line in text.splitlines():
            if line.startswith("mnt_id:"):
                return int(line.split(":", 1)[1])
        raise Unsupported("this kernel does not report mnt_id in /proc/self/fdinfo")

    def resolve(self, parts: tuple[str, ...], create: bool) -> tuple[int, int]:
        """(parent dir fd, target dir fd) inside the job's root, never through a symlink (both in ``fds``)."""
        current = os.dup(self.root)
        shown = ""
        for index, name in enumerate(parts):
            shown += "/" + name
            try:
                child = _open_component(current, name, shown, create)
            except BaseException:
                os.close(current)
                raise
            if index == len(parts) - 1:
                return self.fds.add(current), self.fds.add(child)
            os.close(current)
            current = child
        raise InvalidArgument("empty target")  # unreachable: _target_parts refuses "/"

    def refuse_shared(self, fd: int, shown: str) -> None:
        prefix = f"{self.mnt_id(fd)} "
        info = os.open("self/mountinfo", os.O_RDONLY | os.O_CLOEXEC, dir_fd=self.proc)
        with os.fdopen(info, encoding="utf-8", errors="surrogateescape") as fh:
            line = next((line for line in fh if line.startswith(prefix)), None)
        if line is None:
            return
        entry = _parse_mountinfo_line(line)
        if any(tag.startswith("shared:") for tag in entry.propagation):
            raise FailedPrecondition(
                f"the job's mount at {entry.mount_point} (holding {shown}) is shared with another "
                "mount namespace; a mount added there would propagate out of the job — the job's "
                "mounts must be private"
            )

    def unmount_top(self, target_fd: int) -> None:
        # The magic link resolves to exactly the mount we opened: no second path walk.
        os.fchdir(self.proc)
        linux.umount2(f"self/fd/{target_fd}", linux.MNT_DETACH)


def _open_component(parent: int, name: str, shown: str, create: bool) -> int:
    for _attempt in range(2):
        try:
            return linux.openat2(parent, name, _DIR_FLAGS, 0, _NO_ESCAPE)
        except FileNotFoundError:
            if not create:
                raise NotFound(f"{shown} does not exist in the job") from None
            try:
                os.mkdir(name, 0o755, dir_fd=parent)
            except FileExistsError:
                continue  # raced with the job creating it: open what is there
            except OSError as exc:
                if exc.errno == errno.EROFS:
                    raise FailedPrecondition(
                        f"cannot create {shown} in the job: its parent is on a read-only filesystem "
                        "(the job root must provide a writable mount point, e.g. a tmpfs at /capsules)",
                        detail={"errno": exc.errno},
                    ) from None
                raise
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise FailedPrecondition(
                    f"{shown} is a symlink inside the job; mount targets never follow symlinks",
                    detail={"errno": exc.errno},
                ) from None
            if exc.errno == errno.ENOTDIR:
                raise FailedPrecondition(
                    f"{shown} is not a directory inside the job", detail={"errno": exc.errno}
                ) from None
            raise
    raise FailedPrecondition(f"{shown} keeps changing inside the job")


def _clone_readonly(fds: _Fds, source: bytes) -> int:
    tree = fds.add(linux.open_tree(
        linux.AT_FDCWD, source, linux.OPEN_TREE_CLONE | linux.OPEN_TREE_CLOEXEC | linux.AT_RECURSIVE
    ))
    if not stat.S_ISDIR(os.fstat(tree).st_mode):
        raise InvalidArgument(f"{os.fsdecode(source)} is not a directory")
    linux.mount_setattr(
        tree, "", linux.AT_EMPTY_PATH | linux.AT_RECURSIVE, READONLY_ATTRS, 0, linux.MS_PRIVATE
    )
    return tree


def _attach_in_helper(fds: _Fds, pid: int, pidfd: int, source: bytes, parts: tuple[str, ...], create: bool) -> None:
    tree = _clone_readonly(fds, source)
    job = _Job(fds, pid, pidfd)
    parent, target = job.resolve(parts, create)
    shown = "/" + "/".join(parts)
    if job.mnt_id(target) != job.mnt_id(parent):
        raise AlreadyExists(f"something is already mounted at {shown} in the job; use swap to replace it")
    job.refuse_shared(parent, shown)
    linux.move_mount(tree, "", target, "", _EMPTY_PATHS)


def _swap_in_helper(fds: _Fds, pid: int, pidfd: int, source: bytes, parts: tuple[str, ...], beneath: bool) -> None:
    tree = _clone_readonly(fds, source)
    job = _Job(fds, pid, pidfd)
    parent, target = job.resolve(parts, create=False)
    shown = "/" + "/".join(parts)
    if job.mnt_id(target) == job.mnt_id(parent):
        raise NotFound(f"nothing is mounted at {shown} in the job; attach it first")
    job.refuse_shared(parent, shown)
    if beneath:
        linux.move_mount(tree, "", target, "", _EMPTY_PATHS | linux.MOVE_MOUNT_BENEATH)
        job.unmount_top(target)
    else:
        linux.move_mount(tree, "", target, "", _EMPTY_PATHS)  # stacks; see module docstring


def _detach_in_helper(fds: _Fds, pid: int, pidfd: int, parts: tuple[str, ...]) -> None:
    job = _Job(fds, pid, pidfd)
    parent, target = job.resolve(parts, create=False)
    shown = "/" + "/".join(parts)
    if job.mnt_id(target) == job.mnt_id(parent):
        raise NotFound(f"nothing is mounted at {shown} in the job")
    for _layer in range(_MAX_LAYERS):
        job.unmount_top(target)
        fds.close(target)
        target = fds.add(linux.openat2(parent, parts[-1], _DIR_FLAGS, 0, _NO_ESCAPE))
        if job.mnt_id(target) == job.mnt_id(parent):
            return
    raise FailedPrecondition(f"more than {_MAX_LAYERS} mounts are stacked at {shown} in the job")


def _probe_beneath() -> int:
    """0 if MOVE_MOUNT_BENEATH works, 1 if the kernel refuses it. Runs in a throwaway child."""
    linux.unshare(linux.CLONE_NEWNS)
    linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE)
    spot = next(p for p in ("/tmp", "/mnt", "/var/tmp", "/dev") if os.path.isdir(p))
    mounts = []
    for _ in range(2):
        ctx = linux.fsopen("tmpfs")
        linux.fsconfig(ctx, linux.FSCONFIG_CMD_CREATE)
        mounts.append(linux.fsmount(ctx))
    linux.move_mount(mounts[0], "", linux.AT_FDCWD, spot, linux.MOVE_MOUNT_F_EMPTY_PATH)
    top = os.open(spot, _DIR_FLAGS)
    try:
        linux.move_mount(mounts[1], "", top, "", _EMPTY_PATHS | linux.MOVE_MOUNT_BENEATH)
    except OSError as exc:
        return 1 if exc.errno in (errno.EINVAL, errno.ENOSYS) else 2
    return 0


# -- parsing -------------------------------------------------------------------------
def _target_parts(target: str) -> tuple[str, ...]:
    if not isinstance(target, str) or not target.startswith("/"):
        raise InvalidArgument(f"mount target {target!r} must be an absolute path inside the job")
    if "\0" in target or len(target) > 4096:
        raise InvalidArgument("mount target contains NUL or is longer than 4096 bytes")
    parts = tuple(part for part in target.split("/") if part)
    if not parts:
        raise InvalidArgument("mount target cannot be the job's root")
    if any(part in (".", "..") for part in parts):
        raise InvalidArgument(f"mount target {target!r} must not contain '.' or '..'")
    return parts


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def _parse_mountinfo_line(line: str) -> MountEntry:
    left, _, right = line.rstrip("\n").partition(" - ")
    fields = left.split(" ")
    fs_type, source = (right.split(" ") + ["", ""])[:2]
    return MountEntry(
        mount_id=int(fields[0]),
        parent_id=int(fields[1]),
        root=_unescape(fields[3]),
        mount_point=str(PurePosixPath(_unescape(fields[4]))),
        options=frozenset(fields[5].split(",")),
        propagation=tuple(fields[6:]),
        fs_type=fs_type,
        source=_unescape(source),
    )
