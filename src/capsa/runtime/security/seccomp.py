"""Seccomp profiles: load and validate the JSON files, compile them once, install the BPF per job.

Building a libseccomp filter costs about a millisecond and allocates; a job start
cannot afford that. So each profile is compiled **once** (:func:`compile_profile`,
cached, returns the raw ``struct sock_filter`` array that libseccomp exports; the
zygote has a child do it, :func:`capsa.runtime.security.bpf.compile_apart`, so it
never loads libseccomp itself) and every job's stage two installs those bytes with
one ``prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog)`` (:func:`install_bpf`).

The filter contains only the native architecture, so libseccomp makes it check
``seccomp_data.arch`` first: a syscall made through another ABI (``int 0x80``
i386 calls from a 64-bit process; on x86_64 also any x32 call, whose number has
bit 30 set) kills the process (``KILL_PROCESS``), since a deny-list written in
x86_64 numbers would not apply to them.

Profile file schema (``profiles/<name>.json``, documented in docs/security.md)::

    {"description": "...",
     "defaultAction": "allow" | "errno" | "kill_process" | "kill_thread" | "trap" | "log",
     "defaultErrno": "EPERM",                      # with defaultAction errno
     "syscalls": [{"names": ["mount", ...],
                   "action": "errno", "errno": "EPERM",
                   "args": [{"index": 0, "op": "MASKED_EQ", "value": MASK, "valueTwo": EXPECTED}],
                   "optional": false,              # name may be missing on this arch / libseccomp
                   "comment": "why"}]}

``op`` is one of ``EQ NE LT LE GE GT`` (``value``), ``MASKED_EQ`` (``value`` is the
mask, ``valueTwo`` the expected result, as in Docker's profiles) or ``NOT_IN``
(``values``: matches when the argument's low 32 bits are none of them; expanded
into ``MASKED_EQ`` rules because libseccomp allows one comparison per argument).
"""

from __future__ import annotations

import errno as errno_mod
import functools
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import pyseccomp

from capsa.errors import InvalidArgument, NotFound
from capsa.runtime.security.bpf import BPF_MAXINSNS, PROFILE_NAMES, UNCONFINED, install_bpf, prepare

__all__ = [
    "PROFILE_NAMES",
    "UNCONFINED",
    "ArgCondition",
    "SeccompProfile",
    "SyscallRule",
    "build_filter",
    "compile_profile",
    "complement_masks",
    "install_bpf",
    "load_profile",
    "parse_profile",
]

_ACTIONS = {
    "allow": pyseccomp.ALLOW,
    "kill_process": pyseccomp.KILL_PROCESS,
    "kill_thread": pyseccomp.KILL_THREAD,
    "trap": pyseccomp.TRAP,
    "log": pyseccomp.LOG,
}
_OPS = {
    "EQ": pyseccomp.EQ, "NE": pyseccomp.NE, "LT": pyseccomp.LT, "LE": pyseccomp.LE,
    "GE": pyseccomp.GE, "GT": pyseccomp.GT, "MASKED_EQ": pyseccomp.MASKED_EQ,
}
_NOT_IN = "NOT_IN"
_MAX_ARG = (1 << 64) - 1

# Syscalls numbered 424 and up share one number on every architecture capsa supports. This table
# names those newer than the libseccomp release the host may ship (2.5.4 here), so a profile can
# still name them; it is consulted only when libseccomp does not know the name.
_UNIFIED_ARCHES = (pyseccomp.Arch.X86_64, pyseccomp.Arch.AARCH64, pyseccomp.Arch.RISCV64)
_UNIFIED_SYSCALLS = {
    "cachestat": 451, "fchmodat2": 452, "map_shadow_stack": 453, "futex_wake": 454, "futex_wait": 455,
    "futex_requeue": 456, "statmount": 457, "listmount": 458, "lsm_get_self_attr": 459,
    "lsm_set_self_attr": 460, "lsm_list_modules": 461, "mseal": 462, "setxattrat": 463,
    "getxattrat": 464, "listxattrat": 465, "removexattrat": 466, "open_tree_attr": 467,
    "file_getattr": 468, "file_setattr": 469,
}
_ARCH_NAMES = {
    pyseccomp.Arch.X86_64: "x86_64", pyseccomp.Arch.AARCH64: "aarch64", pyseccomp.Arch.RISCV64: "riscv64",
}


