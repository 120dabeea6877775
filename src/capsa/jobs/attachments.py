"""What a job borrows from the node while it runs: a network, volumes and GPUs.

Acquired in the daemon before the job's spec goes to the supervisor (the
network namespace must exist for stage one to join it; volumes must be mounted
on the host to be bound into the job) and released when the job ends, fails to
start, or is removed. Release is idempotent, so every exit path may call it.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from dataclasses import dataclass, field

from capsa.errors import CapsaError, InvalidArgument
from capsa.networks import NetworkManager
from capsa.runtime.gpu import GpuAllocator
from capsa.runtime.spec import BindSpec, DeviceSpec
from capsa.volumes import VolumeManager

__all__ = ["Acquired", "JobAttachments", "parse_volume_spec"]

log = logging.getLogger("capsa.jobs")


@dataclass(frozen=True)
class Acquired:
    netns_path: str | None = None
    ip: str = ""
    binds: tuple[BindSpec, ...] = field(default_factory=tuple)
    # GPUs (capsa.runtime.gpu): nodes for the job's /dev, device-cgroup rules, environment, driver libraries
    devices: tuple[DeviceSpec, ...] = ()
    device_allow: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    gpu_libraries: tuple[str, ...] = ()
    gpu_names: tuple[str, ...] = ()


def parse_volume_spec(text: str) -> tuple[str, str, bool]:
    """``NAME[:/path][:ro]`` -> (name, target inside the job, read-only)."""
    parts = text.split(":")
    name = parts[0]
    if not name:
        raise InvalidArgument(f"--volume {text!r}: expected NAME[:/path][:ro]")
    target = f"/volumes/{name}"
    readonly = False
    rest = parts[1:]
    if rest and rest[-1] in ("ro", "rw"):
        readonly = rest.pop() == "ro"
    if len(rest) > 1:
        raise InvalidArgument(f"--volume {text!r}: expected NAME[:/path][:ro]")
    if rest:
        target = rest[0]
        if not target.startswith("/") or "/../" in f"{target}/" or target.rstrip("/") in ("", "/proc", "/dev", "/sys"):
            raise InvalidArgument(f"--volume {text!r}: the path must be absolute, without '..', "
                                  "and not /, /proc, /dev or /sys")
    return name, target, readonly


class JobAttachments:
    def __init__(self, networks: NetworkManager | None, volumes: VolumeManager | None,
                 gpus: GpuAllocator | None = None) -> None:
        self.networks = networks
        self.volumes = volumes
        self.gpus = gpus

    def validate(self, network: str, volumes: tuple[str, ...], gpus: int = 0) -> None:
        if gpus:
            if self.gpus is None:
                raise InvalidArgument("this daemon has no GPU support configured")
            self.gpus.check_request(gpus)   # more than the node has can never start
        if network not in ("", "host") and self.networks is None:
            raise InvalidArgument("this daemon has no network support configured")
        for spec in volumes:
            name, _, _ = parse_volume_spec(spec)
            if self.volumes is None:
                raise InvalidArgument("this daemon has no volume support configured")
            self.volumes.inspect(name)  # NotFound names the volume

    def acquire(self, job_id: str, network: str, volumes: tuple[str, ...], gpus: int = 0) -> Acquired:
        try:
            netns_path, ip = None, ""
            if network not in ("", "host") and self.networks is not None:
                att = self.networks.attach(job_id, network)
                netns_path, ip = att.netns_path, att.ip or ""
            binds: list[BindSpec] = []
            for spec in volumes:
                name, target, readonly = parse_volume_spec(spec)
                assert self.volumes is not None
                source = self.volumes.acquire(name, job_id)
                binds.append(BindSpec(source=str(source), target=target, readonly=readonly))
            if not gpus:
                return Acquired(netns_path=netns_path, ip=ip, binds=tuple(binds))
            if self.gpus is None:
                raise InvalidArgument("this daemon has no GPU support configured")
            grant = self.gpus.allocate(job_id, gpus)
            return Acquired(netns_path=netns_path, ip=ip, binds=tuple(binds), devices=grant.devices,
                            device_allow=grant.device_allow, env=dict(grant.env),
                            gpu_libraries=grant.libraries, gpu_names=tuple(grant.names))
        except BaseException:
            self.release(job_id)
            raise

    def release(self, job_id: str) -> None:
        if self.networks is not None:
            try:
                self.networks.detach(job_id)
            except CapsaError as exc:
                log.warning("releasing the network of job %s: %s", job_id, exc)
        if self.volumes is not None:
            with contextlib.suppress(CapsaError):
                self.volumes.release_all(job_id)
        if self.gpus is not None:
            try:
                self.gpus.release(job_id)
            except (CapsaError, sqlite3.Error) as exc:   # a restart's reconcile frees them then
                log.warning("releasing the GPUs of job %s: %s", job_id, exc)
