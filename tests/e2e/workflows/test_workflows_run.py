"""Workflows on a real daemon: ordering and parallelism, failure propagation, SKIPPED, FINISHED, expressions,
timeouts, cancel, a 50-job fan-out/fan-in, validation through the CLI, and role checks."""

from __future__ import annotations

import hashlib
import json
import os
import time

import pytest
from workflows_helpers import interval, jobs_of, max_overlap, states, steps, submit, wait_workflow

from capsa.errors import InvalidArgument, PermissionDenied
from tests.fixtures.daemon import RunningDaemon

DIAMOND = """\
name: diamond
jobs:
  a:
    command: /bin/true
  b:
    command: /bin/sleep
    args: ["1"]
    requires:
      - a: COMPLETED
  c:
    command: /bin/sleep
    args: ["1"]
    requires:
      - a: COMPLETED
  d:
    command: /bin/sh
    args: ["-c", "exit 0"]
    requires: "b=COMPLETED AND c=COMPLETED"
"""


def test_diamond_runs_in_dependency_order_with_the_middle_in_parallel(daemon: RunningDaemon, tmp_path) -> None:
    path = tmp_path / "diamond.yaml"
    path.write_text(DIAMOND)
    res = daemon.cli("workflow", "run", str(path), "--wait")
    assert res.returncode == 0, res.stderr.decode()
    workflow_id = res.stdout.decode().split()[0]
    with daemon.client("reader") as client:
        workflow = client.get_workflow(workflow_id)
        assert workflow.state == "COMPLETED" and states(workflow) == dict.fromkeys("abcd", "COMPLETED")
        a, b, c, d = (interval(client, steps(workflow)[n].job_id) for n in "abcd")
    assert b[0] >= a[1] and c[0] >= a[1], "b and c must wait for a"
    assert d[0] >= max(b[1], c[1]), "d must wait for b and c"
    assert b[0] < c[1] and c[0] < b[1], "b and c ran one after the other, not in parallel"


def test_workflow_jobs_are_ordinary_jobs_listed_with_workflow_and_job_name(daemon: RunningDaemon) -> None:
    with daemon.client() as client:
        workflow = wait_workflow(client, submit(client, DIAMOND.replace("name: diamond", "name: listed")).id)
        listed = jobs_of(client, workflow.id)
    assert sorted(j.workflow_job for j in listed) == ["a", "b", "c", "d"]
    assert {j.name for j in listed} == {"listed/a", "listed/b", "listed/c", "listed/d"}
    ps = json.loads(daemon.cli("ps", "-a", "--json", check=True).stdout)
    mine = {j["workflow_job"]: j for j in ps if j["workflow_id"] == workflow.id}
    assert set(mine) == {"a", "b", "c", "d"} and mine["b"]["command"] == ["/bin/sleep", "1"]
    table = daemon.cli("ps", "-a", check=True).stdout.decode()
    assert f"{workflow.id[:12]}/d" in table and "listed/d" in table


def test_a_failure_skips_what_can_no_longer_run_and_fails_the_workflow(daemon: RunningDaemon, tmp_path) -> None:
    path = tmp_path / "fail.yaml"
    path.write_text("""\
name: failing
jobs:
  build:
    command: /bin/sh
    args: ["-c", "exit 3"]
  test:
    command: /bin/true
    requires: [{build: COMPLETED}]
  deploy:
    command: /bin/true
    requires: [{test: COMPLETED}]
  notify:
    command: /bin/true
    requires: [{build: FAILED}]
""")
    res = daemon.cli("workflow", "run", str(path), "--wait")
    assert res.returncode == 1, res.stderr.decode()
    workflow_id = res.stdout.decode().split()[0]
    with daemon.client("reader") as client:
        workflow = client.get_workflow(workflow_id)
        ran = {j.workflow_job for j in jobs_of(client, workflow_id)}
    by_name = steps(workflow)
    assert workflow.state == "FAILED" and "job build failed (exited with code 3)" in workflow.reason
    assert by_name["build"].state == "FAILED" and by_name["build"].exit_code == 3 and by_name["build"].has_exit_code
    assert by_name["test"].state == "SKIPPED"
    assert by_name["test"].reason == "requirement build=COMPLETED can no longer hold: build FAILED"
    assert by_name["deploy"].state == "SKIPPED" and "test SKIPPED" in by_name["deploy"].reason
    assert by_name["notify"].state == "COMPLETED"
    assert ran == {"build", "notify"}, "skipped jobs must never start"
    assert not by_name["test"].job_id and not by_name["deploy"].job_id


