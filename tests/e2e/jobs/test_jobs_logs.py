"""Logs are lossless and byte-exact: 200 MB of pseudo-random bytes through history, follow and an
attached run; stdout and stderr kept apart; --from-seq resumes exactly; a slow reader never stalls a job."""

from __future__ import annotations

import hashlib
import random
import subprocess
import threading
import time

import pytest
from jobs_helpers import wait_ended, wait_for, wait_running

from tests.fixtures.daemon import CAPSA, RunningDaemon

MIB = 1 << 20
SIZE_MIB = 200
SEED = 20261122
# Same generator inside the job (the host's python3) and in the test: a seeded Mersenne Twister.
WRITER = (
    "import random, sys, time\n"
    "time.sleep(float(sys.argv[3]))\n"
    "r = random.Random(int(sys.argv[1]))\n"
    "out = sys.stdout.buffer\n"
    "for _ in range(int(sys.argv[2])):\n"
    "    out.write(r.randbytes(1 << 20))\n"
    "out.flush()\n"
)


@pytest.fixture(scope="module")
def expected_sha256() -> str:
    r = random.Random(SEED)
    digest = hashlib.sha256()
    for _ in range(SIZE_MIB):
        digest.update(r.randbytes(MIB))
    return digest.hexdigest()


def _writer(delay: float = 0.0, mib: int = SIZE_MIB) -> list[str]:
    return ["python3", "-c", WRITER, str(SEED), str(mib), str(delay)]


def _cli(daemon: RunningDaemon, *args: str) -> list[str]:
    return [*CAPSA, "--config", str(daemon.home / "client-admin.yaml"), *args]


def _sha_of_stream(proc: subprocess.Popen[bytes]) -> tuple[str, int]:
    assert proc.stdout is not None
    digest, total = hashlib.sha256(), 0
    while block := proc.stdout.read(4 * MIB):
        digest.update(block)
        total += len(block)
    return digest.hexdigest(), total


