"""The fields a job takes, once: what ``capsa run`` flags and workflow YAML job keys both mean.

Each :class:`JobField` names the :class:`~capsa.jobs.model.RunRequest` field it fills, the
``capsa run`` flag and the workflow YAML key that set it, and the check its value must pass. The
checks raise :class:`InvalidArgument` naming the field the way the caller spelled it (``label``):
the job service checks every request with the flag names (:func:`capsa.jobs.requests.validate_request`),
the workflow schema (:mod:`capsa.workflows.schema`) runs the same checks per YAML key, so a value
one accepts the other accepts too, and the workflow's error carries the YAML line.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from capsa.errors import InvalidArgument

__all__ = [
    "FIELDS",
    "JobField",
    "SECCOMP_PROFILES",
    "check_cpu_cores",
    "check_by_key",
    "check_env",
    "check_limit",
    "check_ports",
    "check_request_fields",
    "check_secret_env",
    "check_seccomp",
    "check_timeout",
    "check_user",
    "check_volume",
    "check_workdir",
    "field_by_key",
]

CPU_LIST = re.compile(r"\d+(-\d+)?(,\d+(-\d+)?)*")
SECRET_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
VOLUME = re.compile(r"(?P<name>[^:]+)(?::(?P<path>/[^:]*))?(?::(?P<mode>ro|rw))?")
USER = re.compile(r"\d+(:\d+)?|root")
SECCOMP_PROFILES = ("default", "strict", "unconfined")   # capsa.runtime.security.PROFILE_NAMES, checked by a test


def check_limit(label: str, value: int) -> int:
    if value < 0:
        raise InvalidArgument(f"{label} must be zero (unlimited) or positive, got {value}")
    return value


def check_cpu_cores(label: str, value: str) -> str:
    if value and not CPU_LIST.fullmatch(value):
        raise InvalidArgument(f"{label} {value!r} is not a CPU list like '0', '0-1' or '0,2'")
    return value


def check_workdir(label: str, value: str) -> str:
    if value and not value.startswith("/"):
        raise InvalidArgument(f"{label} must be an absolute path inside the job, got {value!r}")
    return value


def check_user(label: str, value: str) -> str:
    if value and not USER.fullmatch(value):
        raise InvalidArgument(f"{label} {value!r}: give a numeric UID[:GID] (names are not resolved)")
    return value


def check_seccomp(label: str, value: str) -> str:
    if value not in SECCOMP_PROFILES:
        raise InvalidArgument(f"{label} {value!r}: expected one of {', '.join(SECCOMP_PROFILES)}")
    return value


def check_timeout(label: str, value: str) -> str:
    from capsa.jobs.schedule import parse_duration  # here: schedule imports the job model

    parse_duration(value, what=label)
    return value


def check_volume(label: str, value: str) -> str:
    if not VOLUME.fullmatch(value):
        raise InvalidArgument(f"{label} {value!r} is not NAME[:/path][:ro]")
    return value


def check_env(label: str, env: Mapping[str, str]) -> Mapping[str, str]:
    for key, text in env.items():
        if not key or "=" in key or "\0" in key or "\0" in text:
            raise InvalidArgument(f"{label} {key!r}: names must be non-empty without '=',"
                                  " names and values without NUL bytes")
    return env


def check_secret_env(label: str, env: Mapping[str, str]) -> Mapping[str, str]:
    for key, text in env.items():   # messages name the variable, never its value
        if not SECRET_NAME.fullmatch(key) or "\0" in text:
            raise InvalidArgument(f"{label} {key!r}: names are letters, digits and '_', not starting"
                                  " with a digit; values hold no NUL bytes")
    return env


def check_ports(label: str, value: list[str] | tuple[str, ...]) -> list[str] | tuple[str, ...]:
    from capsa.networks._ports import parse_ports  # here: the networks package is heavier than this module

    parse_ports(list(value))
    return value


@dataclass(frozen=True)
class JobField:
    """One job field: the RunRequest attribute, the workflow YAML key, the ``capsa run`` flag, its check."""

    request: str
    key: str
    flag: str
    check: Callable[[str, Any], Any] | None = None
    each: bool = False        # the check applies to every item of a list
    empty_ok: bool = False    # in a RunRequest, "" means "not given" (a YAML key is left out instead)
    noun: str = ""            # how one item is named in a YAML error (default: the key)
    served: bool = False      # a job resource checks it in requests (with its own message)


FIELDS: tuple[JobField, ...] = (
    JobField("command", "command", "-- COMMAND"),
    JobField("command", "args", "-- COMMAND ARGS"),
    JobField("image", "image", "--image"),
    JobField("pull", "pull", "--pull"),
    JobField("runtime", "runtime", "--runtime"),
    JobField("workdir", "workdir", "--workdir", check_workdir),
    JobField("user", "user", "--user", check_user),
    JobField("seccomp", "seccomp", "--seccomp", check_seccomp),
    JobField("env", "env", "--env", check_env),
    JobField("secret_env", "secret_env", "--secret-env", check_secret_env),
    JobField("upload_session", "uploads", "--upload"),
    JobField("volumes", "volumes", "--volume", check_volume, each=True, noun="volume"),
    JobField("capsules", "capsules", "--capsule"),
    JobField("network", "network", "--network"),
    JobField("ports", "ports", "--publish", check_ports, served=True),
    JobField("gpus", "gpus", "--gpus", check_limit, served=True),
    JobField("timeout", "timeout", "--timeout", check_timeout, empty_ok=True),
    JobField("resources.max_cpu", "resources.max_cpu", "--max-cpu", check_limit),
    JobField("resources.max_memory_mb", "resources.max_memory", "--max-memory", check_limit),
    JobField("resources.max_iobps", "resources.max_iobps", "--max-iobps", check_limit),
    JobField("resources.max_pids", "resources.max_pids", "--max-pids", check_limit),
    JobField("resources.cpu_cores", "resources.cpu_cores", "--cpu-cores", check_cpu_cores),
)


def field_by_key(key: str) -> JobField:
    """The field a workflow YAML key (``resources.max_memory`` for nested ones) sets."""
    for item in FIELDS:
        if item.key == key:
            return item
    raise KeyError(key)


def check_by_key(key: str, value: Any) -> Any:
    """Run ``key``'s check on ``value`` for pydantic: ValueError (its message) instead of InvalidArgument."""
    item = field_by_key(key)
    if item.check is None:
        return value
    try:
        for one in (value if item.each else [value]):
            item.check(item.noun or key.rsplit(".", 1)[-1], one)
    except InvalidArgument as exc:
        raise ValueError(exc.message) from None
    return value


def check_request_fields(request: Any) -> None:
    """Every field check on a RunRequest, errors naming the ``capsa run`` flags."""
    for item in FIELDS:
        if item.check is None or item.served:
            continue
        value: Any = request
        for part in item.request.split("."):
            value = getattr(value, part)
        if item.empty_ok and value == "":
            continue
        for one in (value if item.each else [value]):
            item.check(item.flag, one)
