"""capsa wait and capsa events against a real daemon: exit codes, durable replay, type filters."""

from __future__ import annotations

import json
import subprocess
import time

from tests.fixtures.daemon import CAPSA, RunningDaemon


def _ok(daemon: RunningDaemon, *args: str) -> str:
    return daemon.cli(*args, check=True).stdout.decode()


def test_wait_prints_each_exit_code_and_exits_with_the_first(features_daemon: RunningDaemon) -> None:
    slow = _ok(features_daemon, "run", "-d", "--", "/bin/sh", "-c", "sleep 1; exit 5").strip()
    fast = _ok(features_daemon, "run", "-d", "--", "/bin/sh", "-c", "exit 2").strip()
    time.sleep(0.3)   # the fast one has ended before wait starts: it must not be waited for forever
    result = features_daemon.cli("wait", slow, fast[:10], timeout=30)
    assert result.returncode == 5 and result.stdout.split() == [b"5", b"2"]
    as_json = features_daemon.cli("wait", "--json", fast)
    assert as_json.returncode == 2
    shown = json.loads(as_json.stdout)
    assert shown == [{"id": fast, "name": "", "state": "FAILED", "exit_code": 2}]
    missing = features_daemon.cli("wait", "no-such-job")
    assert missing.returncode == 3


def test_wait_on_an_rm_job_still_gets_its_exit_code(features_daemon: RunningDaemon) -> None:
    job_id = _ok(features_daemon, "run", "-d", "--rm", "--", "/bin/sh", "-c", "sleep 0.5; exit 7").strip()
    result = features_daemon.cli("wait", job_id, timeout=30)
    assert result.returncode == 7 and result.stdout.split() == [b"7"]


def test_events_replay_from_since_and_filter_by_type(features_daemon: RunningDaemon) -> None:
    assert features_daemon.cli("run", "--name", f"ev-{time.time_ns()}", "--", "/bin/sh", "-c", "exit 4").returncode == 4
    listed = json.loads(_ok(features_daemon, "ps", "-a", "--last", "1", "--json"))
    job_id = listed[0]["id"]
    _ok(features_daemon, "rm", job_id)
    replay = _ok(features_daemon, "events", "--since", "5m", "--no-follow", "--filter", "type=job", "--json")
    mine = [json.loads(line) for line in replay.splitlines() if json.loads(line)["id"] == job_id]
    assert [e["action"] for e in mine] == ["created", "started", "exited", "removed"]
    assert mine[2]["attributes"]["exit_code"] == "4" and mine[0]["name"].startswith("ev-")
    none = _ok(features_daemon, "events", "--since", "5m", "--no-follow", "--filter", "type=image")
    assert job_id not in none
    bad = features_daemon.cli("events", "--filter", "type=cat")
    assert bad.returncode == 2
    bad = features_daemon.cli("events", "--since", "10")
    assert bad.returncode == 2


def test_events_streams_what_happens_after_it_started(features_daemon: RunningDaemon) -> None:
    cmd = [*CAPSA, "--config", str(features_daemon.home / "client-reader.yaml"), "events", "--json"]
    with subprocess.Popen(cmd, env=features_daemon.env, stdout=subprocess.PIPE) as proc:
        try:
            job_id = _ok(features_daemon, "run", "-d", "--", "/bin/true").strip()
            assert proc.stdout is not None
            seen: list[str] = []
            deadline = time.monotonic() + 20
            while "exited" not in seen and time.monotonic() < deadline:
                event = json.loads(proc.stdout.readline())
                if event["id"] == job_id:
                    seen.append(event["action"])
            assert seen[:3] == ["created", "started", "exited"]
        finally:
            proc.terminate()