@dataclass(frozen=True)
class ArgCondition:
    """One comparison on syscall argument ``index`` (0-5)."""

    index: int
    op: str
    value: int = 0
    value_two: int = 0
    values: tuple[int, ...] = ()


@dataclass(frozen=True)
class SyscallRule:
    names: tuple[str, ...]
    action: str
    errno: int | None = None
    args: tuple[ArgCondition, ...] = ()
    optional: bool = False


@dataclass(frozen=True)
class SeccompProfile:
    name: str
    default_action: str
    default_errno: int | None
    rules: tuple[SyscallRule, ...]
    description: str = ""


# -- parsing and validation ---------------------------------------------------------------------
def _bad(profile: str, where: str, message: str) -> InvalidArgument:
    return InvalidArgument(f"seccomp profile {profile!r}: {where}: {message}", detail={"profile": profile})


def _keys(obj: object, allowed: set[str], required: set[str], profile: str, where: str) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        raise _bad(profile, where, f"expected an object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise _bad(profile, where, f"unknown key(s) {', '.join(map(repr, unknown))}")
    missing = sorted(required - set(obj))
    if missing:
        raise _bad(profile, where, f"missing key(s) {', '.join(map(repr, missing))}")
    return obj


def _int(value: object, profile: str, where: str, *, low: int = 0, high: int = _MAX_ARG) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _bad(profile, where, f"expected an integer in [{low}, {high}], got {value!r}")
    return value


def _errno(value: object, profile: str, where: str) -> int:
    if isinstance(value, str):
        code = getattr(errno_mod, value, None)
        if not isinstance(code, int) or not value.startswith("E"):
            raise _bad(profile, where, f"unknown errno name {value!r}")
        return code
    return _int(value, profile, where, low=1, high=4095)


def _action(value: object, profile: str, where: str) -> str:
    if value != "errno" and value not in _ACTIONS:
        raise _bad(profile, where, f"unknown action {value!r} (known: errno, {', '.join(_ACTIONS)})")
    return str(value)


def _parse_arg(obj: object, profile: str, where: str) -> ArgCondition:
    arg = _keys(obj, {"index", "op", "value", "valueTwo", "values"}, {"index", "op"}, profile, where)
    index = _int(arg["index"], profile, f"{where}.index", high=5)
    op = arg["op"]
    if op == _NOT_IN:
        if "value" in arg or "valueTwo" in arg or "values" not in arg:
            raise _bad(profile, where, "NOT_IN takes 'values' (a list) and no 'value'/'valueTwo'")
        values = arg["values"]
        if not isinstance(values, list) or not values:
            raise _bad(profile, f"{where}.values", "expected a non-empty list")
        ints = tuple(sorted({_int(v, profile, f"{where}.values", high=0xFFFFFFFF) for v in values}))
        return ArgCondition(index, op, values=ints)
    if op not in _OPS:
        raise _bad(profile, f"{where}.op", f"unknown op {op!r} (known: {', '.join([*_OPS, _NOT_IN])})")
    if "values" in arg or "value" not in arg:
        raise _bad(profile, where, f"{op} takes 'value' and no 'values'")
    if (op == "MASKED_EQ") != ("valueTwo" in arg):
        raise _bad(profile, where, "'valueTwo' is required with MASKED_EQ and only there")
    value = _int(arg["value"], profile, f"{where}.value")
    value_two = _int(arg.get("valueTwo", 0), profile, f"{where}.valueTwo")
    return ArgCondition(index, op, value, value_two)


def _parse_rule(obj: object, profile: str, where: str) -> SyscallRule:
    rule = _keys(obj, {"names", "action", "errno", "args", "optional", "comment"}, {"names", "action"},
                 profile, where)
    names = rule["names"]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise _bad(profile, f"{where}.names", "expected a non-empty list of syscall names")
    if len(set(names)) != len(names):
        raise _bad(profile, f"{where}.names", "a name is listed twice")
    action = _action(rule["action"], profile, f"{where}.action")
    if action == "errno":
        code: int | None = _errno(rule.get("errno", "EPERM"), profile, f"{where}.errno")
    elif "errno" in rule:
        raise _bad(profile, where, "'errno' is only meaningful with action 'errno'")
    else:
        code = None
    raw_args = rule.get("args", [])
    if not isinstance(raw_args, list):
        raise _bad(profile, f"{where}.args", "expected a list")
    args = tuple(_parse_arg(a, profile, f"{where}.args[{i}]") for i, a in enumerate(raw_args))
    if len({a.index for a in args}) != len(args):
        raise _bad(profile, f"{where}.args", "one comparison per argument index (a libseccomp limit)")
    optional = rule.get("optional", False)
    if not isinstance(optional, bool):
        raise _bad(profile, f"{where}.optional", "expected true or false")
    if not isinstance(rule.get("comment", ""), str):
        raise _bad(profile, f"{where}.comment", "expected a string")
    return SyscallRule(tuple(names), action, code, args, optional)


def parse_profile(doc: object, *, name: str) -> SeccompProfile:
    """Validate a decoded profile document; raises ``InvalidArgument`` naming the bad entry."""
    top = _keys(doc, {"description", "defaultAction", "defaultErrno", "syscalls"}, {"defaultAction", "syscalls"},
                name, "top level")
    default_action = _action(top["defaultAction"], name, "defaultAction")
    if default_action == "errno":
        default_errno: int | None = _errno(top.get("defaultErrno", "EPERM"), name, "defaultErrno")
    elif "defaultErrno" in top:
        raise _bad(name, "defaultErrno", "only meaningful with defaultAction 'errno'")
    else:
        default_errno = None
    if not isinstance(top["syscalls"], list):
        raise _bad(name, "syscalls", "expected a list")
    rules = tuple(_parse_rule(r, name, f"syscalls[{i}]") for i, r in enumerate(top["syscalls"]))
    seen: dict[str, tuple[int, SyscallRule]] = {}
    for i, rule in enumerate(rules):
        if (rule.action, rule.errno) == (default_action, default_errno):
            raise _bad(name, f"syscalls[{i}]", "action equals the default action, so the rule does nothing")
        for syscall in rule.names:
            if syscall in seen:
                j, other = seen[syscall]
                # libseccomp silently drops a conditional rule next to an unconditional one.
                if not rule.args or not other.args:
                    raise _bad(name, f"syscalls[{i}]", f"{syscall!r} has an unconditional rule in syscalls[{j}] "
                               "and another rule: only one of them would apply")
            else:
                seen[syscall] = (i, rule)
    description = top.get("description", "")
    if not isinstance(description, str):
        raise _bad(name, "description", "expected a string")
    return SeccompProfile(name, default_action, default_errno, rules, description)


def load_profile(name: str) -> SeccompProfile:
    """Load and validate a built-in profile (``default`` or ``strict``) from ``profiles/``."""
    if name not in PROFILE_NAMES or name == UNCONFINED:
        raise NotFound(f"no seccomp profile named {name!r} (known: {', '.join(PROFILE_NAMES)})")
    text = (resources.files(__package__) / "profiles" / f"{name}.json").read_text(encoding="utf-8")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"seccomp profile {name!r}: not valid JSON: {exc}") from None
    return parse_profile(doc, name=name)


