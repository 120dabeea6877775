"""Writer and readers in separate processes, with kill -9 on either side (supervisor, API daemon)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from capsa.errors import Conflict
from capsa.logs import LogChunk, LogPersister, Stream, is_finished, read_log
from capsa.logs._format import crc32, encode_header, segment_path

# Content is a function of the seq, so whatever a killed writer managed to persist can be checked.
PAYLOAD_SRC = """
import hashlib
def payload(seq: int) -> bytes:
    return hashlib.sha256(b"%d" % seq).digest() * (1 + seq * 7919 % 2000)
"""
namespace: dict[str, Any] = {}
exec(PAYLOAD_SRC, namespace)
payload = namespace["payload"]

WRITER = (
    PAYLOAD_SRC
    + """
import sys, time
from pathlib import Path
from capsa.logs import LogPersister, Stream
p = LogPersister(segment_bytes=256 << 10, fsync_on_close=False)
job = p.open("job", Path(sys.argv[1]))
print("ready", job.first_seq, flush=True)
while True:
    seq = job.last_seq + 1
    job.append(Stream.STDOUT if seq % 3 else Stream.STDERR, payload(seq))
    if seq % 20 == 0:
        time.sleep(0.001)
"""
)

READER = """
import hashlib, sys
from pathlib import Path
from capsa.logs import read_log
for c in read_log(Path(sys.argv[1]), from_seq=int(sys.argv[2]), follow=True, poll_interval=0.01):
    print(c.seq, int(c.stream), hashlib.sha256(c.data).hexdigest(), flush=True)
