"""The root directory, and path resolution that can never leave it.

Every operation is relative to a directory fd obtained by walking one component
at a time with ``O_NOFOLLOW | O_DIRECTORY`` from the root's fd; no path string
is ever handed to the kernel whole, so no symlink — planted by an earlier layer
or an earlier entry — is followed by the kernel. (The root is assumed private to
the unpacker while it runs: a snapshot nobody else has mounted or opened.)

Symlinks met while walking are either refused (``follow=False``: whiteouts,
hardlink targets) or resolved *by this code* with the root as ``/`` (absolute
targets restart at the root, ``..`` stops there), which is what
``openat2(RESOLVE_IN_ROOT)`` does and what the link means inside the container.

Directory fds are cached (LRU) by *canonical* key: the real path below the root,
with no symlinks in it. Removing a directory invalidates its key and everything
under it, so a cached fd never outlives the directory it names.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from collections import OrderedDict, deque
from pathlib import Path

from capsa.errors import FailedPrecondition, UnsafeArchive

__all__ = ["Tree", "join"]

_WALK_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_OPEN_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_SYMLINK_HOPS = 40  # the kernel's MAXSYMLINKS


def join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def is_whiteout_device(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


class Tree:
    """fd-relative access to one root directory (held open for the tree's lifetime)."""

    def __init__(self, root: Path, *, cache_size: int = 256, opaque_xattr: str | None = None) -> None:
        self.root = root
        try:
            self.root_fd = os.open(root, _OPEN_DIR_FLAGS)
        except OSError as exc:
            if exc.errno not in (errno.ENOTDIR, errno.ELOOP, errno.ENOENT):
                raise
            what = ("a symlink" if os.path.islink(root) else
                    "missing" if exc.errno == errno.ENOENT else "not a directory")
            raise FailedPrecondition(f"the unpack root {root} is {what}; it must be a directory") from exc
        self._cache: OrderedDict[str, int] = OrderedDict()
        self._capacity = cache_size
        #: overlay mode: a whiteout device met while creating parents becomes an opaque dir
        self._opaque_xattr = opaque_xattr
        self._egid = os.getegid()
        # canonical key -> (group a new file gets there, whether a default ACL replaces the umask)
        self._dir_info: dict[str, tuple[int, bool]] = {}

    def close(self) -> None:
        for fd in self._cache.values():
            os.close(fd)
        self._cache.clear()
        os.close(self.root_fd)

    def is_empty(self) -> bool:
        with os.scandir(self.root_fd) as it:
            return next(it, None) is None

    # -- cache ---------------------------------------------------------------------------
    def _get(self, key: str) -> int | None:
        fd = self._cache.get(key)
        if fd is not None:
            self._cache.move_to_end(key)
        return fd

    def cached_dir(self, key: str) -> int | None:
        """The fd of directory ``key`` if it is cached (the common, fast case), else None."""
        fd = self._cache.get(key)
        if fd is not None:
            self._cache.move_to_end(key)
        elif not key:
            return self.root_fd
        return fd

    def _put(self, key: str, fd: int) -> None:
        self._cache[key] = fd
        if len(self._cache) > self._capacity:
            _, old = self._cache.popitem(last=False)
            os.close(old)

    def invalidate(self, key: str) -> None:
        """Forget cached fds for ``key`` and everything below it."""
        if not key:
            stale = list(self._cache)
        else:
            prefix = key + "/"
            stale = [k for k in self._cache if k == key or k.startswith(prefix)]
        for k in stale:
            os.close(self._cache.pop(k))
        if not key:
            self._dir_info.clear()
        else:
            for k in [k for k in self._dir_info if k == key or k.startswith(prefix)]:
                del self._dir_info[k]

    def dir_info(self, key: str, fd: int) -> tuple[int, bool]:
        """For directory ``key`` (open as ``fd``): the group a file created there gets
        (the directory's own when it is setgid, else ours), and whether a default ACL
        decides new files' modes instead of the umask. Lets callers skip a chown/chmod."""
        info = self._dir_info.get(key)
        if info is None:
            st = os.fstat(fd)
            try:  # fgetxattr refuses O_PATH fds; the /proc link resolves to this very directory
                os.getxattr(f"/proc/self/fd/{fd}", "system.posix_acl_default")
                default_acl = True
            except OSError:
                default_acl = False
            info = (st.st_gid if st.st_mode & stat.S_ISGID else self._egid, default_acl)
            self._dir_info[key] = info
        return info

    # -- resolution ----------------------------------------------------------------------
    def resolve_dir(self, key: str, what: str, *, follow: bool, create: bool) -> tuple[int, str] | None:
        """The fd and canonical key of the directory ``key`` (``a/b``, relative to the root).

        ``follow``: resolve symlinks inside the root; otherwise a symlink component
        raises UnsafeArchive. ``create``: make missing directories (0755); otherwise
        return None when one is missing. A component that exists but is not a
        directory raises UnsafeArchive. The fd stays owned by the tree.
        """
        if not key:
            return self.root_fd, ""
        fd = self._cache.get(key)
        if fd is not None:
            self._cache.move_to_end(key)
            return fd, key
        parts = key.split("/")
        fd, stack, start = self.root_fd, [], 0
        for i in range(len(parts) - 1, 0, -1):
            cached = self._get("/".join(parts[:i]))
            if cached is not None:
                fd, stack, start = cached, parts[:i], i
                break
        pending = deque(parts[start:])
        hops = 0
        while pending:
            comp = pending.popleft()
            if not comp or comp == ".":
                continue
            if comp == "..":  # only from symlink targets; stops at the root like "/.."
                if stack:
                    stack.pop()
                found = self.resolve_dir("/".join(stack), what, follow=False, create=False)
                if found is None:
                    raise UnsafeArchive(f"{what}: directory {'/'.join(stack)!r} vanished", detail={"entry": what})
                fd = found[0]
                continue
            ckey = "/".join([*stack, comp])
            cached = self._get(ckey)
            if cached is not None:
                fd = cached
                stack.append(comp)
                continue
            try:
                nfd = os.open(comp, _WALK_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    return None
                nfd = self._mkdir(fd, comp)
            except OSError as exc:
                if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                    raise
                st = os.stat(comp, dir_fd=fd, follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    if not follow:
                        raise UnsafeArchive(f"{what}: path component {ckey!r} is a symlink, which this entry "
                                            "must not go through", detail={"entry": what}) from None
                    hops += 1
                    if hops > _MAX_SYMLINK_HOPS:
                        raise UnsafeArchive(f"{what}: too many levels of symbolic links at {ckey!r}",
                                            detail={"entry": what}) from None
                    target = os.readlink(comp, dir_fd=fd)
                    if target.startswith("/"):
                        fd, stack = self.root_fd, []
                    pending.extendleft(reversed(target.split("/")))
                    continue
                if create and self._opaque_xattr and is_whiteout_device(st):
                    os.unlink(comp, dir_fd=fd)
                    nfd = self._mkdir(fd, comp, opaque=True)
                else:
                    raise UnsafeArchive(f"{what}: {ckey!r} is not a directory", detail={"entry": what}) from None
            self._put(ckey, nfd)
            fd = nfd
            stack.append(comp)
        return fd, "/".join(stack)

    def _mkdir(self, parent_fd: int, name: str, *, opaque: bool = False) -> int:
        os.mkdir(name, 0o755, dir_fd=parent_fd)
        fd = os.open(name, _OPEN_DIR_FLAGS, dir_fd=parent_fd)
        os.fchmod(fd, 0o755)  # exact, whatever the umask
        if opaque and self._opaque_xattr:
            os.setxattr(fd, self._opaque_xattr, b"y")
        return fd

    # -- changes -------------------------------------------------------------------------
    def remove(self, parent_fd: int, name: str, key: str, st: os.stat_result | None = None) -> None:
        """Remove whatever is at ``name`` (a directory with all its content), never following links."""
        if st is None:
            st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            self.invalidate(key)
            shutil.rmtree(name, dir_fd=parent_fd)  # fd-based walk: never follows symlinks
        else:
            os.unlink(name, dir_fd=parent_fd)

    def set_opaque(self, parent_fd: int, name: str | None, xattr: str) -> None:
        """Mark the directory ``name`` in ``parent_fd`` (or the root, for None) opaque."""
        if name is None:
            os.setxattr(self.root_fd, xattr, b"y")
            return
        fd = os.open(name, _OPEN_DIR_FLAGS, dir_fd=parent_fd)
        try:
            os.setxattr(fd, xattr, b"y")
        finally:
            os.close(fd)

    def open_dir(self, parent_fd: int, name: str) -> int:
        return os.open(name, _OPEN_DIR_FLAGS, dir_fd=parent_fd)