# -- compilation --------------------------------------------------------------------------------
def complement_masks(values: Sequence[int], width: int = 32) -> list[tuple[int, int]]:
    """(mask, expected) pairs whose ``x & mask == expected`` tests together match exactly the
    ``width``-bit values *not* in ``values``.

    Walks the binary trie of ``values`` from the top bit: wherever one branch holds no
    value, that whole branch (fixed prefix, free low bits) is one pair.
    """
    pairs: list[tuple[int, int]] = []

    def walk(mask: int, prefix: int, bit: int, members: list[int]) -> None:
        if bit < 0:
            return
        b = 1 << bit
        ones = [v for v in members if v & b]
        zeros = [v for v in members if not v & b]
        for branch, sub in ((prefix, zeros), (prefix | b, ones)):
            if sub:
                walk(mask | b, branch, bit - 1, sub)
            else:
                pairs.append((mask | b, branch))

    walk(0, 0, width - 1, sorted(set(values)))
    return pairs


def _action_value(action: str, code: int | None) -> int:
    return pyseccomp.ERRNO(code or errno_mod.EPERM) if action == "errno" else _ACTIONS[action]


def _resolve(name: str, arch: int) -> int | None:
    nr = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name)
    if nr == -1 and arch in _UNIFIED_ARCHES:
        nr = _UNIFIED_SYSCALLS.get(name, -1)
    return nr if nr >= 0 else None  # below -1: libseccomp knows it, but not on this architecture


