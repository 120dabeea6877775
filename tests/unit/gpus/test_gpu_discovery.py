"""GPU discovery from a fake driver tree: /proc/driver/nvidia/gpus, nvidia-smi -L, device nodes, ldconfig."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from capsa.errors import FailedPrecondition
from capsa.gpus import (
    Gpu,
    device_nodes,
    discover,
    driver_libraries,
    library_binds,
    parse_information,
    parse_ldconfig,
    parse_nvidia_smi_list,
)
from capsa.runtime.spec import BindSpec, DeviceSpec

INFORMATION = """Model: \t\t Tesla T4
IRQ:   \t\t 44
GPU UUID: \t GPU-8a2c1f0e-1111-2222-3333-444455556666
Video BIOS: \t 90.04.38.00.03
Bus Type: \t PCIe
DMA Size: \t 47 bits
DMA Mask: \t 0x7fffffffffff
Bus Location: \t 0000:00:1e.0
Device Minor: \t {minor}
GPU Excluded:\t {excluded}
"""


def write_gpu(root: Path, bus: str, minor: int, *, uuid: str = "", model: str = "Tesla T4",
              excluded: bool = False) -> None:
    text = INFORMATION.format(minor=minor, excluded="Yes" if excluded else "No").replace(
        "Bus Location: \t 0000:00:1e.0", f"Bus Location: \t {bus}").replace("Model: \t\t Tesla T4", f"Model: \t\t {model}")
    if uuid:
        text = text.replace("GPU-8a2c1f0e-1111-2222-3333-444455556666", uuid)
    else:
        text = "\n".join(line for line in text.splitlines() if not line.startswith("GPU UUID"))
    directory = root / "proc/driver/nvidia/gpus" / bus
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "information").write_text(text)


def mknod_char(path: Path, major: int, minor: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(major, minor))


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="making character device nodes needs root")


def test_information_file_fields_are_parsed_with_tabs_trimmed() -> None:
    fields = parse_information(INFORMATION.format(minor=3, excluded="No"))
    assert fields["Model"] == "Tesla T4"
    assert fields["Device Minor"] == "3"
    assert fields["GPU UUID"] == "GPU-8a2c1f0e-1111-2222-3333-444455556666"
    assert fields["Bus Location"] == "0000:00:1e.0"


def test_discovery_reads_every_gpu_sorted_by_minor(tmp_path: Path) -> None:
    write_gpu(tmp_path, "0000:02:00.0", 1, uuid="GPU-bbbb")
    write_gpu(tmp_path, "0000:01:00.0", 0, uuid="GPU-aaaa", model="A100-SXM4-40GB")
    write_gpu(tmp_path, "0000:03:00.0", 2, excluded=True)
    gpus = discover(tmp_path)
    assert [(g.minor, g.uuid, g.bus_id, g.excluded) for g in gpus] == [
        (0, "GPU-aaaa", "0000:01:00.0", False), (1, "GPU-bbbb", "0000:02:00.0", False), (2, "", "0000:03:00.0", True)]
    assert gpus[0].model == "A100-SXM4-40GB" and gpus[0].device == "/dev/nvidia0"


def test_no_driver_means_no_gpus(tmp_path: Path) -> None:
    assert discover(tmp_path) == []


def test_a_directory_without_a_device_minor_is_ignored_rather_than_guessed(tmp_path: Path) -> None:
    directory = tmp_path / "proc/driver/nvidia/gpus/0000:05:00.0"
    directory.mkdir(parents=True)
    (directory / "information").write_text("Model: \t Tesla T4\nDevice Minor: \t ?\n")
    (tmp_path / "proc/driver/nvidia/gpus/0000:06:00.0").mkdir()   # no information file at all
    assert discover(tmp_path) == []


SMI_OUTPUT = """GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-aaaa)
  MIG 1g.5gb      Device  0: (UUID: MIG-0123)
