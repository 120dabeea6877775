"""Escape attempts, run unchanged inside a job (``python3 -c <this file> ARGS``) and on the host.

Standard library only: the source is sent as the job's command. ``main`` takes one JSON
argument ``{"probes": [...], "params": {...}, "host": bool}`` and prints one JSON object
``{name: {"ok": bool, "errno": int, "value": ...}}``. ``ok`` means the attempt did what an
attacker wanted. Where an attempt would change the host, the *host* run wraps it so it
stays harmless (a private mount namespace, a tmp cgroup, writing back the value just read,
a throwaway PID namespace); the attempt itself is the same call with the same arguments.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import platform
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time

LIBC = ctypes.CDLL(None, use_errno=True)
LIBC.syscall.restype = ctypes.c_long

NR = {
    "x86_64": {"pivot_root": 155, "kexec_load": 246, "init_module": 175, "finit_module": 313, "bpf": 321,
               "userfaultfd": 323, "keyctl": 250, "open_by_handle_at": 304, "name_to_handle_at": 303,
               "settimeofday": 164},
    "aarch64": {"pivot_root": 41, "kexec_load": 104, "init_module": 105, "finit_module": 273, "bpf": 280,
                "userfaultfd": 282, "keyctl": 219, "open_by_handle_at": 265, "name_to_handle_at": 264,
                "settimeofday": 170},
}[platform.machine()]

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID = 0x00020000, 0x10000000, 0x20000000
MS_RDONLY, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 32, 4096, 16384, 1 << 18
MNT_DETACH = 2


class Outcome(Exception):
    """Raised by a probe to report; a probe returning normally means it succeeded."""


def result(ok: bool, err: int = 0, value: object = None) -> dict[str, object]:
    return {"ok": ok, "errno": err, "value": value}


def call(rc: int) -> int:
    """A libc/syscall return value: raise OSError with errno when negative."""
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return rc


def sys_(name: str, *args: object) -> int:
    return call(LIBC.syscall(ctypes.c_long(NR[name]), *args))


def in_child(fn, *, newpid: bool = False) -> dict[str, object]:  # type: ignore[no-untyped-def]
    """Run ``fn`` in a forked child (so a success changes nothing here); its result comes back on a pipe."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            out = fn()
        except OSError as exc:
            out = result(False, exc.errno or 0, str(exc))
        except BaseException as exc:  # noqa: BLE001 - everything must reach the parent
            out = result(False, 0, f"{type(exc).__name__}: {exc}")
        os.write(w, json.dumps(out).encode())
        os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    _, status = os.waitpid(pid, 0)
    if not data:
        return result(False, 0, f"child ended without a report (status {status})")
    return json.loads(data)


def private_mount_ns() -> None:
    """Host runs only: a throwaway mount namespace, so nothing mounted there reaches the host."""
    call(LIBC.unshare(CLONE_NEWNS))
    call(LIBC.mount(None, b"/", None, MS_REC | MS_PRIVATE, None))


def scratch(params: dict, name: str) -> str:  # type: ignore[type-arg]
    path = os.path.join(params["scratch"], name)
    os.makedirs(path, exist_ok=True)
    return path


# -- the probes ---------------------------------------------------------------------------------
def p_mount(params: dict, host: bool) -> dict:  # type: ignore[type-arg]
    target = scratch(params, "mnt").encode()
    call(LIBC.mount(b"tmpfs", target, b"tmpfs", 0, None))
    call(LIBC.umount2(target, MNT_DETACH))   # the host gets its directory back at once
    return result(True)


def p_umount(params: dict, host: bool) -> dict:  # type: ignore[type-arg]
    if host:   # the job unmounts its own /tmp; the host a tmpfs it mounted for the purpose
        target = scratch(params, "umnt").encode()
        call(LIBC.mount(b"tmpfs", target, b"tmpfs", 0, None))
    else:
        target = b"/tmp"
    call(LIBC.umount2(target, MNT_DETACH))
    return result(True)


def p_pivot_root(params: dict, host: bool) -> dict:  # type: ignore[type-arg]
    def attempt() -> dict:  # type: ignore[type-arg]
        if host:
            private_mount_ns()
            new_root = scratch(params, "newroot")
            call(LIBC.mount(b"tmpfs", new_root.encode(), b"tmpfs", 0, None))
            os.chdir(new_root)
        else:
            os.chdir("/tmp")   # a mount point of the job
        sys_("pivot_root", b".", b".")
        return result(True)
    return in_child(attempt)


