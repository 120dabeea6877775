"""Loading, validating and compiling seccomp profiles (libseccomp only; nothing is installed here)."""

from __future__ import annotations

import copy
import errno
import os
import random
from typing import Any

import pyseccomp
import pytest

from capsa.errors import InvalidArgument, NotFound
from capsa.runtime.security import seccomp
from capsa.runtime.security.seccomp import (
    build_filter,
    compile_profile,
    complement_masks,
    load_profile,
    parse_profile,
)

REQUIRED_DENIALS = {
    "mount", "umount2", "pivot_root", "swapon", "swapoff", "reboot", "kexec_load", "kexec_file_load",
    "init_module", "finit_module", "delete_module", "bpf", "perf_event_open", "userfaultfd", "keyctl", "add_key",
    "request_key", "open_by_handle_at", "name_to_handle_at", "unshare", "setns", "settimeofday", "clock_settime",
    "clock_adjtime", "adjtimex", "iopl", "ioperm", "acct", "quotactl", "lookup_dcookie", "ptrace",
    "process_vm_readv", "process_vm_writev", "mount_setattr", "move_mount", "open_tree", "fsopen", "fsconfig",
    "fsmount", "fspick", "syslog", "vhangup", "nfsservctl", "uselib", "create_module", "get_kernel_syms",
    "query_module",
}
PERSONALITY_ALLOWED = [0, 8, 0x20000, 0x20008, 0xFFFFFFFF]


def _unconditional(profile: seccomp.SeccompProfile) -> dict[str, tuple[str, int | None]]:
    return {n: (r.action, r.errno) for r in profile.rules if not r.args for n in r.names}


def _minimal(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"defaultAction": "allow", "syscalls": [{"names": ["mount"], "action": "errno"}]}
    doc.update(overrides)
    return doc


def test_default_profile_denies_the_required_syscalls_with_eperm() -> None:
    rules = _unconditional(load_profile("default"))
    assert {n: rules.get(n) for n in REQUIRED_DENIALS} == dict.fromkeys(REQUIRED_DENIALS, ("errno", errno.EPERM))
    assert rules["clone3"] == ("errno", errno.ENOSYS)


def test_default_profile_allows_by_default_and_guards_clone_and_personality() -> None:
    profile = load_profile("default")
    assert profile.default_action == "allow"
    clone_masks = {r.args[0].value for r in profile.rules if r.names == ("clone",)}
    assert sum(clone_masks) == 0x7E020000  # NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET, one rule each
    (personality,) = [r for r in profile.rules if r.names == ("personality",)]
    assert personality.args[0].op == "NOT_IN" and list(personality.args[0].values) == PERSONALITY_ALLOWED


def test_strict_profile_is_an_allow_list_without_escape_hatches() -> None:
    profile = load_profile("strict")
    assert (profile.default_action, profile.default_errno) == ("errno", errno.EPERM)
    allowed = {n for r in profile.rules if r.action == "allow" for n in r.names}
    assert {"execve", "openat", "mmap", "read", "write", "exit_group", "wait4", "rt_sigaction", "clone"} <= allowed
    assert not allowed & (REQUIRED_DENIALS | {"clone3", "io_uring_setup", "mknod", "mknodat", "chroot"})
    families = sorted(r.args[0].value for r in profile.rules if r.names == ("socket",))
    assert families == [1, 2, 10, 16]


@pytest.mark.parametrize("name", ["default", "strict"])
def test_profiles_compile_to_a_loadable_program_once(name: str) -> None:
    bpf = compile_profile(name)
    assert len(bpf) % 8 == 0 and 0 < len(bpf) // 8 <= 4096
    assert compile_profile(name) is bpf  # cached: the zygote pays once


def test_unconfined_compiles_to_nothing_and_has_no_file() -> None:
    assert compile_profile("unconfined") == b""
    with pytest.raises(NotFound):
        load_profile("unconfined")
    with pytest.raises(NotFound, match="no seccomp profile named 'nope'"):
        load_profile("nope")


