"""Check a workflow document before anything runs, and report every problem at once.

Each problem is an :class:`Issue` with the YAML line it comes from: the document is composed
(``yaml.compose``) into a node tree whose marks map each key path to its line, and every check
reports a key path. Checks: YAML syntax, duplicate keys, unknown and missing keys, types and
values (durations, resources, names), image reference syntax, runtimes / volumes / networks /
capsules against registries the caller plugs in, upload paths (and that they were sent), references to unknown jobs, and
dependency cycles (naming every job on each cycle).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from capsa.config.yaml_lines import line_of
from capsa.errors import CapsaError, InvalidArgument
from capsa.workflows.conditions import Condition, ConditionError, parse_requires
from capsa.workflows.dag import find_cycles, topological_order
from capsa.workflows.schema import JobSpec, ResourcesSpec, WorkflowHeader, WorkflowSpec, check_job_name

__all__ = ["Issue", "Registries", "ValidatedWorkflow", "check_workflow", "compile_spec", "validate_workflow"]

MAX_DOCUMENT_BYTES = 1 << 20
MAX_DOCUMENT_DEPTH = 64   # a workflow nests about five deep; PyYAML composes recursively, so bound it first
MAX_JOBS = 1000
MAX_NODES = 200_000   # after alias expansion: a "billion laughs" document stops here
MAX_ISSUES = 200

Path_ = tuple[str | int, ...]


@dataclass(frozen=True)
class Issue:
    """One problem: where (a dotted key path), the YAML line (None when unknown), what is wrong."""

    where: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        place = f"line {self.line}: " if self.line else ""
        return f"{place}{self.where}: {self.message}" if self.where else f"{place}{self.message}"


@dataclass(frozen=True)
class Registries:
    """What exists on this node, as callables the daemon plugs in (None: no registry yet).

    ``runtime_image`` maps a runtime name (``NAME[@VERSION]``) to the image that implements it
    (a runtime is an image) or None when unknown. The others answer "does this exist" for a
    volume name, a user network name (the built-in modes host/none/isolated/bridge always
    exist) and a capsule requirement.
    """

    runtime_image: Callable[[str], str | None] | None = None
    volume_exists: Callable[[str], bool] | None = None
    network_exists: Callable[[str], bool] | None = None
    capsule_exists: Callable[[str], bool] | None = None


@dataclass(frozen=True)
class ValidatedWorkflow:
    """A workflow that passed every check: the spec, each job's parsed ``requires``, a start order."""

    spec: WorkflowSpec
    conditions: dict[str, Condition]
    order: list[str]
    deps: dict[str, list[str]] = field(default_factory=dict)
    upload_sessions: dict[str, str] = field(default_factory=dict)   # {job: staged upload session}


# -- YAML nodes -> lines ------------------------------------------------------------------------
class _Lines:
    def __init__(self, root: yaml.Node | None) -> None:
        self.root = root

    def line(self, path: Path_) -> int | None:
        return line_of(self.root, list(path))


def _structure_issues(root: yaml.Node) -> list[Issue]:
    """Duplicate keys (YAML would silently keep the last one) and alias bombs."""
    issues: list[Issue] = []
    count = 0
    stack: list[tuple[yaml.Node, str]] = [(root, "")]
    while stack:
        node, where = stack.pop()
        count += 1
        if count > MAX_NODES:
            return [Issue("", f"the document expands to more than {MAX_NODES} nodes (anchors/aliases);"
                              " refusing to process it", node.start_mark.line + 1)]
        if isinstance(node, yaml.MappingNode):
            first: dict[str, int] = {}
            for k, v in node.value:
                key = k.value if isinstance(k, yaml.ScalarNode) else "?"
                if isinstance(k, yaml.ScalarNode):
                    if key in first:
                        issues.append(Issue(_join(where, key), f"duplicate key {key!r} (first at line {first[key]})",
                                            k.start_mark.line + 1))
                    else:
                        first[key] = k.start_mark.line + 1
                stack.append((v, _join(where, key)))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((item, f"{where}[{i}]") for i, item in enumerate(node.value))
    return issues


