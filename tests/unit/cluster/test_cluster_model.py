"""Pool records: restart policies decide whether an attempt runs again; records round-trip as JSON."""

from __future__ import annotations

import pytest

from capsa.cluster.model import PoolJob, PoolJobState, Restart, keys, parse_constraints, requeue
from capsa.errors import InvalidArgument


def job(restart: Restart, **kw: object) -> PoolJob:
    return PoolJob(id="a" * 32, spec={"command": ["/bin/true"]}, restart=restart.value, node="n1", node_lease=7,
                   local_id="l", **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(("policy", "outcome", "rerun"), [
    (Restart.NO, PoolJobState.LOST, False),
    (Restart.NO, PoolJobState.FAILED, False),
    (Restart.ON_FAILURE, PoolJobState.LOST, True),
    (Restart.ON_FAILURE, PoolJobState.FAILED, True),
    (Restart.ON_FAILURE, PoolJobState.COMPLETED, False),
    (Restart.ALWAYS, PoolJobState.COMPLETED, True),
    (Restart.ALWAYS, PoolJobState.STOPPED, False),
])
def test_restart_policy_decides_whether_an_attempt_is_placed_again(policy: Restart, outcome: PoolJobState,
                                                                   rerun: bool) -> None:
    after = requeue(job(policy), outcome, "why", 5)
    if rerun:
        assert (after.state, after.attempt, after.node, after.node_lease, after.local_id) == ("PENDING", 2, "", 0, "")
        assert after.history == [f"attempt 1 on n1: {outcome.value} (why)"]
    else:
        assert (after.state, after.attempt, after.reason, after.ended_ns) == (outcome.value, 1, "why", 5)


def test_a_stop_the_user_asked_for_and_the_restart_limit_are_final() -> None:
    assert requeue(job(Restart.ALWAYS, stop_requested=True), PoolJobState.FAILED, "", 1).state == "FAILED"
    assert requeue(job(Restart.ALWAYS, attempt=4, max_restarts=3), PoolJobState.LOST, "", 1).state == "LOST"


def test_records_round_trip_and_ignore_fields_from_newer_nodes() -> None:
    original = job(Restart.ON_FAILURE)
    assert PoolJob.load(original.dump()) == original
    newer = original.dump().replace(b'{"attempt"', b'{"from_the_future": 1, "attempt"')
    assert PoolJob.load(newer) == original


def test_every_key_lives_under_the_versioned_prefix() -> None:
    assert keys.job("x") == "/capsa/v1/jobs/x" and keys.assign("n1", "x") == "/capsa/v1/assign/n1/x"
    assert keys.node("n1").startswith("/capsa/v1/") and keys.pending("x").startswith("/capsa/v1/")


def test_constraints_are_label_equals_value() -> None:
    assert parse_constraints(["disk=ssd", "zone=eu-1"]) == {"disk": "ssd", "zone": "eu-1"}
    with pytest.raises(InvalidArgument):
        parse_constraints(["disk"])
