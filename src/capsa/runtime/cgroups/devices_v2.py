"""Device access on cgroup v2: an eBPF ``BPF_PROG_TYPE_CGROUP_DEVICE`` program per job cgroup.

cgroup v2 has no ``devices.allow``/``devices.deny`` files. The kernel instead runs the
device programs attached to a process's cgroup (and its ancestors) whenever the process
opens or mknods a device node; a program returning 0 makes that fail with ``EPERM``.

The program is assembled here by hand from a list of v1-style allow rules (the same
strings :meth:`JobCgroup.device_rules` takes on v1: ``"c 1:3 rw"``, ``"c 136:* rw"``,
``"a"``), the way runc's ``devicefilter`` does, so no compiler or libbpf is needed::

    r2 = ctx->access_type & 0xffff      # BPF_DEVCG_DEV_BLOCK (1) | BPF_DEVCG_DEV_CHAR (2)
    r3 = ctx->access_type >> 16         # BPF_DEVCG_ACC_MKNOD (1) | _READ (2) | _WRITE (4)
    r4 = ctx->major; r5 = ctx->minor
    for each rule:                      # any test failing jumps to the next rule
        if r2 != TYPE: next             # omitted for 'a'
        if (r3 & ~ALLOWED) != 0: next   # the requested access must be a subset
        if r4 != MAJOR: next            # omitted for '*'
        if r5 != MINOR: next            # omitted for '*'
        return 1
    return 0

It is attached with ``BPF_F_ALLOW_MULTI``: the programs of every ancestor still run and
all must allow, so a job can only ever be narrower than its parent (and this composes
with the programs systemd attaches to slices). The program lives as long as the cgroup:
removing the job's cgroup directory frees it.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct
from dataclasses import dataclass
from pathlib import Path

from capsa.errors import Unsupported

from .parse import parse_device_rule

__all__ = [
    "DeviceRule",
    "assemble",
    "attach_device_program",
    "attached_program_count",
    "load_program",
    "parse_rules",
]

# uapi/linux/bpf.h
BPF_PROG_LOAD = 5
BPF_PROG_ATTACH = 8
BPF_PROG_QUERY = 16
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6
BPF_F_ALLOW_MULTI = 2
BPF_DEVCG_ACC_MKNOD, BPF_DEVCG_ACC_READ, BPF_DEVCG_ACC_WRITE = 1, 2, 4
BPF_DEVCG_DEV_BLOCK, BPF_DEVCG_DEV_CHAR = 1, 2

_ACCESS_BITS = {"m": BPF_DEVCG_ACC_MKNOD, "r": BPF_DEVCG_ACC_READ, "w": BPF_DEVCG_ACC_WRITE}
_TYPE_CODES = {"b": BPF_DEVCG_DEV_BLOCK, "c": BPF_DEVCG_DEV_CHAR}
_ALL_ACCESS = BPF_DEVCG_ACC_MKNOD | BPF_DEVCG_ACC_READ | BPF_DEVCG_ACC_WRITE

# Instruction opcodes used (class | op | source), uapi/linux/bpf_common.h + bpf.h.
LDX_MEM_W = 0x61      # dst = *(u32 *)(src + off)
ALU32_AND_K = 0x54    # dst = (u32)(dst & imm)
ALU32_RSH_K = 0x74    # dst = (u32)(dst >> imm)
ALU32_MOV_X = 0xBC    # dst = (u32)src
ALU64_MOV_K = 0xB7    # dst = imm
JMP_JNE_K = 0x55      # if dst != imm: pc += off
JMP_JNE_X = 0x5D      # if dst != src: pc += off
JMP_EXIT = 0x95

# struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }
_CTX_ACCESS_TYPE, _CTX_MAJOR, _CTX_MINOR = 0, 4, 8

_BPF_SYSCALL = {"x86_64": 321, "aarch64": 280, "riscv64": 280, "ppc64le": 361, "s390x": 351, "armv7l": 386}
_ATTR_SIZE = 128   # bigger than any field used; the kernel zero-checks what it does not know
_LOG_SIZE = 1 << 16


@dataclass(frozen=True)
class DeviceRule:
    """One allow rule; ``None`` for a wildcard. ``type`` is 'a' (any), 'b' or 'c'."""

    type: str
    major: int | None
    minor: int | None
    access: str

    @property
    def matches_everything(self) -> bool:
        return self.type == "a" and self.major is None and self.minor is None and set(self.access) == set("rwm")


def parse_rules(allow: list[str] | tuple[str, ...]) -> list[DeviceRule]:
    """v1 ``devices.allow`` syntax → rules (``InvalidArgument`` names a bad entry)."""
    rules = []
    for entry in allow:
        text = parse_device_rule(entry)
        if text == "a":
            rules.append(DeviceRule("a", None, None, "rwm"))
            continue
        kind, numbers, access = text.split(" ")
        major, minor = numbers.split(":")
        rules.append(DeviceRule(kind, None if major == "*" else int(major), None if minor == "*" else int(minor),
                                access))
    return rules


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    """One ``struct bpf_insn`` (8 bytes, little-endian register nibbles: dst low, src high)."""
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


_PRELUDE = b"".join((
    _insn(LDX_MEM_W, dst=2, src=1, off=_CTX_ACCESS_TYPE),
    _insn(ALU32_AND_K, dst=2, imm=0xFFFF),
    _insn(LDX_MEM_W, dst=3, src=1, off=_CTX_ACCESS_TYPE),
    _insn(ALU32_RSH_K, dst=3, imm=16),
    _insn(LDX_MEM_W, dst=4, src=1, off=_CTX_MAJOR),
    _insn(LDX_MEM_W, dst=5, src=1, off=_CTX_MINOR),
))
_RETURN_1 = _insn(ALU64_MOV_K, dst=0, imm=1) + _insn(JMP_EXIT)
_RETURN_0 = _insn(ALU64_MOV_K, dst=0, imm=0) + _insn(JMP_EXIT)


def _block(rule: DeviceRule) -> bytes:
    """The tests of one rule, each jumping past the block on mismatch, then ``return 1``."""
    # Each test is a list of (opcode, dst, src, imm); the jump offsets are filled in once the length is known.
    tests: list[list[tuple[int, int, int, int]]] = []
    if rule.type != "a":
        tests.append([(JMP_JNE_K, 2, 0, _TYPE_CODES[rule.type])])
    mask = 0
    for letter in rule.access:
        mask |= _ACCESS_BITS[letter]
    if mask != _ALL_ACCESS:
        # r1 = r3 & mask; if r1 != r3: next   (r1, the context pointer, is no longer needed)
        tests.append([(ALU32_MOV_X, 1, 3, 0), (ALU32_AND_K, 1, 0, mask), (JMP_JNE_X, 1, 3, 0)])
    if rule.major is not None:
        tests.append([(JMP_JNE_K, 4, 0, rule.major)])
    if rule.minor is not None:
        tests.append([(JMP_JNE_K, 5, 0, rule.minor)])
    flat = [insn for test in tests for insn in test]
    length = len(flat) + 2   # + return 1
    out = []
    for index, (code, dst, src, imm) in enumerate(flat):
        off = length - index - 1 if code in (JMP_JNE_K, JMP_JNE_X) else 0
        out.append(_insn(code, dst=dst, src=src, off=off, imm=imm))
    return b"".join(out) + _RETURN_1


def assemble(rules: list[DeviceRule]) -> bytes:
    """The program's instructions (``struct bpf_insn[]``) for an allow-list of rules."""
    program = bytearray(_PRELUDE)
    for rule in rules:
        if rule.matches_everything:
            # Everything after an unconditional "return 1" would be unreachable, which the verifier refuses.
            return bytes(program + _RETURN_1)
        program += _block(rule)
    return bytes(program + _RETURN_0)


