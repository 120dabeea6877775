"""From a RunRequest to a JobSpec: request checks, image defaults, and the spec stage two receives."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from capsa.errors import InvalidArgument
from capsa.jobs.model import RunRequest
from capsa.jobs.resources import Grant
from capsa.jobs.spec_fields import check_request_fields
from capsa.runtime.spec import JobSpec, ResourceSpec

__all__ = ["apply_image_config", "build_spec", "parse_user", "validate_request"]

# RunRequest fields a resource serves, and how a request that asks for one reads in an error.
SERVED_FIELDS = {"network": "network", "volumes": "volume", "gpus": "GPU", "capsules": "capsule", "image": "image"}


LOG_MAX_MIN = 64 * 1024   # below this the kept tail would be a handful of segments of a few KiB


def log_max_bytes(request: RunRequest) -> int:
    """``--log-max-size`` in bytes (0: no limit); one size syntax with volumes (1G, 512MiB, 10M)."""
    if not request.log_max_size:
        return 0
    from capsa.volumes.model import parse_size

    size = parse_size(request.log_max_size)
    if size < LOG_MAX_MIN:
        raise InvalidArgument(f"--log-max-size {request.log_max_size!r} is below the minimum of 64KiB")
    return size


def validate_request(request: RunRequest) -> None:
    """What needs no resource to check: limits, working directory, user, seccomp profile."""
    log_max_bytes(request)
    if request.stdin not in ("", "pipe", "tty"):
        raise InvalidArgument(f"stdin {request.stdin!r} is not one of '', 'pipe' (-i), 'tty' (-t)")
    if len(request.tty_size) != 2 or not all(0 <= n <= 0xFFFF for n in request.tty_size):
        raise InvalidArgument(f"terminal size {request.tty_size!r} is not two numbers in 0..65535")
    # The shared field checks (capsa.jobs.spec_fields): workflow YAML jobs pass the very same ones.
    check_request_fields(request)


def asks_for(request: RunRequest, field: str) -> bool:
    """Whether ``request`` needs the resource serving ``field`` (host networking needs none)."""
    value = getattr(request, field)
    if field == "network":
        return value not in ("", "host")
    return bool(value)


def apply_image_config(request: RunRequest, config: Mapping[str, Any]) -> RunRequest:
    """Docker semantics: Entrypoint + (the given command, else Cmd); image Env under ours."""
    entrypoint = list(config.get("Entrypoint") or [])
    cmd = list(request.command) if request.command else list(config.get("Cmd") or [])
    argv = entrypoint + cmd if request.command_given or not request.command else list(request.command)
    if not argv:
        raise InvalidArgument(f"image {request.image} has no Entrypoint or Cmd: give a command after --")
    env: dict[str, str] = {}
    for item in config.get("Env") or []:
        key, _, value = str(item).partition("=")
        env[key] = value
    env.update(request.env)
    return dataclasses.replace(
        request, command=tuple(argv), env=env,
        workdir=request.workdir or str(config.get("WorkingDir") or "/"),
        user=request.user or str(config.get("User") or ""),
    )


def build_spec(job_id: str, hostname: str, job_dir: Path, request: RunRequest, grant: Grant) -> JobSpec:
    r = request.resources
    uid, gid = parse_user(request.user)
    return JobSpec(
        job_id=job_id,
        argv=tuple(request.command),
        # Granted variables first (GPUs): the user may narrow CUDA_VISIBLE_DEVICES, the device cgroup decides anyway
        env={**grant.env, **request.env, **request.secret_env},
        hostname=hostname,
        job_dir=str(job_dir),
        workdir=request.workdir or "/work",
        root_mounts=grant.root_mounts,
        uid=uid,
        gid=gid,
        seccomp=request.seccomp,
        netns_path=grant.netns_path,
        binds=grant.binds,
        devices=grant.devices,
        device_allow=grant.device_allow,
        log_max_bytes=log_max_bytes(request),
        stdin=request.stdin,
        tty_size=(request.tty_size[0], request.tty_size[1]),
        resources=ResourceSpec(
            cpu_percent=r.max_cpu or None,
            cpuset=r.cpu_cores or None,
            memory_bytes=r.max_memory_mb * 1024 * 1024 if r.max_memory_mb else None,
            io_bps=r.max_iobps or None,
            pids_max=r.max_pids or None,
        ),
    )


def parse_user(user: str) -> tuple[int, int]:
    if not user or user == "root":
        return 0, 0
    uid_text, _, gid_text = user.partition(":")
    try:
        uid = int(uid_text)
        gid = int(gid_text) if gid_text else uid
    except ValueError:
        raise InvalidArgument(f"user {user!r}: give a numeric UID[:GID] (names are not resolved)") from None
    if uid < 0 or gid < 0:
        raise InvalidArgument(f"user {user!r}: ids must not be negative")
    return uid, gid
