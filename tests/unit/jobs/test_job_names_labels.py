"""Names (unique, resolved before id prefixes), labels, --rm and ListJobs filters, on a real SQLite file."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from capsa.errors import Conflict, InvalidArgument, NotFound
from capsa.jobs.model import RunRequest
from capsa.jobs.service import JobService
from capsa.jobs.store import JobStore
from capsa.selectors import JobFilter, check_name, parse_filters, parse_since
from capsa.state import Database
from tests.fixtures.fakes import FakeSupervisor


def _run(service: JobService, *command: str, **kw: object) -> str:
    return service.run(RunRequest(command=command or ("/bin/true",), **kw)).id  # type: ignore[arg-type]


def test_a_name_works_wherever_an_id_does_and_is_unique(service: JobService) -> None:
    job_id = _run(service, name="web")
    assert service.get("web").id == job_id
    with pytest.raises(Conflict, match="already taken"):
        _run(service, name="web")
    other = _run(service, name="db")
    assert service.get(other[:10]).id == other
    with pytest.raises(NotFound, match="neither a job name nor an id"):
        service.get("nope")


def test_an_exact_name_wins_over_an_id_prefix(service: JobService) -> None:
    first = _run(service)
    named = _run(service, name=first[:4])
    assert service.get(first[:4]).id == named
    assert service.get(first[:5]).id == first


def test_a_name_is_free_again_once_its_job_is_removed(service: JobService, supervisor: FakeSupervisor) -> None:
    job_id = _run(service, name="once")
    supervisor.exit(job_id, 0)
    service.remove("once")
    assert service.get(_run(service, name="once")).name == "once"


def test_engine_names_with_a_slash_may_repeat(service: JobService) -> None:
    a, b = _run(service, name="wf/build"), _run(service, name="wf/build")
    assert a != b
    with pytest.raises(InvalidArgument, match="invalid job id"):
        service.get("wf/build")   # not a name people resolve by


@pytest.mark.parametrize("name", ["", "a", "web-1", "A.b_c", "x" * 64])
def test_good_names(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["-a", "a b", "a/b", "x" * 65, "é", "a\n"])
def test_bad_names(name: str) -> None:
    with pytest.raises(InvalidArgument):
        check_name(name)


def test_labels_are_stored_returned_and_checked(service: JobService) -> None:
    job_id = _run(service, labels={"team": "ml", "tier": ""})
    assert service.get(job_id).labels == {"team": "ml", "tier": ""}
    with pytest.raises(InvalidArgument, match="--label"):
        _run(service, labels={"bad key": "x"})


def test_filters_are_anded_in_the_query(service: JobService, supervisor: FakeSupervisor) -> None:
    a = _run(service, name="a", labels={"team": "ml", "env": "prod"})
    b = _run(service, name="b", labels={"team": "ml"})
    c = _run(service, name="c", labels={"team": "web"})
    supervisor.exit(b, 1)
    ids = lambda *items: {j.id for j in service.page(all=True, filter=parse_filters(items)).jobs}  # noqa: E731
    assert ids("label=team=ml") == {a, b}
    assert ids("label=env") == {a}
    assert ids("label=team=ml", "state=failed") == {b}
    assert ids("name=a", "name=c") == {a, c}
    assert ids("since=1h") == {a, b, c}
    assert ids("since=2200-01-01T00:00:00Z") == set()
    # a state filter selects ended jobs even without --all
    assert {j.id for j in service.page(filter=parse_filters(["state=FAILED"])).jobs} == {b}
    assert {j.id for j in service.page(filter=JobFilter()).jobs} == {a, c}


def test_filter_pages_walk_every_match_once(service: JobService) -> None:
    want = {_run(service, labels={"k": "v"}) for _ in range(7)}
    for _ in range(5):
        _run(service, labels={"k": "w"})
    seen: list[str] = []
    token = ""
    while True:
        page = service.page(all=True, limit=3, page_token=token, filter=parse_filters(["label=k=v"]))
        seen.extend(j.id for j in page.jobs)
        token = page.next_page_token
        if not token:
            break
    assert len(seen) == 7 and set(seen) == want


@pytest.mark.parametrize("item", ["colour=red", "state=DONE", "since=10", "since=yesterday", "label", "workflow=xyz",
                                  "since=2026-01-02T10:00:00", "since=2999-01-01T00:00:00Z"])
def test_bad_filters_are_invalid_arguments(item: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_filters([item])


def test_since_reads_durations_and_rfc3339() -> None:
    now = 2_000_000_000 * 10**9
    assert parse_since("10m", now_ns=now) == now - 600 * 10**9
    assert parse_since("1h30m", now_ns=now) == now - 5400 * 10**9
    assert parse_since("2026-01-02T15:04:05Z") == 1767366245 * 10**9
    assert parse_since("2026-01-02T16:04:05+01:00") == 1767366245 * 10**9


def test_rm_removes_the_job_its_logs_and_files_after_it_ends(service: JobService,
                                                             supervisor: FakeSupervisor) -> None:
    service.auto_remove_linger_s = 0.05
    job_id = _run(service, auto_remove=True)
    job_dir = service.jobs_dir / job_id
    (job_dir / "logs").mkdir(parents=True, exist_ok=True)
    assert service.get(job_id).auto_remove
    supervisor.exit(job_id, 0)
    _wait_removed(service, job_id)
    assert not job_dir.exists()


def _wait_removed(service: JobService, job_id: str) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            service.get(job_id)
        except NotFound:
            return
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} was not removed")


def test_rm_waits_for_an_attached_reader(service: JobService, supervisor: FakeSupervisor) -> None:
    service.auto_remove_linger_s = 0.0
    job_id = _run(service, auto_remove=True)
    with service.hold(job_id):
        supervisor.exit(job_id, 3)
        time.sleep(0.2)
        assert service.get(job_id).exit_code == 3   # still there for the reader
    _wait_removed(service, job_id)


def test_rm_jobs_a_stopped_daemon_left_are_removed_at_start(make_service, supervisor: FakeSupervisor) -> None:  # type: ignore[no-untyped-def]
    service = make_service()
    service.auto_remove_linger_s = 3600.0   # the daemon "stops" before the linger ends
    job_id = _run(service, auto_remove=True)
    supervisor.exit(job_id, 0)
    assert service.get(job_id).state.ended
    restarted = make_service()
    with pytest.raises(NotFound):
        restarted.get(job_id)


def test_migration_keeps_the_newest_of_duplicate_names(tmp_path: Path) -> None:
    from capsa.jobs.model import MIGRATIONS

    db = Database(tmp_path / "capsa.db")
    db.migrate("jobs", MIGRATIONS)
    with db.tx() as conn:
        for i, name in enumerate(["dup", "dup", "solo", "wf/x", "wf/x"]):
            conn.execute("INSERT INTO jobs(id, name, command, state, created_ns) VALUES(?,?,?,?,?)",
                         (f"{i:032x}", name, json.dumps(["true"]), "COMPLETED", i))
    store = JobStore(db)
    names = [r["name"] for r in db.query("SELECT name FROM jobs ORDER BY id")]
    assert names == [f"dup-{0:012x}", "dup", "solo", "wf/x", "wf/x"]
    assert store.find_name("dup") == f"{1:032x}"
    db.close(checkpoint=False)


def test_job_lifecycle_events_are_recorded(service: JobService, supervisor: FakeSupervisor) -> None:
    job = service.run(RunRequest(command=("/bin/true",), name="ev"))
    supervisor.exit(job.id, 137, oom_killed=True, reason="OOM killed")
    service.remove(job.id)
    events = [e for e in service.events.after(0) if e.id == job.id]
    assert [e.action for e in events] == ["created", "started", "oom", "removed"]
    assert events[0].name == "ev" and events[2].attributes["state"] == "FAILED"
