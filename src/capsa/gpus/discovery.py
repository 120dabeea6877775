"""Finding NVIDIA GPUs, their device nodes and the driver's user-space libraries.

The source of truth is the kernel driver's ``/proc/driver/nvidia/gpus/<bus id>/information``
(one directory per GPU, with the ``Device Minor`` that names ``/dev/nvidia<minor>``);
``nvidia-smi -L``, when installed, adds its index and fills a missing model or UUID.
Everything takes a ``root`` so tests (and hosts that expose the driver elsewhere) can
point it at a fake tree.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from capsa.errors import FailedPrecondition
from capsa.runtime.spec import HOST_RO_DIRS, BindSpec, DeviceSpec

__all__ = [
    "CONTROL_NODES",
    "Gpu",
    "device_nodes",
    "discover",
    "driver_libraries",
    "library_binds",
    "parse_information",
    "parse_ldconfig",
    "parse_nvidia_smi_list",
]

# Driver-wide nodes every CUDA process opens (the first is mandatory, the others only when present).
CONTROL_NODES = ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset")
_SMI_LINE = re.compile(r"^GPU (\d+): (.*?) \(UUID: (GPU-[0-9A-Za-z-]+)\)\s*$")
_LDCONFIG_LINE = re.compile(r"^\s*(\S+) \(([^)]*)\) => (/\S+)$")
_DRIVER_LIBRARY = re.compile(r"^lib(cuda|nvidia-[A-Za-z0-9_.-]+?)\.so(\.[0-9.]+)?$")
_SMI_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Gpu:
    """One physical GPU as the driver reports it."""

    minor: int                      # /dev/nvidia<minor>
    uuid: str = ""                  # GPU-xxxxxxxx-...
    model: str = ""
    bus_id: str = ""                # PCI address, e.g. 0000:3b:00.0
    index: int | None = None        # nvidia-smi's index, when nvidia-smi ran
    excluded: bool = False          # "GPU Excluded: Yes" (the driver will not use it)

    @property
    def device(self) -> str:
        return f"/dev/nvidia{self.minor}"

    @property
    def name(self) -> str:
        return f"nvidia{self.minor}"


def parse_information(text: str) -> dict[str, str]:
    """``Key: value`` lines of a GPU's information file (tabs and spaces around values trimmed)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip():
            fields[key.strip()] = value.strip()
    return fields


def parse_nvidia_smi_list(text: str) -> list[tuple[int, str, str]]:
    """``nvidia-smi -L`` lines → (index, model, uuid); MIG sub-device lines are skipped."""
    out = []
    for line in text.splitlines():
        m = _SMI_LINE.match(line.strip())
        if m:
            out.append((int(m.group(1)), m.group(2), m.group(3)))
    return out


def _from_proc(gpus_dir: Path) -> list[Gpu]:
    found: dict[int, Gpu] = {}
    try:
        entries = sorted(os.listdir(gpus_dir))
    except FileNotFoundError:
        return []
    for entry in entries:
        try:
            info = parse_information((gpus_dir / entry / "information").read_text(errors="replace"))
        except OSError:
            continue
        minor_text = info.get("Device Minor", "")
        if not minor_text.isdigit():
            continue   # not a GPU directory the driver completed; never guess its node
        minor = int(minor_text)
        found[minor] = Gpu(minor=minor, uuid=info.get("GPU UUID", ""), model=info.get("Model", ""),
                           bus_id=info.get("Bus Location", entry),
                           excluded=info.get("GPU Excluded", "No").lower().startswith("y"))
    return [found[m] for m in sorted(found)]


