"""A restarted job's log: the end record gives way to a restart notice and numbering continues."""

from __future__ import annotations

from pathlib import Path

from capsa.logs import LogPersister, Stream, is_finished, read_log
from capsa.logs.reopen import mark_restart


def _one_run(log_dir: Path, data: bytes) -> None:
    with LogPersister(segment_bytes=1 << 20, fsync_on_close=False) as p:
        job = p.open("j", log_dir)
        job.append(Stream.STDOUT, data)
        job.finish()
        assert job.wait_persisted(5)


def test_a_finished_log_reopens_with_a_notice_and_keeps_its_history(tmp_path: Path) -> None:
    _one_run(tmp_path, b"first\n")
    assert is_finished(tmp_path)
    assert mark_restart(tmp_path, "capsa: restart 1") == 2
    assert not is_finished(tmp_path)
    _one_run(tmp_path, b"second\n")
    chunks = list(read_log(tmp_path))
    assert [(c.seq, c.stream) for c in chunks] == [(1, Stream.STDOUT), (2, Stream.NOTICE), (3, Stream.STDOUT)]
    assert chunks[0].data == b"first\n" and b"capsa: restart 1" in chunks[1].data and chunks[2].data == b"second\n"
    assert is_finished(tmp_path)


def test_a_job_that_never_wrote_a_log_gets_one_starting_with_the_notice(tmp_path: Path) -> None:
    assert mark_restart(tmp_path / "logs", "capsa: restart 1") == 1
    assert [c.stream for c in read_log(tmp_path / "logs")] == [Stream.NOTICE]
