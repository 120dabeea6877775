"""`--secret-env`: the job sees the value; the jobs table, `inspect`, `ps`, the SQLite files (db, WAL, shm),
every other file under CAPSA_HOME and the daemon's log never do. Scheduled jobs keep it encrypted."""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import stat

from features_helpers import files_containing, inspect, wait_state

from tests.fixtures.daemon import RunningDaemon

# The job proves it got the value by printing its digest: the value itself never reaches the job's log.
SHOW = 'printf %s "$API_TOKEN" | sha256sum; echo "plain=$PLAIN"'


def _no_trace_of(daemon: RunningDaemon, secret: str) -> None:
    needle = secret.encode()
    assert files_containing(daemon.home, needle) == []     # capsa.db, capsa.db-wal, -shm, logs, job dirs...
    assert needle not in daemon.log_path.read_bytes()
    db_files = [p.name for p in daemon.home.glob("capsa.db*")]
    assert "capsa.db" in db_files


def test_a_secret_reaches_the_job_and_is_stored_nowhere(features_daemon: RunningDaemon) -> None:
    secret = f"capsa-secret-{secrets.token_hex(12)}"
    result = features_daemon.cli("run", "--name", "with-secret", "--json", "--secret-env", f"API_TOKEN={secret}",
                                 "-e", "PLAIN=visible", "--", "/bin/sh", "-c", SHOW, check=True)
    out = result.stdout.decode()
    assert f"{hashlib.sha256(secret.encode()).hexdigest()}  -" in out and "plain=visible" in out
    job_id = json.loads(out[out.index("{"):])["id"]
    info = inspect(features_daemon, job_id)
    assert info["secret_env_keys"] == ["API_TOKEN"]
    assert info["env"] == {"PLAIN": "visible"}
    listing = features_daemon.cli("ps", "-a", "--json", check=True).stdout
    assert job_id.encode() in listing
    for text in (json.dumps(info).encode(), listing, result.stderr):
        assert secret.encode() not in text
    _no_trace_of(features_daemon, secret)


def test_a_scheduled_secret_is_encrypted_at_rest_until_the_job_starts(features_daemon: RunningDaemon) -> None:
    secret = f"capsa-scheduled-{secrets.token_hex(12)}"
    job_id = features_daemon.cli("run", "--schedule", "4s", "--secret-env", f"API_TOKEN={secret}", "--",
                                 "/bin/sh", "-c", SHOW, check=True).stdout.decode().strip()
    with features_daemon.client("reader") as client:
        assert client.get_job(job_id).state == "SCHEDULED"
    with sqlite3.connect(features_daemon.home / "capsa.db") as conn:
        (sealed,) = conn.execute("SELECT sealed_secrets FROM job_schedules WHERE job_id = ?", (job_id,)).fetchone()
    assert sealed and secret.encode() not in sealed
    key = features_daemon.home / "secrets.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    _no_trace_of(features_daemon, secret)
    final = wait_state(features_daemon, job_id, "COMPLETED", "FAILED")
    assert final["state"] == "COMPLETED", final
    logs = features_daemon.cli("logs", job_id, check=True).stdout.decode()
    assert f"{hashlib.sha256(secret.encode()).hexdigest()}  -" in logs
    with sqlite3.connect(features_daemon.home / "capsa.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM job_schedules WHERE job_id = ?", (job_id,)).fetchone() == (0,)
    _no_trace_of(features_daemon, secret)


def test_a_name_given_as_plain_and_secret_is_refused_without_echoing(features_daemon: RunningDaemon) -> None:
    result = features_daemon.cli("run", "-e", "TOKEN=plain-value", "--secret-env", "TOKEN=hidden-value", "--",
                                 "/bin/true")
    assert result.returncode == 2 and b"TOKEN" in result.stderr
    assert b"hidden-value" not in result.stderr + result.stdout
    malformed = features_daemon.cli("run", "--secret-env", "no-equals-sign-value", "--", "/bin/true")
    assert malformed.returncode == 2 and b"no-equals-sign-value" not in malformed.stderr
