"""A throwaway process that applies some of capsa's job defences to itself, then attacks.

Run by the integration tests as ``python _probe_child.py [defences] PROBE [ARG]`` or
``... --exec -- ARGV`` so that no defence ever touches the pytest process. The
process first enters a private mount namespace (so a probe that succeeds leaves
no mount behind), then applies, in stage two's order, the defences asked for:
``--rlimits`` (DEFAULT_RLIMITS), ``--drop-caps`` (DEFAULT_CAPABILITIES), ``--nnp``, ``--uid``, ``--profile``.
A probe prints one JSON object: ``{"ok": true, "value": ...}`` or
``{"ok": false, "errno": N}``; ``--exec`` execs ARGV instead, as stage two does.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import mmap
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pyseccomp

from capsa import linux
from capsa.runtime import security
from capsa.runtime.security import procfs, seccomp

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


class ProbeFailed(Exception):
    def __init__(self, err: int) -> None:
        super().__init__(os.strerror(err))
        self.errno = err


def nr(name: str) -> int:
    return pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name)


def raw(name_or_nr: str | int, *args: int) -> int:
    number = nr(name_or_nr) if isinstance(name_or_nr, str) else name_or_nr
    res = _syscall(ctypes.c_long(number), *(ctypes.c_long(a) for a in args))
    if res < 0:
        raise ProbeFailed(ctypes.get_errno())
    return int(res)


# -- probes: each returns a JSON-able value on success and raises ProbeFailed on refusal ---------
def p_mount(arg: str) -> object:
    linux.mount("tmpfs", arg, "tmpfs", 0, "size=4k")
    return "mounted"


def p_mknod(arg: str) -> object:
    os.mknod(arg, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    return "created"


def p_unshare_user(_arg: str) -> object:
    return raw("unshare", linux.CLONE_NEWUSER)


def p_setns_self(_arg: str) -> object:
    fd = os.open("/proc/self/ns/uts", os.O_RDONLY)
    return raw("setns", fd, linux.CLONE_NEWUTS)


def p_fsopen(_arg: str) -> object:
    name = ctypes.create_string_buffer(b"tmpfs")
    return raw("fsopen", ctypes.addressof(name), 0) >= 0


def p_ptrace(_arg: str) -> object:
    pid = os.fork()
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    try:
        return raw("ptrace", 0x4206, pid, 0, 0)  # PTRACE_SEIZE: no stop, detaches when we kill it
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def p_keyctl(_arg: str) -> object:
    return raw("keyctl", 0, -2, 1)  # KEYCTL_GET_KEYRING_ID(KEY_SPEC_PROCESS_KEYRING, create): gone at exit


def p_bpf(_arg: str) -> object:
    attr = (ctypes.c_uint32 * 32)(2, 4, 4, 1)  # BPF_MAP_TYPE_ARRAY, key 4 B, value 4 B, 1 entry
    return raw("bpf", 0, ctypes.addressof(attr), ctypes.sizeof(attr)) >= 0  # BPF_MAP_CREATE


def p_userfaultfd(_arg: str) -> object:
    return raw("userfaultfd", os.O_CLOEXEC) >= 0


def _clone(flags: int) -> object:
    pid = raw("clone", flags | signal.SIGCHLD, 0, 0, 0, 0)
    if pid == 0:
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def p_clone_newns(_arg: str) -> object:
    return _clone(linux.CLONE_NEWNS)


def p_clone_plain(_arg: str) -> object:
    return _clone(0)


def p_posix_spawn(_arg: str) -> object:
    pid = os.posix_spawn("/bin/true", ["/bin/true"], {})
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def p_fork_exec(_arg: str) -> object:
    return subprocess.run(["/bin/true"], check=False).returncode


def p_personality(arg: str) -> object:
    return raw("personality", int(arg, 0))


def p_socket(arg: str) -> object:
    family, kind, proto = (int(x) for x in (arg + ",0").split(",")[:3])
    return raw("socket", family, kind, proto) >= 0


def p_i386_getpid(_arg: str) -> object:
    # mov eax, 20 (getpid in the i386 table); int 0x80; ret — a foreign-ABI syscall.
    code = bytes([0xB8, 20, 0, 0, 0, 0xCD, 0x80, 0xC3])
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(code)
    func = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(page)))
    return func() == os.getpid()


def p_x32_getpid(_arg: str) -> object:
    return raw(0x40000000 | 39) == os.getpid()


def p_status(_arg: str) -> object:
    with open("/proc/self/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def p_denylist(_arg: str) -> object:
    """errno of every unconditional errno rule of the default profile, called with zero arguments."""
    if p_status("")["Seccomp"] != "2":  # without a filter some of these would act on the host
        raise ProbeFailed(0)
    out: dict[str, int] = {}
    for rule in seccomp.load_profile("default").rules:
        if rule.args or rule.action != "errno":
            continue
        for name in rule.names:
            number = nr(name)
            if number < 0:
                continue
            ctypes.set_errno(0)
            res = _syscall(ctypes.c_long(number), *([ctypes.c_long(0)] * 6))
            out[name] = ctypes.get_errno() if res < 0 else 0
    return out


def p_procfs(arg: str) -> object:
    """Build a job-like root under ARG (mode host|hardened|fallback) and look at it."""
    mode, base = arg.split(":", 1)
    root = os.path.join(base, "root")
    os.mkdir(root)
    linux.mount("tmpfs", root, "tmpfs", 0, "size=64k")
    for d in ("proc", "sys"):
        os.mkdir(f"{root}/{d}")
    linux.mount("proc", root + "/proc", "proc", linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC, None)
    report: dict[str, Any] = {}
    if mode == "hardened":
        report["sys"] = security.mount_sys_readonly(root)
        report["masked"] = security.mask_proc(root)
        report["readonly"] = security.readonly_paths(root)
    elif mode == "fallback":
        procfs.bind_sys_readonly(root + "/sys")
    else:
        linux.mount("/sys", root + "/sys", None, linux.MS_BIND | linux.MS_REC, None)

    def read(path: str) -> object:
        try:
            with open(root + path, "rb") as f:
                return len(f.read(65536))
        except OSError as exc:
            return f"errno {exc.errno}"

    def open_write(path: str) -> object:
        try:
            os.close(os.open(root + path, os.O_WRONLY))  # opening is enough: nothing is written
            return "writable"
        except OSError as exc:
            return f"errno {exc.errno}"

    def listdir(path: str) -> object:
        try:
            return len(os.listdir(root + path))
        except OSError as exc:
            return f"errno {exc.errno}"

    def readonly(path: str) -> object:
        try:
            return bool(os.statvfs(root + path).f_flag & os.ST_RDONLY)
        except OSError as exc:
            return f"errno {exc.errno}"

    report.update(
        keys=read("/proc/keys"),
        timer_list=read("/proc/timer_list"),
        acpi=listdir("/proc/acpi"),
        firmware=listdir("/sys/firmware"),
        proc_sys=open_write("/proc/sys/kernel/domainname"),
        proc_irq_ro=readonly("/proc/irq"),
        sys_write=open_write("/sys/kernel/mm/transparent_hugepage/enabled"),
        sys_ro=readonly("/sys"),
        cgroup_ro=readonly("/sys/fs/cgroup/memory"),
        cgroup_listing=listdir("/sys/fs/cgroup"),
    )
    return report


PROBES: dict[str, Callable[[str], object]] = {
    name.removeprefix("p_"): fn for name, fn in globals().items() if name.startswith("p_") and callable(fn)
}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--profile", choices=["default", "strict"])
    parser.add_argument("--rlimits", action="store_true")
    parser.add_argument("--drop-caps", action="store_true")
    parser.add_argument("--nnp", action="store_true")
    parser.add_argument("--uid", type=int)
    parser.add_argument("--exec-fd-of", help="open this file before the uid switch and exec it by fd")
    parser.add_argument("probe", nargs="?")
    parser.add_argument("arg", nargs="?", default="")
    args = sys.argv[1:]
    argv = args[args.index("--exec") + 1:] if "--exec" in args else None
    opts = parser.parse_args(args[: args.index("--exec")] if argv is not None else args)
    linux.unshare(linux.CLONE_NEWNS)
    linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE, None)
    bpf = seccomp.compile_profile(opts.profile) if opts.profile else b""
    exec_fd = os.open(opts.exec_fd_of, os.O_RDONLY) if opts.exec_fd_of else None
    if opts.rlimits:
        security.apply_rlimits(security.DEFAULT_RLIMITS)
    if opts.drop_caps:
        security.drop_capabilities(security.DEFAULT_CAPABILITIES)
    if opts.nnp:
        security.set_no_new_privs()
    if opts.uid is not None:
        os.setgroups([])
        os.setgid(opts.uid)
        os.setuid(opts.uid)
    if argv is not None:
        sys.stdout.flush()
        security.install_bpf(bpf)
        if exec_fd is not None:
            os.execve(exec_fd, argv, dict(os.environ))
        os.execvpe(argv[0], argv, dict(os.environ))
    probe = PROBES[opts.probe]
    security.install_bpf(bpf)
    try:
        result: dict[str, object] = {"ok": True, "value": probe(opts.arg)}
    except ProbeFailed as exc:
        result = {"ok": False, "errno": exc.errno}
    except OSError as exc:
        result = {"ok": False, "errno": exc.errno}
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
