"""ListJobs paging: newest first, a (created_ns, id) keyset token, served by an index at any size."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from capsa.errors import InvalidArgument
from capsa.jobs.service import JobService
from capsa.jobs.store import JobStore
from capsa.state import Database

TOTAL = 10_000


def _fill(db: Database, total: int) -> None:
    # Few distinct timestamps: ties on created_ns must be broken by the id, never skipped or repeated.
    rows = [(f"{i:032x}", json.dumps(["/bin/true"]), "COMPLETED" if i % 10 else "RUNNING", 1_000 + i // 7)
            for i in range(total)]
    with db.tx() as conn:
        conn.executemany("INSERT INTO jobs(id, command, state, created_ns) VALUES(?,?,?,?)", rows)


@pytest.fixture(scope="module")
def large(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JobStore]:
    """10,000 jobs, built once and only read by the tests."""
    db = Database(tmp_path_factory.mktemp("paging") / "capsa.db")
    store = JobStore(db)
    _fill(db, TOTAL)
    yield store
    db.close(checkpoint=False)


@pytest.fixture
def many(service: JobService) -> JobService:
    _fill(service.db, 700)
    return service


def test_pages_walk_every_job_once_newest_first(many: JobService) -> None:
    seen: list[tuple[int, str]] = []
    token = ""
    while True:
        page = many.page(all=True, limit=64, page_token=token)
        seen.extend((j.created_ns, j.id) for j in page.jobs)
        token = page.next_page_token
        if not token:
            break
    assert len(seen) == 700 and len(set(seen)) == 700
    assert seen == sorted(seen, reverse=True)


def test_without_all_only_listed_states_are_paged(many: JobService) -> None:
    page = many.page(limit=50)
    assert len(page.jobs) == 50 and {j.state.value for j in page.jobs} == {"RUNNING"}
    assert [j.id for j in many.list()] == [j.id for j in many.page().jobs]
    assert len(many.list()) == 700 // 10


def test_limit_zero_is_everything_and_the_last_page_has_no_token(many: JobService) -> None:
    everything = many.page(all=True)
    assert len(everything.jobs) == 700 and everything.next_page_token == ""
    last = many.page(all=True, limit=700)
    assert len(last.jobs) == 700 and last.next_page_token == ""
    assert many.page(all=True, limit=699).next_page_token


def test_a_page_of_50_among_10000_jobs_seeks_through_the_created_id_index(large: JobStore) -> None:
    first = large.page(all=True, limit=50)
    second = large.page(all=True, limit=50, page_token=first.next_page_token)
    assert len(second.jobs) == 50 and second.jobs[0].id < first.jobs[-1].id
    sql, params = large.page_query(all=True, limit=50, page_token=first.next_page_token)
    plan = " ".join(str(tuple(r)) for r in large.db.query(f"EXPLAIN QUERY PLAN {sql}", params))
    assert "jobs_created_id" in plan and "TEMP B-TREE" not in plan, plan
    assert "SEARCH" in plan, plan   # seeks to the token, rather than scanning the newer rows


@pytest.mark.parametrize("token", ["not-base64!", "MTIz", "Zm9vOg", "YWJjOmRlZg"])
def test_a_token_this_daemon_did_not_hand_out_is_invalid(many: JobService, token: str) -> None:
    with pytest.raises(InvalidArgument, match="page token"):
        many.page(all=True, limit=10, page_token=token)


def test_a_negative_page_size_is_invalid(service: JobService) -> None:
    with pytest.raises(InvalidArgument, match="page size"):
        service.page(limit=-1)