def _join(where: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{where}[{key}]"
    return f"{where}.{key}" if where else str(key)


def _where(path: Path_) -> str:
    out = ""
    for key in path:
        out = _join(out, key)
    return out


# -- pydantic errors -> issues ---------------------------------------------------------------------
def _fields_at(model: type[BaseModel], rel: Path_) -> list[str]:
    if model is JobSpec and rel[:1] == ("resources",):
        return list(ResourcesSpec.model_fields)
    # upload_sessions is written by `capsa workflow run`, not by hand: never suggest it.
    return [name for name in model.model_fields if name != "upload_sessions"]


def _model_issues(exc: ValidationError, model: type[BaseModel], prefix: Path_, lines: _Lines) -> list[Issue]:
    issues = []
    for err in exc.errors():
        rel: Path_ = tuple(err["loc"])
        path = prefix + rel
        kind = err["type"]
        if kind == "extra_forbidden":
            key = str(rel[-1])
            known = _fields_at(model, rel)
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f" (known: {', '.join(known)})"
            message = f"unknown key {key!r}{hint}"
        elif kind == "missing":
            message = f"missing required key {rel[-1]!r}"
        elif kind == "value_error":
            message = str(err.get("ctx", {}).get("error", err["msg"]))
        else:
            message = err["msg"]
        issues.append(Issue(_where(path), message, lines.line(path)))
    return issues


# -- the checks -------------------------------------------------------------------------------------
def _suggest(name: str, options: list[str]) -> str:
    close = difflib.get_close_matches(name, options, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


class _Checker:
    def __init__(self, lines: _Lines, registries: Registries, base_dir: Path | None,
                 upload_sessions: Mapping[str, str]) -> None:
        self.lines = lines
        self.registries = registries
        self.base_dir = base_dir
        self.upload_sessions = upload_sessions
        self.issues: list[Issue] = []

    def add(self, path: Path_, message: str) -> None:
        self.issues.append(Issue(_where(path), message, self.lines.line(path)))

    def job(self, name: str, spec: JobSpec) -> None:
        at: Path_ = ("jobs", name)
        if not spec.command and not spec.image and not spec.runtime:
            self.add(at, "a job needs a command (or an image whose entrypoint runs)")
        if spec.image and spec.runtime:
            self.add((*at, "runtime"), "give either image or runtime, not both")
        if spec.image:
            self._image(at, spec.image)
        if spec.runtime:
            self._runtime(at, spec.runtime)
        for i, volume in enumerate(spec.volume_names):
            self._exists((*at, "volumes", i), "volume", volume, self.registries.volume_exists)
        if spec.network:
            self._network((*at, "network"), spec.network)
        if spec.ports and spec.network in ("", "host", "none"):   # as the network resource refuses `run -p`
            self.add((*at, "ports"), f"ports cannot be published with network {spec.network or 'host'}"
                                     " (use bridge, isolated or a named network)")
        for i, capsule in enumerate(spec.capsules):
            self._capsule((*at, "capsules", i), capsule)
        sent = name in self.upload_sessions
        for i, upload in enumerate(spec.uploads):
            self._upload((*at, "uploads", i), upload, sent=sent)
        if spec.uploads and not sent:
            self.add((*at, "uploads"), "the uploads were not sent: submit the workflow with `capsa workflow run"
                                       " FILE`, which uploads them (paths relative to FILE's directory)")
        if sent and not spec.uploads:
            self.add(("upload_sessions", name), f"job {name!r} has no `uploads`")
        for key in sorted(spec.env.keys() & spec.secret_env.keys()):
            self.add((*at, "secret_env", key), f"{key} is set in both env and secret_env")

    def _image(self, at: Path_, image: str) -> None:
        from capsa.images.reference import parse_reference

        try:
            parse_reference(image)
        except CapsaError as exc:
            self.add((*at, "image"), str(exc))

    def _runtime(self, at: Path_, runtime: str) -> None:
        lookup = self.registries.runtime_image
        if lookup is None:
            self.add((*at, "runtime"), f"runtime {runtime!r}: runtimes are not available yet"
                                       " (use `image:` for now)")
        elif lookup(runtime) is None:
            self.add((*at, "runtime"), f"unknown runtime {runtime!r}")

    def _exists(self, path: Path_, what: str, name: str, exists: Callable[[str], bool] | None) -> bool:
        if exists is None or not exists(name):
            self.add(path, f"unknown {what} {name!r}")
            return False
        return True

    def _network(self, path: Path_, name: str) -> None:
        from capsa.networks.model import BUILTIN_MODES  # imported here: it loads pyroute2

        if name not in BUILTIN_MODES:
            self._exists(path, "network", name, self.registries.network_exists)

    def _capsule(self, path: Path_, text: str) -> None:
        # The same parser as `capsa run --capsule`: NAME, NAME@VERSION or NAME@SPECIFIERS, each with :PATH.
        from capsa.capsules.manager import parse_capsule_request

        try:
            parse_capsule_request(text)
        except CapsaError as exc:
            self.add(path, f"invalid capsule requirement {text!r}: {exc}")
            return
        self._exists(path, "capsule", text, self.registries.capsule_exists)

    def _upload(self, path: Path_, upload: str, *, sent: bool) -> None:
        # Relative and inside the workflow's directory: Joblet's uploads could name any host path.
        parts = Path(upload).parts
        if not upload or "\0" in upload or upload.startswith("/") or ".." in parts:
            self.add(path, f"upload {upload!r} must be a relative path inside the workflow's directory")
            return
        if sent:
            return   # the client read it from its own disk: the daemon's may not even have that directory
        if self.base_dir is None:
            self.add(path, f"upload {upload!r} cannot be checked: no base directory was given")
            return
        target = self.base_dir / upload
        if not target.exists():
            self.add(path, f"upload {upload!r} does not exist ({target})")


def _deeper_than(text: str, limit: int) -> int | None:
    """The line where ``text`` first nests deeper than ``limit`` collections, else None.

    Reads parser events (a loop, not recursion), so a hostile 100,000-deep document costs one pass.
    """
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > limit:
                return event.start_mark.line + 1 if event.start_mark else None
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1
    return None


def _load(text: str) -> tuple[Any, yaml.Node | None, list[Issue], bool]:
    """(data, node tree, issues, usable): ``usable`` is False when nothing more can be checked."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_DOCUMENT_BYTES:
        return None, None, [Issue("", f"the workflow document is larger than {MAX_DOCUMENT_BYTES} bytes")], False
    try:
        too_deep = _deeper_than(text, MAX_DOCUMENT_DEPTH)
        if too_deep is not None:
            return None, None, [Issue("", f"the workflow document nests deeper than {MAX_DOCUMENT_DEPTH} levels",
                                      too_deep)], False
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        return None, None, [Issue("", f"not valid YAML: {problem}", mark.line + 1 if mark else None)], False
    if root is None:
        return None, None, [Issue("", "the workflow document is empty")], False
    structure = _structure_issues(root)
    if any("refusing" in i.message for i in structure):
        return None, root, structure, False
    return yaml.safe_load(text), root, structure, True


def check_workflow(text: str, *, registries: Registries | None = None,
                   base_dir: Path | None = None) -> tuple[ValidatedWorkflow | None, list[Issue]]:
    """Every problem of ``text`` (sorted by line), and the validated workflow when there are none."""
    data, root, issues, usable = _load(text)
    if not usable:
        return None, issues
    lines = _Lines(root)
    if not isinstance(data, dict):
        return None, issues + [Issue("", "the workflow document must be a mapping with `name` and `jobs`", 1)]
    sessions = data.get("upload_sessions")
    checker = _Checker(lines, registries or Registries(), base_dir, sessions if isinstance(sessions, dict) else {})
    checker.issues.extend(issues)
    header: WorkflowHeader | None = None
    try:
        header = WorkflowHeader.model_validate(data)
    except ValidationError as exc:
        checker.issues.extend(_model_issues(exc, WorkflowHeader, (), lines))
    raw_jobs = data.get("jobs") if isinstance(data.get("jobs"), dict) else {}
    if len(raw_jobs) > MAX_JOBS:
        checker.add(("jobs",), f"a workflow may have at most {MAX_JOBS} jobs, this one has {len(raw_jobs)}")
        raw_jobs = {}
    specs: dict[str, JobSpec] = {}
    conditions: dict[str, Condition] = {}
    for name, raw in raw_jobs.items():
        if not isinstance(name, str):
            continue  # the header check reports it
        at: Path_ = ("jobs", name)
        problem = check_job_name(name)
        if problem:
            checker.add(at, problem)
        if not isinstance(raw, dict):
            checker.add(at, "a job must be a mapping of keys like command, args, requires")
            continue
        try:
            specs[name] = JobSpec.model_validate(raw)
        except ValidationError as exc:
            checker.issues.extend(_model_issues(exc, JobSpec, at, lines))
        if name in specs:
            checker.job(name, specs[name])
        try:
            conditions[name] = parse_requires(raw.get("requires"))
        except ConditionError as exc:
            checker.add((*at, "requires", *exc.path), exc.message)
    names = [n for n in raw_jobs if isinstance(n, str)]
    for name in checker.upload_sessions:
        if name not in raw_jobs:
            checker.add(("upload_sessions", name), f"upload session for unknown job {name!r}")
    deps = _references(checker, conditions, names)
    for path, members in find_cycles(deps):
        at = [lines.line(("jobs", job, "requires")) for job in path[:-1]]
        message = f"dependency cycle: {' -> '.join(path)} (their requires are at lines {', '.join(map(str, at))})"
        if len(members) > len(path) - 1:
            message += f"; the jobs {', '.join(members)} all depend on each other"
        checker.issues.append(Issue(f"jobs.{path[0]}.requires", message, at[0]))
    all_issues = sorted(checker.issues, key=lambda i: (i.line or 0))[:MAX_ISSUES]
    if all_issues or header is None:
        return None, all_issues
    spec = WorkflowSpec(name=header.name, description=header.description, max_parallel=header.max_parallel,
                        jobs=specs)
    return ValidatedWorkflow(spec, conditions, topological_order(deps), deps, dict(header.upload_sessions)), []


def _references(checker: _Checker, conditions: Mapping[str, Condition], names: list[str]) -> dict[str, list[str]]:
    known = set(names)
    deps: dict[str, list[str]] = {}
    for name in names:
        cond = conditions.get(name)
        wanted = sorted(cond.jobs()) if cond is not None else []
        for ref in wanted:
            if ref not in known:
                checker.add(("jobs", name, "requires"), f"requires unknown job {ref!r}{_suggest(ref, names)}")
        deps[name] = [ref for ref in wanted if ref in known]
    return deps


def validate_workflow(text: str, *, registries: Registries | None = None, base_dir: Path | None = None,
                      source: str = "workflow") -> ValidatedWorkflow:
    """The validated workflow, or InvalidArgument listing every problem (one per line, with lines)."""
    workflow, issues = check_workflow(text, registries=registries, base_dir=base_dir)
    if workflow is None:
        count = len(issues)
        lines = "\n".join(f"  {issue}" for issue in issues)
        raise InvalidArgument(f"{source} is invalid ({count} problem{'s' if count != 1 else ''}):\n{lines}",
                              detail={"issues": [issue.__dict__ for issue in issues]})
    return workflow


def compile_spec(spec: WorkflowSpec) -> ValidatedWorkflow:
    """Rebuild conditions and order from a stored (already validated) spec."""
    conditions = {name: parse_requires(job.requires) for name, job in spec.jobs.items()}
    deps = {name: sorted(cond.jobs()) for name, cond in conditions.items()}
    return ValidatedWorkflow(spec, conditions, topological_order(deps), deps)
