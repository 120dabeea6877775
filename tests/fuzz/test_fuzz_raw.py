"""Bytes that are no request at all: INVALID_ARGUMENT with one log line and no traceback, the daemon's
memory back near its baseline afterwards; refusals keep their class (unsafe archive, limits)."""

from __future__ import annotations

import io
import random
import tarfile
import time
from pathlib import Path

import grpc
import pytest

from capsa.api.gen.capsa.v1 import capsules_pb2 as cpb
from capsa.api.gen.capsa.v1 import jobs_pb2 as pb
from capsa.errors import UnsafeArchive
from capsa.pki import Role
from tests.fixtures.daemon import RunningDaemon

pytestmark = [pytest.mark.fuzz]

# Each method with a tag of one of its string fields, to send that field as bytes that are not UTF-8.
UNARY = {"/capsa.v1.JobService/GetJob": 0x0a, "/capsa.v1.JobService/RunJob": 0x0a,
         "/capsa.v1.JobService/StopJob": 0x0a, "/capsa.v1.JobService/ListJobs": 0x1a,
         "/capsa.v1.WorkflowService/SubmitWorkflow": 0x0a, "/capsa.v1.CapsuleService/Inspect": 0x0a,
         "/capsa.v1.NetworkService/CreateNetwork": 0x0a}
# Random bytes may decode as a valid request: only methods that create nothing on the machine.
HARMLESS = ["/capsa.v1.JobService/GetJob", "/capsa.v1.JobService/ListJobs", "/capsa.v1.JobService/StopJob",
            "/capsa.v1.CapsuleService/Inspect", "/capsa.v1.ImageService/InspectImage"]
STREAMING = ["/capsa.v1.JobService/StreamLogs", "/capsa.v1.MetricsService/MetricsStream"]
# Bytes no decoder accepts: a truncated varint, a truncated length, a reserved wire type.
GARBAGE = [b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", b"\x0a\x7f\x01", b"\x0f\x00"]


def _bad_utf8(tag: int) -> bytes:
    return bytes([tag, 2, 0xff, 0xfe])


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise KeyError("VmRSS")


def _raw_unary(client, path: str, data: bytes) -> grpc.RpcError:   # type: ignore[no-untyped-def]
    call = client.channel.unary_unary(path, request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.RpcError) as caught:
        call(data, timeout=10)
    return caught.value


def test_garbage_bytes_and_bad_utf8_are_invalid_argument_with_one_log_line(daemon: RunningDaemon) -> None:
    before = daemon.log_path.read_text(errors="replace")
    with daemon.client("admin") as client:
        for path, tag in UNARY.items():
            for data in [*GARBAGE, _bad_utf8(tag)]:
                refused = _raw_unary(client, path, data)
                assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT, (path, data, refused.details())
                assert "malformed request" in refused.details()
        for path in STREAMING:
            call = client.channel.unary_stream(path, request_serializer=None, response_deserializer=None)
            with pytest.raises(grpc.RpcError) as caught:
                list(call(_bad_utf8(0x0a), timeout=10))
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        upload = client.channel.stream_unary("/capsa.v1.JobService/UploadFiles", request_serializer=None,
                                             response_deserializer=None)
        with pytest.raises(grpc.RpcError) as caught:
            upload(iter([pb.UploadChunk(data=b"ok").SerializeToString(), GARBAGE[0]]), timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert client.list_jobs(all=True) is not None
    time.sleep(0.2)
    new = daemon.log_path.read_text(errors="replace")[len(before):]
    assert "Traceback" not in new, new[:3000]
    refusals = [line for line in new.splitlines() if "refused a malformed request" in line]
    assert len(refusals) == len(UNARY) * (len(GARBAGE) + 1) + len(STREAMING)   # one line per call


def test_a_reader_sending_garbage_is_refused_for_its_role_first(daemon: RunningDaemon) -> None:
    with daemon.client(Role.READER.value) as client:
        refused = _raw_unary(client, "/capsa.v1.JobService/RunJob", GARBAGE[0])
        assert refused.code() == grpc.StatusCode.PERMISSION_DENIED


def test_daemon_memory_returns_near_its_baseline_after_a_fuzz_run(daemon: RunningDaemon) -> None:
    pid = daemon.proc.pid   # type: ignore[union-attr]
    rng = random.Random(20261206)
    with daemon.client("admin") as client:
        for _ in range(50):   # warm up: code paths, caches, thread stacks
            _raw_unary(client, "/capsa.v1.JobService/GetJob", GARBAGE[0])
        baseline = _rss_kib(pid)
        codes: set[grpc.StatusCode] = set()
        for i in range(1500):
            path = HARMLESS[i % len(HARMLESS)]
            data = bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 512)))
            call = client.channel.unary_unary(path, request_serializer=None, response_deserializer=None)
            try:
                call(data, timeout=10)
            except grpc.RpcError as exc:
                codes.add(exc.code())
        for _ in range(30):   # large bodies: 4 MiB of garbage each
            _raw_unary(client, "/capsa.v1.JobService/RunJob", b"\x0a\xff\xff\xff\x7f" + rng.randbytes(4 << 20))
        assert grpc.StatusCode.INTERNAL not in codes and grpc.StatusCode.UNKNOWN not in codes, codes
        time.sleep(1.0)
        after = _rss_kib(pid)
        print(f"daemon RSS: {baseline} KiB before, {after} KiB after 1,530 garbage requests")
        assert after <= baseline + 64 * 1024, (baseline, after)   # generous: allocator arenas keep some


def _tar_with(name: str, data: bytes = b"x") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_an_unsafe_capsule_archive_is_refused_as_unsafe_not_internal(daemon: RunningDaemon) -> None:
    with daemon.client("admin") as client:
        with pytest.raises(UnsafeArchive):
            client.create_capsule("evil", "1.0", [_tar_with("../escape")])
        raw = client.channel.stream_unary("/capsa.v1.CapsuleService/Create", request_serializer=None,
                                          response_deserializer=None)
        with pytest.raises(grpc.RpcError) as caught:
            raw(iter([cpb.CreateCapsuleRequest(header=cpb.CapsuleHeader(name="evil", version="1.0")).SerializeToString(),
                      cpb.CreateCapsuleRequest(data=_tar_with("/abs/escape")).SerializeToString()]), timeout=10)
        assert caught.value.code() != grpc.StatusCode.INTERNAL
        assert ("capsa-error-code", "unsafe_archive") in tuple(caught.value.trailing_metadata())
    text = daemon.log_path.read_text(errors="replace")
    assert "internal error" not in text
