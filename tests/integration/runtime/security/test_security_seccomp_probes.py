"""The compiled seccomp profiles, installed in a throwaway process, against real attacks.

Every refusal is paired with the same attempt in the same kind of process without
the filter, which must get through, so no test passes because the attack was
impossible anyway.
"""

from __future__ import annotations

import errno
import platform
import signal

import pytest

from tests.integration.runtime.security.conftest import Run

ATTACKS = [
    ("mount", "/mnt"),
    ("unshare_user", ""),
    ("setns_self", ""),
    ("fsopen", ""),
    ("ptrace", ""),
    ("keyctl", ""),
    ("bpf", ""),
    ("userfaultfd", ""),
    ("clone_newns", ""),
    ("personality", "0x0400000"),  # READ_IMPLIES_EXEC
    ("personality", "0x0040000"),  # ADDR_NO_RANDOMIZE
]


@pytest.mark.parametrize(("probe", "arg"), ATTACKS, ids=[f"{p}-{a}" if a else p for p, a in ATTACKS])
@pytest.mark.parametrize("profile", ["default", "strict"])
def test_profile_refuses_attack_that_works_on_the_host(run: Run, profile: str, probe: str, arg: str) -> None:
    host = run(probe=probe, arg=arg)
    assert host.ok, f"{probe} already fails without seccomp: {host.result}"
    confined = run("--profile", profile, probe=probe, arg=arg)
    assert confined.errno == errno.EPERM


@pytest.mark.parametrize(
    ("probe", "arg", "expected"),
    [
        ("clone_plain", "", 0),
        ("posix_spawn", "", 0),  # glibc tries clone3 first: ENOSYS must make it fall back to clone
        ("fork_exec", "", 0),
        ("personality", "0xffffffff", None),  # the query
        ("personality", "8", None),  # PER_LINUX32
    ],
)
@pytest.mark.parametrize("profile", ["default", "strict"])
def test_profile_allows_ordinary_process_calls(run: Run, profile: str, probe: str, arg: str,
                                               expected: int | None) -> None:
    outcome = run("--profile", profile, probe=probe, arg=arg)
    assert outcome.ok, outcome.result
    if expected is not None:
        assert outcome.value == expected


def test_filter_is_active_and_sets_no_new_privs(run: Run) -> None:
    host = run(probe="status").value
    assert (host["Seccomp"], host["NoNewPrivs"]) == ("0", "0")
    status = run("--profile", "default", probe="status").value
    assert (status["Seccomp"], status["Seccomp_filters"], status["NoNewPrivs"]) == ("2", "1", "1")


def test_every_unconditional_denial_of_the_default_profile_answers_eperm(run: Run) -> None:
    results = run("--profile", "default", probe="denylist").value
    assert {"mount", "umount2", "pivot_root", "kexec_load", "init_module", "bpf", "keyctl", "ptrace",
            "open_by_handle_at", "settimeofday", "acct", "swapon", "reboot"} <= set(results)
    expected = {name: errno.ENOSYS if name == "clone3" else errno.EPERM for name in results}
    assert results == expected


@pytest.mark.skipif(platform.machine() != "x86_64", reason="i386 and x32 ABIs exist only on x86_64")
@pytest.mark.parametrize("profile", ["default", "strict"])
def test_foreign_abi_syscalls_kill_the_process(run: Run, profile: str) -> None:
    host = run(probe="i386_getpid")
    assert host.value is True  # the int 0x80 entry works here without a filter
    assert run("--profile", profile, probe="i386_getpid").returncode == -signal.SIGSYS
    # x32 may be compiled out of the host kernel (ENOSYS); the filter must kill regardless.
    host_x32 = run(probe="x32_getpid")
    assert host_x32.returncode == 0 and (host_x32.ok or host_x32.errno == errno.ENOSYS)
    assert run("--profile", profile, probe="x32_getpid").returncode == -signal.SIGSYS


def test_strict_refuses_packet_sockets_that_default_leaves_to_capabilities(run: Run) -> None:
    assert run(probe="socket", arg="17,3").ok  # AF_PACKET, SOCK_RAW as root on the host
    assert run("--profile", "default", probe="socket", arg="17,3").ok
    assert run("--profile", "strict", probe="socket", arg="17,3").errno == errno.EPERM
    assert run("--profile", "strict", probe="socket", arg="2,2").ok  # AF_INET datagram stays


def test_default_refuses_vsock(run: Run) -> None:
    host = run(probe="socket", arg="40,1")
    if not host.ok and host.errno in (errno.EAFNOSUPPORT, errno.ENODEV):
        pytest.skip("this kernel has no AF_VSOCK, so the refusal cannot be told apart")
    assert host.ok, host.result
    assert run("--profile", "default", probe="socket", arg="40,1").errno == errno.EPERM
