"""What the daemon asks the runtime to start: a plain, JSON-serialisable job spec.

The spec crosses a process boundary (daemon -> supervisor -> zygote -> init), so
it is data only: no open files, no callables. Paths are host paths unless the
field name says ``target`` (a path inside the job's root).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["BindSpec", "DeviceSpec", "JobSpec", "MountSpec", "ResourceSpec"]

# Host paths a job sees (read-only) when it runs on the host's own userland.
HOST_RO_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
HOST_ETC_ENTRIES = (
    "resolv.conf", "hosts", "nsswitch.conf", "passwd", "group", "ssl", "ca-certificates",
    "ca-certificates.conf", "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "os-release",
    "alternatives", "debian_version", "mime.types", "protocols", "services", "host.conf", "gai.conf",
    "python3", "python3.11",
)


@dataclass(frozen=True)
class MountSpec:
    """A mount description (as a snapshotter returns it)."""

    type: str
    source: str
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class BindSpec:
    source: str
    target: str
    readonly: bool = True


@dataclass(frozen=True)
class DeviceSpec:
    """A host device node bound into the job's /dev (capsa.runtime.devices)."""

    source: str
    target: str                   # below /dev, e.g. /dev/nvidia0


@dataclass(frozen=True)
class ResourceSpec:
    cpu_percent: int | None = None
    cpuset: str | None = None
    memory_bytes: int | None = None
    io_bps: int | None = None
    pids_max: int | None = None


@dataclass(frozen=True)
class JobSpec:
    job_id: str
    argv: tuple[str, ...]
    env: dict[str, str]
    hostname: str
    job_dir: str                      # host dir holding root/, work/, logs/
    workdir: str = "/work"
    resources: ResourceSpec = field(default_factory=ResourceSpec)
    root_mounts: tuple[MountSpec, ...] = ()   # empty: the host's userland, read-only
    binds: tuple[BindSpec, ...] = ()
    uid: int = 0
    gid: int = 0
    seccomp: str = "default"                  # default | strict | unconfined
    capabilities: tuple[str, ...] | None = None   # None: capsa's default set (docs/security.md)
    netns_path: str | None = None             # a network namespace to join; None: the host's network
    devices: tuple[DeviceSpec, ...] = ()       # extra nodes in the job's /dev (GPUs)
    device_allow: tuple[str, ...] = ()        # extra device-cgroup rules ("c 195:0 rw") beyond the minimal /dev
    log_max_bytes: int = 0                    # --log-max-size: oldest log segments dropped beyond it; 0 = no limit
    # `capsa run -i/-t` (ADR-0013): "" stdin is /dev/null; "pipe" a pipe the supervisor writes; "tty" a
    # pseudo-terminal whose master the supervisor holds (stdin, stdout and stderr, controlling terminal).
    stdin: str = ""
    tty_size: tuple[int, int] = (0, 0)        # rows, cols of the terminal at start (0: the kernel's default)

    @property
    def root_dir(self) -> str:
        return f"{self.job_dir}/root"

    @property
    def work_dir(self) -> str:
        return f"{self.job_dir}/work"

    @property
    def log_dir(self) -> str:
        return f"{self.job_dir}/logs"

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobSpec:
        return cls(
            job_id=data["job_id"],
            argv=tuple(data["argv"]),
            env=dict(data["env"]),
            hostname=data["hostname"],
            job_dir=data["job_dir"],
            workdir=data.get("workdir", "/work"),
            resources=ResourceSpec(**data.get("resources", {})),
            root_mounts=tuple(
                MountSpec(m["type"], m["source"], tuple(m.get("options", ()))) for m in data.get("root_mounts", ())
            ),
            binds=tuple(BindSpec(**b) for b in data.get("binds", ())),
            uid=int(data.get("uid", 0)),
            gid=int(data.get("gid", 0)),
            seccomp=data.get("seccomp", "default"),
            netns_path=data.get("netns_path"),
            devices=tuple(DeviceSpec(**d) for d in data.get("devices", ())),
            device_allow=tuple(data.get("device_allow", ())),
            log_max_bytes=int(data.get("log_max_bytes", 0)),
            stdin=str(data.get("stdin", "")),
            tty_size=tuple(int(n) for n in data.get("tty_size", (0, 0))),  # type: ignore[arg-type]
            capabilities=tuple(data["capabilities"]) if data.get("capabilities") is not None else None,
        )