def test_finished_means_either_outcome_but_not_skipped(daemon: RunningDaemon) -> None:
    with daemon.client() as client:
        workflow = wait_workflow(client, submit(client, """\
            name: finished
            jobs:
              flaky:
                command: /bin/false
              cleanup:
                command: /bin/true
                requires: [{flaky: FINISHED}]
              never:
                command: /bin/true
                requires: [{flaky: COMPLETED}]
              after-never:
                command: /bin/true
                requires: [{never: FINISHED}]
              ok:
                command: /bin/true
              after-ok:
                command: /bin/true
                requires: [{ok: FINISHED}]
            """).id)
    assert states(workflow) == {"flaky": "FAILED", "cleanup": "COMPLETED", "never": "SKIPPED",
                                "after-never": "SKIPPED", "ok": "COMPLETED", "after-ok": "COMPLETED"}
    assert "never SKIPPED" in steps(workflow)["after-never"].reason


def test_the_expression_form_from_the_issue(daemon: RunningDaemon) -> None:
    expression = "train=COMPLETED OR (fetch IN (FAILED) AND train=FINISHED)"
    with daemon.client() as client:
        # fetch fails, train (which only needs fetch to have finished) fails too: the second branch holds.
        second = submit(client, f"""\
            name: expr-second-branch
            jobs:
              fetch: {{command: /bin/false}}
              train:
                command: /bin/false
                requires: "fetch=FINISHED"
              report:
                command: /bin/true
                requires: "{expression}"
            """)
        # fetch completes, train fails: neither branch can hold any more.
        neither = submit(client, f"""\
            name: expr-neither
            jobs:
              fetch: {{command: /bin/true}}
              train:
                command: /bin/false
                requires: "fetch=FINISHED"
              report:
                command: /bin/true
                requires: "{expression}"
            """)
        second, neither = wait_workflow(client, second.id), wait_workflow(client, neither.id)
    assert states(second)["report"] == "COMPLETED"
    assert states(neither)["report"] == "SKIPPED"
    assert steps(neither)["report"].reason == ("requirement train=COMPLETED OR (fetch=FAILED AND train=FINISHED)"
                                               " can no longer hold: fetch COMPLETED, train FAILED")


def test_an_or_requirement_starts_as_soon_as_one_side_holds(daemon: RunningDaemon) -> None:
    with daemon.client() as client:
        workflow = wait_workflow(client, submit(client, """\
            name: early
            jobs:
              slow: {command: /bin/sleep, args: ["2"]}
              fast: {command: /bin/true}
              either:
                command: /bin/true
                requires: "slow=COMPLETED OR fast=COMPLETED"
            """).id)
        slow = interval(client, steps(workflow)["slow"].job_id)
        either = interval(client, steps(workflow)["either"].job_id)
    assert workflow.state == "COMPLETED"
    assert either[1] < slow[1], "either waited for slow although fast had already completed"