# -- the bpf(2) system call ---------------------------------------------------------------
_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


def _bpf(cmd: int, attr: ctypes.Array[ctypes.c_char]) -> int:
    number = _BPF_SYSCALL.get(platform.machine())
    if number is None:
        raise Unsupported(f"the bpf(2) system call number for {platform.machine()} is not known to capsa")
    result = _syscall(ctypes.c_long(number), ctypes.c_long(cmd), attr, ctypes.c_uint(len(attr)))
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(result)


def load_program(insns: bytes, *, name: str = "capsa_devices") -> int:
    """BPF_PROG_LOAD a device program; returns its fd. The verifier's log is in the error on refusal."""
    code = ctypes.create_string_buffer(insns, len(insns))
    license_ = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(_LOG_SIZE)

    def attempt(with_log: bool) -> int:
        attr = ctypes.create_string_buffer(_ATTR_SIZE)
        struct.pack_into("<IIQQ", attr, 0, BPF_PROG_TYPE_CGROUP_DEVICE, len(insns) // 8,
                         ctypes.addressof(code), ctypes.addressof(license_))
        if with_log:
            struct.pack_into("<IIQ", attr, 24, 1, _LOG_SIZE, ctypes.addressof(log))
        attr[48:48 + len(name[:15])] = name[:15].encode()
        return _bpf(BPF_PROG_LOAD, attr)

    try:
        return attempt(with_log=False)
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EINVAL):
            raise _unsupported("loading", exc) from None
        try:   # load again with the verifier log on, only to say why
            return attempt(with_log=True)
        except OSError as again:
            detail = log.value.decode(errors="replace").strip()
            raise Unsupported(f"the kernel refused capsa's eBPF device program ({again.strerror}): "
                              f"{detail[-800:] or 'no verifier log'}") from None


