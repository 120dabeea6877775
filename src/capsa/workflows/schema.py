"""The workflow YAML as typed models, and the small value syntaxes it uses (names, durations).

The models check one job at a time; everything that needs the whole document (references,
cycles, registries) lives in :mod:`capsa.workflows.validation`. ``strict`` models on purpose: a
YAML ``max_memory: "512"`` or ``env: {A: 1}`` is reported, not silently coerced.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "JOB_NAME_RE",
    "KEYWORDS",
    "MAX_TIMEOUT_S",
    "JobSpec",
    "ResourcesSpec",
    "WorkflowHeader",
    "WorkflowSpec",
    "check_job_name",
    "parse_duration",
]

JOB_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,62}")
WORKFLOW_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
# Words of the expression form of ``requires``; a job with such a name could not be referenced.
KEYWORDS = frozenset({"AND", "OR", "NOT", "IN"})
MAX_TIMEOUT_S = 30 * 86400.0
_CPU_LIST = re.compile(r"\d+(-\d+)?(,\d+(-\d+)?)*")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

NonNegInt = Annotated[int, Field(ge=0)]


def check_job_name(name: str) -> str | None:
    """Why ``name`` cannot name a job, or None when it can."""
    if not JOB_NAME_RE.fullmatch(name):
        return (f"job name {name!r} is not valid: use letters, digits, '_', '.', '-' (at most 63),"
                " starting with a letter or '_'")
    if name.upper() in KEYWORDS:
        return f"job name {name!r} is reserved (AND, OR, NOT and IN are words of `requires` expressions)"
    return None


def parse_duration(value: object) -> float:
    """Seconds in ``value``: a number of seconds, or text like ``90s``, ``10m``, ``1h30m``, ``500ms``.

    Raises ValueError with a message meant for the user.
    """
    if isinstance(value, bool):
        raise ValueError(f"duration {value!r} must be a number of seconds or text like 30s, 10m, 1h30m")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        pos, seconds = 0, 0.0
        for match in _DURATION_PART.finditer(text):
            if match.start() != pos:
                break
            seconds += float(match.group(1)) * _UNIT_S[match.group(2)]
            pos = match.end()
        if not text or pos != len(text):
            raise ValueError(f"duration {value!r} is not valid: write a number with a unit (ms, s, m, h, d),"
                             " e.g. 30s, 10m, 1h30m")
    else:
        raise ValueError(f"duration must be a number of seconds or text like 30s, 10m, 1h30m,"
                         f" not {type(value).__name__}")
    if not seconds > 0:
        raise ValueError(f"duration {value!r} must be greater than zero")
    if seconds > MAX_TIMEOUT_S:
        raise ValueError(f"duration {value!r} is longer than the maximum of 30 days")
    return seconds


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ResourcesSpec(_Strict):
    """Per-job limits; 0 (or empty) means unlimited, as for ``capsa run``."""

    max_cpu: NonNegInt = 0          # percent of one core
    max_memory: NonNegInt = 0       # MB
    max_iobps: NonNegInt = 0        # bytes/s
    cpu_cores: str = ""             # cpuset, e.g. "0-1" or "0,2"
    max_pids: NonNegInt = 0

    @field_validator("cpu_cores", mode="before")
    @classmethod
    def _cores_as_text(cls, value: Any) -> Any:
        # YAML reads `cpu_cores: 0` as an int; a single CPU number is still a CPU list.
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("cpu_cores")
    @classmethod
    def _cpu_list(cls, value: str) -> str:
        if value and not _CPU_LIST.fullmatch(value):
            raise ValueError(f"cpu_cores {value!r} is not a CPU list like '0', '0-1' or '0,2'")
        return value


class JobSpec(_Strict):
    """One job of a workflow, as written in the YAML."""

    command: str = ""
    args: list[str] = Field(default_factory=list)
    image: str = ""
    runtime: str = ""
    workdir: str = ""
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    env: dict[str, str] = Field(default_factory=dict)
    secret_env: dict[str, str] = Field(default_factory=dict)
    uploads: list[str] = Field(default_factory=list)
    volumes: list[str] = Field(default_factory=list)
    capsules: list[str] = Field(default_factory=list)
    network: str = ""
    timeout: float | None = None    # seconds; YAML gives durations like 10m
    requires: Any = None            # None, a list or an expression: capsa.workflows.conditions

    @field_validator("timeout", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return None if value is None else parse_duration(value)

    @field_validator("workdir")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if value and not value.startswith("/"):
            raise ValueError(f"workdir must be an absolute path inside the job, got {value!r}")
        return value

    @field_validator("env", "secret_env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not key or "=" in key or "\0" in key:
                raise ValueError(f"environment variable name {key!r} is not valid")
        return value


class WorkflowHeader(_Strict):
    """The document's top level; ``jobs`` is checked job by job (so one bad job hides no other)."""

    name: str
    description: str = ""
    max_parallel: Annotated[int, Field(ge=1, le=256)] | None = None
    jobs: dict[str, Any]

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