def test_a_job_exceeding_its_timeout_is_stopped_and_fails_with_reason_timeout(daemon: RunningDaemon) -> None:
    started = time.monotonic()
    with daemon.client() as client:
        workflow = wait_workflow(client, submit(client, """\
            name: timeouts
            jobs:
              hang:
                command: /bin/sh
                args: ["-c", "trap 'exit 143' TERM; sleep 60 & wait"]
                timeout: 1s
              quick:
                command: /bin/sleep
                args: ["0.2"]
                timeout: 30s
              after:
                command: /bin/true
                requires: [{hang: COMPLETED}]
            """).id, timeout=30)
        hang = client.get_job(steps(workflow)["hang"].job_id)
    elapsed = time.monotonic() - started
    assert states(workflow) == {"hang": "FAILED", "quick": "COMPLETED", "after": "SKIPPED"}
    assert steps(workflow)["hang"].reason == "timeout"
    assert hang.state == "TIMEOUT" and hang.ended, "the job itself must really have been stopped"
    ran_for = (hang.ended_at_ns - hang.started_at_ns) / 1e9
    assert 1.0 <= ran_for < 5, ran_for
    assert elapsed < 10 and workflow.state == "FAILED"


def test_cancel_stops_running_jobs_and_starts_no_more(daemon: RunningDaemon) -> None:
    with daemon.client() as client:
        workflow = submit(client, """\
            name: cancel-me
            jobs:
              long: {command: /bin/sh, args: ["-c", "trap 'exit 143' TERM; sleep 60 & wait"]}
              next: {command: /bin/true, requires: [{long: FINISHED}]}
            """)
        running = wait_workflow(client, workflow.id, until=lambda w: steps(w)["long"].state == "RUNNING")
        started = time.monotonic()
        res = daemon.cli("workflow", "cancel", workflow.id[:12])
        took = time.monotonic() - started
        assert res.returncode == 0, res.stderr.decode()
        assert res.stdout.decode().split() == [workflow.id[:12], "CANCELED"]
        final = client.get_workflow(workflow.id)
        long_job = client.get_job(steps(running)["long"].job_id)
        again = client.cancel_workflow(workflow.id)   # canceling an ended workflow changes nothing
    assert took < 10
    assert final.state == "CANCELED" and final.ended
    assert states(final) == {"long": "CANCELED", "next": "CANCELED"}
    assert steps(final)["next"].reason == "workflow canceled" and not steps(final)["next"].job_id
    assert long_job.state == "STOPPED" and long_job.ended
    assert again.state == "CANCELED"


def test_fifty_job_fan_out_fan_in_respects_the_parallelism_bound(daemon: RunningDaemon) -> None:
    middle = "\n".join(f"  w{i:02d}: {{command: /bin/true, requires: [{{root: COMPLETED}}]}}" for i in range(48))
    sink = "  sink:\n    command: /bin/true\n    requires: \"" + " AND ".join(
        f"w{i:02d}=COMPLETED" for i in range(48)) + "\"\n"
    text = f"name: fan\nmax_parallel: 6\njobs:\n  root: {{command: /bin/true}}\n{middle}\n{sink}"
    started = time.monotonic()
    with daemon.client() as client:
        workflow = wait_workflow(client, submit(client, text).id, timeout=120)
        elapsed = time.monotonic() - started
        by_name = steps(workflow)
        spans = {name: interval(client, s.job_id) for name, s in by_name.items()}
        ran = jobs_of(client, workflow.id)
    assert workflow.state == "COMPLETED" and len(by_name) == 50
    assert all(s.state == "COMPLETED" for s in by_name.values())
    assert len(ran) == 50 and len({j.workflow_job for j in ran}) == 50
    fan = [spans[f"w{i:02d}"] for i in range(48)]
    assert min(s for s, _ in fan) >= spans["root"][1]
    assert spans["sink"][0] >= max(e for _, e in fan)
    assert max_overlap(list(spans.values())) <= 6
    print(f"50-job fan-out/fan-in: {elapsed:.2f}s")


