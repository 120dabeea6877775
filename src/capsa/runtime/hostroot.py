"""The read-only host root of a job without an image, prepared once as a detached mount tree.

Stage two used to assemble that root for every job: a tmpfs, read-only binds of /usr, /bin, /lib ...
and of some twenty /etc entries, each a bind plus a read-only remount (about 45 mount calls, the
largest part of stage two). Those mounts are the same for every such job, so the zygote builds them
once, detached (``fsmount`` of the tmpfs, ``open_tree`` clones moved into it, every mount private),
and a job's process clones the whole tree into its own mount namespace in two calls
(``open_tree(OPEN_TREE_CLONE | AT_RECURSIVE)`` + ``move_mount``).

The copy must show what a fresh build would show, so the template is rebuilt before a start when
anything it copied may have changed: the host's mount table (``poll`` on /proc/self/mountinfo
reports every change; only mounts on, under or above a mirrored path count) or any mirrored path replaced (its ``lstat`` identity: a file renamed over
``/etc/resolv.conf`` is a new inode, which a bind made earlier would not show). The identities are
compared only after inotify reported an entry created, removed or renamed in a directory holding a
mirrored path (/ and /etc). Both are watched while the zygote waits for work (:meth:`HostRootTemplate.watched`,
:meth:`~HostRootTemplate.refresh`), so a change is dealt with when it happens, off any job's start path; a
start pays one ``poll`` to catch what changed in the instant before it. (Other tools mount in the host's
namespace all the time: ``runc run`` makes and removes three mounts per container.)

A clone shares the template's tmpfs (read-only in every job). So it is used only where a job cannot
write to its root at all, exactly as with a root of its own: no CAP_SYS_ADMIN kept (which could
remount it writable) and no bind whose target would have to be created in the root (a target
outside /work and /capsules). Every other job gets its root built as before (``stage2.build_root``).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import stat
from collections.abc import Callable

from capsa import linux
from capsa.runtime.spec import HOST_ETC_ENTRIES, HOST_RO_DIRS, JobSpec

__all__ = ["HostRootTemplate", "attach_host_root", "template_applies"]

ROOT_DIRS = ("proc", "dev", "tmp", "work", "capsules", "sys")
# What a bind-remount with MS_RDONLY | MS_NOSUID | MS_NODEV sets (stage2's _bind_ro and seal):
# those three, relatime, and no noexec / other atime / nosymfollow flag.
_RO_SET = linux.MOUNT_ATTR_RDONLY | linux.MOUNT_ATTR_NOSUID | linux.MOUNT_ATTR_NODEV | linux.MOUNT_ATTR_RELATIME
_RO_CLEAR = (linux.MOUNT_ATTR_NOEXEC | linux.MOUNT_ATTR__ATIME | linux.MOUNT_ATTR_NODIRATIME
             | linux.MOUNT_ATTR_NOSYMFOLLOW)
_WRITABLE_TARGETS = ("/work/", "/capsules/")
_MS_PRIVATE = 1 << 18


def template_applies(spec: JobSpec) -> bool:
    """Whether ``spec``'s root may be a clone of the shared template (see the module docstring)."""
    if spec.root_mounts:
        return False
    if spec.capabilities is not None and any(
            c.strip().upper().removeprefix("CAP_") == "SYS_ADMIN" for c in spec.capabilities):
        return False   # (the default set never holds it)
    return all(b.target.startswith(_WRITABLE_TARGETS) for b in spec.binds)


def attach_host_root(template_fd: int, root: str) -> None:
    """Clone the template into our (private) mount namespace at ``root``."""
    tree = linux.open_tree(template_fd, "", linux.OPEN_TREE_CLONE | linux.OPEN_TREE_CLOEXEC
                           | linux.AT_RECURSIVE | linux.AT_EMPTY_PATH)
    try:
        linux.move_mount(tree, "", linux.AT_FDCWD, root, linux.MOVE_MOUNT_F_EMPTY_PATH)
    finally:
        os.close(tree)


def _identity(path: str) -> tuple[object, ...]:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return (path,)
    link = os.readlink(path) if stat.S_ISLNK(st.st_mode) else ""
    return (path, st.st_dev, st.st_ino, stat.S_IFMT(st.st_mode), link)