def test_all_names_of_builtin_profiles_resolve_on_this_architecture_unless_optional() -> None:
    for name in ("default", "strict"):
        _filter, skipped = build_filter(load_profile(name))
        optional = {n for r in load_profile(name).rules if r.optional for n in r.names}
        assert skipped <= optional


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(defaultAktion="allow"), "unknown key"),
        (lambda d: d["syscalls"][0].update(nmes=["x"]), "unknown key"),
        (lambda d: d["syscalls"][0].update(action="deny"), "unknown action 'deny'"),
        (lambda d: d["syscalls"][0].update(errno="EWHAT"), "unknown errno name"),
        (lambda d: d["syscalls"][0].update(action="kill_process", errno="EPERM"), "only meaningful"),
        (lambda d: d["syscalls"][0].update(names=[]), "non-empty list"),
        (lambda d: d["syscalls"][0].update(names=["mount", "mount"]), "listed twice"),
        (lambda d: d["syscalls"][0].update(action="allow"), "equals the default action"),
        (lambda d: d["syscalls"][0].update(args=[{"index": 6, "op": "EQ", "value": 1}]), "index"),
        (lambda d: d["syscalls"][0].update(args=[{"index": 0, "op": "EQ", "value": 1},
                                                  {"index": 0, "op": "EQ", "value": 2}]), "one comparison"),
        (lambda d: d["syscalls"][0].update(args=[{"index": 0, "op": "MASKED_EQ", "value": 1}]), "valueTwo"),
        (lambda d: d["syscalls"][0].update(args=[{"index": 0, "op": "EQ", "value": -1}]), "expected an integer"),
        (lambda d: d["syscalls"][0].update(args=[{"index": 0, "op": "NOT_IN", "values": []}]), "non-empty"),
        (lambda d: d["syscalls"][0].update(args=[{"index": 0, "op": "LIKE", "value": 1}]), "unknown op"),
        (lambda d: d["syscalls"].append({"names": ["mount"], "action": "errno", "errno": "EACCES",
                                         "args": [{"index": 2, "op": "EQ", "value": 0}]}), "only one of them"),
        (lambda d: d.update(defaultErrno="EPERM"), "only meaningful"),
        (lambda d: d.update(syscalls={}), "expected a list"),
    ],
)
def test_invalid_profiles_are_refused_with_the_entry_named(mutate: Any, message: str) -> None:
    doc = copy.deepcopy(_minimal())
    mutate(doc)
    with pytest.raises(InvalidArgument, match=message) as info:
        parse_profile(doc, name="custom")
    assert "seccomp profile 'custom'" in str(info.value)


def test_unknown_syscall_is_an_error_unless_marked_optional() -> None:
    doc = _minimal(syscalls=[{"names": ["mount", "no_such_call"], "action": "errno"}])
    with pytest.raises(InvalidArgument, match="'no_such_call' does not exist.*optional"):
        build_filter(parse_profile(doc, name="custom"))
    doc["syscalls"][0]["optional"] = True
    _filter, skipped = build_filter(parse_profile(doc, name="custom"))
    assert skipped == {"no_such_call"}


def test_a_name_of_another_architecture_counts_as_unknown() -> None:
    if pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, "socketcall") >= 0:
        pytest.skip("socketcall exists natively here")
    doc = _minimal(syscalls=[{"names": ["socketcall"], "action": "errno"}])
    with pytest.raises(InvalidArgument, match="socketcall"):
        build_filter(parse_profile(doc, name="custom"))


def test_syscalls_newer_than_libseccomp_resolve_through_the_unified_table() -> None:
    doc = _minimal(syscalls=[{"names": ["open_tree_attr", "mseal"], "action": "errno"}])
    if pyseccomp.system_arch() not in seccomp._UNIFIED_ARCHES:
        pytest.skip("no unified syscall table for this architecture")
    _filter, skipped = build_filter(parse_profile(doc, name="custom"))
    assert skipped == frozenset()


def test_complement_masks_match_exactly_the_values_not_listed() -> None:
    rng = random.Random(7)
    for _ in range(50):
        values = rng.sample(range(256), rng.randint(1, 12))
        pairs = complement_masks(values, width=8)
        for x in range(256):
            matched = any(x & m == v for m, v in pairs)
            assert matched == (x not in values), (values, x)


def test_personality_complement_keeps_the_allowed_values_and_catches_unsafe_flags() -> None:
    pairs = complement_masks(PERSONALITY_ALLOWED)
    probes = [*PERSONALITY_ALLOWED, 0x0400000, 0x0040000, 0x0020009, 0xFFFFFFFE, 1, 0x80000000]
    for x in probes:
        assert any(x & m == v for m, v in pairs) == (x not in PERSONALITY_ALLOWED), hex(x)


def test_install_refuses_bytes_that_are_not_a_program_before_touching_the_process() -> None:
    # Forked so that even a regression could not filter or mark the pytest process.
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            seccomp.install_bpf(b"\0" * 12)
        except OSError as exc:
            with open("/proc/self/status") as f:
                untouched = "NoNewPrivs:\t0" in f.read()
            code = 0 if exc.errno == errno.EINVAL and untouched else 2
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
