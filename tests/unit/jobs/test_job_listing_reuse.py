"""ListJobs pages built from kept encodings (capsa.api.joblist): the same answer as building every
message afresh, rows read again only when they changed (the rev trigger), and a bounded memory."""

from __future__ import annotations

from collections.abc import Callable

from capsa.api.gen.capsa.v1 import jobs_pb2 as pb
from capsa.api.joblist import JobList
from capsa.api.servicers.jobs import job_to_pb
from capsa.jobs.model import RunRequest
from capsa.jobs.service import JobService
from tests.fixtures.fakes import FakeSupervisor


def _fresh(service: JobService, *, all: bool = True, limit: int = 0, page_token: str = "",
           ports: dict[str, list[str]] | None = None) -> pb.ListJobsResponse:
    """What ListJobs answered before it kept anything: every row decoded and converted."""
    page = service.page(all=all, limit=limit, page_token=page_token)
    ports = ports or {}
    return pb.ListJobsResponse(jobs=[job_to_pb(j, [] if j.state.ended else ports.get(j.id, [])) for j in page.jobs],
                               next_page_token=page.next_page_token)


def _counting(service: JobService) -> list[list[str]]:
    """Record the ids each listing had to read whole."""
    reads: list[list[str]] = []
    get_many: Callable[[list[str]], object] = service.get_many

    def counted(ids: list[str]) -> object:
        reads.append(list(ids))
        return get_many(ids)

    service.get_many = counted   # type: ignore[method-assign]
    return reads


def _mixed(service: JobService, supervisor: FakeSupervisor) -> dict[str, str]:
    ids = {}
    for n in range(6):
        ids[f"done-{n}"] = service.run(RunRequest(command=("echo", str(n)), name=f"done-{n}", env={"N": str(n)},
                                                  labels={"k": str(n)})).id
        supervisor.exit(ids[f"done-{n}"], n % 2)
    ids["running"] = service.run(RunRequest(command=("sleep", "9"), name="running")).id
    ids["restarting"] = service.run(RunRequest(command=("false",), restart="on-failure:3")).id
    supervisor.exit(ids["restarting"], 1)   # ended, with a restart due: its bookkeeping is in another table
    return ids


def test_a_listing_is_the_same_as_building_every_message_afresh(service: JobService,
                                                              supervisor: FakeSupervisor) -> None:
    ids = _mixed(service, supervisor)
    ports = {ids["running"]: ["8080:80/tcp"]}
    listing = JobList(service, job_to_pb, lambda job_id: ports)
    for _ in range(2):   # first built, then from what was kept
        assert listing.page(all=True, limit=0, page_token="", filter=None) == _fresh(service, ports=ports)
        assert listing.page(all=False, limit=0, page_token="", filter=None) == _fresh(service, all=False, ports=ports)
    first = listing.page(all=True, limit=3, page_token="", filter=None)
    assert first == _fresh(service, limit=3, ports=ports) and first.next_page_token
    second = listing.page(all=True, limit=3, page_token=first.next_page_token, filter=None)
    assert second == _fresh(service, limit=3, page_token=first.next_page_token, ports=ports)


def test_only_live_jobs_and_changed_rows_are_read_again(service: JobService, supervisor: FakeSupervisor) -> None:
    ids = _mixed(service, supervisor)
    listing = JobList(service, job_to_pb)
    reads = _counting(service)
    listing.page(all=True, limit=0, page_token="", filter=None)
    assert len(reads[-1]) == len(ids)
    listing.page(all=True, limit=0, page_token="", filter=None)
    assert reads[-1] == [ids["running"]]   # every ended job came from what was kept
    # Any change to a row bumps its rev, whoever writes it: the next listing reads that row again.
    service.db.execute("UPDATE jobs SET reason = 'edited' WHERE id = ?", (ids["done-3"],))
    page = listing.page(all=True, limit=0, page_token="", filter=None)
    assert sorted(reads[-1]) == sorted([ids["running"], ids["done-3"]])
    assert {j.id: j.reason for j in page.jobs}[ids["done-3"]] == "edited"
    assert page == _fresh(service)


