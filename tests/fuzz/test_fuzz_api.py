"""Hostile values in well-formed requests: every RPC answers INVALID_ARGUMENT naming the field, a bystander
job keeps running, ListJobs keeps working, and the daemon logs no traceback."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from capsa.api.client import CapsaClient
from capsa.api.gen.capsa.v1 import capsules_pb2 as cpb
from capsa.api.gen.capsa.v1 import images_pb2 as ipb
from capsa.api.gen.capsa.v1 import jobs_pb2 as pb
from capsa.api.gen.capsa.v1 import metrics_pb2 as mpb
from capsa.api.gen.capsa.v1 import networks_pb2 as npb
from capsa.api.gen.capsa.v1 import runtimes_pb2 as rpb
from capsa.api.gen.capsa.v1 import workflows_pb2 as wpb
from tests.fixtures.daemon import RunningDaemon

pytestmark = [pytest.mark.fuzz]

BAD_FLOATS = [math.nan, math.inf, -math.inf, -1.0, 2.0**63]
BIG = "x" * (200 << 10)   # over every field's bound, under the 8 MiB request bound


def _numeric_cases() -> Iterator[tuple[str, str, Callable[[CapsaClient], Any], str]]:
    for value in BAD_FLOATS:
        yield ("StopJob", f"grace={value}", lambda c, v=value: c.jobs.StopJob(
            pb.StopJobRequest(id="0123456789ab", grace_seconds=v), timeout=10), "grace_seconds")
        yield ("Gc", f"older_than={value}", lambda c, v=value: c.capsules.Gc(
            cpb.GcCapsulesRequest(unused=True, older_than_seconds=v), timeout=10), "older_than_seconds")
    for field in ("max_cpu", "max_pids"):
        for value in (-1, 2**31 - 1):
            yield ("RunJob", f"{field}={value}", lambda c, f=field, v=value: c.jobs.RunJob(
                pb.RunJobRequest(command=["true"], resources=pb.Resources(**{f: v})), timeout=10), field)
    for field in ("max_memory_mb", "max_iobps"):
        for value in (-1, 2**63 - 1):
            yield ("RunJob", f"{field}={value}", lambda c, f=field, v=value: c.jobs.RunJob(
                pb.RunJobRequest(command=["true"], resources=pb.Resources(**{f: v})), timeout=10), field)
    for value in (-1, 2**31 - 1):
        yield ("RunJob", f"gpus={value}", lambda c, v=value: c.jobs.RunJob(
            pb.RunJobRequest(command=["true"], gpus=v), timeout=10), "gpus")
        yield ("ListJobs", f"limit={value}", lambda c, v=value: c.jobs.ListJobs(
            pb.ListJobsRequest(all=True, limit=v), timeout=10), "limit")
        yield ("ImageHistory", f"limit={value}", lambda c, v=value: c.images.ImageHistory(
            ipb.ImageHistoryRequest(ref="busybox", limit=v), timeout=10), "limit")
        yield ("ListWorkflows", f"limit={value}", lambda c, v=value: c.workflows.ListWorkflows(
            wpb.ListWorkflowsRequest(limit=v), timeout=10), "limit")
    for value in (-1, 2**63 - 1):
        yield ("StreamLogs", f"from_seq={value}", lambda c, v=value: list(c.jobs.StreamLogs(
            pb.StreamLogsRequest(id="0123456789ab", from_seq=v), timeout=10)), "from_seq")


def _string_cases() -> Iterator[tuple[str, str, Callable[[CapsaClient], Any], str]]:
    yield ("RunJob", "name", lambda c: c.jobs.RunJob(pb.RunJobRequest(command=["true"], name=BIG), timeout=10), "name")
    yield ("RunJob", "command", lambda c: c.jobs.RunJob(pb.RunJobRequest(command=[BIG]), timeout=10), "command")
    yield ("RunJob", "argc", lambda c: c.jobs.RunJob(pb.RunJobRequest(command=["x"] * 1000), timeout=10), "command")
    yield ("RunJob", "env", lambda c: c.jobs.RunJob(
        pb.RunJobRequest(command=["true"], env={"V": BIG}), timeout=10), "env")
    yield ("RunJob", "env entries", lambda c: c.jobs.RunJob(
        pb.RunJobRequest(command=["true"], env={f"K{i}": "v" for i in range(5000)}), timeout=10), "env")
    yield ("RunJob", "NUL", lambda c: c.jobs.RunJob(pb.RunJobRequest(command=["a\x00b"]), timeout=10), "command")
    yield ("GetJob", "id", lambda c: c.jobs.GetJob(pb.GetJobRequest(id=BIG), timeout=10), "id")
    yield ("MetricsStream", "id", lambda c: list(c.metrics.MetricsStream(
        mpb.MetricsStreamRequest(id=BIG), timeout=10)), "id")
    yield ("PullImage", "ref", lambda c: list(c.images.PullImage(ipb.PullImageRequest(ref=BIG), timeout=10)), "ref")
    yield ("SubmitWorkflow", "yaml", lambda c: c.workflows.SubmitWorkflow(
        wpb.SubmitWorkflowRequest(yaml="#" * (2 << 20)), timeout=10), "yaml")
    yield ("BuildRuntime", "spec_yaml", lambda c: list(c.runtimes.BuildRuntime(
        rpb.BuildRuntimeRequest(spec_yaml="#" * (2 << 20)), timeout=10)), "spec_yaml")
    yield ("CreateNetwork", "name", lambda c: c.networks.CreateNetwork(
        npb.CreateNetworkRequest(name="fzn\n", cidr="10.77.0.0/24"), timeout=10), "name")
    yield ("CreateVolume", "name", lambda c: c.volumes.CreateVolume(
        npb.CreateVolumeRequest(name="vnl\n", size="1M"), timeout=10), "name")
    yield ("Create", "capsule name", lambda c: c.capsules.Create(iter([cpb.CreateCapsuleRequest(
        header=cpb.CapsuleHeader(name="nl\n", version="1.0"))]), timeout=10), "name")
    yield ("Create", "labels", lambda c: c.capsules.Create(iter([cpb.CreateCapsuleRequest(
        header=cpb.CapsuleHeader(name="ok", version="1.0", labels={f"k{i}": "v" for i in range(1000)}))]),
        timeout=10), "labels")
    yield ("UploadFiles", "mode", lambda c: c.jobs.UploadFiles(iter([pb.UploadChunk(
        entry=pb.UploadEntry(path="f", type="file", mode=2**32 - 1, size=1), data=b"x")]), timeout=10), "mode")
    yield ("Attach", "target", lambda c: c.capsules.Attach(
        cpb.AttachCapsuleRequest(job_id="ab", capsule="x", target=BIG), timeout=10), "target")


CASES = list(_numeric_cases()) + list(_string_cases())


@pytest.fixture(scope="module")
def bystander(daemon: RunningDaemon) -> Iterator[str]:
    with daemon.client("admin") as client:
        job = client.run_job(["sh", "-c", "while true; do echo tick; sleep 0.5; done"], name="bystander")
        yield job.id
        client.stop_job(job.id, grace_seconds=1)


@pytest.mark.parametrize("rpc,what,call,field", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_hostile_values_are_invalid_argument_naming_the_field(daemon: RunningDaemon, bystander: str, rpc: str,
                                                              what: str, call: Callable[[CapsaClient], Any],
                                                              field: str) -> None:
    with daemon.client("admin") as client:
        with pytest.raises(grpc.RpcError) as caught:
            call(client)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (caught.value.code(), caught.value.details())
        assert field in caught.value.details()
        assert client.get_job(bystander).state == "RUNNING"
        assert bystander in [j.id for j in client.list_jobs()]


def test_a_request_over_the_size_bound_is_resource_exhausted(daemon: RunningDaemon, bystander: str) -> None:
    with daemon.client("admin") as client:
        with pytest.raises(grpc.RpcError) as caught:
            client.jobs.RunJob(pb.RunJobRequest(command=["true"], name="n" * (16 << 20)), timeout=30)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert client.get_job(bystander).state == "RUNNING"


def test_a_deeply_nested_workflow_is_invalid_argument(daemon: RunningDaemon) -> None:
    with daemon.client("admin") as client:
        with pytest.raises(grpc.RpcError) as caught:
            client.workflows.SubmitWorkflow(wpb.SubmitWorkflowRequest(
                yaml="jobs: " + "[" * 100_000 + "]" * 100_000), timeout=30)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "deeper than 64" in caught.value.details()


def test_the_daemon_log_has_no_traceback_after_the_fuzzing(daemon: RunningDaemon, bystander: str) -> None:
    with daemon.client("admin") as client:
        assert client.get_job(bystander).state == "RUNNING"
    text = daemon.log_path.read_text(errors="replace")
    assert "Traceback" not in text, text[text.find("Traceback") - 500:][:3000]
