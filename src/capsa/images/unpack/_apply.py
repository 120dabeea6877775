"""Applying entries to the root: files, directories, links, nodes, and OCI whiteouts.

Policies (each one a deliberate choice; see the package docstring for the list):

* Regular files are created with ``O_CREAT | O_EXCL | O_NOFOLLOW``; whatever was at
  the name (of any type, from any layer) is removed first, never written through.
* Ownership, mode, xattrs and times are set on the open fd, or with
  ``follow_symlinks=False`` for links and nodes; never through a path that could
  be a symlink.
* Directories are created 0700 and get their real metadata at the end, deepest
  first, so a 0000 directory can still be filled and its mtime is not disturbed.
* setuid/setgid survive on regular files; setuid is dropped from directories
  (meaningless there) while setgid (group inheritance, e.g. Debian's /var/mail)
  and the sticky bit are kept; links, fifos and devices get permission bits only.
* Hardlink targets must be regular files reached without any symlink.
* Character/block devices are refused unless ``allow_devices``; fifos are allowed
  (inert: they name no kernel object).
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass

from capsa.errors import UnsafeArchive, Unsupported

from ._limits import Guard, UnpackLimits
from ._names import WHITEOUT_PREFIX, split_name, symlink_escapes, validate_link_target
from ._source import Input
from ._tarheader import BLK, CHR, DIR, FIFO, LNK, REG, SYM, Entry
from ._tree import Tree, is_whiteout_device, join

__all__ = ["Applier"]

OPAQUE = ".wh..wh..opq"
_AUFS_META = ".wh..wh."
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_ARCHIVE_ERRNOS = frozenset({errno.ELOOP, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG, errno.EEXIST,
                             errno.EINVAL, errno.EMLINK, errno.ENOENT, errno.ENOTEMPTY, errno.EXDEV})
_OVERLAY_XATTRS = ("trusted.overlay.", "user.overlay.")
_ACL_XATTRS = frozenset({"system.posix_acl_access", "system.posix_acl_default"})


def _umask() -> int:
    """The process umask, read without changing it (os.umask would race other threads)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o777  # unknown: assume everything is masked, so modes are always set explicitly


@dataclass(slots=True)
class _DirMeta:
    mode: int
    uid: int
    gid: int
    atime_ns: int
    mtime_ns: int
    xattrs: list[tuple[str, bytes]] | None
    what: str