def test_a_restart_becoming_due_or_a_removed_job_shows_in_the_next_listing(service: JobService,
                                                                         supervisor: FakeSupervisor) -> None:
    ids = _mixed(service, supervisor)
    listing = JobList(service, job_to_pb)
    before = {j.id: j for j in listing.page(all=True, limit=0, page_token="", filter=None).jobs}
    assert before[ids["restarting"]].restart_count == 0 and before[ids["restarting"]].next_restart_at_ns
    # The restart bookkeeping lives outside the job's row: its change alone must refresh the message.
    service.db.execute("UPDATE job_restarts SET restart_count = 2 WHERE job_id = ?", (ids["restarting"],))
    service.remove(ids["done-0"])
    after = listing.page(all=True, limit=0, page_token="", filter=None)
    assert {j.id: j for j in after.jobs}[ids["restarting"]].restart_count == 2
    assert ids["done-0"] not in {j.id for j in after.jobs}
    assert after == _fresh(service)


def test_what_is_kept_is_bounded(service: JobService, supervisor: FakeSupervisor) -> None:
    for _ in range(40):
        job = service.run(RunRequest(command=("true",)))
        supervisor.exit(job.id, 0)
    listing = JobList(service, job_to_pb, max_entries=10)
    page = listing.page(all=True, limit=0, page_token="", filter=None)
    assert len(page.jobs) == 40 and len(listing._kept) <= 10
    assert listing.page(all=True, limit=0, page_token="", filter=None) == _fresh(service)


def test_every_update_bumps_the_rows_rev_once(service: JobService) -> None:
    job = service.run(RunRequest(command=("sleep", "9")))
    rev = service.db.query_one("SELECT rev FROM jobs WHERE id = ?", (job.id,))["rev"]
    service.db.execute("UPDATE jobs SET reason = 'x' WHERE id = ?", (job.id,))
    service.db.execute("UPDATE jobs SET reason = 'y', pid = 7 WHERE id = ?", (job.id,))
    assert service.db.query_one("SELECT rev FROM jobs WHERE id = ?", (job.id,))["rev"] == rev + 2


def test_restart_info_of_a_large_page_reads_the_policy_rows_either_way(service: JobService,
                                                                       supervisor: FakeSupervisor) -> None:
    """A page of more ids than there are policies reads every policy row; fewer ids probe each id: same answer."""
    ids = []
    for n in range(60):
        job = service.run(RunRequest(command=("false",), restart="on-failure:5" if n % 20 == 0 else "no"))
        supervisor.exit(job.id, 1)
        ids.append(job.id)
    with_policy = {ids[0], ids[20], ids[40]}
    large = service.restart_info(ids)   # 60 ids, 3 policy rows: the rows are read whole
    assert set(large) == with_policy
    assert all(large[i] == service.restart_info([i])[i] for i in with_policy)   # one id: probed
    assert large[ids[0]][0] == "on-failure:5"
    assert service.restart_info(ids[1:20]) == {}
    assert set(service.restart_info(ids[:55])) == with_policy


def test_a_listing_is_sent_as_the_bytes_it_joined(service: JobService, supervisor: FakeSupervisor) -> None:
    """The servicer's serialized page passes the response serializer unchanged; messages still serialize."""
    from capsa.api.wire import Encoded, passing_encoded

    _mixed(service, supervisor)
    listing = JobList(service, job_to_pb)
    body = listing.page_bytes(all=True, limit=0, page_token="", filter=None)
    serialize = passing_encoded(pb.ListJobsResponse.SerializeToString)
    assert serialize is not None
    assert serialize(Encoded(body)) == body
    assert pb.ListJobsResponse.FromString(body) == _fresh(service)
    assert serialize(_fresh(service)) == _fresh(service).SerializeToString()