def _arg_sets(args: tuple[ArgCondition, ...]) -> list[list[pyseccomp.Arg]]:
    fixed = [pyseccomp.Arg(a.index, _OPS[a.op], a.value, a.value_two) for a in args if a.op != _NOT_IN]
    not_in = [a for a in args if a.op == _NOT_IN]
    if not not_in:
        return [fixed]
    cond = not_in[0]
    return [[*fixed, pyseccomp.Arg(cond.index, pyseccomp.MASKED_EQ, m, v)] for m, v in complement_masks(cond.values)]


def build_filter(profile: SeccompProfile) -> tuple[pyseccomp.SyscallFilter, frozenset[str]]:
    """A libseccomp filter for the native architecture, and the optional names it skipped.

    A non-optional name this architecture (or this libseccomp) does not know is an
    ``InvalidArgument``: a deny-list silently missing an entry is worse than no start.
    """
    arch = pyseccomp.system_arch()
    filt = pyseccomp.SyscallFilter(_action_value(profile.default_action, profile.default_errno))
    filt.set_attr(pyseccomp.Attr.ACT_BADARCH, pyseccomp.KILL_PROCESS)
    try:
        # A binary tree of syscall numbers instead of a linear chain: fewer instructions per call,
        # and the kernel's install-time pass over every syscall number (its allow cache) is
        # about twice as fast (measured: 82 vs 122 us for the default profile).
        filt.set_attr(pyseccomp.Attr.CTL_OPTIMIZE, 2)
    except OSError:
        pass  # libseccomp < 2.5: the linear chain is correct, only slower
    skipped: set[str] = set()
    for i, rule in enumerate(profile.rules):
        action = _action_value(rule.action, rule.errno)
        arg_sets = _arg_sets(rule.args)
        for name in rule.names:
            nr = _resolve(name, arch)
            if nr is None:
                if rule.optional:
                    skipped.add(name)
                    continue
                raise _bad(profile.name, f"syscalls[{i}]", f"syscall {name!r} does not exist on "
                           f"{_ARCH_NAMES.get(arch, hex(arch))} (or this libseccomp does not know it); "
                           "mark the rule \"optional\": true if that is expected")
            for args in arg_sets:
                try:
                    filt.add_rule(action, nr, *args)
                except OSError as exc:
                    raise _bad(profile.name, f"syscalls[{i}]", f"libseccomp refused the rule for {name!r}: "
                               f"{exc.strerror}") from None
    return filt, frozenset(skipped)


class _Fd:
    """What ``SyscallFilter.export_bpf`` wants: an object with ``fileno()``."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def fileno(self) -> int:
        return self._fd


@functools.cache
def compile_profile(name: str) -> bytes:
    """The profile's BPF program (``struct sock_filter[]``), built once per process and cached.

    Call it in the zygote before forking jobs, for every profile in use; ``unconfined``
    compiles to ``b""``, which :func:`install_bpf` treats as "no filter".
    """
    if name == UNCONFINED:
        return b""
    filt, _skipped = build_filter(load_profile(name))
    # A memfd, not a pipe: the program may be larger than a pipe buffer.
    fd = os.memfd_create(f"capsa-seccomp-{name}", os.MFD_CLOEXEC)
    try:
        filt.export_bpf(_Fd(fd))
        size = os.fstat(fd).st_size
        bpf = os.pread(fd, size, 0)
    finally:
        os.close(fd)
    if not bpf or len(bpf) % 8 or len(bpf) // 8 > BPF_MAXINSNS:
        raise InvalidArgument(f"seccomp profile {name!r} compiled to an unusable program ({len(bpf)} bytes)")
    prepare(bpf)
    return bpf
