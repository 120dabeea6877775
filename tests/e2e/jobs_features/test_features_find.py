"""Names, labels, --rm, ps filters and formats, and logs as people read them, through the real CLI."""

from __future__ import annotations

import json
import subprocess
import time
import uuid

from features_helpers import wait_for

from tests.fixtures.daemon import CAPSA, RunningDaemon


def _ok(daemon: RunningDaemon, *args: str) -> str:
    return daemon.cli(*args, check=True).stdout.decode()


def _name() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


def test_a_name_is_an_id_and_a_clash_exits_4(features_daemon: RunningDaemon) -> None:
    name = _name()
    job_id = _ok(features_daemon, "run", "-d", "--name", name, "--label", "team=ml", "--", "/bin/true").strip()
    clash = features_daemon.cli("run", "-d", "--name", name, "--", "/bin/true")
    assert clash.returncode == 4 and b"already taken" in clash.stderr
    bad = features_daemon.cli("run", "-d", "--name", "no spaces", "--", "/bin/true")
    assert bad.returncode == 2 and b"--name" in bad.stderr
    shown = json.loads(_ok(features_daemon, "inspect", name))
    assert shown["id"] == job_id and shown["labels"] == {"team": "ml"}
    missing = features_daemon.cli("inspect", "no-such-job-name")
    assert missing.returncode == 3


def test_run_rm_attached_gives_the_exit_code_and_leaves_nothing(features_daemon: RunningDaemon) -> None:
    name = _name()
    result = features_daemon.cli("run", "--rm", "--name", name, "--", "/bin/sh", "-c", "echo bye; exit 3")
    assert result.returncode == 3 and result.stdout == b"bye\n"
    gone = wait_for(lambda: features_daemon.cli("inspect", name).returncode == 3 or None, timeout=15,
                    what="the --rm job to be removed")
    assert gone


def test_run_rm_detached_is_removed_by_the_daemon(features_daemon: RunningDaemon) -> None:
    job_id = _ok(features_daemon, "run", "-d", "--rm", "--", "/bin/true").strip()
    wait_for(lambda: features_daemon.cli("inspect", job_id).returncode == 3 or None, timeout=20,
             what="the detached --rm job to be removed")
    assert not (features_daemon.home / "jobs" / job_id).exists()


def test_ps_filters_format_and_no_trunc(features_daemon: RunningDaemon) -> None:
    tag = uuid.uuid4().hex[:8]
    ok = _ok(features_daemon, "run", "-d", "--label", f"run={tag}", "--label", "kind=ok", "--", "/bin/true").strip()
    bad = _ok(features_daemon, "run", "-d", "--label", f"run={tag}", "--", "/bin/false").strip()
    client = features_daemon.client()
    for job_id in (ok, bad):
        wait_for(lambda j=job_id: client.get_job(j).ended or None, timeout=20, what="jobs to end")
    listed = json.loads(_ok(features_daemon, "ps", "-a", "--filter", f"label=run={tag}", "--json"))
    assert {j["id"] for j in listed} == {ok, bad}
    failed = _ok(features_daemon, "ps", "--filter", f"label=run={tag}", "--filter", "state=failed", "-q")
    assert failed.split() == [bad[:12]]
    assert _ok(features_daemon, "ps", "-a", "-f", f"label=run={tag}", "-f", "label=kind", "--no-trunc",
               "-q").split() == [ok]
    lines = _ok(features_daemon, "ps", "-a", "-f", f"label=run={tag}", "--format", "{id} {state} {exit_code}")
    assert sorted(lines.splitlines()) == sorted([f"{ok[:12]} COMPLETED 0", f"{bad[:12]} FAILED 1"])
    assert _ok(features_daemon, "ps", "-a", "-f", f"label=run={tag}", "-f", "since=1h", "-q").split()
    unknown = features_daemon.cli("ps", "--format", "{nope}")
    assert unknown.returncode == 2 and b"unknown field {nope}" in unknown.stderr
    for bad_filter in ("color=red", "since=10", "state=DONE"):
        result = features_daemon.cli("ps", "--filter", bad_filter)
        assert result.returncode == 2, bad_filter


def test_ps_keeps_one_line_per_job_on_a_narrow_terminal(features_daemon: RunningDaemon) -> None:
    tag = uuid.uuid4().hex[:8]
    _ok(features_daemon, "run", "-d", "--label", f"w={tag}", "--", "/bin/sh", "-c", "sleep 0; " + "x" * 300)
    env = dict(features_daemon.env, COLUMNS="80")
    out = subprocess.run([*CAPSA, "--config", str(features_daemon.home / "client-admin.yaml"), "ps", "-a",
                          "-f", f"label=w={tag}"], env=env, capture_output=True, check=True).stdout.decode()
    lines = out.splitlines()
    assert len(lines) == 2 and all(len(line) <= 80 for line in lines), out
    assert "…" in lines[1]


def test_logs_tail_since_streams_and_timestamps(features_daemon: RunningDaemon) -> None:
    script = "for i in 1 2 3 4 5; do echo out$i; echo err$i >&2; done"
    job_id = _ok(features_daemon, "run", "-d", "--", "/bin/sh", "-c", script).strip()
    client = features_daemon.client()
    wait_for(lambda: client.get_job(job_id).ended or None, timeout=20, what="the job to end")
    assert features_daemon.cli("logs", "--tail", "2", "--stdout", job_id).stdout == b"out4\nout5\n"
    both = features_daemon.cli("logs", "--tail", "2", job_id)
    assert both.stdout + both.stderr in (b"out5\nerr5\n", b"err5\nout5\n") or len((both.stdout + both.stderr)
                                                                                    .splitlines()) == 2
    only_err = features_daemon.cli("logs", "--stderr", job_id)
    assert only_err.stdout == b"" and only_err.stderr.splitlines() == [f"err{i}".encode() for i in range(1, 6)]
    assert features_daemon.cli("logs", "--since", "1h", "--stdout", job_id).stdout.count(b"\n") == 5
    assert features_daemon.cli("logs", "--since", "2200-01-01T00:00:00Z", job_id).stdout == b""
    stamped = features_daemon.cli("logs", "--timestamps", "--stdout", "--tail", "1", job_id).stdout.decode()
    assert stamped.endswith(" out5\n") and stamped[:4].isdigit() and "T" in stamped.split()[0]
    bad = features_daemon.cli("logs", "--since", "yesterday", job_id)
    assert bad.returncode == 2 and b"--since" in bad.stderr


def test_follow_with_tail_is_lossless_across_history_and_live(features_daemon: RunningDaemon) -> None:
    script = "for i in $(seq 1 50); do echo line$i; done; sleep 1.5; for i in $(seq 51 100); do echo line$i; done"
    job_id = _ok(features_daemon, "run", "-d", "--", "/bin/sh", "-c", script).strip()
    client = features_daemon.client()
    wait_for(lambda: b"line50" in b"".join(c.data for c in client.stream_logs(job_id)) or None, timeout=20,
             what="the first half")
    time.sleep(0.1)
    out = features_daemon.cli("logs", "-f", "--tail", "3", job_id).stdout.decode().split()
    assert out == [f"line{i}" for i in range(48, 101)]