print("end", flush=True)
"""


def spawn(script: str, *args: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", script, *map(str, args)], stdout=subprocess.PIPE, text=True
    )


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        if proc.stdout:
            proc.stdout.close()


def expected_lines(seqs: range, streams: dict[int, Stream] | None = None) -> list[str]:
    return [
        f"{s} {int(streams[s]) if streams else (1 if s % 3 else 2)} {hashlib.sha256(payload(s)).hexdigest()}"
        for s in seqs
    ]


def test_reader_process_follows_a_live_writer(tmp_path: Path, procs: list[subprocess.Popen[str]]) -> None:
    log_dir = tmp_path / "job"
    reader = spawn(READER, log_dir, 1)  # before the log directory exists
    procs.append(reader)
    with LogPersister(segment_bytes=64 << 10, fsync_on_close=False) as p:
        job = p.open("job", log_dir)
        for seq in range(1, 401):
            job.append(Stream.STDOUT if seq % 3 else Stream.STDERR, payload(seq))
            if seq % 40 == 0:
                time.sleep(0.02)
        job.finish()
    out, _ = reader.communicate(timeout=30)
    assert out.splitlines() == expected_lines(range(1, 401)) + ["end"]


def test_killed_reader_resumes_from_last_seq_without_gap_or_duplicate(
    tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    log_dir = tmp_path / "job"
    with LogPersister(segment_bytes=64 << 10, fsync_on_close=False) as p:
        job = p.open("job", log_dir)
        first = spawn(READER, log_dir, 1)
        procs.append(first)
        assert first.stdout is not None
        seq = 0
        lines: list[str] = []
        while len(lines) < 150:  # keep writing until the reader has delivered 150 chunks
            seq += 1
            job.append(Stream.STDOUT if seq % 3 else Stream.STDERR, payload(seq))
            if seq % 10 == 0:
                time.sleep(0.005)
            if seq >= 150:
                lines.append(first.stdout.readline().rstrip("\n"))
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
        # Whatever it printed before dying; a line the kill cut short was never delivered whole.
        rest = first.stdout.read().splitlines(keepends=True)
        lines += [line.rstrip("\n") for line in rest if line.endswith("\n")]
        last = int(lines[-1].split()[0])
        second = spawn(READER, log_dir, last + 1)
        procs.append(second)
        total = seq + 100
        for s in range(seq + 1, total + 1):
            job.append(Stream.STDOUT if s % 3 else Stream.STDERR, payload(s))
        job.finish()
    out, _ = second.communicate(timeout=30)
    assert lines + out.splitlines() == expected_lines(range(1, total + 1)) + ["end"]


def test_supervisor_killed_mid_write_then_restarted_loses_nothing_persisted(
    tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    log_dir = tmp_path / "job"
    got: list[LogChunk] = []
    follower = threading.Thread(
        target=lambda: got.extend(read_log(log_dir, follow=True, poll_interval=0.01)), daemon=True
    )
    follower.start()
    writer = spawn(WRITER, log_dir)
    procs.append(writer)
    assert writer.stdout is not None and writer.stdout.readline().split() == ["ready", "1"]
    deadline = time.monotonic() + 10
    while len(got) < 300 and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait(10)
    assert not is_finished(log_dir)

    with LogPersister(segment_bytes=256 << 10) as p:  # the restarted supervisor
        job = p.open("job", log_dir)
        restart = job.first_seq
        assert restart > 300
        for seq in range(restart, restart + 50):
            job.append(Stream.STDOUT if seq % 3 else Stream.STDERR, payload(seq))
        job.finish()
    follower.join(10)
    assert not follower.is_alive()
    assert [c.seq for c in got] == list(range(1, restart + 50))
    for c in got:
        assert c.data == payload(c.seq), f"seq {c.seq} differs"
        assert c.stream == (Stream.STDOUT if c.seq % 3 else Stream.STDERR)
    history = [c.seq for c in read_log(log_dir)]
    assert history == list(range(1, restart + 50))


def test_second_writer_process_is_refused_until_the_first_dies(
    tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    log_dir = tmp_path / "job"
    writer = spawn(WRITER, log_dir)
    procs.append(writer)
    assert writer.stdout is not None and writer.stdout.readline().startswith("ready")
    with LogPersister() as p:
        with pytest.raises(Conflict, match="another writer"):
            p.open("job", log_dir)
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait(10)
        job = p.open("job", log_dir)  # the flock died with the process
        job.finish()
    assert [c.seq for c in read_log(log_dir)] == list(range(1, job.first_seq))


def test_follower_waiting_at_a_torn_record_gets_the_rewritten_one(tmp_path: Path) -> None:
    with LogPersister(segment_bytes=1 << 20, fsync_on_close=False) as p:
        job = p.open("job", tmp_path)
        for seq in range(1, 11):
            job.append(Stream.STDOUT, payload(seq))
    # A crash in the middle of writing seq 11: header and half of a payload that will never be completed.
    stale = b"stale output " * 1000
    torn = encode_header(11, 0, int(Stream.STDERR), len(stale), crc32(stale)) + stale[: len(stale) // 2]
    with open(segment_path(tmp_path, 1), "ab") as f:
        f.write(torn)
    got: list[LogChunk] = []
    follower = threading.Thread(
        target=lambda: got.extend(read_log(tmp_path, from_seq=5, follow=True, poll_interval=0.01)),
        daemon=True,
    )
    follower.start()
    time.sleep(0.1)
    assert [c.seq for c in got] == [5, 6, 7, 8, 9, 10]  # and it waits at the torn record
    with LogPersister() as p:
        job = p.open("job", tmp_path)
        assert job.append(Stream.STDOUT, b"fresh") == 11
        job.finish()
    follower.join(10)
    assert not follower.is_alive()
    assert [(c.seq, c.data) for c in got[-1:]] == [(11, b"fresh")]
    assert [c.seq for c in got] == list(range(5, 12))


def test_exiting_supervisor_that_forgot_close_still_writes_everything(big_dir: Path) -> None:
    tmp_path = big_dir
    script = (
        PAYLOAD_SRC
        + """
import sys
from pathlib import Path
from capsa.logs import LogPersister, Stream
p = LogPersister(segment_bytes=1 << 20, fsync_on_close=False)
job = p.open("job", Path(sys.argv[1]))
chunks = [payload(seq) for seq in range(1, 3001)]  # ~100 MB, appended far faster than disk takes it
for data in chunks:
    job.append(Stream.STDOUT, data)
sys.exit(0)  # no close(), no wait_persisted()
"""
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True, timeout=60)
    chunks = list(read_log(tmp_path))
    assert [c.seq for c in chunks] == list(range(1, 3001))
    assert all(c.data == payload(c.seq) for c in chunks)
    assert not is_finished(tmp_path)
