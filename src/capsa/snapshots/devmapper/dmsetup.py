"""A typed wrapper around the ``dmsetup`` tool, as containerd's devmapper uses it.

Everything that builds a table or message, or reads dmsetup's output, is a
pure function (tested against captured output); :class:`Dmsetup` only runs
the commands and turns failures into image ADR-003's typed errors:

* "File exists" / "Device or resource busy"  → :class:`DeviceExistsError`
  (``create_thin``/``create_snap`` of a used id; ``create`` of a loaded name)
* "No such device or address" / "No such device" / "not found" /
  "Device does not exist" / "No data available" (``delete`` of an unknown
  thin id) → :class:`DeviceNotFoundError`
* "No space left on device" → :class:`PoolFullError`
* the kernel lacking device-mapper → :class:`Unsupported`

The symbolic errno (``EEXIST``, ``EBUSY``, …) goes in ``error.detail["errno"]``
so callers can still tell a busy device from an existing one.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from capsa.errors import (
    CapsaError,
    DeviceExistsError,
    DeviceNotFoundError,
    FailedPrecondition,
    InvalidArgument,
    PoolFullError,
    Timeout,
    Unsupported,
)

__all__ = [
    "DEV_MAPPER_DIR",
    "MAX_THIN_ID",
    "SECTOR_SIZE",
    "DeviceInfo",
    "Dmsetup",
    "PoolStatus",
    "TargetStatus",
    "ThinStatus",
    "classify_error",
    "create_snap_message",
    "create_thin_message",
    "delete_message",
    "device_path",
    "info_args",
    "parse_info",
    "parse_ls",
    "parse_pool_status",
    "parse_status",
    "parse_targets",
    "parse_thin_status",
    "thin_pool_table",
    "thin_table",
]

DEV_MAPPER_DIR = "/dev/mapper/"
SECTOR_SIZE = 512
#: thin device ids are 24-bit (kernel thin-provisioning.rst)
MAX_THIN_ID = (1 << 24) - 1


# -- tables and messages ---------------------------------------------------------------
def device_path(name: str) -> str:
    return name if name.startswith(DEV_MAPPER_DIR) else DEV_MAPPER_DIR + name


def _check_id(dev_id: int) -> int:
    if not 0 <= dev_id <= MAX_THIN_ID:
        raise InvalidArgument(f"thin device id {dev_id} is outside 0..{MAX_THIN_ID}")
    return dev_id


def thin_pool_table(
    metadata_dev: str,
    data_dev: str,
    data_size_bytes: int,
    block_size_sectors: int,
    low_water_mark_blocks: int,
    *,
    skip_block_zeroing: bool = True,
    error_if_no_space: bool = False,
) -> str:
    """``0 <sectors> thin-pool <meta> <data> <block size> <low water> [<#features> <feature>...]``."""
    sectors = data_size_bytes // SECTOR_SIZE
    blocks = sectors // block_size_sectors
    low = max(0, min(low_water_mark_blocks, blocks - 1))
    table = f"0 {sectors} thin-pool {metadata_dev} {data_dev} {block_size_sectors} {low}"
    # skipping zeroing of new blocks cuts creation latency (containerd's choice)
    features = [f for f, on in (("skip_block_zeroing", skip_block_zeroing), ("error_if_no_space", error_if_no_space)) if on]
    return f"{table} {len(features)} {' '.join(features)}" if features else table


def thin_table(pool_name: str, dev_id: int, size_bytes: int, external_origin: str | None = None) -> str:
    """``0 <sectors> thin /dev/mapper/<pool> <id> [external origin]``."""
    table = f"0 {size_bytes // SECTOR_SIZE} thin {device_path(pool_name)} {_check_id(dev_id)}"
    return f"{table} {external_origin}" if external_origin else table


def create_thin_message(dev_id: int) -> str:
    return f"create_thin {_check_id(dev_id)}"


def create_snap_message(dev_id: int, origin_id: int) -> str:
    return f"create_snap {_check_id(dev_id)} {_check_id(origin_id)}"


def delete_message(dev_id: int) -> str:
    return f"delete {_check_id(dev_id)}"


def info_args(name: str = "") -> list[str]:
    """The ``dmsetup info`` columns containerd reads (empty name: every device)."""
    args = ["info", "--columns", "--noheadings", "-o", "name,blkdevname,attr,major,minor,open,segments,events"]
    return [*args, "--separator", " ", *([name] if name else [])]


# -- output parsing --------------------------------------------------------------------
@dataclass(frozen=True)
class DeviceInfo:
    name: str
    block_device: str
    suspended: bool
    read_only: bool
    table_live: bool
    table_inactive: bool
    major: int
    minor: int
    open_count: int
    target_count: int
    event_number: int


def parse_info(output: str) -> list[DeviceInfo]:
    """Parse ``dmsetup`` :func:`info_args` output; "No devices found" is an empty list."""
    devices = []
    for line in output.splitlines():
        line = line.strip()
        if not line or line == "No devices found":
            continue
        parts = line.split()
        if len(parts) != 8:
            raise FailedPrecondition(f"unexpected dmsetup info line {line!r}")
        name, blk, attr, major, minor, opened, segments, events = parts
        # attr is e.g. "L--w": L live table, I inactive table, s suspended, r read-only
        devices.append(
            DeviceInfo(
                name=name,
                block_device=blk,
                suspended="s" in attr,
                read_only="r" in attr,
                table_live="L" in attr,
                table_inactive="I" in attr,
                major=int(major),
                minor=int(minor),
                open_count=int(opened),
                target_count=int(segments),
                event_number=int(events),
            )
        )
    return devices


def parse_ls(output: str) -> dict[str, tuple[int, int]]:
    """``dmsetup ls`` → {name: (major, minor)}; lines are ``name\\t(253:0)``."""
    out: dict[str, tuple[int, int]] = {}
    for line in output.splitlines():
        m = re.match(r"^(\S+)\s+\((\d+)[:,]\s*(\d+)\)\s*$", line)
        if m:
            out[m.group(1)] = (int(m.group(2)), int(m.group(3)))
    return out


def parse_targets(output: str) -> dict[str, str]:
    """``dmsetup targets`` → {target: version}; lines are ``thin-pool        v1.23.0``."""
    out: dict[str, str] = {}
    for line in output.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1].startswith("v"):
            out[parts[0]] = parts[1]
    return out


