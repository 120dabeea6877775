"""Workflow jobs and `capsa run` share one field schema (capsa.jobs.spec_fields): every field is accepted
and mapped onto the RunRequest, every bad value is refused by both, the YAML with its line; uploads travel
as upload sessions the workflow keeps until it ends."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from capsa.cli.jobs import run as cli_run
from capsa.cli.workflows import _send_uploads
from capsa.errors import InvalidArgument, NotFound
from capsa.fsm import Engine
from capsa.jobs.model import RunRequest
from capsa.jobs.requests import validate_request
from capsa.jobs.secrets import SecretBox, validate_env_names
from capsa.jobs.service import JobService
from capsa.jobs.spec_fields import FIELDS, SECCOMP_PROFILES
from capsa.runtime.security import PROFILE_NAMES
from capsa.state import Database
from capsa.upload_items import walk_local
from capsa.workflows import Issue, JobSpec, Registries, WorkflowService, check_workflow
from capsa.workflows._runner import WorkflowRunner
from capsa.workflows.schema import ResourcesSpec
from tests.fixtures.fakes import FakeSupervisor

EVERYTHING = """\
name: all
jobs:
  a:
    command: /bin/sh
    args: ["-c", "true"]
    runtime: python-3.11
    pull: never
    workdir: /srv
    user: "1000:1000"
    seccomp: strict
    env: {A: "1"}
    secret_env: {TOKEN: t}
    uploads: [in.txt]
    volumes: ["cache:/cache:ro"]
    capsules: ["dataset@>=1.2:/capsules/ds"]
    network: backend
    ports: ["8080:80", "127.0.0.1:5353:53/udp"]
    gpus: 1
    timeout: 90s
    resources: {max_cpu: 150, max_memory: 256, max_iobps: 1000000, cpu_cores: "0-1", max_pids: 64}
upload_sessions:
  a: 0123456789abcdef0123456789abcdef