GPU 1: Tesla T4 (UUID: GPU-bbbb)
"""


def test_nvidia_smi_list_lines_are_parsed_and_mig_lines_skipped() -> None:
    assert parse_nvidia_smi_list(SMI_OUTPUT) == [(0, "NVIDIA A100-SXM4-40GB", "GPU-aaaa"), (1, "Tesla T4", "GPU-bbbb")]


def test_nvidia_smi_adds_its_index_and_fills_a_missing_model(tmp_path: Path) -> None:
    write_gpu(tmp_path, "0000:01:00.0", 4, uuid="GPU-bbbb", model="")
    write_gpu(tmp_path, "0000:02:00.0", 7, uuid="GPU-aaaa")
    smi = tmp_path / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\n[ \"$1\" = -L ] || exit 3\ncat <<'EOF'\n{SMI_OUTPUT}EOF\n")
    smi.chmod(0o755)
    gpus = discover(tmp_path, nvidia_smi=str(smi))
    assert [(g.minor, g.index, g.model) for g in gpus] == [(4, 1, "Tesla T4"), (7, 0, "Tesla T4")]


def test_a_failing_nvidia_smi_leaves_the_proc_view_intact(tmp_path: Path) -> None:
    write_gpu(tmp_path, "0000:01:00.0", 0, uuid="GPU-aaaa")
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    smi.chmod(0o755)
    assert discover(tmp_path, nvidia_smi=str(smi)) == [Gpu(0, "GPU-aaaa", "Tesla T4", "0000:01:00.0")]


@needs_root
def test_device_nodes_bind_the_gpu_and_present_control_nodes_with_their_numbers(tmp_path: Path) -> None:
    mknod_char(tmp_path / "dev/nvidia0", 195, 0)
    mknod_char(tmp_path / "dev/nvidia1", 195, 1)
    mknod_char(tmp_path / "dev/nvidiactl", 195, 255)
    mknod_char(tmp_path / "dev/nvidia-uvm", 509, 0)   # dynamic major, taken from the node
    devices, rules = device_nodes(tmp_path, [Gpu(1)])
    assert devices == (DeviceSpec(str(tmp_path / "dev/nvidia1"), "/dev/nvidia1"),
                       DeviceSpec(str(tmp_path / "dev/nvidiactl"), "/dev/nvidiactl"),
                       DeviceSpec(str(tmp_path / "dev/nvidia-uvm"), "/dev/nvidia-uvm"))
    assert rules == ("c 195:1 rw", "c 195:255 rw", "c 509:0 rw")


@needs_root
def test_a_missing_gpu_node_or_control_node_is_a_failed_precondition(tmp_path: Path) -> None:
    mknod_char(tmp_path / "dev/nvidiactl", 195, 255)
    with pytest.raises(FailedPrecondition, match="nvidia3"):
        device_nodes(tmp_path, [Gpu(3)])
    (tmp_path / "dev/nvidiactl").unlink()
    mknod_char(tmp_path / "dev/nvidia3", 195, 3)
    with pytest.raises(FailedPrecondition, match="nvidiactl"):
        device_nodes(tmp_path, [Gpu(3)])


def test_a_regular_file_is_not_accepted_as_a_gpu_node(tmp_path: Path) -> None:
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev/nvidia0").write_text("not a device")
    with pytest.raises(FailedPrecondition, match="not a character device"):
        device_nodes(tmp_path, [Gpu(0)])


LDCONFIG = """1234 libs found in cache `/etc/ld.so.cache'
\tlibnvidia-ml.so.1 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1
\tlibnvidia-ptxjitcompiler.so.1 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libnvidia-ptxjitcompiler.so.1
\tlibcudart.so.12 (libc6,x86-64) => /usr/local/cuda/lib64/libcudart.so.12
\tlibcuda.so.1 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libcuda.so.1
\tlibcuda.so.1 (libc6) => /usr/lib/i386-linux-gnu/libcuda.so.1
\tlibcuda.so (libc6,x86-64) => /opt/nvidia/lib64/libcuda.so
\tlibz.so.1 (libc6,x86-64) => /lib/x86_64-linux-gnu/libz.so.1
\tlibnvidia-ml.so.1 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1
"""


def test_ldconfig_output_yields_only_the_driver_libraries_once_each() -> None:
    assert parse_ldconfig(LDCONFIG) == [
        "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1",
        "/usr/lib/x86_64-linux-gnu/libnvidia-ptxjitcompiler.so.1",
        "/usr/lib/x86_64-linux-gnu/libcuda.so.1",
        "/usr/lib/i386-linux-gnu/libcuda.so.1",
        "/opt/nvidia/lib64/libcuda.so",
    ]


def test_driver_libraries_keep_only_paths_that_exist(tmp_path: Path) -> None:
    real = tmp_path / "libcuda.so.550.54.14"
    real.write_bytes(b"\x7fELF")
    (tmp_path / "libcuda.so.1").symlink_to(real.name)
    text = f"\tlibcuda.so.1 (libc6,x86-64) => {tmp_path}/libcuda.so.1\n" \
           f"\tlibnvidia-ml.so.1 (libc6,x86-64) => {tmp_path}/libnvidia-ml.so.1\n"
    assert driver_libraries(text) == [f"{tmp_path}/libcuda.so.1"]


def test_this_hosts_loader_cache_is_read_without_error() -> None:
    assert all("nvidia" in p or "cuda" in p for p in driver_libraries())


def test_library_binds_resolve_the_soname_link_and_skip_what_a_host_root_job_already_sees(tmp_path: Path) -> None:
    real = tmp_path / "libcuda.so.550.54.14"
    real.write_bytes(b"\x7fELF")
    link = tmp_path / "libcuda.so.1"
    link.symlink_to(real.name)
    paths = ["/usr/lib/x86_64-linux-gnu/libcuda.so.1", str(link)]
    assert library_binds(paths, host_root=True) == (BindSpec(str(real), str(link), readonly=True),)
    image_binds = library_binds(paths, host_root=False)
    assert [b.target for b in image_binds] == paths and all(b.readonly for b in image_binds)
