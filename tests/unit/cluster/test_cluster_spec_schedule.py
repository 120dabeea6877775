"""What a pool job's spec keeps, what it refuses (and says why), and --schedule as a not-before placement
time the scheduler honours (against a real etcd)."""

from __future__ import annotations

import json
import time

import pytest

from capsa.api.gen.capsa.v1 import jobs_pb2 as pb
from capsa.cluster.etcd import EtcdClient, Op
from capsa.cluster.model import NodeRecord, PoolJob, keys
from capsa.cluster.scheduler import Scheduler
from capsa.cluster.spec import not_before_ns, run_request, spec_from_pb
from capsa.cluster.workflows import submit_ops
from capsa.errors import InvalidArgument


@pytest.mark.parametrize(("field", "value", "flag", "why"), [
    ("upload_session", "abc", "--upload", "staged on the node that received them"),
    ("auto_remove", True, "--rm", "must outlive its end"),
])
def test_what_a_pool_job_cannot_carry_is_refused_naming_the_flag_and_why(field: str, value: object, flag: str,
                                                                       why: str) -> None:
    request = pb.RunJobRequest(command=["/bin/true"])
    setattr(request, field, value)
    with pytest.raises(InvalidArgument) as refused:
        spec_from_pb(request)
    assert refused.value.message.startswith(f"{flag} is not supported with --pool") and why in refused.value.message


def test_secret_values_never_enter_the_spec() -> None:
    spec = spec_from_pb(pb.RunJobRequest(command=["/bin/true"], secret_env={"TOKEN": "s3cr3t"}))
    assert "s3cr3t" not in json.dumps(spec) and "TOKEN" not in json.dumps(spec)


def test_labels_and_log_limit_travel_with_the_spec_to_the_node() -> None:
    spec = spec_from_pb(pb.RunJobRequest(command=["/bin/true"], labels={"team": "a"}, log_max_size="10M"))
    request = run_request(spec, name="x")
    assert request.labels == {"team": "a"} and request.log_max_size == "10M"


def test_schedule_is_a_not_before_time() -> None:
    assert not_before_ns(pb.RunJobRequest(command=["/bin/true"])) == 0
    at = not_before_ns(pb.RunJobRequest(command=["/bin/true"], schedule="30s"))
    assert abs(at - (time.time_ns() + 30 * 10**9)) < 2 * 10**9
    with pytest.raises(InvalidArgument):
        not_before_ns(pb.RunJobRequest(command=["/bin/true"], schedule="soon"))


def test_the_scheduler_places_a_scheduled_job_only_once_its_time_has_come(etcd_url: str) -> None:
    etcd = EtcdClient([etcd_url])
    lease = etcd.grant(30)
    node = NodeRecord(name="n1", address="127.0.0.1:1", lease=lease, cpus=2, memory_mb=1024, max_jobs=8)
    etcd.put(keys.node("n1"), node.dump(), lease=lease)
    job = PoolJob(id="d" * 32, spec={"command": ["/bin/true"]}, not_before_ns=time.time_ns() + int(1.5e9))
    etcd.txn([], submit_ops(job))
    sched = Scheduler(etcd, name="s", retention_s=0)
    early = sched.one_pass()
    assert early.placed == 0 and early.unplaceable == {job.id: "scheduled for later"}
    assert etcd.get(keys.assign("n1", job.id)) is None
    time.sleep(1.6)
    assert sched.one_pass().placed == 1 and etcd.get(keys.assign("n1", job.id)) is not None
    etcd.txn([], [Op.delete(keys.assign("n1", job.id))])
    etcd.revoke(lease)