def p_userns(params: dict, host: bool) -> dict:  # type: ignore[type-arg]
    def attempt() -> dict:  # type: ignore[type-arg]
        call(LIBC.unshare(CLONE_NEWUSER))
        return result(True)
    return in_child(attempt)


def p_setns(params: dict, host: bool) -> dict:  # type: ignore[type-arg]
    # Joining one's own UTS namespace: harmless anywhere, and the call alone is what a job must not have.
    path = "/proc/self/ns/uts"
    fd = os.open(path, os.O_RDONLY)
    try:
        call(LIBC.setns(fd, 0))
    finally:
        os.close(fd)
    return result(True)


def p_host_pids(params: dict, host: bool) -> dict:  # type: ignore[type-arg]
    visible = os.path.exists(f"/proc/{params['host_pid']}")
    with open("/proc/1/cmdline", "rb") as fh:
        init = fh.read().split(b"\0")[0].decode(errors="replace")
    return result(visible, 0, {"pid1": init, "pids": len([p for p in os.listdir("/proc") if p.isdigit()])})


def p_ptrace(params: dict, host: bool) -> dict:  # type: ignore[type-arg]
    child = subprocess.Popen(["sleep", "30"])
    try:
        PTRACE_SEIZE, PTRACE_DETACH = 0x4206, 17
        call(LIBC.ptrace(ctypes.c_long(PTRACE_SEIZE), child.pid, None, None))
        LIBC.ptrace(ctypes.c_long(PTRACE_DETACH), child.pid, None, None)
        return result(True)
    finally:
        child.kill()
        child.wait()


def p_kexec_load(params: dict, host: bool) -> dict:  # type: ignore[type-arg]
    # No segments: "unload", a no-op when nothing is loaded. ENOSYS = the kernel has no kexec,
    # i.e. the call reached the kernel unrefused.
    sys_("kexec_load", ctypes.c_ulong(0), ctypes.c_ulong(0), None, ctypes.c_ulong(0))
    return result(True)


def p_init_module(params: dict, host: bool) -> dict:  # type: ignore[type-arg]
    image = ctypes.create_string_buffer(b"\0" * 64)
    sys_("init_module", image, ctypes.c_ulong(64), b"")
    return result(True)


def p_finit_module(params: dict, host: bool) -> dict:  # type: ignore[type-arg]
    fd = os.open("/dev/null", os.O_RDONLY)
    try:
        sys_("finit_module", fd, b"", 0)
    finally:
        os.close(fd)
    return result(True)


def p_bpf(params: dict, host: bool) -> dict:  # type: ignore[type-arg]
    BPF_MAP_CREATE, BPF_MAP_TYPE_ARRAY = 0, 2
    attr = ctypes.create_string_buffer(struct.pack("<IIII", BPF_MAP_TYPE_ARRAY, 4, 4, 1), 72)
    fd = sys_("bpf", BPF_MAP_CREATE, attr, 72)
    os.close(fd)
    return result(True)


def p_userfaultfd(params: dict, host: bool) -> dict:  # type: ignore[type-arg]
    os.close(sys_("userfaultfd", os.O_CLOEXEC))
    return result(True)


def p_keyctl(params: dict, host: bool) -> dict:  # type: ignore[type-arg]
    KEYCTL_GET_KEYRING_ID, KEY_SPEC_USER_KEYRING = 0, -4
    serial = sys_("keyctl", KEYCTL_GET_KEYRING_ID, KEY_SPEC_USER_KEYRING, 0)
    return result(True, 0, serial)


def _write_back(path: str) -> dict:  # type: ignore[type-arg]
    with open(path, "rb") as fh:
        value = fh.read()
    with open(path, "wb") as fh:   # the same value: the write itself is the attempt
        fh.write(value)
    return result(True, 0, value.decode(errors="replace").strip())


def p_proc_sys_hostname(params: dict, host: bool) -> dict:  # type: ignore[type-arg]
    return _write_back("/proc/sys/kernel/hostname")


