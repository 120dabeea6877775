"""ListJobs paging: newest first, a (created_ns, id) keyset token, served by an index at any size."""

from __future__ import annotations

import json

import pytest

from capsa.errors import InvalidArgument
from capsa.jobs.service import JobService

TOTAL = 10_000


@pytest.fixture
def many(service: JobService) -> JobService:
    # Few distinct timestamps: ties on created_ns must be broken by the id, never skipped or repeated.
    rows = [(f"{i:032x}", json.dumps(["/bin/true"]), "COMPLETED" if i % 10 else "RUNNING", 1_000 + i // 7)
            for i in range(TOTAL)]
    with service.db.tx() as conn:
        conn.executemany("INSERT INTO jobs(id, command, state, created_ns) VALUES(?,?,?,?)", rows)
    return service


def test_pages_walk_every_job_once_newest_first(many: JobService) -> None:
    seen: list[tuple[int, str]] = []
    token = ""
    while True:
        page = many.page(all=True, limit=500, page_token=token)
        seen.extend((j.created_ns, j.id) for j in page.jobs)
        token = page.next_page_token
        if not token:
            break
    assert len(seen) == TOTAL and len(set(seen)) == TOTAL
    assert seen == sorted(seen, reverse=True)


def test_without_all_only_listed_states_are_paged(many: JobService) -> None:
    page = many.page(limit=50)
    assert len(page.jobs) == 50 and {j.state.value for j in page.jobs} == {"RUNNING"}
    assert [j.id for j in many.list()] == [j.id for j in many.page().jobs]
    assert len(many.list()) == TOTAL // 10


def test_limit_zero_is_everything_and_the_last_page_has_no_token(many: JobService) -> None:
    assert len(many.page(all=True).jobs) == TOTAL and many.page(all=True).next_page_token == ""
    last = many.page(all=True, limit=TOTAL)
    assert len(last.jobs) == TOTAL and last.next_page_token == ""


def test_a_page_query_uses_the_created_id_index(many: JobService) -> None:
    token = many.page(all=True, limit=50).next_page_token
    sql, params = many.store.page_query(all=True, limit=50, page_token=token)
    plan = " ".join(str(tuple(r)) for r in many.db.query(f"EXPLAIN QUERY PLAN {sql}", params))
    assert "jobs_created_id" in plan and "TEMP B-TREE" not in plan, plan
    assert "SEARCH" in plan, plan   # seeks to the token, rather than scanning the newer rows


@pytest.mark.parametrize("token", ["not-base64!", "MTIz", "Zm9vOg", "YWJjOmRlZg"])
def test_a_token_this_daemon_did_not_hand_out_is_invalid(many: JobService, token: str) -> None:
    with pytest.raises(InvalidArgument, match="page token"):
        many.page(all=True, limit=10, page_token=token)


def test_a_negative_page_size_is_invalid(service: JobService) -> None:
    with pytest.raises(InvalidArgument, match="page size"):
        service.page(limit=-1)
