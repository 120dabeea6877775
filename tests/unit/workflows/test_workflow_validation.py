"""Validation before anything runs: every problem at once, each with its YAML line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from capsa.errors import InvalidArgument
from capsa.workflows import (
    Issue,
    JobSpec,
    Registries,
    WorkflowSpec,
    check_workflow,
    compile_spec,
    validate_workflow,
)

THE_ISSUE_EXAMPLE = """\
name: nightly
description: optional
jobs:
  fetch:
    command: /bin/sh
    args: ["-c", "fetch-data"]
    image: 127.0.0.1:5000/team/tools:1
    resources: {max_cpu: 100, max_memory: 512, max_iobps: 0, cpu_cores: "0", max_pids: 100}
    env: {A: "1"}
    secret_env: {TOKEN: "..."}
    timeout: 10m
  train:
    command: python3
    args: [train.py]
    requires:
      - fetch: COMPLETED
  report:
    command: /bin/echo
    args: [done]
    requires: "train=COMPLETED OR (fetch IN (FAILED) AND train=FINISHED)"
"""


def issues_of(text: str, **kwargs: object) -> list[Issue]:
    workflow, issues = check_workflow(textwrap.dedent(text), **kwargs)  # type: ignore[arg-type]
    assert workflow is None, "expected the workflow to be rejected"
    return issues


def by_line(issues: list[Issue]) -> dict[int | None, list[str]]:
    out: dict[int | None, list[str]] = {}
    for issue in issues:
        out.setdefault(issue.line, []).append(f"{issue.where}: {issue.message}")
    return out


def test_the_issue_example_is_valid_and_ordered_dependencies_first() -> None:
    workflow = validate_workflow(THE_ISSUE_EXAMPLE)
    assert workflow.order == ["fetch", "train", "report"]
    fetch = workflow.spec.jobs["fetch"]
    assert fetch.timeout == "10m" and fetch.resources.max_memory == 512 and fetch.resources.cpu_cores == "0"
    assert workflow.deps == {"fetch": [], "train": ["fetch"], "report": ["fetch", "train"]}
    assert str(workflow.conditions["report"]) == "train=COMPLETED OR (fetch=FAILED AND train=FINISHED)"


def test_a_stored_spec_compiles_back_to_the_same_workflow() -> None:
    workflow = validate_workflow(THE_ISSUE_EXAMPLE)
    again = compile_spec(WorkflowSpec.model_validate_json(workflow.spec.model_dump_json()))
    assert again.conditions == workflow.conditions and again.order == workflow.order


def test_every_problem_is_reported_together_each_with_its_line() -> None:
    issues = issues_of("""\
        name: broken
        jobs:
          fetch:
            comand: /bin/true
            timeout: 10 minutes
            resources: {max_cpu: -5, max_memory: "512", cpu_cores: "0-"}
          train:
            command: /bin/true
            requires:
              - fetsh: COMPLETED
          report:
            command: /bin/true
            requires: "train=COMPLETED OR ghost IN (FAILED)"
        """)
    lines = by_line(issues)
    assert any("unknown key 'comand'; did you mean 'command'?" in m for m in lines[4])
    assert any("timeout '10 minutes' is not a duration" in m for m in lines[5])
    assert {m.split(":")[0] for m in lines[6]} == {
        "jobs.fetch.resources.max_cpu", "jobs.fetch.resources.max_memory", "jobs.fetch.resources.cpu_cores"}
    assert any("requires unknown job 'fetsh'; did you mean 'fetch'?" in m for m in lines[9])
    assert any("requires unknown job 'ghost'" in m for m in lines[13])
    assert len(issues) == 7
    assert [i.line for i in issues] == sorted(i.line or 0 for i in issues)


def test_the_error_message_lists_every_problem_with_its_line() -> None:
    with pytest.raises(InvalidArgument) as err:
        validate_workflow("name: x\njobs:\n  a: {command: /bin/true, timeout: 0s}\n  b: {command: y, bogus: 1}\n",
                          source="pipe.yaml")
    message = str(err.value)
    assert message.startswith("pipe.yaml is invalid (2 problems):")
    assert "line 3: jobs.a.timeout: timeout '0s' must be longer than zero" in message
    assert "line 4: jobs.b.bogus: unknown key 'bogus'" in message
    assert [i["line"] for i in err.value.detail["issues"]] == [3, 4]  # type: ignore[union-attr]


def test_a_cycle_names_every_job_on_it_and_the_lines_of_their_requires() -> None:
    issues = issues_of("""\
        name: loop
        jobs:
          start:
            command: /bin/true
          a:
            command: /bin/true
            requires: [{c: COMPLETED}, {start: COMPLETED}]
          b:
            command: /bin/true
            requires: "a=FINISHED"
          c:
            command: /bin/true
            requires:
              - b: COMPLETED
          selfish:
            command: /bin/true
            requires: "selfish=COMPLETED"
        """)
    cycles = [i for i in issues if "dependency cycle" in i.message]
    assert len(cycles) == 2 and len(issues) == 2
    assert cycles[0].line == 7
    assert "dependency cycle: a -> c -> b -> a" in cycles[0].message
    assert "lines 7, 13, 10" in cycles[0].message
    assert cycles[1].line == 17 and "selfish -> selfish" in cycles[1].message


def test_expression_errors_carry_the_line_and_the_column() -> None:
    [issue] = issues_of("""\
        name: x
        jobs:
          a: {command: /bin/true}
          b:
            command: /bin/true
            requires: "a=COMPLETED AND (a=FAILED"
        """)
    assert issue.line == 6 and issue.where == "jobs.b.requires"
    assert "'(' at column 17 is never closed" in issue.message


def test_list_form_errors_point_at_the_item() -> None:
    [issue] = issues_of("""\
        name: x
        jobs:
          a: {command: /bin/true}
          b:
            command: /bin/true
            requires:
              - a: COMPLETED
              - a: SUCCEEDED
        """)
    assert issue.line == 8 and "unknown state 'SUCCEEDED'" in issue.message


def test_yaml_syntax_errors_have_a_line() -> None:
    [issue] = issues_of("name: x\njobs:\n  a: {command: [unclosed\n")
    assert issue.message.startswith("not valid YAML") and issue.line == 4


def test_duplicate_keys_are_reported_instead_of_silently_kept() -> None:
    issues = issues_of("""\
        name: x
        jobs:
          a: {command: /bin/true}
          a: {command: /bin/false}
        """)
    assert [(i.line, i.message) for i in issues] == [(4, "duplicate key 'a' (first at line 3)")]


def test_top_level_problems() -> None:
    assert "must be a mapping" in issues_of("- just\n- a list\n")[0].message
    assert issues_of("")[0].message == "the workflow document is empty"
    lines = by_line(issues_of("description: no name, no jobs\nextra: 1\n"))
    assert lines[1] == ["name: missing required key 'name'", "jobs: missing required key 'jobs'"]
    assert lines[2] == ["extra: unknown key 'extra' (known: name, description, max_parallel, jobs)"]
    assert "at least one job" in issues_of("name: x\njobs: {}\n")[0].message
    assert "max_parallel" in issues_of("name: x\nmax_parallel: 0\njobs: {a: {command: y}}\n")[0].where


def test_job_names_and_job_shapes() -> None:
    lines = by_line(issues_of("""\
        name: x
        jobs:
          OR: {command: /bin/true}
          9lives: {command: /bin/true}
          nothing: {}
          scalar: hello
        """))
    assert "reserved" in lines[3][0]
    assert "is not valid" in lines[4][0]
    assert "a job needs a command" in lines[5][0]
    assert "must be a mapping" in lines[6][0]


def test_strict_types_are_not_coerced() -> None:
    lines = by_line(issues_of("""\
        name: x
        jobs:
          a:
            command: /bin/true
            args: [1]
            env: {A: 1}
        """))
    assert lines[5] == ["jobs.a.args[0]: Input should be a valid string"]
    assert lines[6] == ["jobs.a.env.A: Input should be a valid string"]


def test_image_references_are_checked_for_syntax() -> None:
    [issue] = issues_of("name: x\njobs:\n  a:\n    image: 'UPPER/Case:tag'\n")
    assert issue.line == 4 and issue.where == "jobs.a.image"


def test_runtimes_are_reported_unavailable_until_a_registry_is_plugged_in() -> None:
    text = "name: x\njobs:\n  a:\n    command: python3\n    runtime: python-3.11\n"
    [issue] = issues_of(text)
    assert issue.line == 5 and "runtimes are not available yet" in issue.message
    known = Registries(runtime_image=lambda name: "127.0.0.1:5000/runtimes/python:3.11" if name == "python-3.11"
                       else None)
    assert check_workflow(text, registries=known)[0] is not None
    [unknown] = issues_of(text.replace("python-3.11", "ruby-3"), registries=known)
    assert unknown.message == "unknown runtime 'ruby-3'"
    [both] = issues_of(text + "    image: alpine:3\n", registries=known)
    assert "either image or runtime" in both.message


def test_volumes_networks_and_capsules_are_checked_against_the_registries() -> None:
    text = """\
        name: x
        jobs:
          a:
            command: /bin/true
            volumes: ["cache:/cache:ro", scratch]
            network: backend
            capsules: ["dataset@>=1.2", "not a requirement!"]
        """
    lines = by_line(issues_of(text))
    assert lines[5] == ["jobs.a.volumes[0]: unknown volume 'cache'", "jobs.a.volumes[1]: unknown volume 'scratch'"]
    assert lines[6] == ["jobs.a.network: unknown network 'backend'"]
    assert lines[7][0] == "jobs.a.capsules[0]: unknown capsule 'dataset@>=1.2'"
    assert "invalid capsule requirement" in lines[7][1]
    registries = Registries(volume_exists={"cache"}.__contains__, network_exists={"backend"}.__contains__,
                            capsule_exists=lambda req: req.startswith("dataset"))
    lines = by_line(issues_of(text, registries=registries))
    assert lines[5] == ["jobs.a.volumes[1]: unknown volume 'scratch'"]
    assert 6 not in lines, "a network the registry knows is fine"
    # A capsule the registry knows is attached at start, as `capsa run --capsule` does; a malformed one is still named.
    assert len(lines[7]) == 1 and "invalid capsule requirement 'not a requirement!'" in lines[7][0]


def test_built_in_network_modes_need_no_registry_and_volume_syntax_is_checked() -> None:
    for mode in ("host", "none", "isolated", "bridge"):
        assert check_workflow(f"name: x\njobs:\n  a: {{command: y, network: {mode}}}\n")[0] is not None, mode
    [issue] = issues_of("name: x\njobs:\n  a: {command: y, volumes: ['cache:relative']}\n")
    assert issue.message == "volume 'cache:relative' is not NAME[:/path][:ro]"


def test_uploads_are_checked_and_must_have_been_sent(tmp_path: Path) -> None:
    (tmp_path / "scripts").mkdir()
    text = "name: x\njobs:\n  a:\n    command: y\n    uploads: [./scripts, ./missing, /etc, ../up, a/../../b]\n"
    messages = [i.message for i in issues_of(text, base_dir=tmp_path)]
    assert messages[0] == f"upload './missing' does not exist ({tmp_path}/missing)"
    for i, path in enumerate(("/etc", "../up", "a/../../b"), start=1):
        assert messages[i] == f"upload {path!r} must be a relative path inside the workflow's directory"
    # Without the session `capsa workflow run` sends, the files would not reach the job: refused, not ignored.
    assert "the uploads were not sent: submit the workflow with `capsa workflow run FILE`" in messages[4]
    assert len(messages) == 5
    assert "no base directory" in issues_of(text)[0].message


def test_secret_env_is_accepted_but_may_not_shadow_env() -> None:
    assert check_workflow("name: x\njobs:\n  a: {command: y, secret_env: {T: s}}\n")[0] is not None
    [issue] = issues_of("name: x\njobs:\n  a: {command: y, env: {T: a}, secret_env: {T: s}}\n")
    assert "T is set in both env and secret_env" in issue.message


def test_alias_bombs_are_refused_before_they_expand() -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
    for i in range(1, 8):
        bomb += f"{chr(97 + i)}: &{chr(97 + i)} [" + ", ".join([f"*{chr(96 + i)}"] * 10) + "]\n"
    [issue] = issues_of(bomb)
    assert "refusing to process it" in issue.message


@pytest.mark.parametrize("text", ["30s", "10m", "1h30m", "500ms", "1.5h", "2d"])
def test_timeouts_take_capsa_durations(text: str) -> None:
    assert JobSpec.model_validate({"command": "x", "timeout": text}).timeout == text


@pytest.mark.parametrize(("value", "fragment"), [
    ("", "empty"), ("10 m", "is not a duration"), ("10x", "is not a duration"), ("0s", "longer than zero"),
    (45, "has no unit: write 45s"), ("45", "has no unit"), (True, "valid string"),
])
def test_bad_timeouts_say_what_is_wrong(value: object, fragment: str) -> None:
    [issue] = issues_of(f"name: x\njobs:\n  a:\n    command: y\n    timeout: {value!r}\n".replace("True", "true"))
    assert issue.where == "jobs.a.timeout" and issue.line == 5
    assert fragment in issue.message, issue.message
