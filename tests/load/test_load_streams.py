"""Long-lived streams cannot starve unary calls: with 500 log followers and 100 attached runs open,
GetVersion stays fast, RunJob keeps working, the daemon's thread count does not grow with the streams,
and every stream slot is given back when they close. Beyond the stream limits a clear RESOURCE_EXHAUSTED."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from pathlib import Path

import grpc
import grpc.aio
import pytest
from load_helpers import ROLES, aio_channel, percentile, settle, threads_of

from capsa.api.gen.capsa.v1 import common_pb2
from capsa.api.gen.capsa.v1 import jobs_pb2 as pb
from capsa.api.gen.capsa.v1 import jobs_pb2_grpc as pb_grpc
from capsa.config import ensure_home
from tests.fixtures.daemon import RunningDaemon, free_port

pytestmark = [pytest.mark.load, pytest.mark.slow]

FOLLOWERS = 500
ATTACHED = 100
TARGETS = 5   # long-running jobs the followers follow


def _version_latencies(daemon: RunningDaemon, calls: int, out: list[float], errors: list[BaseException]) -> None:
    with daemon.client("reader") as client:
        client.version()
        for _ in range(calls):
            started = time.perf_counter()
            try:
                client.version()
            except BaseException as exc:   # a timeout here is the failure this test looks for
                errors.append(exc)
                return
            out.append(time.perf_counter() - started)
            time.sleep(0.01)


async def _follow(stub: pb_grpc.JobServiceStub, job_id: str, opened: asyncio.Event, counter: list[int]) -> int:
    received = 0
    call = stub.StreamLogs(pb.StreamLogsRequest(id=job_id, follow=True))
    with contextlib.suppress(asyncio.CancelledError):
        async for _chunk in call:
            received += 1
            if received == 1:
                counter[0] += 1
                if counter[0] >= FOLLOWERS:
                    opened.set()
    call.cancel()
    return received


async def _attached_run(stub: pb_grpc.JobServiceStub, n: int) -> bytes:
    job = await stub.RunJob(pb.RunJobRequest(command=["sh", "-c", f"echo attached-{n}; sleep 3"],
                                             name=f"attached-{n}"), timeout=60)
    out = b""
    async for chunk in stub.StreamLogs(pb.StreamLogsRequest(id=job.id, follow=True), timeout=120):
        out += chunk.data
    return out


def test_500_followers_and_100_attached_runs_do_not_starve_unary_calls(fresh_daemon: RunningDaemon) -> None:
    pid = fresh_daemon.proc.pid   # type: ignore[union-attr]
    with fresh_daemon.client("developer") as client:
        targets = [client.run_job(["sh", "-c", "echo start; sleep 40"], name=f"target-{i}").id for i in range(TARGETS)]
        baseline = threads_of(pid)

        latencies: list[float] = []
        errors: list[BaseException] = []
        outputs: list[bytes] = []

        async def load() -> None:
            channels = {role: aio_channel(fresh_daemon.home, role) for role in ROLES}
            stubs = {role: pb_grpc.JobServiceStub(ch) for role, ch in channels.items()}
            opened, counter = asyncio.Event(), [0]
            followers = [asyncio.create_task(_follow(stubs[ROLES[i % 4]], targets[i % TARGETS], opened, counter))
                         for i in range(FOLLOWERS)]
            await asyncio.wait_for(opened.wait(), 60)   # every follower has its first chunk: all are open
            runs = [asyncio.create_task(_attached_run(stubs[("developer", "admin")[i % 2]], i))
                    for i in range(ATTACHED)]
            await asyncio.sleep(1.0)
            prober = threading.Thread(target=_version_latencies, args=(fresh_daemon, 200, latencies, errors))
            prober.start()
            threads_under_load = threads_of(pid)
            # RunJob keeps working beside the streams.
            extra = await stubs["admin"].RunJob(pb.RunJobRequest(command=["true"], name="beside-the-load"), timeout=15)
            assert extra.id
            await asyncio.get_running_loop().run_in_executor(None, prober.join)
            outputs.extend(await asyncio.gather(*runs))
            for task in followers:
                task.cancel()
            await asyncio.gather(*followers, return_exceptions=True)
            for ch in channels.values():
                await ch.close()
            load.threads_under_load = threads_under_load   # type: ignore[attr-defined]

        asyncio.run(load())
        assert not errors, f"GetVersion failed under stream load: {errors[0]!r}"
        p99 = percentile(latencies, 99)
        print(f"GetVersion under {FOLLOWERS} followers + {ATTACHED} attached runs: "
              f"p50 {percentile(latencies, 50) * 1e3:.1f} ms, p99 {p99 * 1e3:.1f} ms")
        assert p99 <= 0.100, f"GetVersion p99 {p99 * 1e3:.0f} ms under stream load (limit 100 ms)"
        assert sorted(outputs) == sorted(f"attached-{i}\n".encode() for i in range(ATTACHED))
        # Threads do not follow the number of streams (600 open): a fixed pool plus a few.
        assert load.threads_under_load <= baseline + 16, (baseline, load.threads_under_load)   # type: ignore[attr-defined]
        after = settle(lambda: threads_of(pid), lambda n: n <= baseline)
        assert after <= baseline, f"daemon threads {after} after the streams closed, {baseline} before"
        assert client.version().version
        for job_id in targets:
            client.stop_job(job_id, grace_seconds=1)


def _limited_daemon(tmp_path: Path, **limits: int) -> RunningDaemon:
    home = tmp_path / "home"
    port = free_port()
    ensure_home(home, address=f"127.0.0.1:{port}", listen=f"127.0.0.1:{port}")
    with open(home / "server.yaml", "a") as f:
        f.write("api:\n" + "".join(f"  {k}: {v}\n" for k, v in limits.items()))
    daemon = RunningDaemon(home=home, port=port, log_path=tmp_path / "daemon.log")
    daemon.start()
    return daemon


def test_streams_beyond_the_per_client_and_global_limits_are_refused_with_resource_exhausted(
        tmp_path: Path) -> None:
    daemon = _limited_daemon(tmp_path, max_streams_per_client=3, max_streams=5)
    try:
        with daemon.client("developer") as client:
            job_id = client.run_job(["sh", "-c", "echo x; sleep 30"]).id

        async def scenario() -> tuple[str, str, str]:
            reader = pb_grpc.JobServiceStub(ch_r := aio_channel(daemon.home, "reader"))
            admin = pb_grpc.JobServiceStub(ch_a := aio_channel(daemon.home, "admin"))
            held = [reader.StreamLogs(pb.StreamLogsRequest(id=job_id, follow=True)) for _ in range(3)]
            for call in held:
                await call.read()   # open for sure
            with pytest.raises(grpc.aio.AioRpcError) as per_client:
                await reader.StreamLogs(pb.StreamLogsRequest(id=job_id, follow=True)).read()
            held += [admin.StreamLogs(pb.StreamLogsRequest(id=job_id, follow=True)) for _ in range(2)]
            for call in held[3:]:
                await call.read()
            with pytest.raises(grpc.aio.AioRpcError) as total:
                await admin.StreamLogs(pb.StreamLogsRequest(id=job_id, follow=True)).read()
            # Unary calls are not streams: still served.
            version = await pb_grpc.NodeServiceStub(ch_r).GetVersion(common_pb2.Empty(), timeout=5)
            for call in held:
                call.cancel()
            await asyncio.sleep(0.5)
            again = reader.StreamLogs(pb.StreamLogsRequest(id=job_id, follow=True))
            await again.read()   # slots came back when the streams closed
            again.cancel()
            await ch_r.close()
            await ch_a.close()
            for refused in (per_client.value, total.value):
                assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                # The wire code makes the CLI exit 9 (LimitExceeded).
                assert ("capsa-error-code", "resource_exhausted") in tuple(refused.trailing_metadata())
            return per_client.value.details(), total.value.details(), version.version

        per_client, total, version = asyncio.run(scenario())
        assert "limit 3 per client" in per_client
        assert "limit 5" in total
        assert version
        with daemon.client("admin") as client:
            client.stop_job(job_id, grace_seconds=1)
    finally:
        daemon.stop()
        daemon.kill_supervisor()