def p_proc_sys_core_pattern(params: dict, host: bool) -> dict:  # type: ignore[type-arg]
    return _write_back("/proc/sys/kernel/core_pattern")


def p_proc_irq(params: dict, host: bool) -> dict:  # type: ignore[type-arg]
    return _write_back("/proc/irq/default_smp_affinity")


def p_sysrq_trigger(params: dict, host: bool) -> dict:  # type: ignore[type-arg]
    if not os.path.exists("/proc/sysrq-trigger"):
        return result(False, errno.ENOENT, "absent")
    os.close(os.open("/proc/sysrq-trigger", os.O_WRONLY))   # opened for writing; no command is written
    return result(True)


def _read(path: str) -> dict:  # type: ignore[type-arg]
    with open(path, "rb") as fh:
        data = fh.read(4096)
    return result(bool(data), 0, len(data))


def p_kcore(params: dict, host: bool) -> dict:  # type: ignore[type-arg]
    return _read("/proc/kcore")


def p_timer_list(params: dict, host: bool) -> dict:  # type: ignore[type-arg]
    return _read("/proc/timer_list")


def p_proc_keys(params: dict, host: bool) -> dict:  # type: ignore[type-arg]
    return _read("/proc/keys")


def p_kmsg(params: dict, host: bool) -> dict:  # type: ignore[type-arg]
    fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    try:
        return result(True, 0, len(os.read(fd, 8192)))
    finally:
        os.close(fd)


def p_mknod_disk(params: dict, host: bool) -> dict:  # type: ignore[type-arg]
    node = os.path.join(scratch(params, "nodes"), "disk")
    major, minor = params["disk"]
    os.mknod(node, 0o600 | 0o060000, os.makedev(major, minor))
    try:
        fd = os.open(node, os.O_RDONLY)
        try:
            return result(True, 0, len(os.pread(fd, 512, 0)))
        finally:
            os.close(fd)
    finally:
        os.unlink(node)


def _cgroup_dir(params: dict, host: bool) -> str:  # type: ignore[type-arg]
    if host:   # a cgroup the test created for the purpose
        return params["host_cgroup"]
    return "/sys/fs/cgroup/pids"   # the only pids cgroup the job can see: its own


def p_cgroup_move(params: dict, host: bool) -> dict:  # type: ignore[type-arg]
    """Write our pid into a cgroup.procs file (the job: its own parent's, which it cannot even name)."""
    base = _cgroup_dir(params, host)
    targets = [os.path.join(base, "cgroup.procs")] if host else \
        [os.path.join(base, "..", "cgroup.procs"), os.path.join(base, "cgroup.procs")]
    child = subprocess.Popen(["sleep", "30"])
    try:
        last: OSError | None = None
        for target in targets:
            try:
                with open(target, "w") as fh:
                    fh.write(str(child.pid))
            except OSError as exc:
                last = exc
                continue
            with open(f"/proc/{child.pid}/cgroup") as fh:
                return result(True, 0, [line for line in fh.read().splitlines() if ":pids:" in line])
        assert last is not None
        raise last
    finally:
        child.kill()
        child.wait()


def p_cgroup_limit(params: dict, host: bool) -> dict:  # type: ignore[type-arg]
    """Raise one's own pids.max (the job's cgroup files are visible, read-only)."""
    path = os.path.join(_cgroup_dir(params, host), "pids.max")
    with open(path, "w") as fh:
        fh.write("max")
    return result(True)


def p_cgroup_view(params: dict, host: bool) -> dict:  # type: ignore[type-arg]
    """Not an attack: what the job sees of its cgroups (its own, read-only)."""
    base = _cgroup_dir(params, host)
    with open(os.path.join(base, "pids.max")) as fh:
        limit = fh.read().strip()
    return result(True, 0, {"pids.max": limit, "hierarchies": sorted(os.listdir("/sys/fs/cgroup"))})


def p_remount_rw(params: dict, host: bool) -> dict:  # type: ignore[type-arg]
    def attempt() -> dict:  # type: ignore[type-arg]
        target = b"/usr"
        if host:   # a read-only bind of our own, in a throwaway mount namespace
            private_mount_ns()
            target = scratch(params, "robind").encode()
            call(LIBC.mount(target, target, None, MS_BIND, None))
            call(LIBC.mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY, None))
        call(LIBC.mount(None, target, None, MS_REMOUNT | MS_BIND, None))
        probe = os.path.join(target.decode(), "capsa-remount-probe")
        with open(probe, "w") as fh:
            fh.write("written")
        os.unlink(probe)
        return result(True)
    return in_child(attempt)


