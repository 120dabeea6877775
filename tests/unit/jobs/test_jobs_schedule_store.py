"""Scheduled jobs' requests persist in SQLite without their secrets, and come back whole."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from capsa.jobs.model import MIGRATIONS, Resources, RunRequest
from capsa.jobs.schedule import ScheduleStore, request_from_json, request_to_json
from capsa.state import Database


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = Database(tmp_path / "capsa.db")
    database.migrate("jobs", MIGRATIONS)
    yield database
    database.close()


def _job(db: Database, job_id: str, state: str = "SCHEDULED") -> None:
    db.execute("INSERT INTO jobs(id, command, state, created_ns) VALUES(?,?,?,?)", (job_id, "[]", state, 1))


REQUEST = RunRequest(
    command=("/bin/sh", "-c", "echo $A"), env={"A": "1"}, resources=Resources(max_cpu=50, max_pids=10),
    workdir="/work/x", name="n", user="1000:1000", volumes=("data:/data:ro",), timeout="5m",
    secret_env={"TOKEN": "do-not-persist"}, schedule="30s", upload_session="f" * 32,
)


def test_a_request_round_trips_without_its_transient_fields() -> None:
    text = request_to_json(REQUEST)
    assert "do-not-persist" not in text and "TOKEN" not in text and "f" * 32 not in text
    back = request_from_json(text)
    assert back.command == REQUEST.command and back.env == REQUEST.env and back.resources == REQUEST.resources
    assert back.volumes == ("data:/data:ro",) and back.timeout == "5m" and back.user == "1000:1000"
    assert back.secret_env == {} and back.schedule == "" and back.upload_session == ""


def test_unknown_keys_from_a_newer_daemon_are_ignored() -> None:
    data = json.loads(request_to_json(REQUEST))
    data["some_future_field"] = 1
    assert request_from_json(json.dumps(data)).name == "n"


def test_due_jobs_are_taken_once_and_deleted_with_their_job(db: Database) -> None:
    store = ScheduleStore(db)
    now = time.time_ns()
    for job_id, due in (("a" * 32, now - 10), ("b" * 32, now + 10**12)):
        _job(db, job_id)
        with db.tx() as conn:
            store.add(conn, job_id, due, REQUEST, b"sealed")
    assert store.due(now) == ["a" * 32]
    assert store.next_due_ns() == now - 10
    request, sealed = store.take("a" * 32)
    assert request.command == REQUEST.command and sealed == b"sealed"
    assert store.take("a" * 32) is None
    db.execute("DELETE FROM jobs WHERE id = ?", ("b" * 32,))
    assert db.query("SELECT * FROM job_schedules") == []


def test_only_scheduled_jobs_are_due(db: Database) -> None:
    store = ScheduleStore(db)
    _job(db, "c" * 32, state="CANCELED")
    with db.tx() as conn:
        store.add(conn, "c" * 32, 1, REQUEST, None)
    assert store.due(time.time_ns()) == [] and store.next_due_ns() is None
