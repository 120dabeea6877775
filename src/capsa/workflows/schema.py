"""The workflow YAML as typed models, and the small value syntaxes it uses (names, durations).

The models check one job at a time; everything that needs the whole document (references,
cycles, registries) lives in :mod:`capsa.workflows.validation`. ``strict`` models on purpose: a
YAML ``max_memory: "512"`` or ``env: {A: 1}`` is reported, not silently coerced. Durations are
read by :func:`capsa.jobs.schedule.parse_duration`, like every duration in capsa.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from capsa.errors import InvalidArgument
from capsa.jobs.schedule import parse_duration
from capsa.jobs.spec_fields import check_by_key

__all__ = [
    "JOB_NAME_RE",
    "KEYWORDS",
    "JobSpec",
    "ResourcesSpec",
    "WorkflowHeader",
    "WorkflowSpec",
    "check_job_name",
    "timeout_seconds",
]

JOB_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,62}")
WORKFLOW_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
# Words of the expression form of ``requires``; a job with such a name could not be referenced.
KEYWORDS = frozenset({"AND", "OR", "NOT", "IN"})


def timeout_seconds(text: str) -> float:
    """Seconds in a duration, or ValueError with the job service's message (for pydantic)."""
    try:
        return parse_duration(text, what="timeout")
    except InvalidArgument as exc:
        raise ValueError(str(exc)) from None


def check_job_name(name: str) -> str | None:
    """Why ``name`` cannot name a job, or None when it can."""
    if not JOB_NAME_RE.fullmatch(name):
        return (f"job name {name!r} is not valid: use letters, digits, '_', '.', '-' (at most 63),"
                " starting with a letter or '_'")
    if name.upper() in KEYWORDS:
        return f"job name {name!r} is reserved (AND, OR, NOT and IN are words of `requires` expressions)"
    return None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ResourcesSpec(_Strict):
    """Per-job limits; 0 (or empty) means unlimited, as for ``capsa run`` (checks: capsa.jobs.spec_fields)."""

    max_cpu: int = 0                # percent of one core
    max_memory: int = 0             # MB; the job is OOM-killed above it
    max_iobps: int = 0              # bytes/s
    cpu_cores: str = ""             # cpuset, e.g. "0-1" or "0,2"
    max_pids: int = 0

    @field_validator("cpu_cores", mode="before")
    @classmethod
    def _cores_as_text(cls, value: Any) -> Any:
        # YAML reads `cpu_cores: 0` as an int; a single CPU number is still a CPU list.
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("max_cpu", "max_memory", "max_iobps", "max_pids", "cpu_cores")
    @classmethod
    def _shared(cls, value: Any, info: ValidationInfo) -> Any:
        return check_by_key(f"resources.{info.field_name}", value)


class JobSpec(_Strict):
    """One job of a workflow, as written in the YAML: the keys are capsa.jobs.spec_fields.FIELDS."""

    command: str = ""
    args: list[str] = Field(default_factory=list)
    image: str = ""
    pull: Literal["missing", "always", "never"] = "missing"
    runtime: str = ""
    workdir: str = ""
    user: str = ""                  # UID[:GID]; default: the image's User, else root
    seccomp: str = "default"
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    env: dict[str, str] = Field(default_factory=dict)
    secret_env: dict[str, str] = Field(default_factory=dict)
    uploads: list[str] = Field(default_factory=list)
    volumes: list[str] = Field(default_factory=list)
    capsules: list[str] = Field(default_factory=list)
    network: str = ""               # "" = host
    ports: list[str] = Field(default_factory=list)   # [HOSTIP:]HOSTPORT:JOBPORT[/tcp|/udp], as `capsa run -p`
    gpus: int = 0                   # whole GPUs, exclusively, as `capsa run --gpus`
    timeout: str | None = None      # a duration (30s, 10m, 1h30m); enforced by the job service
    requires: Any = None            # None, a list or an expression: capsa.workflows.conditions

    @field_validator("timeout", mode="before")
    @classmethod
    def _duration_text(cls, value: Any) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool):
            raise ValueError(f"timeout {value} has no unit: write {value}s, {value}m or {value}h")
        return value

    @field_validator("workdir", "user", "seccomp", "env", "secret_env", "volumes", "gpus", "timeout", "ports")
    @classmethod
    def _shared(cls, value: Any, info: ValidationInfo) -> Any:
        # The checks `capsa run` requests pass, so the YAML accepts exactly what the CLI does.
        return value if value is None else check_by_key(str(info.field_name), value)

    @property
    def volume_names(self) -> list[str]:
        return [item.split(":", 1)[0] for item in self.volumes]


class WorkflowHeader(_Strict):
    """The document's top level; ``jobs`` is checked job by job (so one bad job hides no other)."""

    name: str
    description: str = ""
    max_parallel: Annotated[int, Field(ge=1, le=256)] | None = None
    jobs: dict[str, Any]
    # Written by `capsa workflow run`, never by hand: {job: upload session} holding that job's `uploads`
    # (the YAML travels as text, so the client appends this key after the user's last line).
    upload_sessions: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not WORKFLOW_NAME_RE.fullmatch(value):
            raise ValueError(f"workflow name {value!r} is not valid: use letters, digits, '_', '.', '-'"
                             " (at most 63), starting with a letter or digit")
        return value

    @field_validator("jobs")
    @classmethod
    def _some_jobs(cls, value: dict[str, Any]) -> dict[str, Any]:
        if not value:
            raise ValueError("a workflow needs at least one job")
        return value


class WorkflowSpec(_Strict):
    """A validated workflow: what the service stores and executes."""

    name: str
    description: str = ""
    max_parallel: int | None = None
    jobs: dict[str, JobSpec]
