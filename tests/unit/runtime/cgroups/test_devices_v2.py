"""The cgroup v2 device program: what capsa assembles, what it decides, and that the kernel enforces it.

The generated instructions are run by a small interpreter written from the eBPF instruction-set
specification (independent of the assembler's helpers) and compared with a direct reading of the
rules; then the same program is loaded into the kernel and attached to a real cgroup2 directory.
"""

from __future__ import annotations

import errno
import itertools
import os
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from capsa.errors import InvalidArgument, Unsupported
from capsa.runtime.cgroups import Limits, V2Driver
from capsa.runtime.cgroups.devices_v2 import (
    DeviceRule,
    assemble,
    attach_device_program,
    attached_program_count,
    load_program,
    parse_rules,
)

MASK32 = 0xFFFFFFFF
MASK64 = (1 << 64) - 1


def run_program(program: bytes, dev_type: int, access: int, major: int, minor: int) -> int:
    """Execute the subset of eBPF the device program uses; the context is struct bpf_cgroup_dev_ctx."""
    ctx = struct.pack("<III", (access << 16) | dev_type, major, minor)
    regs = [0] * 11
    insns = [struct.unpack_from("<BBhi", program, i) for i in range(0, len(program), 8)]
    pc, steps = 0, 0
    while True:
        steps += 1
        assert steps < 10_000 and 0 <= pc < len(insns), "ran off the program"
        code, regs_byte, off, imm = insns[pc]
        dst, src = regs_byte & 0xF, regs_byte >> 4
        pc += 1
        if code == 0x61:                      # ldx w: context only (r1 holds it at entry)
            assert src == 1 and off in (0, 4, 8)
            regs[dst] = struct.unpack_from("<I", ctx, off)[0]
        elif code == 0x54:                    # alu32 and imm
            regs[dst] = (regs[dst] & imm) & MASK32
        elif code == 0x74:                    # alu32 rsh imm
            regs[dst] = (regs[dst] & MASK32) >> imm
        elif code == 0xBC:                    # alu32 mov reg
            regs[dst] = regs[src] & MASK32
        elif code == 0xB7:                    # alu64 mov imm (sign-extended)
            regs[dst] = imm & MASK64
        elif code == 0x55:                    # jne imm (64-bit compare, imm sign-extended)
            if regs[dst] != imm & MASK64:
                pc += off
        elif code == 0x5D:                    # jne reg
            if regs[dst] != regs[src]:
                pc += off
        elif code == 0x95:
            return regs[0]
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")


def reference(rules: list[DeviceRule], dev_type: int, access: int, major: int, minor: int) -> int:
    type_letter = {1: "b", 2: "c"}[dev_type]
    wanted = {letter for bit, letter in ((1, "m"), (2, "r"), (4, "w")) if access & bit}
    for rule in rules:
        if rule.type not in ("a", type_letter):
            continue
        if not wanted <= set(rule.access):
            continue
        if rule.major is not None and rule.major != major:
            continue
        if rule.minor is not None and rule.minor != minor:
            continue
        return 1
    return 0


MINIMAL = ["c 1:3 rw", "c 1:5 rw", "c 1:7 rw", "c 1:8 rw", "c 1:9 rw", "c 5:0 rw", "c 5:2 rw", "c 136:* rw"]
RULE_SETS = [
    [],
    MINIMAL,
    ["a"],
    ["c 1:3 rwm", "a"],
    ["b *:* m", "c *:* m", "c 195:255 rw", "c 195:0 rw"],
    ["c 10:* r", "b 8:0 w", "c *:7 rw"],
    ["c 4095:1048575 rwm"],
]
DEVICES = [(t, major, minor) for t in (1, 2) for major, minor in
           ((1, 3), (1, 5), (1, 9), (1, 11), (5, 0), (5, 2), (136, 0), (136, 77), (8, 0), (10, 229),
            (195, 0), (195, 1), (195, 255), (254, 0), (4095, 1048575))]


@pytest.mark.parametrize("allow", RULE_SETS, ids=lambda a: ",".join(a) or "empty")
def test_program_decides_exactly_as_the_rules_read(allow: list[str]) -> None:
    rules = parse_rules(allow)
    program = assemble(rules)
    for (dev_type, major, minor), access in itertools.product(DEVICES, range(1, 8)):
        assert run_program(program, dev_type, access, major, minor) == reference(
            rules, dev_type, access, major, minor), (allow, dev_type, access, major, minor)


def test_minimal_dev_allows_its_nodes_for_reading_and_writing_but_never_mknod() -> None:
    program = assemble(parse_rules(MINIMAL))
    char, read_write, mknod = 2, 2 | 4, 1
    assert run_program(program, char, read_write, 1, 3) == 1      # /dev/null
    assert run_program(program, char, read_write, 136, 42) == 1   # a pty
    assert run_program(program, char, mknod, 1, 3) == 0
    assert run_program(program, char, read_write, 1, 11) == 0     # /dev/kmsg
    assert run_program(program, 1, read_write, 1, 3) == 0         # a block device with null's numbers


