"""Runtime specs: the YAML a maintainer writes, parsed and validated in one place.

A spec names a runtime (``NAME@VERSION``), a base and steps::

    name: python-3.11
    version: "1"
    base:
      debootstrap: {suite: bookworm, variant: minbase, include: [ca-certificates]}
      # or   image: 127.0.0.1:5000/team/tools:1     (any reference `capsa image pull` takes)
      # or   runtime: python-3.11@1                 (an existing runtime)
    steps:
      - packages: [python3, python3-pip]             # apt-get install, in an isolated build job
      - run: "pip install --break-system-packages requests"
    env: {PYTHONUNBUFFERED: "1"}
    entrypoint: []                                   # optional, OCI Entrypoint
    cmd: [python3]                                   # optional, OCI Cmd

Every problem is reported at once, each with its place (``steps[1].packages``) and YAML line.
The spec's identity for caching is :meth:`RuntimeSpec.spec_hash` over its canonical JSON.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from capsa.config.yaml_lines import line_of
from capsa.errors import InvalidArgument

__all__ = [
    "DEFAULT_MIRROR",
    "Base",
    "DebootstrapBase",
    "PackagesStep",
    "RunStep",
    "RuntimeSpec",
    "Step",
    "host_mirror",
    "load_spec",
    "parse_runtime_name",
    "parse_spec",
]

DEFAULT_MIRROR = "http://deb.debian.org/debian"
MAX_SPEC_BYTES = 256 * 1024
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
# Debian package names (policy 5.6.1), optionally pinned: name=version or name/suite.
_PACKAGE = re.compile(r"^[a-z0-9][a-z0-9+.-]+(:[a-z0-9-]+)?([=/][A-Za-z0-9.+~:_-]+)?$")
_SUITE = re.compile(r"^[a-z][a-z0-9-]{1,31}$")
_MIRROR = re.compile(r"^(https?|file)://[^\s'\"\\;|&$`<>]+$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DebootstrapBase(_Model):
    """A minimal Debian root made by debootstrap from Debian's packages (signatures checked)."""

    suite: str = "bookworm"
    mirror: str = ""
    """Empty: the Debian mirror configured in the daemon host's apt sources (see :func:`host_mirror`)."""
    variant: Literal["minbase", "buildd", "-"] = "minbase"
    include: tuple[str, ...] = ()

    @field_validator("suite")
    @classmethod
    def _suite(cls, value: str) -> str:
        if not _SUITE.match(value):
            raise ValueError(f"{value!r} is not a Debian suite name (e.g. bookworm)")
        return value

    @field_validator("mirror")
    @classmethod
    def _mirror(cls, value: str) -> str:
        if value and not _MIRROR.match(value):
            raise ValueError(f"{value!r} is not an http(s):// or file:// mirror URL")
        return value.rstrip("/")

    @field_validator("include")
    @classmethod
    def _include(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [p for p in value if not _PACKAGE.match(p) or "=" in p or "/" in p]
        if bad:
            raise ValueError(f"not Debian package names: {', '.join(map(repr, bad))}")
        return value


class Base(_Model):
    """Exactly one of: an image reference, a debootstrap root, an existing runtime."""

    image: str | None = None
    debootstrap: DebootstrapBase | None = None
    runtime: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Base:
        given = [k for k in ("image", "debootstrap", "runtime") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of image, debootstrap or runtime"
                             + (f" (got {', '.join(given)})" if given else ""))
        if self.runtime is not None:
            parse_runtime_name(self.runtime, need_version=True)
        if self.image is not None and not self.image.strip():
            raise ValueError("image must not be empty")
        return self

    @property
    def kind(self) -> str:
        return "image" if self.image is not None else "runtime" if self.runtime is not None else "debootstrap"


class PackagesStep(_Model):
    """Install Debian packages with apt-get (the base must have apt)."""

    packages: Annotated[tuple[str, ...], Field(min_length=1)]

    @field_validator("packages")
    @classmethod
    def _names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [p for p in value if not _PACKAGE.match(p)]
        if bad:
            raise ValueError(f"not Debian package names: {', '.join(map(repr, bad))}")
        return value

    def describe(self) -> str:
        return "packages: " + " ".join(self.packages)

    def argv(self) -> list[str]:
        names = " ".join(self.packages)  # validated above: no shell metacharacters can be in them
        script = (
            "command -v apt-get >/dev/null 2>&1 || { echo 'capsa: a packages step needs apt-get in the"
            " runtime base (Debian or Ubuntu)' >&2; exit 127; }\n"
            "export DEBIAN_FRONTEND=noninteractive\n"
            "apt-get update -q\n"
            f"apt-get install -y -q --no-install-recommends {names}\n"
            "apt-get clean\n"
            "rm -rf /var/lib/apt/lists/*\n"
        )
        return ["/bin/sh", "-ec", script]


class RunStep(_Model):
    """A shell command, run with ``/bin/sh -ec`` in the build job."""

    run: Annotated[str, Field(min_length=1, max_length=64 * 1024)]

    def describe(self) -> str:
        first = self.run.strip().splitlines()[0] if self.run.strip() else ""
        return "run: " + (first if len(first) <= 70 else first[:67] + "...")

    def argv(self) -> list[str]:
        return ["/bin/sh", "-ec", self.run]


Step = PackagesStep | RunStep


class RuntimeSpec(_Model):
    name: str
    version: str
    description: str = ""
    base: Base
    steps: tuple[Step, ...] = ()
    env: dict[str, str] = Field(default_factory=dict)
    entrypoint: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = None
    workdir: str = ""

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"{value!r}: lowercase letters, digits, '.', '_' or '-', at most 64, starting"
                             " with a letter or digit")
        return value

    @field_validator("version", mode="before")
    @classmethod
    def _version(cls, value: Any) -> str:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        elif isinstance(value, float):
            raise ValueError(f"write the version as a string (\"{value}\"): YAML reads 3.10 as the number 3.1")
        if not isinstance(value, str) or not _VERSION.match(value):
            raise ValueError(f"{value!r}: letters, digits, '.', '_', '+' or '-', at most 64")
        return value

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [k for k in value if not _ENV_NAME.match(k)]
        if bad:
            raise ValueError(f"invalid variable names: {', '.join(map(repr, bad))}")
        return value

    @field_validator("workdir")
    @classmethod
    def _workdir(cls, value: str) -> str:
        if value and not value.startswith("/"):
            raise ValueError(f"{value!r} must be an absolute path")
        return value

    @field_validator("steps", mode="before")
    @classmethod
    def _steps(cls, value: Any) -> Any:
        # A step is a mapping with exactly one of the keys; say so instead of pydantic's union noise.
        if isinstance(value, list):
            for i, item in enumerate(value):
                keys = sorted(item) if isinstance(item, dict) else None
                if keys not in (["packages"], ["run"]):
                    raise ValueError(f"[{i}]: a step is a mapping with exactly one key, packages or run"
                                     f" (got {keys if keys is not None else type(item).__name__})")
        return value

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def canonical(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)

    def spec_hash(self) -> str:
        text = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))
        return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def parse_runtime_name(text: str, *, need_version: bool = False) -> tuple[str, str | None]:
    """``NAME[@VERSION]`` -> (name, version or None)."""
    name, sep, version = text.strip().partition("@")
    if not _NAME.match(name) or (sep and not _VERSION.match(version)):
        raise InvalidArgument(f"runtime {text!r}: expected NAME[@VERSION], e.g. python-3.11@1")
    if need_version and not sep:
        raise InvalidArgument(f"runtime {text!r}: give the version too (NAME@VERSION)")
    return name, version if sep else None


