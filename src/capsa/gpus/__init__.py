"""NVIDIA GPUs for jobs (Joblet ADR-008): discovery, exclusive allocation, what a job gets.

Typical use by the daemon (docs/gpu.md)::

    gpus = GpuAllocator(db)                   # root=Path("/") on a real host
    gpus.reconcile(running_job_ids)           # at start
    grant = gpus.allocate(job_id, 2)          # before the job starts; LimitExceeded if busy
    JobSpec(..., devices=grant.devices, device_allow=grant.device_allow,
            env={**grant.env, ...}, binds=library_binds(grant.libraries, host_root=...))
    gpus.release(job_id)                      # when it ends, fails to start, or is removed
"""

from capsa.gpus.allocator import MIGRATIONS, GpuAllocator, GpuGrant, visible_devices
from capsa.gpus.discovery import (
    CONTROL_NODES,
    Gpu,
    device_nodes,
    discover,
    driver_libraries,
    library_binds,
    parse_information,
    parse_ldconfig,
    parse_nvidia_smi_list,
)

__all__ = [
    "CONTROL_NODES",
    "MIGRATIONS",
    "Gpu",
    "GpuAllocator",
    "GpuGrant",
    "device_nodes",
    "discover",
    "driver_libraries",
    "library_binds",
    "parse_information",
    "parse_ldconfig",
    "parse_nvidia_smi_list",
    "visible_devices",
]
