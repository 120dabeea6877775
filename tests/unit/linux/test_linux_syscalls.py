"""Each capsa.linux wrapper really reaches the kernel.

Anything that changes namespaces or mounts runs in a forked child, so the test
process keeps its namespaces and the host mount table stays as it was.
"""

from __future__ import annotations

import errno
import os
import pickle
import re
import signal
import socket
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from capsa import linux

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="namespaces and mounts need root")


def in_child(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a forked child and return its result (or re-raise its error here)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            payload = pickle.dumps(("ok", fn()))
        except BaseException as exc:
            payload = pickle.dumps(("err", exc, traceback.format_exc()))
        finally:
            try:
                os.write(write_end, payload)
            finally:
                os._exit(0)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    os.close(read_end)
    os.waitpid(pid, 0)
    result = pickle.loads(b"".join(chunks))
    if result[0] == "err":
        raise result[1]
    return result[1]


def private_mount_ns() -> None:
    linux.unshare(linux.CLONE_NEWNS)
    linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE)


def ns_inode(kind: str, pid: str = "self") -> int:
    return os.stat(f"/proc/{pid}/ns/{kind}").st_ino


def mount_points() -> list[str]:
    with open("/proc/self/mountinfo") as fh:
        return [line.split()[4] for line in fh]


@pytest.fixture(autouse=True)
def host_unchanged() -> Any:
    before = (mount_points(), ns_inode("mnt"), socket.gethostname())
    yield
    assert (mount_points(), ns_inode("mnt"), socket.gethostname()) == before


def test_unshare_gives_the_caller_a_new_mount_namespace() -> None:
    def child() -> tuple[int, int]:
        before = ns_inode("mnt")
        linux.unshare(linux.CLONE_NEWNS)
        return before, ns_inode("mnt")

    before, after = in_child(child)
    assert before == ns_inode("mnt") and after != before


def test_unshare_uts_isolates_the_hostname() -> None:
    def child() -> str:
        linux.unshare(linux.CLONE_NEWUTS)
        socket.sethostname("capsa-unshared")
        return socket.gethostname()

    assert in_child(child) == "capsa-unshared"


def test_unshare_refuses_bad_flags_with_a_named_error() -> None:
    with pytest.raises(OSError, match=r"unshare\(flags=0x1\)") as info:
        in_child(lambda: linux.unshare(0x1))
    assert info.value.errno == errno.EINVAL


@pytest.fixture
def uts_holder() -> Any:
    """A process sitting in its own UTS namespace with hostname capsa-holder."""
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            linux.unshare(linux.CLONE_NEWUTS)
            socket.sethostname("capsa-holder")
            os.write(ready_w, b"1")
            signal.pause()
        finally:
            os._exit(0)
    os.close(ready_w)
    assert os.read(ready_r, 1) == b"1"
    os.close(ready_r)
    yield pid
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


def test_setns_joins_through_a_pidfd(uts_holder: int) -> None:
    pidfd = linux.pidfd_open(uts_holder)
    try:

        def child() -> str:
            linux.setns(pidfd, linux.CLONE_NEWUTS)
            return socket.gethostname()

        assert in_child(child) == "capsa-holder"
    finally:
        os.close(pidfd)


def test_setns_joins_through_a_namespace_file(uts_holder: int) -> None:
    def child() -> str:
        fd = os.open(f"/proc/{uts_holder}/ns/uts", os.O_RDONLY)
        linux.setns(fd, linux.CLONE_NEWUTS)
        return socket.gethostname()

    assert in_child(child) == "capsa-holder"


def test_mount_and_umount2(tmp_path: Path) -> None:
    def child() -> tuple[bool, list[str]]:
        private_mount_ns()
        linux.mount("tmpfs", tmp_path, "tmpfs", linux.MS_NOSUID, "size=1m")
        (tmp_path / "inside").write_text("x")
        mounted = str(tmp_path) in mount_points()
        linux.umount2(tmp_path)
        return mounted, os.listdir(tmp_path)

    assert in_child(child) == (True, [])
    assert os.listdir(tmp_path) == []


def test_mount_errors_name_the_call_and_both_paths(tmp_path: Path) -> None:
    with pytest.raises(OSError) as info:
        in_child(lambda: linux.mount("none", tmp_path, "no-such-fs"))
    assert info.value.errno == errno.ENODEV
    assert "mount(type='no-such-fs'" in str(info.value) and str(tmp_path) in str(info.value)


def test_pivot_root_swaps_the_root(tmp_path: Path) -> None:
    def child() -> list[str]:
        private_mount_ns()
        linux.mount("tmpfs", tmp_path, "tmpfs", 0, "size=1m")
        (tmp_path / "marker").write_text("new root")
        (tmp_path / "old").mkdir()
        linux.pivot_root(tmp_path, tmp_path / "old")
        os.chdir("/")
        linux.umount2("/old", linux.MNT_DETACH)
        return sorted(os.listdir("/"))

    assert in_child(child) == ["marker", "old"]