def test_allow_all_ends_the_program_so_no_instruction_is_unreachable() -> None:
    program = assemble(parse_rules(["c 1:3 rw", "a", "c 1:5 rw"]))
    assert program == assemble(parse_rules(["c 1:3 rw", "a"]))
    assert program.endswith(struct.pack("<BBhi", 0xB7, 0, 0, 1) + struct.pack("<BBhi", 0x95, 0, 0, 0))


def test_every_jump_lands_inside_the_program() -> None:
    program = assemble(parse_rules(MINIMAL + ["b *:* m", "c 10:200 r"]))
    count = len(program) // 8
    for index in range(count):
        code, _, off, _ = struct.unpack_from("<BBhi", program, index * 8)
        if code in (0x55, 0x5D):
            assert 0 < index + 1 + off < count


def test_rules_are_parsed_with_wildcards_and_rejected_when_malformed() -> None:
    assert parse_rules(["c 136:* rw", "b *:* m", "a"]) == [
        DeviceRule("c", 136, None, "rw"), DeviceRule("b", None, None, "m"), DeviceRule("a", None, None, "rwm")]
    for bad in ("c 1:3", "x 1:3 rw", "c 1:3 rwx", "c -1:3 r"):
        with pytest.raises(InvalidArgument):
            parse_rules([bad])


# -- the real kernel ----------------------------------------------------------------------------
UNIFIED = Path("/sys/fs/cgroup/unified")


def _cgroup2_root() -> Path | None:
    for candidate in (UNIFIED, Path("/sys/fs/cgroup")):
        if (candidate / "cgroup.procs").exists() and (candidate / "cgroup.controllers").exists():
            return candidate
    return None


@pytest.fixture
def cgroup2_dir() -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("loading a device program needs root")
    root = _cgroup2_root()
    if root is None:
        pytest.skip("no cgroup2 filesystem is mounted")
    path = root / f"capsa-test-devices-{os.getpid()}"
    try:
        path.mkdir()
    except OSError as exc:
        pytest.skip(f"cannot create a cgroup2 directory under {root}: {exc}")
    try:
        yield path
    finally:
        path.rmdir()


def _attach_or_skip(path: Path, allow: list[str]) -> None:
    try:
        attach_device_program(path, allow)
    except Unsupported as exc:
        pytest.skip(f"this kernel does not attach cgroup device programs here: {exc}")


PROBE = "echo x > /dev/null && echo null-ok; head -c1 /dev/zero | wc -c"


def _run_in(path: Path, command: str) -> subprocess.CompletedProcess[str]:
    def join() -> None:
        (path / "cgroup.procs").write_text("0")

    return subprocess.run(["sh", "-c", command], preexec_fn=join, capture_output=True, text=True, timeout=10)


def test_kernel_accepts_the_program_and_enforces_it_on_open(cgroup2_dir: Path) -> None:
    host = subprocess.run(["sh", "-c", PROBE], capture_output=True, text=True)
    assert host.stdout.split() == ["null-ok", "1"]          # both devices open outside the cgroup
    _attach_or_skip(cgroup2_dir, ["c 1:3 rw"])
    assert attached_program_count(cgroup2_dir) == 1
    inside = _run_in(cgroup2_dir, PROBE)
    assert inside.stdout.split() == ["null-ok", "0"]
    assert "/dev/zero" in inside.stderr and "Operation not permitted" in inside.stderr


def test_kernel_refuses_mknod_without_the_m_access(cgroup2_dir: Path, tmp_path: Path) -> None:
    node = tmp_path / "null"
    _attach_or_skip(cgroup2_dir, ["c 1:3 rw"])
    inside = _run_in(cgroup2_dir, f"mknod {node} c 1 3")
    assert inside.returncode != 0 and "Operation not permitted" in inside.stderr
    assert not node.exists()
    os.mknod(node, 0o600 | 0o020000, os.makedev(1, 3))   # the host may
    assert node.is_char_device()


def test_v2_job_cgroup_device_rules_use_the_program(cgroup2_dir: Path) -> None:
    driver = V2Driver(cgroup2_dir, prefix="capsa")
    cg = driver.create("devjob", Limits())
    try:
        try:
            cg.device_rules(["c 1:3 rw", "c 1:5 r"])
        except Unsupported as exc:
            pytest.skip(f"device programs cannot be attached here: {exc}")
        inside = _run_in(cg.path, PROBE + "; echo y > /dev/zero || echo zero-write-denied")
        assert inside.stdout.split() == ["null-ok", "1", "zero-write-denied"]
    finally:
        cg.remove()
        driver.cleanup()


def test_the_kernel_verifier_accepts_every_rule_shape() -> None:
    if os.geteuid() != 0:
        pytest.skip("loading a device program needs root")
    for allow in RULE_SETS:
        try:
            fd = load_program(assemble(parse_rules(allow)))
        except Unsupported as exc:
            if exc.detail.get("errno") in (errno.EPERM, errno.ENOSYS):
                pytest.skip(f"bpf(2) is not available: {exc}")
            raise
        os.close(fd)
