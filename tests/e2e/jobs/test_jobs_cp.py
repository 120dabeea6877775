"""`capsa cp` against a real daemon: byte-exact round trips (large, sparse, symlinks), ownership of
files copied into a running job, ended jobs, and hostile paths refused with nothing written."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from jobs_helpers import wait_ended, wait_running

from tests.fixtures.daemon import RunningDaemon

UNSAFE = 11


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _tree(root: Path) -> dict[str, tuple[str, str]]:
    """name -> (kind, content digest / link target / mode) for every entry, symlinks not followed."""
    out: dict[str, tuple[str, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir", oct(p.stat().st_mode & 0o7777))
            else:
                out[rel] = ("file", f"{_digest(p)} {oct(p.stat().st_mode & 0o7777)}")
    return out


@pytest.fixture
def sleeper(daemon: RunningDaemon) -> str:
    """A running job as uid/gid 1000 whose /work is writable for it."""
    with daemon.client() as client:
        job = client.run_job(["/bin/sleep", "120"], user="1000:1000")
        wait_running(client, job.id)
    yield job.id
    with daemon.client() as client:
        client.stop_job(job.id, grace_seconds=0.1)
        wait_ended(client, job.id)


def test_round_trip_is_byte_exact_and_owned_by_the_jobs_user(daemon: RunningDaemon, sleeper: str,
                                                              tmp_path: Path) -> None:
    src = tmp_path / "tree"
    (src / "sub").mkdir(parents=True)
    with open(src / "big.bin", "wb") as f:
        for _ in range(64):
            f.write(os.urandom(1 << 20))
    with open(src / "sparse.img", "wb") as f:   # mostly holes: read back as zeros, byte-exact
        f.truncate(48 << 20)
        f.seek(40 << 20)
        f.write(b"end of the sparse file")
    (src / "sub" / "tool.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(src / "sub" / "tool.sh", 0o750)
    os.symlink("../big.bin", src / "sub" / "rel-link")
    os.symlink("/etc/shadow", src / "abs-link")        # copied as a link, never read
    os.symlink("missing", src / "dangling")

    daemon.cli("cp", str(src), f"{sleeper}:/work/", check=True)
    work = daemon.home / "jobs" / sleeper / "work"
    assert _tree(work / "tree") == _tree(src)
    for p in [work / "tree", *(work / "tree").rglob("*")]:
        st = os.lstat(p)
        assert (st.st_uid, st.st_gid) == (1000, 1000), p
    assert not [n for n in os.listdir(work) if n.startswith(".capsa-cp-")]

    out = tmp_path / "back"
    daemon.cli("cp", f"{sleeper}:/work/tree", str(out), check=True)
    assert _tree(out) == _tree(src)
    # Into an existing directory the entry keeps its name; a single file under a new name.
    daemon.cli("cp", f"{sleeper}:/work/tree/sub/tool.sh", str(tmp_path), check=True)
    assert (tmp_path / "tool.sh").read_text() == "#!/bin/sh\necho hi\n"
    daemon.cli("cp", f"{sleeper}:/work/tree/big.bin", str(tmp_path / "copy.bin"), check=True)
    assert _digest(tmp_path / "copy.bin") == _digest(src / "big.bin")


def test_ended_jobs_copy_out_but_not_in(daemon: RunningDaemon, tmp_path: Path) -> None:
    with daemon.client() as client:
        job = client.run_job(["/bin/sh", "-c", "echo result > /work/out.txt"])
        wait_ended(client, job.id)
    daemon.cli("cp", f"{job.id}:/work/out.txt", str(tmp_path / "out.txt"), check=True)
    assert (tmp_path / "out.txt").read_text() == "result\n"
    (tmp_path / "in.txt").write_text("x")
    r = daemon.cli("cp", str(tmp_path / "in.txt"), f"{job.id}:/work/")
    assert r.returncode == 5 and b"running jobs only" in r.stderr
    assert not (daemon.home / "jobs" / job.id / "work" / "in.txt").exists()


def test_unknown_job_and_missing_paths(daemon: RunningDaemon, sleeper: str, tmp_path: Path) -> None:
    r = daemon.cli("cp", "deadbeef:/work/x", str(tmp_path / "x"))
    assert r.returncode == 3, r.stderr
    r = daemon.cli("cp", f"{sleeper}:/work/missing", str(tmp_path / "x"))
    assert r.returncode == 3 and b"no such file" in r.stderr
    r = daemon.cli("cp", f"{sleeper}:/etc/passwd", str(tmp_path / "x"))
    assert r.returncode == 2 and b"/work" in r.stderr
    assert os.listdir(tmp_path) == []


def test_hostile_paths_are_refused_and_nothing_is_written(daemon: RunningDaemon, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("host secret")
    # The job plants symlinks in its /work pointing outside it (as a host path and via '..').
    with daemon.client() as client:
        job = client.run_job(["/bin/sh", "-c", f"ln -s {outside} /work/esc && ln -s ../../../.. /work/up"
                              " && mkdir /work/d && exec sleep 120"])
        wait_running(client, job.id)
    try:
        work = daemon.home / "jobs" / job.id / "work"
        for _ in range(100):
            if (work / "d").exists():
                break
            os.sched_yield()
        (tmp_path / "payload").write_text("payload")
        dest = tmp_path / "dest"
        dest.mkdir()
        cases = [
            ("cp", f"{job.id}:/work/esc/secret", str(dest / "s")),        # read through a symlinked parent
            ("cp", f"{job.id}:/work/up/etc/passwd", str(dest / "p")),
            ("cp", f"{job.id}:/work/../etc/passwd", str(dest / "p")),     # '..'
            ("cp", str(tmp_path / "payload"), f"{job.id}:/work/esc/"),     # write through a symlinked parent
            ("cp", str(tmp_path / "payload"), f"{job.id}:/work/esc/new"),
            ("cp", str(tmp_path / "payload"), f"{job.id}:/work/up/tmp/x"),
            ("cp", str(tmp_path / "payload"), f"{job.id}:/work/../x"),
        ]
        for args in cases:
            r = daemon.cli(*args)
            assert r.returncode == UNSAFE, (args, r.returncode, r.stderr)
            assert b"refused" in r.stderr, r.stderr
        assert sorted(os.listdir(outside)) == ["secret"]
        assert (outside / "secret").read_text() == "host secret"
        assert os.listdir(dest) == []
        assert sorted(os.listdir(work)) == ["d", "esc", "up"]
        # A symlink named as the source is copied as the link itself, not what it points at.
        daemon.cli("cp", f"{job.id}:/work/esc", str(dest / "esc"), check=True)
        assert os.readlink(dest / "esc") == str(outside)
    finally:
        with daemon.client() as client:
            client.stop_job(job.id, grace_seconds=0.1)
            wait_ended(client, job.id)