def test_invalid_workflows_are_rejected_with_every_error_and_its_line(daemon: RunningDaemon, tmp_path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("""\
name: bad
jobs:
  a:
    command: /bin/true
    requires: [{c: COMPLETED}]
  b:
    command: /bin/true
    requires: "a=COMPLETED AND ghost=FAILED"
  c:
    command: /bin/true
    timeout: soon
    requires:
      - b: COMPLETED
""")
    before = len(json.loads(daemon.cli("workflow", "ls", "--json", check=True).stdout))
    res = daemon.cli("workflow", "run", str(path))
    err = res.stderr.decode()
    assert res.returncode == 2, err
    assert f"{path} is invalid (3 problems):" in err and "Traceback" not in err
    assert "line 5: jobs.a.requires: dependency cycle: a -> c -> b -> a (their requires are at lines 5, 12, 8)" in err
    assert "line 8: jobs.b.requires: requires unknown job 'ghost'" in err
    assert "line 11: jobs.c.timeout: timeout 'soon' is not a duration" in err
    assert len(json.loads(daemon.cli("workflow", "ls", "--json", check=True).stdout)) == before


def test_status_and_ls_for_people_and_scripts(daemon: RunningDaemon) -> None:
    with daemon.client() as client:
        workflow = wait_workflow(client, submit(client, DIAMOND.replace("name: diamond", "name: shown")).id)
    status = json.loads(daemon.cli("workflow", "status", workflow.id[:10], "--json", role="reader", check=True).stdout)
    assert status["id"] == workflow.id and status["state"] == "COMPLETED"
    assert [j["name"] for j in status["jobs"]] == ["a", "b", "c", "d"]
    assert status["jobs"][3]["requires"] == "b=COMPLETED AND c=COMPLETED" and status["jobs"][3]["exit_code"] == 0
    detail = daemon.cli("workflow", "status", workflow.id, "--detail", role="reader", check=True).stdout.decode()
    assert "COMPLETED" in detail and "b=COMPLETED AND" in detail
    listed = json.loads(daemon.cli("workflow", "ls", "--json", role="reader", check=True).stdout)
    assert workflow.id in [w["id"] for w in listed]
    assert "shown" in daemon.cli("workflow", "ls", role="reader", check=True).stdout.decode()


def test_readers_may_look_but_not_run_or_cancel(daemon: RunningDaemon) -> None:
    with daemon.client("reader") as reader:
        with pytest.raises(PermissionDenied):
            reader.submit_workflow("name: x\njobs:\n  a: {command: /bin/true}\n")
        with pytest.raises(PermissionDenied):
            reader.cancel_workflow("0" * 32)
        assert isinstance(reader.list_workflows(), list)
    with daemon.client("developer") as developer:
        workflow = wait_workflow(developer, developer.submit_workflow("name: dev\njobs:\n  a: {command: /bin/true}\n").id)
        assert workflow.state == "COMPLETED"
        with pytest.raises(InvalidArgument, match="invalid"):
            developer.submit_workflow("name: x\njobs: {a: {comand: y}}\n")


def test_secret_env_reaches_the_job_but_is_never_stored_or_shown(daemon: RunningDaemon) -> None:
    secret = "s3cret-" + os.urandom(8).hex()
    digest = hashlib.sha256(secret.encode()).hexdigest()   # the job checks the value without naming it
    with daemon.client() as client:
        workflow = wait_workflow(client, submit(client, f"""\
            name: secrets
            jobs:
              use:
                command: /bin/sh
                args: ["-c", 'test "$(printf %s "$TOKEN" | sha256sum)" = "{digest}  -" && test "$PLAIN" = visible']
                env: {{PLAIN: visible}}
                secret_env: {{TOKEN: "{secret}"}}
            """).id)
        job = client.get_job(steps(workflow)["use"].job_id)
    assert workflow.state == "COMPLETED", steps(workflow)["use"].reason
    assert dict(job.env) == {"PLAIN": "visible"} and list(job.secret_env_keys) == ["TOKEN"]
    for path in daemon.home.glob("capsa.db*"):
        assert secret.encode() not in path.read_bytes(), f"the secret is stored in plain text in {path.name}"
    assert secret not in daemon.log_path.read_text(errors="replace")
    assert secret not in daemon.cli("workflow", "status", workflow.id, "--json", check=True).stdout.decode()
