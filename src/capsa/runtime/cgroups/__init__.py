"""Job cgroups on cgroup v2 (unified) and v1 (legacy/hybrid) hosts, chosen at start by :func:`detect`.

Typical use by the supervisor (ADR-0003)::

    driver = detect()                      # once, when the supervisor starts
    cg = driver.create(job_id, Limits(memory_bytes=64 << 20, pids_max=64, cpu_percent=50))
    cg.join_files()                        # sent to the zygote; stage one writes "0" into each
    ...
    cg.stats(); cg.oom_killed(); cg.kill_all(); cg.remove()
"""

from .blockdev import BlockResolver, resolve_block_devices
from .detect import Layout, detect, host_layout, layout_from
from .model import CgroupDriver, CgroupStats, JobCgroup, Limits, validate_name
from .v1 import V1Driver, V1JobCgroup
from .v2 import V2Driver, V2JobCgroup

__all__ = [
    "BlockResolver",
    "CgroupDriver",
    "CgroupStats",
    "JobCgroup",
    "Layout",
    "Limits",
    "V1Driver",
    "V1JobCgroup",
    "V2Driver",
    "V2JobCgroup",
    "detect",
    "host_layout",
    "layout_from",
    "resolve_block_devices",
    "validate_name",
]