"""

KNOWN = Registries(runtime_image=lambda name: "127.0.0.1:5000/runtimes/python:3.11" if name == "python-3.11" else None,
                   volume_exists={"cache"}.__contains__, network_exists={"backend"}.__contains__,
                   capsule_exists=lambda spec: spec.startswith("dataset@"))


def issues_of(text: str, **kwargs: Any) -> list[Issue]:
    workflow, issues = check_workflow(textwrap.dedent(text), **kwargs)
    assert workflow is None, "expected the workflow to be rejected"
    return issues


class _Uploads:
    def __init__(self) -> None:
        self.copied: list[Path] = []

    def stage_copy(self, tree: Path) -> str:
        self.copied.append(tree)
        return "f" * 32


class _Jobs:
    uploads = _Uploads()


def test_every_field_is_accepted_and_mapped_onto_the_run_request(tmp_path: Path) -> None:
    workflow, issues = check_workflow(EVERYTHING, registries=KNOWN)
    assert issues == [] and workflow is not None
    assert workflow.upload_sessions == {"a": "0123456789abcdef0123456789abcdef"}
    spec = workflow.spec.jobs["a"]
    (tmp_path / "wf1" / "a").mkdir(parents=True)
    runner = WorkflowRunner(None, _Jobs(), secret_box=None, max_parallel=1, poll_interval_s=1,  # type: ignore[arg-type]
                            runtime_image=KNOWN.runtime_image, uploads_dir=tmp_path)
    request = runner._request("wf1", "all", "a", spec, {"TOKEN": "t"})
    r = request.resources
    assert request == RunRequest(
        command=("/bin/sh", "-c", "true"), env={"A": "1"}, secret_env={"TOKEN": "t"}, workdir="/srv",
        name="all/a", image="127.0.0.1:5000/runtimes/python:3.11", pull="never", user="1000:1000",
        workflow_id="wf1", workflow_job="a", upload_session="f" * 32, timeout="90s", seccomp="strict",
        network="backend", ports=("8080:80", "127.0.0.1:5353:53/udp"), volumes=("cache:/cache:ro",), capsules=("dataset@>=1.2:/capsules/ds",), gpus=1,
        resources=r)
    assert (r.max_cpu, r.max_memory_mb, r.max_iobps, r.cpu_cores, r.max_pids) == (150, 256, 1000000, "0-1", 64)
    assert _Jobs.uploads.copied == [tmp_path / "wf1" / "a"], "each start gets a copy of what the workflow kept"
    validate_request(request)   # what the workflow accepted, `capsa run` accepts


# (YAML key and value, the RunRequest change with the same value, what both say)
BAD = [
    ("workdir: srv", {"workdir": "srv"}, "must be an absolute path inside the job"),
    ("user: nobody", {"user": "nobody"}, "give a numeric UID[:GID]"),
    ("seccomp: lax", {"seccomp": "lax"}, "expected one of default, strict, unconfined"),
    ("env: {'A=B': x}", {"env": {"A=B": "x"}}, "names must be non-empty without '='"),
    ("secret_env: {'1X': x}", {"secret_env": {"1X": "x"}}, "names are letters, digits and '_'"),
    ("volumes: ['cache:relative']", {"volumes": ("cache:relative",)}, "is not NAME[:/path][:ro]"),
    ("timeout: 10x", {"timeout": "10x"}, "is not a duration"),
    ("resources: {max_cpu: -1}", {"max_cpu": -1}, "must be zero (unlimited) or positive, got -1"),
    ("resources: {max_memory: -1}", {"max_memory_mb": -1}, "must be zero (unlimited) or positive, got -1"),
    ("resources: {max_iobps: -1}", {"max_iobps": -1}, "must be zero (unlimited) or positive, got -1"),
    ("resources: {max_pids: -1}", {"max_pids": -1}, "must be zero (unlimited) or positive, got -1"),
    ("resources: {cpu_cores: '0-'}", {"cpu_cores": "0-"}, "is not a CPU list like '0', '0-1' or '0,2'"),
]


def _request(change: dict[str, Any]) -> RunRequest:
    from capsa.jobs.model import Resources

    limits = {k: v for k, v in change.items() if k in Resources.__dataclass_fields__}
    rest = {k: v for k, v in change.items() if k not in limits}
    return RunRequest(command=("/bin/true",), resources=Resources(**limits), **rest)


@pytest.mark.parametrize(("line", "change", "message"), BAD, ids=[b[0].split(":")[0] + str(i) for i, b in
                                                                   enumerate(BAD)])
def test_a_bad_value_is_refused_by_the_yaml_with_its_line_and_by_capsa_run(line: str, change: dict[str, Any],
                                                                        message: str) -> None:
    key = line.split(":")[0]
    [issue] = issues_of(f"name: x\njobs:\n  a:\n    command: /bin/true\n    {line}\n")
    assert issue.line == 5 and issue.where.startswith(f"jobs.a.{key}"), issue
    assert message in issue.message, issue.message
    request = _request(change)
    with pytest.raises(InvalidArgument) as err:
        validate_request(request)
        validate_env_names(request.env, request.secret_env)   # the service's own order: limits, then names
    assert message in err.value.message


@pytest.mark.parametrize(("line", "fragment"), [
    ("pull: sometimes", "Input should be 'missing', 'always' or 'never'"),
    ("gpus: -1", "must be zero (unlimited) or positive, got -1"),
    ("gpus: '1'", "valid integer"),
    ("capsules: ['Bad Name']", "invalid capsule requirement 'Bad Name'"),
    ("image: 'UPPER/Case:tag'", ""),
    ("ports: ['80']", "expected [HOSTIP:]HOSTPORT:JOBPORT[/tcp|/udp]"),
    ("ports: ['8080:80']", "ports cannot be published with network host"),
])
def test_the_other_fields_are_checked_with_their_line(line: str, fragment: str) -> None:
    [issue] = issues_of(f"name: x\njobs:\n  a:\n    command: /bin/true\n    {line}\n")
    assert issue.line == 5 and issue.where.startswith(f"jobs.a.{line.split(':')[0]}")
    assert fragment in issue.message


def test_the_schema_names_every_yaml_key_every_run_request_field_and_every_run_flag() -> None:
    keys = {f.key for f in FIELDS}
    assert {k for k in JobSpec.model_fields if k not in ("requires", "resources")} <= keys
    assert {f"resources.{k}" for k in ResourcesSpec.model_fields} <= keys
    flags = {opt for p in cli_run.params for opt in p.opts}
    for item in FIELDS:
        target: Any = RunRequest(command=())
        for part in item.request.split("."):
            target = getattr(target, part)   # AttributeError names a field RunRequest lacks
        if item.flag.startswith("--") and " " not in item.flag:
            assert item.flag in flags, f"capsa run has no {item.flag}"
    assert SECCOMP_PROFILES == PROFILE_NAMES


def test_upload_sessions_must_match_jobs_with_uploads(tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text("x")
    text = "name: x\njobs:\n  a:\n    command: y\n  b:\n    command: y\n    uploads: [in.txt]\n"
    sent = text + "upload_sessions:\n  a: s1\n  ghost: s2\n  b: s3\n"
    by_where = {i.where: (i.line, i.message) for i in issues_of(sent, base_dir=tmp_path)}
    assert by_where == {"upload_sessions.a": (9, "job 'a' has no `uploads`"),
                        "upload_sessions.ghost": (10, "upload session for unknown job 'ghost'")}
    # Sent: the daemon does not look for the files on its own disk (the client read them).
    assert check_workflow(text + "upload_sessions:\n  b: s3\n")[0] is not None
    [issue] = issues_of("name: x\njobs:\n  a: {command: y, bogus_key: 1}\n")
    assert "upload_sessions" not in issue.message, "a key written by the client is never suggested"


class _Client:
    def __init__(self) -> None:
        self.sent: list[list[str]] = []

    def upload_paths(self, paths: list[str], *, on_skip: Any = None) -> Any:
        self.sent.append(paths)
        return type("Result", (), {"session": f"{len(self.sent):032x}"})()


def test_workflow_run_uploads_each_job_and_appends_the_sessions_after_the_users_lines(tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text("x")
    (tmp_path / "dir").mkdir()
    text = ("name: x\njobs:\n  a:\n    command: y\n    uploads: [in.txt, dir]\n"
            "  b:\n    command: y\n  c:\n    command: y\n    uploads: [../escape]\n")
    client = _Client()
    sent = _send_uploads(client, text, tmp_path)
    assert client.sent == [[str(tmp_path / "in.txt"), str(tmp_path / "dir")]], "never a path outside the directory"
    assert sent.startswith(text) and sent[len(text):] == f'upload_sessions:\n  "a": "{1:032x}"\n'
    # c's bad path (not uploaded, so not sent) is reported at its own line in the user's file.
    issues = issues_of(sent, base_dir=tmp_path)
    assert [(i.line, i.where) for i in issues] == [(10, "jobs.c.uploads[0]"), (10, "jobs.c.uploads")]
    assert "must be a relative path" in issues[0].message and "were not sent" in issues[1].message
    assert _send_uploads(client, "name: x\njobs: {a: {command: y}}", tmp_path) == "name: x\njobs: {a: {command: y}}"
    with pytest.raises(InvalidArgument, match="block-style"):
        _send_uploads(client, "{name: x, jobs: {a: {command: y, uploads: [in.txt]}}}", tmp_path)


@pytest.fixture
def service(tmp_path: Path) -> Iterator[WorkflowService]:
    db = Database(tmp_path / "capsa.db")
    home = tmp_path / "home"
    home.mkdir()
    supervisor = FakeSupervisor()
    supervisor.exit_on_start = 0
    jobs = JobService(db, home, supervisor, kill_lost=lambda job_id: None)
    jobs.attach_supervisor()
    engine = Engine(db, queues={"workflows": 2})
    workflows = WorkflowService(db, engine, jobs, secret_box=SecretBox(home), queue="workflows")
    engine.resume()
    yield workflows
    engine.shutdown(wait=True, timeout=5)
    db.close(checkpoint=False)


def test_each_job_start_gets_the_uploads_as_its_work_and_the_workflow_drops_them_at_the_end(
        service: WorkflowService, tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text("payload")
    session = service.jobs.uploads.receive(walk_local([tmp_path / "in.txt"])).session
    text = ("name: up\njobs:\n  a:\n    command: /bin/true\n    uploads: [in.txt]\n"
            "  b:\n    command: /bin/true\n    uploads: [in.txt]\n    requires: [{a: COMPLETED}]\n")
    with pytest.raises(NotFound, match="upload session .* does not exist"):
        service.submit(text + f"upload_sessions:\n  a: '{'0' * 32}'\n  b: '{session}'\n")
    assert not list(service.uploads_dir.glob("*/*")), "a refused submit keeps nothing"
    session = service.jobs.uploads.receive(walk_local([tmp_path / "in.txt"])).session
    again = service.jobs.uploads.receive(walk_local([tmp_path / "in.txt"])).session
    workflow = service.wait(service.submit(text + f"upload_sessions:\n  a: '{session}'\n  b: '{again}'\n").id,
                            timeout=10)
    assert workflow.state.value == "COMPLETED", [(j.name, j.reason) for j in workflow.jobs]
    for job in workflow.jobs:
        assert (service.jobs.jobs_dir / job.job_id / "work" / "in.txt").read_text() == "payload"
    assert not (service.uploads_dir / workflow.id).exists()