# -- parsing ------------------------------------------------------------------------------------------


def parse_spec(text: str, *, source: str = "spec") -> RuntimeSpec:
    """Parse and validate a spec; InvalidArgument lists every problem with its line."""
    if len(text.encode()) > MAX_SPEC_BYTES:
        raise InvalidArgument(f"{source}: a runtime spec is limited to {MAX_SPEC_BYTES} bytes")
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidArgument(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidArgument(f"{source}: a runtime spec is a YAML mapping (name, version, base, steps)")
    try:
        return RuntimeSpec.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            path = _clean_path(err["loc"])
            line = _line(root, path)
            where = _where(path)
            msg = str(err["msg"]).removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            problems.append(f"{'line ' + str(line) + ': ' if line else ''}{where}: {msg}" if where else msg)
        raise InvalidArgument(f"{source}: invalid runtime spec:\n  " + "\n  ".join(problems),
                              detail={"problems": problems}) from None


def load_spec(path: Path | str) -> RuntimeSpec:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise InvalidArgument(f"cannot read runtime spec {p}: {exc.strerror}") from None
    return parse_spec(text, source=str(p))


def _clean_path(loc: tuple[Any, ...]) -> list[str | int]:
    # pydantic puts union member names into locations (steps.0.PackagesStep.packages): drop them.
    return [part for part in loc if not (isinstance(part, str) and part[:1].isupper())]


def _where(path: list[str | int]) -> str:
    out = ""
    for key in path:
        out = f"{out}[{key}]" if isinstance(key, int) else (f"{out}.{key}" if out else str(key))
    return out


def _line(root: yaml.Node | None, path: list[str | int]) -> int | None:
    return line_of(root, path)


# -- the host's Debian mirror ---------------------------------------------------------------------------


def host_mirror(suite: str, *, etc_apt: Path = Path("/etc/apt")) -> str:
    """The mirror apt on this host uses for ``suite`` (deb822 ``.sources`` or one-line ``.list``).

    Prefers an entry listing ``suite`` itself, then any plain Debian archive entry (not a
    ``-security`` one); falls back to :data:`DEFAULT_MIRROR` when nothing is configured.
    """
    entries: list[tuple[str, list[str]]] = []  # (uri, suites)
    files = [etc_apt / "sources.list"]
    d = etc_apt / "sources.list.d"
    if d.is_dir():
        files += sorted(p for p in d.iterdir() if p.suffix in (".list", ".sources"))
    for f in files:
        try:
            text = f.read_text(errors="replace")
        except OSError:
            continue
        entries += _deb822_entries(text) if f.suffix == ".sources" else _one_line_entries(text)
    for uri, suites in entries:
        if suite in suites and _MIRROR.match(uri):
            return uri.rstrip("/")
    for uri, suites in entries:
        if uri.rstrip("/").endswith("/debian") and _MIRROR.match(uri) and not all("security" in s for s in suites):
            return uri.rstrip("/")
    return DEFAULT_MIRROR


def _one_line_entries(text: str) -> list[tuple[str, list[str]]]:
    out: list[tuple[str, list[str]]] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        parts = line.split()
        if len(parts) < 3 or parts[0] != "deb":
            continue
        rest = parts[1:]
        if rest[0].startswith("["):  # options: [arch=amd64 signed-by=...]
            while rest and not rest[0].endswith("]"):
                rest = rest[1:]
            rest = rest[1:]
        if len(rest) >= 2:
            out.append((rest[0], [rest[1]]))
    return out


def _deb822_entries(text: str) -> list[tuple[str, list[str]]]:
    out: list[tuple[str, list[str]]] = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for raw in stanza.splitlines():
            if raw.startswith("#") or ":" not in raw or raw[:1].isspace():
                continue
            key, _, value = raw.partition(":")
            fields[key.strip().lower()] = value.strip()
        if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes").lower() == "no":
            continue
        suites = fields.get("suites", "").split()
        out += [(uri, suites) for uri in fields.get("uris", "").split()]
    return out