def _run_nvidia_smi(binary: str) -> str:
    try:
        done = subprocess.run([binary, "-L"], capture_output=True, text=True, timeout=_SMI_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout if done.returncode == 0 else ""


def discover(root: Path = Path("/"), *, nvidia_smi: str | None = None) -> list[Gpu]:
    """Every GPU under ``root`` (sorted by minor). ``nvidia_smi``: a binary to run with ``-L``;
    by default ``nvidia-smi`` from PATH, and only when ``root`` is the real root."""
    gpus = _from_proc(root / "proc/driver/nvidia/gpus")
    binary = nvidia_smi if nvidia_smi is not None else (shutil.which("nvidia-smi") if root == Path("/") else None)
    if not gpus or not binary:
        return gpus
    by_uuid = {uuid: (index, model) for index, model, uuid in parse_nvidia_smi_list(_run_nvidia_smi(binary))}
    merged = []
    for gpu in gpus:
        index, model = by_uuid.get(gpu.uuid, (None, ""))
        merged.append(replace(gpu, index=index, model=gpu.model or model))
    return merged


def _char_device(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISCHR(st.st_mode):
        return None
    return os.major(st.st_rdev), os.minor(st.st_rdev)


def device_nodes(root: Path, gpus: Iterable[Gpu]) -> tuple[tuple[DeviceSpec, ...], tuple[str, ...]]:
    """The nodes to bind into a job holding ``gpus`` and the device-cgroup rules allowing them.

    Each GPU's own ``/dev/nvidia<minor>`` and ``/dev/nvidiactl`` must exist as character
    devices (``FailedPrecondition`` otherwise: the driver is not loaded or its nodes were
    never created); the other control nodes are added when present. Rules use the numbers
    of the nodes themselves (nvidia-uvm's major is dynamic).
    """
    devices: list[DeviceSpec] = []
    rules: list[str] = []

    def add(name: str, required: bool) -> None:
        host = root / "dev" / name
        numbers = _char_device(host)
        if numbers is None:
            if required:
                raise FailedPrecondition(f"GPU device node {host} is missing or not a character device "
                                         "(is the NVIDIA driver loaded and its /dev nodes created?)")
            return
        devices.append(DeviceSpec(source=str(host), target=f"/dev/{name}"))
        rules.append(f"c {numbers[0]}:{numbers[1]} rw")

    for gpu in gpus:
        add(gpu.name, True)
    for index, name in enumerate(CONTROL_NODES):
        add(name, index == 0)
    return tuple(devices), tuple(rules)


def parse_ldconfig(text: str) -> list[str]:
    """Paths of the NVIDIA driver's libraries (libcuda, libnvidia-*) in ``ldconfig -p`` output."""
    paths: dict[str, None] = {}
    for line in text.splitlines():
        m = _LDCONFIG_LINE.match(line)
        if m and _DRIVER_LIBRARY.match(m.group(1)):
            paths.setdefault(m.group(3), None)
    return list(paths)


def _run_ldconfig() -> str:
    binary = shutil.which("ldconfig") or next(
        (p for p in ("/sbin/ldconfig", "/usr/sbin/ldconfig") if os.path.exists(p)), None)
    if binary is None:
        return ""
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        done = subprocess.run([binary, "-p"], capture_output=True, text=True, timeout=10, check=False)
        if done.returncode == 0:
            return done.stdout
    return ""


def driver_libraries(ldconfig_output: str | None = None) -> list[str]:
    """The driver libraries the host's loader cache knows and that exist (``ldconfig -p`` by default)."""
    text = _run_ldconfig() if ldconfig_output is None else ldconfig_output
    return [p for p in parse_ldconfig(text) if os.path.exists(p)]


def library_binds(paths: Iterable[str], *, host_root: bool) -> tuple[BindSpec, ...]:
    """Read-only binds of the libraries at the same paths inside the job.

    The file itself is bound (the loader's soname symlink resolved on the host), so the
    job's root needs no symlink chain. A job on the host's own userland already sees
    everything below /usr, /lib, ... (read-only): only libraries elsewhere are bound then.
    """
    binds = []
    for path in paths:
        if host_root and any(path == d or path.startswith(d + "/") for d in HOST_RO_DIRS):
            continue
        binds.append(BindSpec(source=os.path.realpath(path), target=path, readonly=True))
    return tuple(binds)