def _sources() -> list[str]:
    return [*HOST_RO_DIRS, "/etc", *("/etc/" + e for e in HOST_ETC_ENTRIES)]


class HostRootTemplate:
    """The zygote's template (one per zygote; never used by threads)."""

    def __init__(self, on_build: Callable[[int], None] | None = None) -> None:
        """``on_build``: told the new :attr:`build` after every rebuild (or the failure that broke it)."""
        self._on_build = on_build
        self.fd = -1
        self.builds = 0
        self.broken = ""          # why the template cannot be built here: jobs build their roots
        self._identities: list[tuple[object, ...]] = []
        self._mountinfo: int = -1
        self._mounts: list[str] = []   # the mountinfo lines of mounts on, under or above a mirrored path
        self._watch = -1          # inotify on the mirrored paths' directories; -1: lstat them at every start
        self._poll: select.poll | None = None

    def current(self) -> int:
        """A template that matches the host now (rebuilt if needed), or -1 if none can be built."""
        if self.broken:
            return -1
        if self.fd >= 0:
            assert self._poll is not None
            if not self._changed(dict(self._poll.poll(0))):
                return self.fd
        return self._rebuild_or_break()

    @property
    def build(self) -> int:
        """Which build the current template is (1, 2, ...), or -1 when there is none."""
        return self.builds if self.fd >= 0 else -1

    def watched(self) -> dict[int, int]:
        """The descriptors to poll while idle, with the events to poll for; pass what they report to
        :meth:`refresh`.

        /proc/self/mountinfo is always readable: only POLLPRI (with POLLERR) says the table changed, and a
        poll that reports it consumes that state for every poller of the file, so whoever polls these must
        hand the events over.
        """
        if self.fd < 0:
            return {}
        watched = {self._mountinfo: select.POLLPRI}
        if self._watch >= 0:
            watched[self._watch] = select.POLLIN
        return watched

    def refresh(self, events: dict[int, int]) -> None:
        """Bring the template up to date after ``events`` (fd -> poll mask) on :meth:`watched`'s descriptors."""
        if self.fd >= 0 and not self.broken and self._changed(events):
            self._rebuild_or_break()

    def _rebuild_or_break(self) -> int:
        try:
            self._rebuild()
        except OSError as exc:
            self.broken = str(exc)
            self._drop()
        if self._on_build is not None:
            self._on_build(self.build)
        return self.fd

    def _changed(self, events: dict[int, int]) -> bool:
        events = {fd: mask for fd, mask in events.items() if mask & (select.POLLPRI | select.POLLERR | select.POLLIN)
                  and (fd != self._mountinfo or mask & (select.POLLPRI | select.POLLERR))}
        # The mount table changed since the template was built: rebuilt only if a mount on, under or above a
        # mirrored path changed (a busy host mounts elsewhere all the time; a rebuild costs several ms).
        if self._mountinfo in events and _relevant_mounts(self._mountinfo) != self._mounts:
            return True
        if self._watch >= 0 and self._watch not in events:
            return False   # no entry of a mirrored path's directory was created, removed or renamed
        _drain(self._watch)   # before the lstats: a change after them is a new event for the next start
        return [_identity(p) for p in _sources()] != self._identities

    def _drop(self) -> None:
        for fd in (self.fd, self._mountinfo, self._watch):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.fd = self._mountinfo = self._watch = -1
        self._poll = None

    def _rebuild(self) -> None:
        self._drop()
        # Watch first: a change while we copy makes the next start rebuild again, never miss it.
        self._mountinfo = os.open("/proc/self/mountinfo", os.O_RDONLY | os.O_CLOEXEC)
        self._poll = select.poll()
        self._poll.register(self._mountinfo, select.POLLPRI | select.POLLERR)
        self._poll.poll(0)   # consume the "changed" state a fresh open reports
        self._mounts = _relevant_mounts(self._mountinfo)
        self._watch = _watch_parents(_sources())
        if self._watch >= 0:
            self._poll.register(self._watch, select.POLLIN)
        self._identities = [_identity(p) for p in _sources()]
        self.fd = _build()
        self.builds += 1


