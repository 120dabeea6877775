"""`capsa cp` against a real daemon: byte-exact round trips (large, sparse, symlinks), ownership of
files copied into a running job, ended jobs, and hostile paths refused with nothing written — on
both paths: the local fast path (descriptors over the daemon's root-only socket, the default for
root on the daemon's host) and the stream (``--no-fast``, what a remote client gets)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from jobs_helpers import wait_ended, wait_running

from capsa.errors import PermissionDenied
from capsa.extents import data_extents
from capsa.fdpass import connect, recv_fd
from tests.fixtures.daemon import RunningDaemon

UNSAFE = 11
MiB = 1 << 20
# (extra CLI flags, what the CLI reports it used)
PATHS = {"fast": ((), b"(local fast path)"), "stream": (("--no-fast",), b"(stream)")}


@pytest.fixture(params=sorted(PATHS))
def path(request: pytest.FixtureRequest) -> tuple[tuple[str, ...], bytes]:
    return PATHS[request.param]


def _cp(daemon: RunningDaemon, path: tuple[tuple[str, ...], bytes], *args: str) -> None:
    flags, used = path
    r = daemon.cli("cp", *flags, *args)
    assert r.returncode == 0, r.stderr
    assert used in r.stderr, r.stderr


def _extents(p: Path) -> list[tuple[int, int]]:
    fd = os.open(p, os.O_RDONLY)
    try:
        return data_extents(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)


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
                                                              tmp_path: Path, path: tuple) -> None:
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

    _cp(daemon, path, str(src), f"{sleeper}:/work/")
    work = daemon.home / "jobs" / sleeper / "work"
    assert _tree(work / "tree") == _tree(src)
    for p in [work / "tree", *(work / "tree").rglob("*")]:
        st = os.lstat(p)
        assert (st.st_uid, st.st_gid) == (1000, 1000), p
    assert not [n for n in os.listdir(work) if n.startswith(".capsa-cp-")]

    out = tmp_path / "back"
    _cp(daemon, path, f"{sleeper}:/work/tree", str(out))
    assert _tree(out) == _tree(src)
    assert _extents(out / "sparse.img") == _extents(src / "sparse.img")
    # Into an existing directory the entry keeps its name; a single file under a new name.
    _cp(daemon, path, f"{sleeper}:/work/tree/sub/tool.sh", str(tmp_path))
    assert (tmp_path / "tool.sh").read_text() == "#!/bin/sh\necho hi\n"
    _cp(daemon, path, f"{sleeper}:/work/tree/big.bin", str(tmp_path / "copy.bin"))
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


def test_hostile_paths_are_refused_and_nothing_is_written(daemon: RunningDaemon, tmp_path: Path,
                                                          path: tuple) -> None:
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
        (tmp_path / "payload").write_bytes(os.urandom(2 * MiB))   # large enough to be passed by descriptor
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
            r = daemon.cli(args[0], *path[0], *args[1:])
            assert r.returncode == UNSAFE, (args, r.returncode, r.stderr)
            assert b"refused" in r.stderr, r.stderr
        assert sorted(os.listdir(outside)) == ["secret"]
        assert (outside / "secret").read_text() == "host secret"
        assert os.listdir(dest) == []
        assert sorted(os.listdir(work)) == ["d", "esc", "up"]
        # A symlink named as the source is copied as the link itself, not what it points at.
        daemon.cli("cp", *path[0], f"{job.id}:/work/esc", str(dest / "esc"), check=True)
        assert os.readlink(dest / "esc") == str(outside)
    finally:
        with daemon.client() as client:
            client.stop_job(job.id, grace_seconds=0.1)
            wait_ended(client, job.id)


def test_a_large_file_is_byte_exact_both_ways(daemon: RunningDaemon, sleeper: str, tmp_path: Path,
                                              path: tuple) -> None:
    """256 MiB here (the 1 GiB figure is bench/bench_cp.py's, on both paths)."""
    src = tmp_path / "big.bin"
    block = os.urandom(MiB)
    with open(src, "wb") as f:
        for i in range(256):
            f.write(block[i:] + block[:i])
    _cp(daemon, path, str(src), f"{sleeper}:/work/big.bin")
    inside = daemon.home / "jobs" / sleeper / "work" / "big.bin"
    assert _digest(inside) == _digest(src)
    assert os.stat(inside).st_uid == 1000
    out = tmp_path / "out.bin"
    _cp(daemon, path, f"{sleeper}:/work/big.bin", str(out))
    assert _digest(out) == _digest(src)


def test_sparse_files_keep_their_holes_both_ways(daemon: RunningDaemon, sleeper: str, tmp_path: Path,
                                                 path: tuple) -> None:
    src = tmp_path / "disk.img"   # 1 GiB apparent, two data extents
    with open(src, "wb") as f:
        f.truncate(1 << 30)
        f.seek(MiB)
        f.write(os.urandom(MiB))
        f.seek(900 * MiB)
        f.write(os.urandom(3 * MiB))
    want = _extents(src)
    assert len(want) == 2
    _cp(daemon, path, str(src), f"{sleeper}:/work/disk.img")
    inside = daemon.home / "jobs" / sleeper / "work" / "disk.img"
    out = tmp_path / "back.img"
    _cp(daemon, path, f"{sleeper}:/work/disk.img", str(out))
    for copy in (inside, out):
        # Same length, same data extents, same bytes in them: byte-exact, and the holes are holes.
        assert os.stat(copy).st_size == 1 << 30
        assert _extents(copy) == want
        assert os.stat(copy).st_blocks == os.stat(src).st_blocks
        with open(copy, "rb") as a, open(src, "rb") as b:
            for off, length in want:
                a.seek(off)
                b.seek(off)
                assert a.read(length) == b.read(length)


def test_an_ended_jobs_large_file_comes_out_on_the_fast_path(daemon: RunningDaemon, tmp_path: Path) -> None:
    with daemon.client() as client:
        job = client.run_job(["/bin/sh", "-c", "dd if=/dev/urandom of=/work/out.bin bs=1M count=3 2>/dev/null"])
        wait_ended(client, job.id)
    _cp(daemon, PATHS["fast"], f"{job.id}:/work/out.bin", str(tmp_path / "out.bin"))
    assert _digest(tmp_path / "out.bin") == _digest(daemon.home / "jobs" / job.id / "work" / "out.bin")
    assert os.stat(tmp_path / "out.bin").st_size == 3 * MiB


def test_forged_used_and_non_root_tokens_are_refused(daemon: RunningDaemon, sleeper: str) -> None:
    (daemon.home / "jobs" / sleeper / "work" / "f").write_bytes(b"x" * MiB)
    with daemon.client() as client:
        with pytest.raises(PermissionDenied):
            list(client.copy_out(sleeper, "/work/f", fast_token="0" * 32))
        reply = client.fast_path()
        conn = connect(reply.socket_path, reply.token)
        assert conn is not None
        list(client.copy_out(sleeper, "/work/f", fast_token=reply.token))   # claims the token
        os.close(recv_fd(conn))
        conn.close()
        with pytest.raises(PermissionDenied):
            list(client.copy_out(sleeper, "/work/f", fast_token=reply.token))
        # A peer that is not root, even one the 0700 directory does not stop (CAP_DAC_OVERRIDE).
        reply = client.fast_path()
        code = ("import sys; from capsa.fdpass import connect;"
                f" sys.exit(0 if connect({reply.socket_path!r}, {reply.token!r}) is None else 1)")
        r = subprocess.run(["setpriv", "--reuid=1000", "--regid=1000", "--clear-groups", "--inh-caps=+dac_override",
                            "--ambient-caps=+dac_override", sys.executable, "-c", code], capture_output=True,
                           timeout=30)
        assert r.returncode == 0, r.stderr
        with pytest.raises(PermissionDenied):
            list(client.copy_in(sleeper, "/work/g", iter([]), fast_token=reply.token))
    assert not (daemon.home / "jobs" / sleeper / "work" / "g").exists()


def test_a_non_root_client_falls_back_to_the_stream(daemon: RunningDaemon, sleeper: str) -> None:
    (daemon.home / "jobs" / sleeper / "work" / "big.bin").write_bytes(os.urandom(2 * MiB))
    scratch = Path(tempfile.mkdtemp(prefix="capsa-cp-user-"))
    try:
        os.chmod(scratch, 0o755)
        config = scratch / "client.yaml"
        shutil.copyfile(daemon.home / "client-admin.yaml", config)
        os.chown(config, 1000, 1000)
        os.chown(scratch, 1000, 1000)
        r = subprocess.run(["setpriv", "--reuid=1000", "--regid=1000", "--clear-groups", sys.executable, "-m",
                            "capsa", "--config", str(config), "cp", f"{sleeper}:/work/big.bin",
                            str(scratch / "big.bin")], env=daemon.env, capture_output=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert b"(stream)" in r.stderr, r.stderr
        assert _digest(scratch / "big.bin") == _digest(daemon.home / "jobs" / sleeper / "work" / "big.bin")
    finally:
        shutil.rmtree(scratch)