def p_raw_socket(params: dict, host: bool) -> dict:  # type: ignore[type-arg]
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    sock.close()
    return result(True, 0, sorted(os.listdir("/sys/class/net")))


def p_chroot_escape(params: dict, host: bool) -> dict:  # type: ignore[type-arg]
    """The classic: chroot into a subdirectory without entering it, walk up, chroot again."""
    def attempt() -> dict:  # type: ignore[type-arg]
        jail = scratch(params, "jail")
        os.chroot(jail)            # cwd stays outside the new root
        for _ in range(64):
            os.chdir("..")
        os.chroot(".")
        return result(os.path.exists(params["marker"]), 0, sorted(os.listdir("/"))[:12])
    return in_child(attempt)


def p_clock_settime(params: dict, host: bool) -> dict:  # type: ignore[type-arg]
    now = time.clock_gettime(time.CLOCK_REALTIME)
    time.clock_settime(time.CLOCK_REALTIME, now)   # the value just read: a sub-microsecond step
    return result(True)


def p_settimeofday(params: dict, host: bool) -> dict:  # type: ignore[type-arg]
    sys_("settimeofday", None, None)   # both NULL: checks the privilege, changes nothing (glibc's wrapper
    #                                    dereferences a NULL tv, hence the raw call)
    return result(True)


def p_reboot(params: dict, host: bool) -> dict:  # type: ignore[type-arg]
    """reboot(POWER_OFF) from inside a PID namespace kills that namespace's init (a job's own PID 1)."""
    LINUX_REBOOT_CMD_POWER_OFF = 0x4321FEDC

    def attempt() -> dict:  # type: ignore[type-arg]
        if host:   # a throwaway PID namespace, as a job has one
            call(LIBC.unshare(CLONE_NEWPID))
            pid = os.fork()
            if pid == 0:   # PID 1 of the new namespace
                LIBC.reboot(LINUX_REBOOT_CMD_POWER_OFF)
                os._exit(3)   # not reached when reboot worked: the kernel kills this init
            _, status = os.waitpid(pid, 0)
            killed = os.WIFSIGNALED(status)
            return result(killed, 0, f"namespace init {'killed by signal ' + str(os.WTERMSIG(status)) if killed else 'survived'}")
        call(LIBC.reboot(LINUX_REBOOT_CMD_POWER_OFF))
        return result(True)
    return in_child(attempt)


def p_swapon(params: dict, host: bool) -> dict:  # type: ignore[type-arg]
    swapfile = os.path.join(scratch(params, "swap"), "swapfile")
    with open(swapfile, "wb") as fh:
        fh.write(b"\0" * (1 << 20))
    os.chmod(swapfile, 0o600)
    mkswap = shutil.which("mkswap") or "/usr/sbin/mkswap"
    subprocess.run([mkswap, swapfile], check=True, capture_output=True)
    try:
        call(LIBC.swapon(swapfile.encode(), 0))
        call(LIBC.swapoff(swapfile.encode()))
        return result(True)
    finally:
        os.unlink(swapfile)


def p_acct(params: dict, host: bool) -> dict:  # type: ignore[type-arg]
    path = os.path.join(scratch(params, "acct"), "pacct")
    open(path, "wb").close()
    call(LIBC.acct(path.encode()))
    LIBC.acct(None)   # accounting off again at once
    return result(True)


def p_open_by_handle_at(params: dict, host: bool) -> dict:  # type: ignore[type-arg]
    """Open a file by handle, the "shocker" way past a chroot; a forged handle when none can be made."""
    target = os.path.join(scratch(params, "handle"), "secret")
    with open(target, "w") as fh:
        fh.write("reached")
    handle = ctypes.create_string_buffer(8 + 128)
    struct.pack_into("<Ii", handle, 0, 128, 0)
    mount_id = ctypes.c_int()
    try:
        sys_("name_to_handle_at", -100, target.encode(), handle, ctypes.byref(mount_id), 0)
    except OSError:   # forge an ext4-style handle for inode 2 (the filesystem root), as shocker did
        struct.pack_into("<IiII", handle, 0, 8, 1, 2, 0)
    mount_fd = os.open(os.path.dirname(target), os.O_RDONLY | os.O_DIRECTORY)
    try:
        fd = sys_("open_by_handle_at", mount_fd, handle, os.O_RDONLY)
    finally:
        os.close(mount_fd)
    try:
        return result(True, 0, os.read(fd, 64).decode(errors="replace"))
    finally:
        os.close(fd)


