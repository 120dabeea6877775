"""Request bounds at the API boundary: every violation is InvalidArgument naming the field."""

from __future__ import annotations

import math

import pytest

from capsa.api.gen.capsa.v1 import capsules_pb2 as cpb
from capsa.api.gen.capsa.v1 import jobs_pb2 as pb
from capsa.api.gen.capsa.v1 import networks_pb2 as npb
from capsa.api.gen.capsa.v1 import workflows_pb2 as wpb
from capsa.api.validation import validate
from capsa.errors import InvalidArgument


def _refused(message: object, field: str) -> str:
    with pytest.raises(InvalidArgument) as caught:
        validate(message)   # type: ignore[arg-type]
    assert field in str(caught.value), str(caught.value)
    return str(caught.value)


def test_a_plain_run_request_passes() -> None:
    validate(pb.RunJobRequest(command=["sh", "-c", "echo hi"], env={"A": "1"}, name="build-1",
                              resources=pb.Resources(max_cpu=150, max_memory_mb=512, max_pids=100),
                              request_id="0f8c2b1e9d3a4c5b"))


@pytest.mark.parametrize("grace", [math.nan, math.inf, -math.inf])
def test_a_grace_period_must_be_finite(grace: float) -> None:
    assert "finite" in _refused(pb.StopJobRequest(id="ab", grace_seconds=grace), "StopJobRequest.grace_seconds")


@pytest.mark.parametrize("grace", [-1.0, 86400.5, 1e300])
def test_a_grace_period_must_be_in_range(grace: float) -> None:
    _refused(pb.StopJobRequest(id="ab", grace_seconds=grace), "StopJobRequest.grace_seconds")


@pytest.mark.parametrize("older", [math.nan, math.inf, -1.0, 1e18])
def test_capsule_gc_age_must_be_finite_and_in_range(older: float) -> None:
    _refused(cpb.GcCapsulesRequest(unused=True, older_than_seconds=older), "GcCapsulesRequest.older_than_seconds")


@pytest.mark.parametrize("field,value", [("max_cpu", -1), ("max_cpu", 2**31 - 1), ("max_memory_mb", 2**63 - 1),
                                         ("max_memory_mb", -5), ("max_pids", 2**31 - 1), ("max_iobps", -1)])
def test_resource_limits_are_bounded(field: str, value: int) -> None:
    _refused(pb.RunJobRequest(command=["true"], resources=pb.Resources(**{field: value})), f"Resources.{field}")


def test_the_name_of_a_job_is_bounded_and_printable() -> None:
    _refused(pb.RunJobRequest(command=["true"], name="n" * 129), "RunJobRequest.name")
    _refused(pb.RunJobRequest(command=["true"], name="nl\n"), "RunJobRequest.name")


def test_command_is_bounded_in_arguments_and_bytes() -> None:
    assert "257 entries" in _refused(pb.RunJobRequest(command=["x"] * 257), "RunJobRequest.command")
    _refused(pb.RunJobRequest(command=["x" * (64 << 10)] * 3), "RunJobRequest.command")
    _refused(pb.RunJobRequest(command=["a\x00b"]), "RunJobRequest.command")


def test_env_is_bounded_in_entries_and_bytes() -> None:
    _refused(pb.RunJobRequest(command=["true"], env={f"K{i}": "v" for i in range(1025)}), "RunJobRequest.env")
    _refused(pb.RunJobRequest(command=["true"], env={"BIG": "v" * (129 << 10)}), "RunJobRequest.env")
    _refused(pb.RunJobRequest(command=["true"], env={f"K{i}": "v" * 1000 for i in range(200)}), "RunJobRequest.env")


def test_labels_of_a_capsule_are_bounded() -> None:
    header = cpb.CapsuleHeader(name="data", version="1.0", labels={f"k{i}": "v" for i in range(300)})
    _refused(cpb.CreateCapsuleRequest(header=header), "CapsuleHeader.labels")


def test_names_with_a_trailing_newline_are_refused() -> None:
    _refused(npb.CreateNetworkRequest(name="fzn\n", cidr="10.9.0.0/24"), "CreateNetworkRequest.name")
    _refused(npb.CreateVolumeRequest(name="vnl\n", size="1M"), "CreateVolumeRequest.name")
    _refused(cpb.CreateCapsuleRequest(header=cpb.CapsuleHeader(name="nl\n", version="1")), "CapsuleHeader.name")


def test_request_ids_are_short_and_plain() -> None:
    _refused(pb.RunJobRequest(command=["true"], request_id="x" * 129), "RunJobRequest.request_id")
    _refused(pb.RunJobRequest(command=["true"], request_id="a b"), "RunJobRequest.request_id")


def test_documents_are_bounded_at_one_mib() -> None:
    _refused(wpb.SubmitWorkflowRequest(yaml="#" * ((1 << 20) + 1)), "SubmitWorkflowRequest.yaml")
    validate(wpb.SubmitWorkflowRequest(yaml="#" * (1 << 20)))


def test_a_string_without_its_own_rule_gets_the_default_bound() -> None:
    _refused(pb.GetJobRequest(id="a" * 5000), "GetJobRequest.id")


def test_paging_bounds() -> None:
    _refused(pb.ListJobsRequest(limit=-1), "ListJobsRequest.limit")
    _refused(pb.ListJobsRequest(limit=10_001), "ListJobsRequest.limit")
    validate(pb.ListJobsRequest(all=True, limit=1000, page_token="MTIzOmFiYw"))


def test_negative_sequence_numbers_are_refused() -> None:
    _refused(pb.StreamLogsRequest(id="ab", from_seq=-1), "StreamLogsRequest.from_seq")
