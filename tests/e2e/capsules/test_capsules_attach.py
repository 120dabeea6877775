"""Live attach, swap and detach into running jobs, seen from inside the jobs (real daemon, real kernel)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from capsule_helpers import (
    create,
    job_lines,
    job_pid,
    make_tree,
    merged,
    probe_job,
    stop,
    trigger,
    visible_mounts,
    wait_for,
)

from capsa.errors import AlreadyExists, FailedPrecondition, NotFound
from tests.fixtures.daemon import RunningDaemon

READ_AND_TAMPER = r"""
wait("attached")
d = "/capsules/dataset"
say(read=open(d + "/a.txt").read(), nested=open(d + "/sub/b.txt").read())
say(write=err(lambda: open(d + "/a.txt", "w")))
say(create=err(lambda: open(d + "/new.txt", "w")))
say(mkdir=err(lambda: os.mkdir(d + "/newdir")))
MS_REMOUNT, MS_BIND, MS_RDONLY = 32, 4096, 1
say(remount_rw=libc_call(libc.mount, None, d.encode(), None, MS_REMOUNT | MS_BIND, None))
say(umount=libc_call(libc.umount2, d.encode(), 0))
say(umount_lazy=libc_call(libc.umount2, d.encode(), 2))
opts = [l.split()[5] for l in open("/proc/self/mountinfo") if l.split()[4] == d]
say(options=opts[-1].split(","), still_there=open(d + "/a.txt").read())
wait("detached")
say(after_detach=sorted(os.listdir(d)))
"""


def test_attach_is_read_only_and_the_job_cannot_undo_it(daemon: RunningDaemon, tmp_path: Path) -> None:
    with daemon.client() as client:
        create(client, "dataset@1.0.0", make_tree(tmp_path / "v1", {"a.txt": "alpha", "sub/b.txt": "beta"}))
        job = probe_job(client, READ_AND_TAMPER)
        change = client.attach_capsule(job, "dataset@1.0.0")
        assert [(a.name, a.version, a.target) for a in change.added] == [("dataset", "1.0.0", "/capsules/dataset")]
        assert [a.job_id for a in client.inspect_capsule("dataset@1.0.0").attachments] == [job]
        trigger(daemon, job, "attached")
        wait_for(lambda: "still_there" in str([c.data for c in client.stream_logs(job)]), what="the probe")
        client.detach_capsule(job, "dataset")
        assert not client.inspect_capsule("dataset@1.0.0").attachments
        trigger(daemon, job, "detached")
        seen = merged(job_lines(client, job))
    assert seen["read"] == "alpha" and seen["nested"] == "beta"
    assert seen["write"] == seen["create"] == seen["mkdir"] == "EROFS"
    assert seen["remount_rw"] == seen["umount"] == seen["umount_lazy"] == "EPERM"
    assert {"ro", "nosuid", "nodev"} <= set(seen["options"]) and seen["still_there"] == "alpha"
    assert seen["after_detach"] == []   # the empty mount point stays, the content is gone


def test_attach_refuses_what_it_must(daemon: RunningDaemon, tmp_path: Path) -> None:
    with daemon.client() as client:
        create(client, "refuse@1.0.0", make_tree(tmp_path / "t", {"x": "x"}))
        job = probe_job(client, "wait('never')")
        try:
            with pytest.raises(NotFound, match="missing@1.0.0 not found"):
                client.attach_capsule(job, "missing@1.0.0")
            with pytest.raises(NotFound, match="no capsule named 'missing'"):
                client.attach_capsule(job, "missing@>=1")
            with pytest.raises(NotFound):
                client.attach_capsule(job, "refuse@9.9.9")
            # The host root is sealed read-only: a new top-level directory cannot be made in it.
            with pytest.raises(FailedPrecondition, match="read-only"):
                client.attach_capsule(job, "refuse@1.0.0", target="/opt/refuse")
            client.attach_capsule(job, "refuse@1.0.0", target="/tmp/refuse")
            again = client.attach_capsule(job, "refuse@1.0.0", target="/tmp/refuse")
            assert not again.added and [a.target for a in again.kept] == ["/tmp/refuse"]
            with pytest.raises(AlreadyExists):   # a mount the daemon did not record is never covered
                client.attach_capsule(job, "refuse@1.0.0", target="/dev/shm")
            assert "/dev/shm" not in {a.target for a in client.inspect_capsule("refuse@1.0.0").attachments}
        finally:
            stop(client, job)
        wait_for(lambda: not client.inspect_capsule("refuse@1.0.0").attachments, what="release at the job's end")
        with pytest.raises(FailedPrecondition, match="running jobs only"):
            client.attach_capsule(job, "refuse@1.0.0")


SHARED = r"""
wait("attached")
import subprocess
out = subprocess.run(["stat", "-c", "%d:%i", "/capsules/shared/a.txt", "/capsules/shared-twin/a.txt"],
                     capture_output=True, text=True, check=True).stdout.split()