@dataclass(frozen=True)
class TargetStatus:
    start: int
    length: int
    target: str
    params: tuple[str, ...]


def parse_status(output: str) -> TargetStatus:
    """One ``dmsetup status <name>`` line (with or without the ``name:`` prefix)."""
    line = output.strip().splitlines()[0] if output.strip() else ""
    parts = line.split()
    if parts and parts[0].endswith(":"):
        parts = parts[1:]
    if len(parts) < 3 or not parts[0].isdigit() or not parts[1].isdigit():
        raise FailedPrecondition(f"cannot parse dmsetup status {output!r}")
    return TargetStatus(int(parts[0]), int(parts[1]), parts[2], tuple(parts[3:]))


@dataclass(frozen=True)
class PoolStatus:
    """thin-pool status (kernel thin-provisioning.rst, "thin-pool" target, Status)."""

    transaction_id: int
    used_metadata_blocks: int
    total_metadata_blocks: int
    used_data_blocks: int
    total_data_blocks: int
    held_metadata_root: str
    mode: str  # "rw", "ro", "out_of_data_space" or "Fail"
    discard_passdown: bool
    error_if_no_space: bool
    needs_check: bool

    @property
    def data_full(self) -> bool:
        return self.mode == "out_of_data_space" or self.used_data_blocks >= self.total_data_blocks

    @property
    def metadata_full(self) -> bool:
        # the kernel turns a pool read-only when its metadata runs out
        return self.mode == "ro" or self.used_metadata_blocks >= self.total_metadata_blocks

    @property
    def full(self) -> bool:
        return self.mode == "Fail" or self.data_full or self.metadata_full


def parse_pool_status(output: str) -> PoolStatus:
    status = parse_status(output)
    if status.target != "thin-pool":
        raise FailedPrecondition(f"device is a {status.target!r} target, not thin-pool: {output!r}")
    p = status.params
    if p and p[0] == "Fail":
        return PoolStatus(0, 0, 0, 0, 0, "-", "Fail", False, False, True)
    if len(p) < 5:
        raise FailedPrecondition(f"cannot parse thin-pool status {output!r}")
    try:
        meta_used, meta_total = (int(x) for x in p[1].split("/"))
        data_used, data_total = (int(x) for x in p[2].split("/"))
        transaction = int(p[0])
    except ValueError as exc:
        raise FailedPrecondition(f"cannot parse thin-pool status {output!r}") from exc
    rest = p[5:]
    return PoolStatus(
        transaction_id=transaction,
        used_metadata_blocks=meta_used,
        total_metadata_blocks=meta_total,
        used_data_blocks=data_used,
        total_data_blocks=data_total,
        held_metadata_root=p[3],
        mode=p[4],
        discard_passdown="discard_passdown" in rest,
        error_if_no_space="error_if_no_space" in rest,
        needs_check="needs_check" in rest,
    )


@dataclass(frozen=True)
class ThinStatus:
    mapped_sectors: int
    highest_mapped_sector: int | None
    failed: bool = False

    @property
    def mapped_bytes(self) -> int:
        return self.mapped_sectors * SECTOR_SIZE