def p_personality(params: dict, host: bool) -> dict:  # type: ignore[type-arg]
    READ_IMPLIES_EXEC = 0x0400000

    def attempt() -> dict:  # type: ignore[type-arg]
        LIBC.personality.restype = ctypes.c_int
        call(LIBC.personality(ctypes.c_ulong(READ_IMPLIES_EXEC)))
        now = LIBC.personality(ctypes.c_ulong(0xFFFFFFFF))
        return result(bool(now & READ_IMPLIES_EXEC), 0, hex(now))
    return in_child(attempt)


def p_setuid_binary(params: dict, host: bool) -> dict:  # type: ignore[type-arg]
    """Execute a setuid-root copy of ``id`` as an unprivileged user; ok when the euid became 0."""
    binary = params["setuid_binary"]
    deadline = time.monotonic() + 20
    while not os.access(binary, os.X_OK) and time.monotonic() < deadline:
        time.sleep(0.05)
    st = os.stat(binary)
    euid = subprocess.run([binary, "-u"], capture_output=True, text=True, check=True).stdout.strip()
    with open("/proc/self/status") as fh:
        nnp = [line.split()[1] for line in fh if line.startswith("NoNewPrivs:")][0]
    return result(euid == "0", 0, {"euid": euid, "uid": os.getuid(), "setuid_bit": bool(st.st_mode & 0o4000),
                                   "owner": st.st_uid, "no_new_privs": nnp})


def p_memory_hog(params: dict, host: bool) -> dict:  # type: ignore[type-arg]
    """Touch ``hog_mb`` MiB; a job over its memory limit is OOM-killed before it can report."""
    hog = bytearray(params["hog_mb"] << 20)
    for offset in range(0, len(hog), 4096):
        hog[offset] = 1
    return result(True, 0, len(hog))


def p_fork_bomb(params: dict, host: bool) -> dict:  # type: ignore[type-arg]
    """Fork (bounded) sleeping children until fork fails; ok when all ``forks`` were made."""
    children, err = [], 0
    for _ in range(params["forks"]):
        try:
            pid = os.fork()
        except OSError as exc:
            err = exc.errno or 0
            break
        if pid == 0:
            time.sleep(30)
            os._exit(0)
        children.append(pid)
    for pid in children:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    return result(len(children) == params["forks"], err, len(children))


def _throttled(path: str | None) -> int | None:
    if not path or not os.path.exists(path):
        return None
    with open(path) as fh:
        return int(dict(line.split() for line in fh)["nr_throttled"])


def p_cpu_spin(params: dict, host: bool) -> dict:  # type: ignore[type-arg]
    """Spin for ``seconds``; ok when this got at least ``share`` of a CPU. Reports nr_throttled's growth."""
    before = _throttled(params.get("cpu_stat"))
    wall0, cpu0 = time.monotonic(), time.process_time()
    while time.monotonic() - wall0 < params["seconds"]:
        pass
    share = (time.process_time() - cpu0) / (time.monotonic() - wall0)
    after = _throttled(params.get("cpu_stat"))
    grown = None if before is None or after is None else after - before
    return result(share >= params["share"], 0, {"share": round(share, 3), "throttled": grown})


PROBES = {name[2:]: fn for name, fn in globals().items() if name.startswith("p_")}


def main() -> None:
    request = json.loads(sys.argv[1])
    out = {}
    for name in request["probes"]:
        try:
            out[name] = PROBES[name](request["params"], bool(request.get("host")))
        except OSError as exc:
            out[name] = result(False, exc.errno or 0, str(exc))
        except Exception as exc:  # noqa: BLE001 - a crashing probe is reported, not fatal to the batch
            out[name] = result(False, 0, f"{type(exc).__name__}: {exc}")
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