say(one=out[0], twin=out[1])
"""


def test_two_jobs_and_two_names_share_one_stored_copy(daemon: RunningDaemon, tmp_path: Path) -> None:
    with daemon.client() as client:
        tree = make_tree(tmp_path / "same", {"a.txt": "the same bytes"})
        one = create(client, "shared@1.0.0", tree)
        two = create(client, "shared-twin@2.0.0", tree)
        assert one.digest == two.digest
        jobs = [probe_job(client, SHARED) for _ in range(2)]
        for job in jobs:
            client.attach_capsule(job, "shared@1.0.0")
            client.attach_capsule(job, "shared-twin@2.0.0")
            trigger(daemon, job, "attached")
        seen = [merged(job_lines(client, job)) for job in jobs]
    ids = {s["one"] for s in seen} | {s["twin"] for s in seen}
    assert len(ids) == 1, f"expected one device:inode from both jobs and both names, got {seen}"


SWAP_READER = r"""
wait("attached")
d = "/capsules/dataset"
say(ready=True)
states = []
while not os.path.exists("/work/stop"):
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)   # resolve once per round, read relative to it
    try:
        names = sorted(os.listdir(fd))
        texts = set()
        for name in names:
            f = os.open(name, os.O_RDONLY, dir_fd=fd)
            texts.add(os.read(f, 100).decode())
            os.close(f)
    finally:
        os.close(fd)
    if names == ["common.txt", "only-v1.txt"] + [f"part{i}.txt" for i in range(8)] and texts == {"v1"}:
        state = "v1"
    elif names == ["common.txt", "only-v2.txt"] + [f"part{i}.txt" for i in range(8)] and texts == {"v2"}:
        state = "v2"
    else:
        state = "BAD " + repr((names, sorted(texts)))
    if not states or states[-1][0] != state:
        states.append([state, 0])
    states[-1][1] += 1
    time.sleep(0.002)
say(states=states)
"""


def _version_tree(root: Path, tag: str) -> Path:
    files = {f"part{i}.txt": tag for i in range(8)}
    files.update({"common.txt": tag, f"only-{tag}.txt": tag})
    return make_tree(root, files)


def test_swap_is_atomic_for_a_reader_looping_every_few_ms(daemon: RunningDaemon, tmp_path: Path) -> None:
    with daemon.client() as client:
        create(client, "dataset@3.1.0", _version_tree(tmp_path / "v1", "v1"))
        create(client, "dataset@3.2.0", _version_tree(tmp_path / "v2", "v2"))
        job = probe_job(client, SWAP_READER)
        client.attach_capsule(job, "dataset@3.1.0")
        trigger(daemon, job, "attached")
        wait_for(lambda: b"ready" in b"".join(c.data for c in client.stream_logs(job)), what="the reader")
        pid = job_pid(client, job)
        before = visible_mounts(pid)["/capsules/dataset"].root
        time.sleep(0.3)   # many v1 rounds first
        change = client.swap_capsule(job, "dataset@3.2.0")
        assert [a.version for a in change.added] == ["3.2.0"] and [a.version for a in change.removed] == ["3.1.0"]
        after = visible_mounts(pid)
        assert after["/capsules/dataset"].root != before
        assert [e.mount_point for e in after.values()].count("/capsules/dataset") == 1   # the old one is gone
        assert [a.version for a in client.inspect_capsule("dataset@3.2.0").attachments] == ["3.2.0"]
        assert not client.inspect_capsule("dataset@3.1.0").attachments
        time.sleep(0.3)   # many v2 rounds after
        trigger(daemon, job, "stop")
        states = merged(job_lines(client, job))["states"]
    names = [s for s, _ in states]
    assert names == ["v1", "v2"], f"the reader saw {states}"
    assert all(count >= 10 for _, count in states), f"the reader did not loop across the swap: {states}"