class Applier:
    """Applies one layer's entries to a :class:`Tree`; call :meth:`finish` after the last."""

    def __init__(self, tree: Tree, limits: UnpackLimits, guard: Guard, *, overlay: bool,
                 opaque_xattr: str, track_lower: bool) -> None:
        self.tree = tree
        self.limits = limits
        self.guard = guard
        self.overlay = overlay
        self.opaque_xattr = opaque_xattr
        self.entries = self.bytes = self.whiteouts = 0
        self._chown = os.geteuid() == 0
        self._euid = os.geteuid()
        self._umask = _umask()
        self._dirs: dict[str, _DirMeta] = {}
        # Apply mode over earlier layers: what this layer wrote (and the directories
        # above it) must survive this layer's own whiteouts. None: nothing lower exists.
        self._written: set[str] | None = set() if track_lower else None
        self._above_written: set[str] = set()

    # -- entry point ---------------------------------------------------------------------
    def apply(self, e: Entry, inp: Input) -> None:
        what = e.what
        budget = self.guard.budget
        if budget.entries >= self.limits.max_entries or not (budget.entries + 1) & 0x3F:
            self.guard.charge_entry(what)  # raises at the limit; checks the clock now and then
        else:
            budget.entries += 1
        self.entries += 1
        try:
            self._apply(e, inp, what)
        except OSError as exc:
            if exc.errno in _ARCHIVE_ERRNOS:
                raise UnsafeArchive(f"{what}: {exc.strerror}", detail={"entry": what}) from exc
            raise

    def _apply(self, e: Entry, inp: Input, what: str) -> None:
        parent, name = split_name(e.name, what, self.limits)
        if not name:
            if e.type != DIR:
                raise UnsafeArchive(f"{what}: names the root but is not a directory", detail={"entry": what})
            xattrs = self._wanted_xattrs(e.xattrs, what, regular=False)
            self._dirs[""] = _DirMeta(e.mode & ~stat.S_ISUID, e.uid, e.gid, e.atime_ns, e.mtime_ns, xattrs, what)
            return
        if WHITEOUT_PREFIX in e.name:
            for part in parent.split("/"):
                if part.startswith(WHITEOUT_PREFIX):
                    raise UnsafeArchive(f"{what}: whiteout name {part!r} used as a directory",
                                        detail={"entry": what})
            if name.startswith(WHITEOUT_PREFIX):
                self._whiteout(e, parent, name, what)
                return
        kind = e.type
        if kind == REG:
            budget = self.guard.budget
            if e.size > self.limits.max_file_bytes or budget.bytes + e.size > self.limits.max_total_bytes:
                self.guard.charge_data(what, e.size, is_file=True)  # raises, naming the limit
            budget.bytes += e.size  # charged before anything is created
        elif kind in (CHR, BLK) and not self.limits.allow_devices:
            raise UnsafeArchive(f"{what}: device node {e.devmajor}:{e.devminor} refused (allow_devices is off)",
                                detail={"entry": what, "limit": "allow_devices"})
        elif e.xattrs and kind != DIR:
            self._wanted_xattrs(e.xattrs, what, regular=False)  # refuse overlayfs metadata; nothing to set
        tree = self.tree
        pfd = tree.cached_dir(parent)
        if pfd is not None:
            pkey = parent
        else:
            found = tree.resolve_dir(parent, what, follow=True, create=True)
            assert found is not None  # create=True never returns None
            pfd, pkey = found
        key = f"{pkey}/{name}" if pkey else name
        if kind == REG:
            self._file(e, pfd, pkey, name, key, inp, what)
        elif kind == DIR:
            self._dir(e, pfd, name, key)
        elif kind == SYM:
            self._symlink(e, pfd, pkey, name, key, what)
        elif kind == LNK:
            self._hardlink(e, pfd, name, key, what)
        else:
            self._node(e, pfd, pkey, name, key)
        if self._written is not None:
            self._mark(key)

    # -- entry kinds ---------------------------------------------------------------------
    def _replace(self, pfd: int, name: str, key: str, st: os.stat_result | None = None) -> None:
        if st is None:
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            self._forget_dirs(key)
        self.tree.remove(pfd, name, key, st)

    def _needs_chown(self, e: Entry, pfd: int, pkey: str) -> bool:
        """Whether a node just created in ``pkey`` needs a chown to get ``e``'s owner."""
        return self._chown and (e.uid != self._euid or e.gid != self.tree.dir_info(pkey, pfd)[0])

    def _file(self, e: Entry, pfd: int, pkey: str, name: str, key: str, inp: Input, what: str) -> None:
        mode = e.mode
        xattrs = self._wanted_xattrs(e.xattrs, what, regular=True) if e.xattrs else None
        try:
            fd = os.open(name, _FILE_FLAGS, mode & 0o777, dir_fd=pfd)
        except FileExistsError:
            self._replace(pfd, name, key)
            fd = os.open(name, _FILE_FLAGS, mode & 0o777, dir_fd=pfd)
        try:
            if e.size:
                inp.copy_to(fd, e.size, self.guard, what)
            new_gid, default_acl = self.tree.dir_info(pkey, pfd)
            if self._chown and (e.uid != self._euid or e.gid != new_gid):
                os.fchown(fd, e.uid, e.gid)
            if mode & 0o7000 or mode & self._umask or default_acl:  # else open() set it exactly
                os.fchmod(fd, mode)
            if xattrs:
                self._set_xattrs(fd, xattrs, what)
            os.utime(fd, ns=(e.atime_ns, e.mtime_ns))
        finally:
            os.close(fd)
        self.bytes += e.size

    def _dir(self, e: Entry, pfd: int, name: str, key: str) -> None:
        xattrs = self._wanted_xattrs(e.xattrs, e.what, regular=False)
        try:
            os.mkdir(name, 0o700, dir_fd=pfd)
        except FileExistsError:
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode):
                self._replace(pfd, name, key, st)
                os.mkdir(name, 0o700, dir_fd=pfd)
                if self.overlay and is_whiteout_device(st):
                    # the layer deleted the lower path and recreated it as a directory:
                    # lower content must not show through
                    self.tree.set_opaque(pfd, name, self.opaque_xattr)
        self._dirs[key] = _DirMeta(e.mode & ~stat.S_ISUID, e.uid, e.gid, e.atime_ns, e.mtime_ns, xattrs, e.what)

    def _symlink(self, e: Entry, pfd: int, pkey: str, name: str, key: str, what: str) -> None:
        target = e.linkname
        validate_link_target(target, what, self.limits)
        if symlink_escapes(pkey, target):
            raise UnsafeArchive(f"{what}: symlink target {target!r} climbs above the root",
                                detail={"entry": what})
        try:
            os.symlink(target, name, dir_fd=pfd)
        except FileExistsError:
            self._replace(pfd, name, key)
            os.symlink(target, name, dir_fd=pfd)
        if self._needs_chown(e, pfd, pkey):
            os.chown(name, e.uid, e.gid, dir_fd=pfd, follow_symlinks=False)
        os.utime(name, ns=(e.atime_ns, e.mtime_ns), dir_fd=pfd, follow_symlinks=False)

    def _hardlink(self, e: Entry, pfd: int, name: str, key: str, what: str) -> None:
        validate_link_target(e.linkname, what, self.limits)
        tparent, tname = split_name(e.linkname, what, self.limits, field="hardlink target")
        if not tname:
            raise UnsafeArchive(f"{what}: hardlink to the root directory", detail={"entry": what})
        # resolve_dir may evict cached fds; hold private copies of both directories
        link_dir = os.dup(pfd)
        try:
            found = self.tree.resolve_dir(tparent, what, follow=False, create=False)
            if found is None:
                raise UnsafeArchive(f"{what}: hardlink target {e.linkname!r} does not exist",
                                    detail={"entry": what})
            target_dir = os.dup(found[0])
            try:
                self._link(e, link_dir, name, key, target_dir, tname, join(found[1], tname), what)
            finally:
                os.close(target_dir)
        finally:
            os.close(link_dir)

    def _link(self, e: Entry, link_dir: int, name: str, key: str, target_dir: int, target: str,
              target_key: str, what: str) -> None:
        if target_key == key:
            raise UnsafeArchive(f"{what}: hardlink to itself", detail={"entry": what})
        try:
            tst = os.stat(target, dir_fd=target_dir, follow_symlinks=False)
        except FileNotFoundError:
            raise UnsafeArchive(f"{what}: hardlink target {e.linkname!r} does not exist",
                                detail={"entry": what}) from None
        if not stat.S_ISREG(tst.st_mode):
            raise UnsafeArchive(f"{what}: hardlink target {e.linkname!r} is not a regular file",
                                detail={"entry": what})
        try:
            os.link(target, name, src_dir_fd=target_dir, dst_dir_fd=link_dir, follow_symlinks=False)
        except FileExistsError:
            st = os.stat(name, dir_fd=link_dir, follow_symlinks=False)
            if (st.st_dev, st.st_ino) == (tst.st_dev, tst.st_ino):
                return
            self._replace(link_dir, name, key, st)
            os.link(target, name, src_dir_fd=target_dir, dst_dir_fd=link_dir, follow_symlinks=False)

    def _node(self, e: Entry, pfd: int, pkey: str, name: str, key: str) -> None:
        kind = {CHR: stat.S_IFCHR, BLK: stat.S_IFBLK, FIFO: stat.S_IFIFO}[e.type]
        perm = e.mode & 0o777
        device = os.makedev(e.devmajor, e.devminor)
        try:
            os.mknod(name, kind | perm, device, dir_fd=pfd)
        except FileExistsError:
            self._replace(pfd, name, key)
            os.mknod(name, kind | perm, device, dir_fd=pfd)
        if self._needs_chown(e, pfd, pkey):
            os.chown(name, e.uid, e.gid, dir_fd=pfd, follow_symlinks=False)
        if perm & self._umask or self.tree.dir_info(pkey, pfd)[1]:
            os.chmod(name, perm, dir_fd=pfd, follow_symlinks=False)  # glibc: O_PATH fd, never a link
        os.utime(name, ns=(e.atime_ns, e.mtime_ns), dir_fd=pfd, follow_symlinks=False)

    @staticmethod
    def _wanted_xattrs(xattrs: dict[str, bytes] | None, what: str, *,
                       regular: bool) -> list[tuple[str, bytes]] | None:
        """The xattrs to apply; overlayfs metadata is refused, host-policy namespaces skipped."""
        if not xattrs:
            return None
        wanted = []
        for xname, value in xattrs.items():
            if xname.startswith(_OVERLAY_XATTRS):
                raise UnsafeArchive(f"{what}: carries overlayfs metadata xattr {xname!r}", detail={"entry": what})
            if xname.startswith("user.") or xname in _ACL_XATTRS or (regular and xname == "security.capability"):
                wanted.append((xname, value))
            # trusted.*, security.selinux & co. are host policy, not image content: skipped
        return wanted or None

    @staticmethod
    def _set_xattrs(fd: int, xattrs: list[tuple[str, bytes]], what: str) -> None:
        for xname, value in xattrs:
            try:
                os.setxattr(fd, xname, value)
            except OSError as exc:
                if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
                    raise Unsupported(f"{what}: the filesystem does not support xattr {xname!r}") from exc
                if exc.errno in (errno.EINVAL, errno.ERANGE, errno.E2BIG):
                    raise UnsafeArchive(f"{what}: invalid xattr {xname!r}: {exc.strerror}",
                                        detail={"entry": what}) from exc
                raise

    # -- whiteouts -----------------------------------------------------------------------
    def _whiteout(self, e: Entry, parent: str, base: str, what: str) -> None:
        self.whiteouts += 1
        if e.size:
            self.guard.charge_data(what, e.size, is_file=False)  # the reader skips it
        if base != OPAQUE and base.startswith(_AUFS_META):
            return  # AUFS bookkeeping (.wh..wh.plnk, .wh..wh.aufs): no meaning in OCI, ignored as containerd does
        victim = None if base == OPAQUE else base[len(WHITEOUT_PREFIX):]
        if victim is not None and victim in ("", ".", ".."):
            raise UnsafeArchive(f"{what}: whiteout names no valid file", detail={"entry": what})
        found = self.tree.resolve_dir(parent, what, follow=False, create=self.overlay)
        if found is None:
            return  # the parent does not exist below: nothing to delete
        pfd, pkey = found
        if self.overlay:
            self._overlay_whiteout(pfd, pkey, victim)
        elif self._written is not None:  # nothing lower exists otherwise
            if victim is None:
                for child in self._children(pfd):
                    self._remove_lower(join(pkey, child))
            else:
                self._remove_lower(join(pkey, victim))

    def _overlay_whiteout(self, pfd: int, pkey: str, victim: str | None) -> None:
        if victim is None:
            self._opaque_here(pfd, pkey)
            return
        try:
            st = os.stat(victim, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            os.mknod(victim, stat.S_IFCHR, os.makedev(0, 0), dir_fd=pfd)
            return
        if stat.S_ISDIR(st.st_mode):
            # this layer's own directory: keep its content, hide the lower one's
            self.tree.set_opaque(pfd, victim, self.opaque_xattr)

    def _opaque_here(self, dir_fd: int, key: str) -> None:
        if not key:
            self.tree.set_opaque(dir_fd, None, self.opaque_xattr)
            return
        fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            os.setxattr(fd, self.opaque_xattr, b"y")
        finally:
            os.close(fd)

    def _children(self, dir_fd: int, name: str = ".") -> list[str]:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            return os.listdir(fd)
        finally:
            os.close(fd)

    def _mark(self, key: str) -> None:
        assert self._written is not None
        self._written.add(key)
        above = self._above_written
        cut = key.rfind("/")
        while cut > 0:
            key = key[:cut]
            if key in above:
                break
            above.add(key)
            cut = key.rfind("/")

    def _remove_lower(self, key: str) -> None:
        """Delete what lower layers have at ``key``, sparing what this layer wrote."""
        assert self._written is not None
        todo = [key]
        while todo:
            key = todo.pop()
            parent, _, name = key.rpartition("/")
            found = self.tree.resolve_dir(parent, repr(key), follow=False, create=False)
            if found is None:
                continue
            pfd = found[0]
            try:
                st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            ours = key in self._written
            if stat.S_ISDIR(st.st_mode) and (ours or key in self._above_written):
                todo.extend(join(key, child) for child in self._children(pfd, name))
            elif not ours:
                self.tree.remove(pfd, name, key, st)

    # -- directory metadata, last ----------------------------------------------------------
    def _forget_dirs(self, key: str) -> None:
        prefix = key + "/"
        for k in [k for k in self._dirs if k == key or k.startswith(prefix)]:
            del self._dirs[k]

    def finish(self) -> None:
        for key in sorted(self._dirs, key=lambda k: k.count("/") + (1 if k else 0), reverse=True):
            meta = self._dirs[key]
            self.guard.check_time(meta.what)
            if not key:
                self._dir_meta(self.tree.root_fd, meta)
                continue
            parent, _, name = key.rpartition("/")
            found = self.tree.resolve_dir(parent, meta.what, follow=False, create=False)
            if found is None:
                raise UnsafeArchive(f"{meta.what}: directory vanished during unpack", detail={"entry": meta.what})
            fd = self.tree.open_dir(found[0], name)
            try:
                self._dir_meta(fd, meta)
            finally:
                os.close(fd)

    def _dir_meta(self, fd: int, meta: _DirMeta) -> None:
        if self._chown:
            os.fchown(fd, meta.uid, meta.gid)
        os.fchmod(fd, meta.mode)
        if meta.xattrs:
            self._set_xattrs(fd, meta.xattrs, meta.what)
        os.utime(fd, ns=(meta.atime_ns, meta.mtime_ns))