def parse_thin_status(output: str) -> ThinStatus:
    """thin status: ``<nr mapped sectors> <highest mapped sector>`` or ``Fail``."""
    status = parse_status(output)
    if status.target != "thin":
        raise FailedPrecondition(f"device is a {status.target!r} target, not thin: {output!r}")
    p = status.params
    if p and p[0] == "Fail":
        return ThinStatus(0, None, failed=True)
    if not p or not p[0].isdigit():
        raise FailedPrecondition(f"cannot parse thin status {output!r}")
    highest = int(p[1]) if len(p) > 1 and p[1].isdigit() and int(p[0]) > 0 else None
    return ThinStatus(int(p[0]), highest)


# -- errors ----------------------------------------------------------------------------
# (text dmsetup prints, errno name, error class); order matters: first match wins
_ERRORS: tuple[tuple[str, str, type[CapsaError]], ...] = (
    ("failure to communicate with kernel device-mapper driver", "ENODEV", Unsupported),
    ("/dev/mapper/control: open failed", "ENODEV", Unsupported),
    ("file exists", "EEXIST", DeviceExistsError),
    ("device or resource busy", "EBUSY", DeviceExistsError),
    ("no space left on device", "ENOSPC", PoolFullError),
    ("no such device or address", "ENXIO", DeviceNotFoundError),
    ("no such device", "ENODEV", DeviceNotFoundError),
    ("no data available", "ENODATA", DeviceNotFoundError),
    ("device does not exist", "ENXIO", DeviceNotFoundError),
    ("not found", "ENOENT", DeviceNotFoundError),
    ("operation not supported", "EOPNOTSUPP", FailedPrecondition),
    ("invalid argument", "EINVAL", FailedPrecondition),
    ("operation not permitted", "EPERM", FailedPrecondition),
)


def classify_error(args: Sequence[str], output: str, returncode: int) -> CapsaError:
    """The typed error for a failed ``dmsetup <args>`` that printed ``output``."""
    text = output.strip()
    low = text.lower()
    command = "dmsetup " + " ".join(args)
    for needle, errno_name, cls in _ERRORS:
        if needle in low:
            first = text.splitlines()[0] if text else "failed"
            if cls is Unsupported:
                first = f"the kernel's device-mapper is unavailable ({first})"
            return cls(
                f"{command}: {first}",
                detail={"errno": errno_name, "command": command, "output": text, "returncode": returncode},
            )
    return FailedPrecondition(
        f"{command} failed (exit {returncode}): {text}",
        detail={"errno": "", "command": command, "output": text, "returncode": returncode},
    )


# -- the runner ------------------------------------------------------------------------
class Dmsetup:
    """Runs dmsetup; every method raises the typed errors of :func:`classify_error`."""

    def __init__(self, binary: str = "dmsetup", timeout: float = 60.0) -> None:
        self.binary = binary
        self.timeout = timeout

    def run(self, *args: str) -> str:
        try:
            proc = subprocess.run(
                [self.binary, *args], capture_output=True, text=True, timeout=self.timeout, check=False
            )
        except FileNotFoundError as exc:
            raise Unsupported(f"{self.binary} is not installed") from exc
        except subprocess.TimeoutExpired as exc:
            raise Timeout(f"dmsetup {' '.join(args)} did not finish within {self.timeout} s") from exc
        if proc.returncode != 0:
            raise classify_error(args, proc.stderr + proc.stdout, proc.returncode)
        return proc.stdout.strip()

    def version(self) -> str:
        return self.run("version")

    def targets(self) -> dict[str, str]:
        return parse_targets(self.run("targets"))

    def create(self, name: str, table: str) -> None:
        self.run("create", name, "--table", table)

    def reload(self, name: str, table: str) -> None:
        self.run("reload", name, "--table", table)

    def message(self, pool: str, message: str) -> None:
        self.run("message", pool, "0", message)

    def suspend(self, name: str) -> None:
        self.run("suspend", name)

    def resume(self, name: str) -> None:
        self.run("resume", name)

    def remove(self, name: str, *, force: bool = False, retry: bool = True, deferred: bool = False) -> None:
        opts = [o for o, on in (("--force", force), ("--retry", retry), ("--deferred", deferred)) if on]
        self.run("remove", *opts, device_path(name))

    def info(self, name: str = "") -> list[DeviceInfo]:
        return parse_info(self.run(*info_args(name)))

    def status(self, name: str) -> TargetStatus:
        return parse_status(self.run("status", name))

    def pool_status(self, name: str) -> PoolStatus:
        return parse_pool_status(self.run("status", name))

    def thin_status(self, name: str) -> ThinStatus:
        return parse_thin_status(self.run("status", name))

    def table(self, name: str) -> str:
        return self.run("table", name)

    def ls(self) -> dict[str, tuple[int, int]]:
        return parse_ls(self.run("ls"))