def test_open_tree_clone_and_move_mount_bind_a_tree(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "file").write_text("hello")
    (tmp_path / "dst").mkdir()

    def child() -> str:
        private_mount_ns()
        tree = linux.open_tree(
            linux.AT_FDCWD, tmp_path / "src", linux.OPEN_TREE_CLONE | linux.OPEN_TREE_CLOEXEC
        )
        linux.move_mount(tree, "", linux.AT_FDCWD, tmp_path / "dst", linux.MOVE_MOUNT_F_EMPTY_PATH)
        return (tmp_path / "dst" / "file").read_text()

    assert in_child(child) == "hello"
    assert os.listdir(tmp_path / "dst") == []


def test_mount_setattr_makes_a_detached_tree_read_only_recursively(tmp_path: Path) -> None:
    for name in ("src", "src/sub", "dst"):
        (tmp_path / name).mkdir()

    def child() -> list[int]:
        private_mount_ns()
        linux.mount("tmpfs", tmp_path / "src" / "sub", "tmpfs", 0, "size=1m")
        tree = linux.open_tree(
            linux.AT_FDCWD,
            tmp_path / "src",
            linux.OPEN_TREE_CLONE | linux.OPEN_TREE_CLOEXEC | linux.AT_RECURSIVE,
        )
        linux.mount_setattr(
            tree,
            "",
            linux.AT_EMPTY_PATH | linux.AT_RECURSIVE,
            linux.MOUNT_ATTR_RDONLY | linux.MOUNT_ATTR_NOSUID | linux.MOUNT_ATTR_NODEV,
            0,
            linux.MS_PRIVATE,
        )
        linux.move_mount(tree, "", linux.AT_FDCWD, tmp_path / "dst", linux.MOVE_MOUNT_F_EMPTY_PATH)
        results = []
        for path in (tmp_path / "dst" / "f", tmp_path / "dst" / "sub" / "f", tmp_path / "src" / "sub" / "f"):
            try:
                path.write_text("x")
                results.append(0)
            except OSError as exc:
                results.append(exc.errno or -1)
        return results

    # the clone and its submount are read-only; the original stays writable
    assert in_child(child) == [errno.EROFS, errno.EROFS, 0]


def test_mount_setattr_error_names_the_call(tmp_path: Path) -> None:
    with pytest.raises(OSError, match=r"mount_setattr\(set=0x1") as info:
        linux.mount_setattr(linux.AT_FDCWD, tmp_path / "missing", 0, linux.MOUNT_ATTR_RDONLY)
    assert info.value.errno == errno.ENOENT


def test_move_mount_beneath_slides_a_mount_under_the_top_one(tmp_path: Path) -> None:
    for name in ("a", "b", "dst"):
        (tmp_path / name).mkdir()
    (tmp_path / "a" / "v").write_text("a")
    (tmp_path / "b" / "v").write_text("b")

    def child() -> tuple[str, str]:
        private_mount_ns()
        for name, extra in (("a", 0), ("b", linux.MOVE_MOUNT_BENEATH)):
            tree = linux.open_tree(linux.AT_FDCWD, tmp_path / name, linux.OPEN_TREE_CLONE)
            target = os.open(tmp_path / "dst", os.O_PATH | os.O_DIRECTORY)
            linux.move_mount(
                tree, "", target, "", linux.MOVE_MOUNT_F_EMPTY_PATH | linux.MOVE_MOUNT_T_EMPTY_PATH | extra
            )
        seen_before = (tmp_path / "dst" / "v").read_text()
        linux.umount2(tmp_path / "dst", linux.MNT_DETACH)
        return seen_before, (tmp_path / "dst" / "v").read_text()

    try:
        assert in_child(child) == ("a", "b")
    except OSError as exc:
        release = tuple(int(part) for part in re.findall(r"\d+", os.uname().release)[:2])
        if exc.errno == errno.EINVAL and release < (6, 5):
            pytest.skip("kernel lacks MOVE_MOUNT_BENEATH (Linux < 6.5)")
        raise


def test_fsopen_fsconfig_fsmount_create_a_detached_tmpfs(tmp_path: Path) -> None:
    def child() -> tuple[int, int]:
        private_mount_ns()
        ctx = linux.fsopen("tmpfs")
        linux.fsconfig(ctx, linux.FSCONFIG_SET_STRING, "size", "1m")
        linux.fsconfig(ctx, linux.FSCONFIG_CMD_CREATE)
        mnt = linux.fsmount(ctx, linux.FSMOUNT_CLOEXEC, linux.MOUNT_ATTR_RDONLY)
        linux.move_mount(mnt, "", linux.AT_FDCWD, tmp_path, linux.MOVE_MOUNT_F_EMPTY_PATH)
        size = os.statvfs(tmp_path)
        try:
            (tmp_path / "f").write_text("x")
            return size.f_blocks * size.f_frsize, 0
        except OSError as exc:
            return size.f_blocks * size.f_frsize, exc.errno or -1

    assert in_child(child) == (1 << 20, errno.EROFS)


