"""`capsa run --upload`: a real tree arrives in the job's /work with its modes and symlinks, and nothing a
client sends (crafted raw gRPC streams included) can write outside the job's /work on the host."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from features_helpers import files_containing, inspect, staged_sessions, wait_for
from features_limits import UPLOAD_MAX_FILE

from capsa.api.gen.capsa.v1 import jobs_pb2 as pb
from capsa.errors import Canceled, LimitExceeded, NotFound, UnsafeArchive
from tests.fixtures.daemon import RunningDaemon


@pytest.fixture
def sentinel(tmp_path: Path) -> Path:
    """A host directory outside every job; its contents must never change."""
    d = tmp_path / "host-sentinel"
    d.mkdir()
    (d / "keep").write_text("original")
    return d


def _entry(path: str, kind: str = "file", data: bytes = b"", mode: int = 0o644, target: str = "") -> pb.UploadChunk:
    return pb.UploadChunk(entry=pb.UploadEntry(path=path, type=kind, mode=mode, size=len(data),
                                               link_target=target), data=data)


def _tree(tmp_path: Path, sentinel: Path) -> Path:
    root = tmp_path / "project"
    (root / "bin").mkdir(parents=True)
    (root / "data" / "nested" / "deeper").mkdir(parents=True)
    (root / "bin" / "run.sh").write_text("#!/bin/sh\necho ran-from-upload\n")
    os.chmod(root / "bin" / "run.sh", 0o750)
    (root / "data" / "private.txt").write_text("private")
    os.chmod(root / "data" / "private.txt", 0o600)
    (root / "data" / "nested" / "deeper" / "blob.bin").write_bytes(os.urandom(300_000))
    os.chmod(root / "data" / "nested", 0o700)
    os.symlink(str(sentinel), root / "data" / "escape")          # absolute, pointing at the host sentinel
    os.symlink("../bin/run.sh", root / "data" / "run-link")     # relative, inside the tree
    return root


def test_an_uploaded_tree_arrives_in_work_with_modes_and_symlinks(features_daemon: RunningDaemon,
                                                                  tmp_path: Path, sentinel: Path) -> None:
    root = _tree(tmp_path, sentinel)
    single = tmp_path / "notes.txt"
    single.write_text("single file\n")
    script = (
        "cd /work && find . | sort && "
        "stat -c '%a %F %n' project/bin/run.sh project/data/private.txt project/data/nested notes.txt && "
        "readlink project/data/escape project/data/run-link && "
        "./project/data/run-link && md5sum project/data/nested/deeper/blob.bin && "
        # Writing through the symlink inside the job must not reach the host directory it names.
        "(echo pwned > project/data/escape/pwned) 2>/dev/null; echo done"
    )
    result = features_daemon.cli("run", "--upload", str(root), "--upload", str(single), "--",
                                 "/bin/sh", "-c", script, check=True)
    out = result.stdout.decode().splitlines()
    assert "./project/data/nested/deeper/blob.bin" in out and "./notes.txt" in out
    assert "750 regular file project/bin/run.sh" in out
    assert "600 regular file project/data/private.txt" in out
    assert "700 directory project/data/nested" in out
    assert "644 regular file notes.txt" in out
    assert str(sentinel) in out and "../bin/run.sh" in out          # symlinks stay symlinks
    assert "ran-from-upload" in out
    digest = hashlib.md5((root / "data/nested/deeper/blob.bin").read_bytes()).hexdigest()
    assert f"{digest}  project/data/nested/deeper/blob.bin" in out
    assert out[-1] == "done"
    assert sorted(os.listdir(sentinel)) == ["keep"] and (sentinel / "keep").read_text() == "original"
    assert staged_sessions(features_daemon) == []


@pytest.mark.parametrize("attack", [
    [_entry("../escaped.txt", data=b"evil")],
    [_entry("ok/../../escaped.txt", data=b"evil")],
    [_entry("/tmp/escaped.txt", data=b"evil")],
    [_entry("../../../capsa.db", data=b"evil")],
    [_entry("link", "symlink", target="/"), _entry("link/tmp/escaped.txt", data=b"evil")],
    [_entry("link", "symlink", target="SENTINEL"), _entry("link/pwned", data=b"evil")],
    [_entry("link", "symlink", target="SENTINEL/keep"), _entry("link", data=b"evil")],
    [_entry("up", "symlink", target="../../../.."), _entry("up/escaped.txt", data=b"evil")],
], ids=["dotdot", "nested-dotdot", "absolute", "daemon-db", "symlink-root-parent", "symlink-dir-parent",
        "file-over-symlink", "relative-symlink-parent"])
def test_raw_streams_cannot_write_outside_work(features_daemon: RunningDaemon, sentinel: Path,
                                               attack: list[pb.UploadChunk]) -> None:
    chunks = [_entry("fine.txt", data=b"ok")]
    for template in attack:
        chunk = pb.UploadChunk()
        chunk.CopyFrom(template)
        chunk.entry.link_target = chunk.entry.link_target.replace("SENTINEL", str(sentinel))
        chunks.append(chunk)
    db_before = (features_daemon.home / "capsa.db").stat().st_size
    with features_daemon.client() as client, pytest.raises(UnsafeArchive):
        client.upload_files(iter(chunks))
    assert sorted(os.listdir(sentinel)) == ["keep"] and (sentinel / "keep").read_text() == "original"
    assert not files_containing(features_daemon.home, b"evil")
    assert not Path("/tmp/escaped.txt").exists()
    assert (features_daemon.home / "capsa.db").stat().st_size >= db_before
    assert staged_sessions(features_daemon) == []


def test_a_file_over_the_size_limit_is_refused_and_nothing_is_staged(features_daemon: RunningDaemon,
                                                                     tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(b"\0" * (UPLOAD_MAX_FILE + 1))
    with features_daemon.client() as client:
        jobs_before = len(client.list_jobs(all=True))
    result = features_daemon.cli("run", "--upload", str(big), "--", "/bin/true")
    assert result.returncode == LimitExceeded.exit_code, result.stderr
    assert b"big.bin" in result.stderr and b"limit per file" in result.stderr
    with features_daemon.client() as client:
        assert len(client.list_jobs(all=True)) == jobs_before
    assert staged_sessions(features_daemon) == []


def test_an_interrupted_stream_leaves_nothing_staged(features_daemon: RunningDaemon) -> None:
    def chunks() -> Iterator[pb.UploadChunk]:
        yield _entry("part.bin", data=b"x" * 1000)
        raise ConnectionResetError("the client died mid-upload")

    with features_daemon.client() as client, pytest.raises(ConnectionResetError):
        client.upload_files(chunks())
    # The daemon sees the cancellation a moment later.
    wait_for(lambda: staged_sessions(features_daemon) == [], what="the cancelled session to be removed")


def test_a_stream_that_ends_without_its_end_marker_is_discarded(features_daemon: RunningDaemon) -> None:
    with features_daemon.client() as client, pytest.raises(Canceled):
        client.upload_files(iter([_entry("whole-looking.txt", data=b"complete")]), finish=False)
    assert staged_sessions(features_daemon) == []


def test_a_session_is_used_once_and_unknown_sessions_are_refused(features_daemon: RunningDaemon) -> None:
    with features_daemon.client() as client:
        session = client.upload_files(iter([_entry("x.txt", data=b"1")])).session
        assert staged_sessions(features_daemon) == [session]
        job = client.run_job(["/bin/cat", "/work/x.txt"], upload_session=session)
        with pytest.raises(NotFound):
            client.run_job(["/bin/true"], upload_session=session)
        with pytest.raises(NotFound):
            client.run_job(["/bin/true"], upload_session="0" * 32)
    assert inspect(features_daemon, job.id)["state"] in ("RUNNING", "COMPLETED")
    assert staged_sessions(features_daemon) == []


def test_uploading_needs_the_developer_role(features_daemon: RunningDaemon, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    result = features_daemon.cli("run", "--upload", str(tmp_path / "f"), "--", "/bin/true", role="reader")
    assert result.returncode == 6 and b"UploadFiles" in result.stderr