def test_200mb_follow_and_history_are_byte_exact(daemon: RunningDaemon, expected_sha256: str) -> None:
    # The writer waits a little so `logs -f` is attached before it writes, and is still running after.
    job_id = daemon.cli("run", "-d", "--", *_writer(delay=1.0), check=True).stdout.decode().strip()
    follow_started_ns = time.time_ns()
    follower = subprocess.Popen(_cli(daemon, "logs", "-f", job_id[:8]), env=daemon.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    followed_sha, followed_bytes = _sha_of_stream(follower)
    assert follower.wait(60) == 0, follower.stderr.read().decode() if follower.stderr else ""
    with daemon.client() as client:
        job = wait_ended(client, job_id)
    assert job.state == "COMPLETED" and job.exit_code == 0
    assert job.ended_at_ns > follow_started_ns, "the job ended before logs -f started: not a follow test"
    assert followed_bytes == SIZE_MIB * MIB
    assert followed_sha == expected_sha256

    history = daemon.cli("logs", job_id)
    assert history.returncode == 0 and history.stderr == b""
    assert len(history.stdout) == SIZE_MIB * MIB
    assert hashlib.sha256(history.stdout).hexdigest() == expected_sha256

    # Bytes persisted are exactly the bytes written: compare with the client's chunk sizes too.
    with daemon.client("reader") as client:
        seqs = [(c.seq, len(c.data)) for c in client.stream_logs(job_id)]
    assert [s for s, _ in seqs] == list(range(1, len(seqs) + 1)), "sequence numbers have gaps"
    assert sum(n for _, n in seqs) == SIZE_MIB * MIB


def test_attached_run_streams_200mb_byte_exact(daemon: RunningDaemon, expected_sha256: str) -> None:
    proc = subprocess.Popen(_cli(daemon, "run", "--", *_writer()), env=daemon.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    sha, total = _sha_of_stream(proc)
    assert proc.wait(60) == 0
    assert total == SIZE_MIB * MIB
    assert sha == expected_sha256


SPLIT = (
    "import os, time\n"
    "for i in range(6):\n"
    "    os.write(1, b'out-%d\\x00\\xff\\n' % i)\n"
    "    time.sleep(0.03)\n"
    "    os.write(2, b'err-%d\\x01\\n' % i)\n"
    "    time.sleep(0.03)\n"
)


def test_stdout_and_stderr_are_kept_apart_and_from_seq_resumes_exactly(daemon: RunningDaemon) -> None:
    with daemon.client() as client:
        job = client.run_job(["python3", "-c", SPLIT])
        chunks = [(c.seq, c.stream, c.data, c.timestamp_ns) for c in client.stream_logs(job.id, follow=True)]
        assert wait_ended(client, job.id).exit_code == 0
    expected_out = b"".join(b"out-%d\x00\xff\n" % i for i in range(6))
    expected_err = b"".join(b"err-%d\x01\n" % i for i in range(6))
    assert b"".join(d for _, s, d, _ in chunks if s == 1) == expected_out
    assert b"".join(d for _, s, d, _ in chunks if s == 2) == expected_err
    assert [s for s, *_ in chunks] == list(range(1, len(chunks) + 1))
    assert all(t > 0 for *_, t in chunks)
    assert [t for *_, t in chunks] == sorted(t for *_, t in chunks)

    res = daemon.cli("logs", job.id)
    assert (res.returncode, res.stdout, res.stderr) == (0, expected_out, expected_err)

    # Resume from the middle: exactly the tail, nothing before it, nothing twice.
    cut = chunks[len(chunks) // 2][0]
    res = daemon.cli("logs", "--from-seq", str(cut), job.id)
    assert res.returncode == 0
    assert res.stdout == b"".join(d for s, st, d, _ in chunks if s >= cut and st == 1)
    assert res.stderr == b"".join(d for s, st, d, _ in chunks if s >= cut and st == 2)
    assert res.stdout != expected_out
    res = daemon.cli("logs", "-f", "--from-seq", str(chunks[-1][0] + 1), job.id)
    assert (res.returncode, res.stdout, res.stderr) == (0, b"", b"")


def _job_seconds(daemon: RunningDaemon, job_id: str) -> float:
    with daemon.client() as client:
        job = wait_ended(client, job_id, timeout=60)
    assert job.exit_code == 0, job.reason
    return (job.ended_at_ns - job.started_at_ns) / 1e9


def test_a_slow_reader_does_not_stall_the_job(daemon: RunningDaemon) -> None:
    command = ["head", "-c", str(256 * MIB), "/dev/zero"]
    with daemon.client() as client:
        baseline = client.run_job(command)
    alone = _job_seconds(daemon, baseline.id)

    job_id = daemon.cli("run", "-d", "--", "sh", "-c", f"sleep 0.5; exec {' '.join(command)}",
                        check=True).stdout.decode().strip()
    reader = subprocess.Popen(_cli(daemon, "logs", "-f", job_id), env=daemon.env,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    got = 0
    fast = threading.Event()

    def consume() -> None:  # 64 KiB every 50 ms (~1.3 MB/s) until told to drain
        nonlocal got
        assert reader.stdout is not None
        while block := reader.stdout.read(64 * 1024):
            got += len(block)
            if not fast.is_set():
                time.sleep(0.05)

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    try:
        with daemon.client() as client:
            wait_running(client, job_id)
        with_reader = _job_seconds(daemon, job_id) - 0.5
        read_when_job_ended = got
    finally:
        fast.set()
        thread.join(60)
        reader.wait(30)
    assert read_when_job_ended < 128 * MIB, "the reader was not slow; the test proves nothing"
    assert got == 256 * MIB, "the slow reader lost bytes"
    assert with_reader <= 2 * alone + 1.0, f"job took {with_reader:.2f}s with a slow reader vs {alone:.2f}s"


def test_logs_of_a_running_job_then_follow_gives_no_gap_or_duplicate(daemon: RunningDaemon) -> None:
    script = "i=0; while [ $i -lt 300 ]; do echo line-$i; i=$((i+1)); sleep 0.002; done"
    with daemon.client() as client:
        job = client.run_job(["/bin/sh", "-c", script])
        wait_for(lambda: any(True for _ in client.stream_logs(job.id)), what="first output")
        history = list(client.stream_logs(job.id))
        resumed = list(client.stream_logs(job.id, follow=True, from_seq=history[-1].seq + 1))
        assert wait_ended(client, job.id).exit_code == 0
    text = b"".join(c.data for c in history + resumed).decode()
    assert text == "".join(f"line-{i}\n" for i in range(300))