def test_fsconfig_error_names_the_key() -> None:
    ctx = linux.fsopen("tmpfs")
    try:
        with pytest.raises(OSError, match=r"fsconfig\(.*key='no-such-option'\)"):
            linux.fsconfig(ctx, linux.FSCONFIG_SET_STRING, "no-such-option", "1")
    finally:
        os.close(ctx)


def test_openat2_resolves_inside_a_root_and_can_refuse_symlinks(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "hostname").write_text("inside")
    (root / "link").symlink_to("/etc/hostname")
    (root / "up").symlink_to("../../../../../../etc/hostname")
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    try:
        for name in ("link", "up"):
            fd = linux.openat2(root_fd, name, os.O_RDONLY | os.O_CLOEXEC, 0, linux.RESOLVE_IN_ROOT)
            with os.fdopen(fd) as fh:
                assert fh.read() == "inside"
        with pytest.raises(OSError) as info:
            linux.openat2(root_fd, "link", os.O_RDONLY, 0, linux.RESOLVE_NO_SYMLINKS)
        assert info.value.errno == errno.ELOOP and "openat2" in str(info.value)
        with pytest.raises(OSError) as info:
            linux.openat2(root_fd, "../x", os.O_RDONLY, 0, linux.RESOLVE_BENEATH)
        assert info.value.errno == errno.EXDEV
    finally:
        os.close(root_fd)


def test_pidfd_open_and_send_signal() -> None:
    pid = os.fork()
    if pid == 0:
        signal.pause()
        os._exit(0)
    pidfd = linux.pidfd_open(pid)
    try:
        linux.pidfd_send_signal(pidfd, 0)
        linux.pidfd_send_signal(pidfd, signal.SIGTERM)
        result = os.waitid(os.P_PIDFD, pidfd, os.WEXITED)
        assert result is not None and result.si_status == signal.SIGTERM
        with pytest.raises(ProcessLookupError, match=r"pidfd_send_signal\(pidfd=\d+, sig=0\)"):
            linux.pidfd_send_signal(pidfd, 0)
    finally:
        os.close(pidfd)


def test_pidfd_open_of_a_missing_pid_is_named() -> None:
    with pytest.raises(ProcessLookupError, match=r"pidfd_open\(pid=2147483647\)"):
        linux.pidfd_open(2**31 - 1)


def test_open_tree_error_names_the_call_and_path() -> None:
    with pytest.raises(FileNotFoundError) as info:
        linux.open_tree(linux.AT_FDCWD, "/nonexistent/capsa", linux.OPEN_TREE_CLONE)
    assert "open_tree" in str(info.value) and "/nonexistent/capsa" in str(info.value)


def test_move_mount_error_names_both_ends() -> None:
    with pytest.raises(OSError) as info:
        linux.move_mount(9999, "", linux.AT_FDCWD, "/tmp", linux.MOVE_MOUNT_F_EMPTY_PATH)
    assert info.value.errno == errno.EBADF
    assert "<fd 9999>" in str(info.value) and "/tmp" in str(info.value)


HEADERS = {
    "/usr/include/linux/mount.h": (
        "MOUNT_ATTR_",
        "MOVE_MOUNT_",
        "OPEN_TREE_CLONE",
        "FSMOUNT_",
        "FSOPEN_",
        "MS_",
    ),
    "/usr/include/linux/openat2.h": ("RESOLVE_",),
    "/usr/include/linux/sched.h": ("CLONE_NEW",),
    "/usr/include/linux/fcntl.h": ("AT_RECURSIVE", "AT_EMPTY_PATH", "AT_SYMLINK_NOFOLLOW"),
}


@pytest.mark.parametrize("header", sorted(HEADERS))
def test_constants_match_the_kernel_headers(header: str) -> None:
    if not os.path.exists(header):
        pytest.skip(f"{header} not installed")
    checked = 0
    pattern = re.compile(r"^#define\s+([A-Z_0-9]+)\s+(0x[0-9a-fA-F]+|\d+|\(1<<\d+\))\b", re.M)
    for name, raw in pattern.findall(Path(header).read_text()):
        if not name.startswith(HEADERS[header]) or not hasattr(linux, name):
            continue
        value = 1 << int(raw[4:-1]) if raw.startswith("(1<<") else int(raw, 0)
        assert getattr(linux, name) == value, name
        checked += 1
    assert checked >= 3