def _unsupported(what: str, exc: OSError) -> Unsupported:
    return Unsupported(f"eBPF device program (BPF_PROG_TYPE_CGROUP_DEVICE): {what} failed: "
                       f"{exc.strerror or exc} (errno {exc.errno}); cgroup v2 device rules need a cgroup2 "
                       "directory, CONFIG_CGROUP_BPF and CAP_SYS_ADMIN", detail={"errno": exc.errno or 0})


def attach_device_program(cgroup_dir: Path, allow: list[str] | tuple[str, ...]) -> None:
    """Allow exactly ``allow`` to the processes of the cgroup2 directory ``cgroup_dir`` (deny the rest).

    Call before the job's first process joins the cgroup. ``Unsupported`` when the kernel
    cannot load or attach the program (or ``cgroup_dir`` is not a cgroup2 directory).
    """
    program = assemble(parse_rules(allow))
    prog_fd = load_program(program)
    try:
        try:
            cg_fd = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise _unsupported(f"opening {cgroup_dir}", exc) from None
        try:
            attr = ctypes.create_string_buffer(_ATTR_SIZE)
            struct.pack_into("<IIII", attr, 0, cg_fd, prog_fd, BPF_CGROUP_DEVICE, BPF_F_ALLOW_MULTI)
            try:
                _bpf(BPF_PROG_ATTACH, attr)
            except OSError as exc:
                raise _unsupported(f"attaching it to {cgroup_dir}", exc) from None
        finally:
            os.close(cg_fd)
    finally:
        os.close(prog_fd)   # the attachment holds its own reference


def attached_program_count(cgroup_dir: Path) -> int:
    """How many device programs are attached directly to ``cgroup_dir`` (BPF_PROG_QUERY)."""
    fd = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        ids = (ctypes.c_uint32 * 64)()
        attr = ctypes.create_string_buffer(_ATTR_SIZE)
        # struct { u32 target_fd; u32 attach_type; u32 query_flags; u32 attach_flags; u64 prog_ids; u32 prog_cnt; }
        struct.pack_into("<IIIIQI", attr, 0, fd, BPF_CGROUP_DEVICE, 0, 0, ctypes.addressof(ids), len(ids))
        _bpf(BPF_PROG_QUERY, attr)
        return int(struct.unpack_from("<I", attr, 24)[0])
    finally:
        os.close(fd)
