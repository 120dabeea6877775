"""Stage two: completes a job's isolation from inside its namespaces, then execs.

Runs in the job's future PID 1 (a clone of the zygote that is already inside new
mount, PID, UTS and IPC namespaces and its network namespace). It builds the root
filesystem while the supervisor makes the job's cgroups, then joins them and a new
cgroup namespace (``join_cgroups``), enters the root with ``pivot_root`` (never
``chroot``), detaches the old root, sets the hostname and execs the user's command,
which keeps PID 1.

Everything here is a short straight line of syscalls: no threads, no imports
that allocate much, no logging. Any failure is reported to the supervisor as one
``StageFailed`` frame on the CLOEXEC ``report_fd`` (so a successful exec is an EOF)
and the process exits 127.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import stat
import termios
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from capsa import linux
from capsa.runtime import devices, hostroot, security
from capsa.runtime.cgroups.jobview import mount_job_cgroups
from capsa.runtime.protocol import Stage2Stamps, StageFailed, encode
from capsa.runtime.spec import HOST_ETC_ENTRIES, HOST_RO_DIRS, BindSpec, JobSpec, MountSpec
from capsa.runtime.wire import write_frame
from capsa.snapshots.base import Mount
from capsa.snapshots.mount import mount_all

__all__ = ["build_root", "exec_job", "run_stage2"]

_RO = linux.MS_RDONLY | linux.MS_NOSUID | linux.MS_NODEV
_DEV_NODES = ("null", "zero", "full", "random", "urandom", "tty")


class StageError(Exception):
    def __init__(self, step: str, err: BaseException) -> None:
        super().__init__(f"{step}: {err}")
        self.step = step
        self.errno = getattr(err, "errno", 0) or 0


def _step(name: str, fn: Callable[[], object]) -> None:
    try:
        fn()
    except OSError as exc:
        raise StageError(name, exc) from exc


def _bind_ro(source: str, target: str, *, recursive: bool = True) -> None:
    flags = linux.MS_BIND | (linux.MS_REC if recursive else 0)
    linux.mount(source, target, None, flags, None)
    linux.mount(None, target, None, linux.MS_BIND | linux.MS_REMOUNT | _RO, None)


def _touch(path: str) -> None:
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))


def _mirror(host: str, target: str) -> None:
    """Make ``target`` (inside the new root) show ``host`` read-only, keeping symlinks as symlinks."""
    try:
        st = os.lstat(host)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(host), target)
    elif stat.S_ISDIR(st.st_mode):
        os.mkdir(target, 0o755)
        _bind_ro(host, target)
    else:
        _touch(target)
        _bind_ro(host, target, recursive=False)


def _build_host_root(root: str) -> None:
    linux.mount("tmpfs", root, "tmpfs", linux.MS_NOSUID | linux.MS_NODEV, "mode=0755,size=1m")
    for host_dir in HOST_RO_DIRS:
        _mirror(host_dir, root + host_dir)
    os.mkdir(root + "/etc", 0o755)
    for entry in HOST_ETC_ENTRIES:
        _mirror("/etc/" + entry, f"{root}/etc/{entry}")
    for name in ("proc", "dev", "tmp", "work", "capsules", "sys"):
        os.mkdir(f"{root}/{name}", 0o755)


def _mount_kernel_fs(root: str) -> None:
    linux.mount("proc", root + "/proc", "proc", linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC, None)
    dev = root + "/dev"
    linux.mount("tmpfs", dev, "tmpfs", linux.MS_NOSUID | linux.MS_NOEXEC, "mode=0755,size=64k")
    for node in _DEV_NODES:
        _touch(f"{dev}/{node}")
        linux.mount("/dev/" + node, f"{dev}/{node}", None, linux.MS_BIND, None)
    os.mkdir(dev + "/pts", 0o755)
    linux.mount("devpts", dev + "/pts", "devpts", linux.MS_NOSUID | linux.MS_NOEXEC,
                "newinstance,ptmxmode=0666,mode=0620")
    os.symlink("pts/ptmx", dev + "/ptmx")
    os.mkdir(dev + "/shm", 0o1777)
    linux.mount("shm", dev + "/shm", "tmpfs", linux.MS_NOSUID | linux.MS_NODEV, "mode=1777,size=65536k")
    for i, name in enumerate(("stdin", "stdout", "stderr")):
        os.symlink(f"/proc/self/fd/{i}", f"{dev}/{name}")
    os.symlink("/proc/self/fd", dev + "/fd")
    linux.mount("tmpfs", root + "/tmp", "tmpfs", linux.MS_NOSUID | linux.MS_NODEV, "mode=1777")


def build_root(spec: JobSpec, cgroup_dirs: Sequence[str] = (), host_root: int = -1) -> None:
    """Assemble the job's root under ``spec.root_dir`` (we are in a private mount ns).

    ``cgroup_dirs``: host paths of the job's cgroups, shown read-only at /sys/fs/cgroup.
    ``host_root``: the zygote's prepared read-only host root (:mod:`capsa.runtime.hostroot`) to
    clone instead of assembling one, for a spec it applies to; -1 assembles it here.
    """
    root = spec.root_dir
    _step("make mounts private", lambda: linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE, None))
    if spec.root_mounts:
        for m in spec.root_mounts:
            _step(f"mount image root ({m.type} {m.source})", lambda m=m: _apply_mount(m, root))
        _step("make mount points", lambda: _image_mount_points(root))
    elif host_root >= 0:
        _step("clone read-only host root", lambda: hostroot.attach_host_root(host_root, root))
    else:
        _step("assemble read-only host root", lambda: _build_host_root(root))
    _step("bind /work", lambda: linux.mount(spec.work_dir, root + "/work", None, linux.MS_BIND, None))
    _step("protect /work", lambda: linux.mount(
        None, root + "/work", None, linux.MS_BIND | linux.MS_REMOUNT | linux.MS_NOSUID | linux.MS_NODEV, None))
    # Capsule mount points (start-time binds below, live attachments later) live on a tmpfs, so the
    # read-only root stays read-only; mounted before the binds, or it would hide those under it.
    _step("mount /capsules", lambda: linux.mount("tmpfs", root + "/capsules", "tmpfs",
                                                 linux.MS_NOSUID | linux.MS_NODEV, "mode=0755,size=64k"))
    for bind in spec.binds:
        _step(f"bind {bind.target}", lambda b=bind: _bind_into(root, b))
    _step("mount /proc, /dev, /tmp", lambda: _mount_kernel_fs(root))
    if spec.devices:
        _step("bind device nodes", lambda: devices.bind_device_nodes(root, spec.devices))
    _step("read-only /sys", lambda: security.mount_sys_readonly(root))
    _step("read-only cgroup tree", lambda: mount_job_cgroups(root, cgroup_dirs))
    _step("mask /proc", lambda: security.mask_proc(root))
    _step("read-only /proc paths", lambda: security.readonly_paths(root))
    if not spec.root_mounts:
        # Seal the assembled root: nothing of it but /work, /tmp and /dev/shm is writable.
        _step("seal root read-only", lambda: linux.mount(
            None, root, None, linux.MS_REMOUNT | linux.MS_BIND | _RO, None))


def _apply_mount(m: MountSpec, target: str) -> None:
    """Perform one snapshotter mount description onto ``target`` (the snapshotters' own mount code)."""
    mount_all([Mount(m.type, m.source, tuple(m.options))], Path(target))


def _image_mount_points(root: str) -> None:
    """Top-level mount points of an image root are real directories, never the image's symlinks.

    An image may ship ``/proc -> /etc``; mounting on that path before pivot_root would follow
    the link to the *host's* /etc. The root is the job's own writable snapshot, so replacing
    such an entry is safe.
    """
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name in ("proc", "dev", "tmp", "work", "capsules", "sys"):
            try:
                st = os.lstat(name, dir_fd=root_fd)
            except FileNotFoundError:
                os.mkdir(name, 0o755, dir_fd=root_fd)
                continue
            if not stat.S_ISDIR(st.st_mode):
                os.unlink(name, dir_fd=root_fd)
                os.mkdir(name, 0o755, dir_fd=root_fd)
    finally:
        os.close(root_fd)


_RESOLVE = linux.RESOLVE_IN_ROOT | linux.RESOLVE_NO_MAGICLINKS


def _bind_into(root: str, bind: BindSpec) -> None:
    is_dir = os.path.isdir(bind.source)
    step = f"bind {bind.target}"
    linux.mount(bind.source, _secure_target(root, bind.target, is_dir, step), None, linux.MS_BIND | linux.MS_REC, None)
    # Re-resolve: the fd path names the directory *under* the new mount; the remount must hit the mount.
    target = _secure_target(root, bind.target, is_dir, step)
    flags = linux.MS_BIND | linux.MS_REMOUNT | linux.MS_NOSUID | linux.MS_NODEV
    linux.mount(None, target, None, flags | (linux.MS_RDONLY if bind.readonly else 0), None)


def _secure_target(root: str, target: str, is_dir: bool, step: str) -> str:
    """Create ``target`` inside ``root`` without ever leaving it; returns a path to mount on.

    Every component is resolved with openat2(RESOLVE_IN_ROOT), so symlinks in an image (or
    planted by an earlier layer) resolve inside the job's root, as they will at run time, and
    missing directories are created there, never on the host. The returned /proc/self/fd path
    pins the resolved directory for mount(2) (runc's approach).
    """
    try:
        root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        parts = [p for p in target.split("/") if p and p != "."]
        if not parts or ".." in parts:
            raise OSError(22, f"invalid mount target {target!r}")
        for i, part in enumerate(parts):
            sub = "/".join(parts[: i + 1])
            last = i == len(parts) - 1
            try:
                fd = linux.openat2(root_fd, sub, os.O_PATH | os.O_CLOEXEC, resolve=_RESOLVE)
            except FileNotFoundError:
                parent = linux.openat2(root_fd, "/".join(parts[:i]) or ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC,
                                       resolve=_RESOLVE)
                try:
                    if last and not is_dir:
                        os.close(os.open(part, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                                         0o644, dir_fd=parent))
                    else:
                        os.mkdir(part, 0o755, dir_fd=parent)
                finally:
                    os.close(parent)
                fd = linux.openat2(root_fd, sub, os.O_PATH | os.O_CLOEXEC, resolve=_RESOLVE)
            if not last:
                os.close(fd)
        return f"/proc/self/fd/{fd}"  # left open (close-on-exec) so the path stays valid
    except OSError as exc:
        raise StageError(step, exc) from exc


def _enter_root(spec: JobSpec) -> None:
    os.chdir(spec.root_dir)
    # pivot_root(".", ".") stacks the old root under the new one; detaching it
    # leaves no path back to the host (runc's trick; needs no .oldroot dir).
    linux.pivot_root(".", ".")
    linux.umount2(".", linux.MNT_DETACH)
    os.chdir("/")


def exec_job(spec: JobSpec, bpf: bytes = b"", ready: Callable[[], None] | None = None,
             parent_pidfd: int | None = None) -> None:
    """Drop privileges and exec; ``ready`` runs just before the seccomp filter goes in.

    ``parent_pidfd``: when given (-1: no pidfd to check), the job dies with its parent, the
    supervisor (``die_with_parent``): a job nobody supervises would run on unseen, and a pool job
    could run on two nodes (ADR-0012, fencing).
    """
    socket.sethostname(spec.hostname)
    for sig in (signal.SIGPIPE, signal.SIGCHLD, signal.SIGINT, signal.SIGTERM, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    try:
        os.chdir(spec.workdir)
    except OSError as exc:
        raise StageError(f"workdir {spec.workdir}", exc) from exc
    keep = security.DEFAULT_CAPABILITIES if spec.capabilities is None else frozenset(spec.capabilities)
    try:
        security.apply_rlimits()
        security.drop_capabilities(keep)
        security.set_no_new_privs()
    except OSError as exc:
        raise StageError("drop privileges", exc) from exc
    if spec.gid or spec.uid:
        os.setgroups([])
        os.setgid(spec.gid)
        os.setuid(spec.uid)
    if parent_pidfd is not None:
        try:
            security.die_with_parent(parent_pidfd)
        except OSError as exc:
            raise StageError("parent death signal", exc) from exc
    env = dict(spec.env)
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    env.setdefault("HOME", "/work")
    env.setdefault("HOSTNAME", spec.hostname)
    argv0 = _resolve_command(spec.argv[0], env["PATH"])
    try:
        if ready is not None:
            ready()
        # Seccomp goes last: after it, only execve (and on failure write/_exit) runs.
        security.install_bpf(bpf)
        os.execve(argv0, list(spec.argv), env)
    except OSError as exc:
        raise StageError(f"exec {spec.argv[0]}", exc) from exc


def _resolve_command(name: str, path: str) -> str:
    """PATH lookup done before seccomp is installed (execvpe would try each dir after it)."""
    if "/" in name:
        return name
    for directory in path.split(":"):
        candidate = os.path.join(directory or ".", name)
        if os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
            return candidate
    raise StageError(f"exec {name}", FileNotFoundError(2, f"{name}: command not found in PATH"))


def run_stage2(spec: JobSpec, report_fd: int, bpf: bytes = b"",
               join_cgroups: Callable[[], tuple[Sequence[str], int]] | None = None,
               stamps: Sequence[int] = (), host_root: int = -1, parent_pidfd: int | None = None,
               in_root: Callable[[], None] | None = None) -> None:
    """Never returns: execs the job or reports the failure and exits 127.

    ``join_cgroups``: called once the root is built (the supervisor makes the job's cgroups meanwhile):
    joins them and a cgroup namespace rooted there, returns the cgroup directories (mounted read-only at
    /sys/fs/cgroup) and the moment the go came. ``stamps``: the job process's earlier STAGE2_STAMPS
    (its first instruction); ``host_root``: see :func:`build_root`; ``in_root``: run after pivot_root,
    before privileges are dropped (a standby's page learning); its failure is ignored.
    """
    stamps = list(stamps)

    def ready() -> None:   # one frame below PIPE_BUF: atomic beside stage one's Forked
        stamps.append(time.monotonic_ns())
        write_frame(report_fd, encode(Stage2Stamps(tuple(stamps))))

    try:
        os.setsid()
        if spec.stdin == "tty":   # -t: the session leader takes its terminal (fd 0) as controlling terminal
            _step("controlling terminal", lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
        build_root(spec, (), host_root)
        stamps.append(time.monotonic_ns())
        if join_cgroups is not None:
            try:
                cgroup_dirs, released = join_cgroups()
            except OSError as exc:
                raise StageError("join the cgroups", exc) from exc
            stamps.append(released)
            _step("read-only cgroup tree", lambda: mount_job_cgroups(spec.root_dir, cgroup_dirs))
            stamps.append(time.monotonic_ns())
        _step("pivot_root", lambda: _enter_root(spec))
        stamps.append(time.monotonic_ns())
        if in_root is not None:
            with contextlib.suppress(Exception):
                in_root()
        exec_job(spec, bpf, ready, parent_pidfd)
    except StageError as exc:
        _report(report_fd, StageFailed(exc.step, exc.errno, str(exc)))
    except BaseException as exc:  # anything else is a bug; still never return into the zygote's code
        _report(report_fd, StageFailed("stage2", 0, f"{type(exc).__name__}: {exc}"))
    os._exit(127)


def _report(fd: int, failure: StageFailed) -> None:
    try:
        write_frame(fd, encode(failure))
    except OSError:
        pass