# A mirrored path's identity (inode, type, link target) changes only when an entry of its directory is
# created, removed or renamed over (or the directory itself is): inotify says when to lstat them again.
_IN_WATCH = 0x100 | 0x200 | 0x40 | 0x80 | 0x400 | 0x800   # CREATE, DELETE, MOVED_FROM/TO, DELETE_SELF, MOVE_SELF
_IN_CLOEXEC_NONBLOCK = os.O_CLOEXEC | os.O_NONBLOCK
_libc = ctypes.CDLL(None, use_errno=True)


def _watch_parents(paths: list[str]) -> int:
    """An inotify fd watching every directory that holds one of ``paths``; -1 if inotify is unavailable."""
    fd = _libc.inotify_init1(_IN_CLOEXEC_NONBLOCK)
    if fd < 0:
        return -1
    for parent in sorted({os.path.dirname(p.rstrip("/")) or "/" for p in paths}):
        if _libc.inotify_add_watch(fd, os.fsencode(parent), _IN_WATCH) < 0:   # (its creation would go unseen)
            os.close(fd)
            return -1
    return fd


def _relevant_mounts(mountinfo: int) -> list[str]:
    """The lines of ``mountinfo`` (read from its start) whose mount point is on, under or above a source."""
    chunks = []
    offset = 0
    while chunk := os.pread(mountinfo, 1 << 16, offset):
        chunks.append(chunk)
        offset += len(chunk)
    sources = _sources()
    lines = []
    for line in b"".join(chunks).decode(errors="replace").splitlines():
        point = line.split(" ", 5)[4]
        above = point.rstrip("/") + "/"
        if any(s == point or s.startswith(above) or point.startswith(s + "/") for s in sources):
            lines.append(line)
    return lines


def _drain(fd: int) -> None:
    with contextlib.suppress(BlockingIOError):
        while os.read(fd, 65536):
            pass


def _build() -> int:
    """The tree ``stage2._build_host_root`` + its final seal would make, detached and private."""
    ctx = linux.fsopen("tmpfs")
    try:
        linux.fsconfig(ctx, linux.FSCONFIG_SET_STRING, "mode", "0755")
        linux.fsconfig(ctx, linux.FSCONFIG_SET_STRING, "size", "1m")
        linux.fsconfig(ctx, linux.FSCONFIG_CMD_CREATE)
        root = linux.fsmount(ctx, linux.FSMOUNT_CLOEXEC, linux.MOUNT_ATTR_NOSUID | linux.MOUNT_ATTR_NODEV)
    finally:
        os.close(ctx)
    try:
        for host_dir in HOST_RO_DIRS:
            _mirror(host_dir, root, host_dir.lstrip("/"))
        os.mkdir("etc", 0o755, dir_fd=root)
        for entry in HOST_ETC_ENTRIES:
            _mirror("/etc/" + entry, root, "etc/" + entry)
        for name in ROOT_DIRS:
            os.mkdir(name, 0o755, dir_fd=root)
        linux.mount_setattr(root, "", linux.AT_EMPTY_PATH, _RO_SET, _RO_CLEAR)
        linux.mount_setattr(root, "", linux.AT_EMPTY_PATH | linux.AT_RECURSIVE, 0, 0, _MS_PRIVATE)
    except BaseException:
        os.close(root)
        raise
    return root


def _mirror(host: str, root: int, name: str) -> None:
    """``stage2._mirror`` into the detached tree: symlinks stay symlinks, the rest a read-only bind."""
    try:
        st = os.lstat(host)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(host), name, dir_fd=root)
        return
    if stat.S_ISDIR(st.st_mode):
        os.mkdir(name, 0o755, dir_fd=root)
        flags = linux.AT_RECURSIVE
    else:
        os.close(os.open(name, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644, dir_fd=root))
        flags = 0
    tree = linux.open_tree(linux.AT_FDCWD, host, linux.OPEN_TREE_CLONE | linux.OPEN_TREE_CLOEXEC | flags)
    try:
        linux.mount_setattr(tree, "", linux.AT_EMPTY_PATH, _RO_SET, _RO_CLEAR)
        linux.move_mount(tree, "", root, name, linux.MOVE_MOUNT_F_EMPTY_PATH)
    finally:
        os.close(tree)
