"""A daemon killed with -9 and started again: attachments stay recorded and working, a lost mount comes
back, the attachments of a job that ended meanwhile are released, and live changes still work."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

from capsule_helpers import create, job_pid, make_tree, probe_job, stop, visible_mounts, wait_for

from tests.fixtures.daemon import RunningDaemon


def _in_job(pid: int, *argv: str) -> str:
    """Run a command in the job's mount namespace and root (from the host, as root)."""
    done = subprocess.run(["nsenter", "-t", str(pid), "-m", "-r", *argv], capture_output=True, text=True, timeout=10)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_attachments_survive_a_daemon_kill9(fresh_daemon: RunningDaemon, tmp_path: Path) -> None:
    with fresh_daemon.client() as client:
        create(client, "keep@1.0.0", make_tree(tmp_path / "k1", {"f": "keep 1"}))
        keep2 = create(client, "keep@2.0.0", make_tree(tmp_path / "k2", {"f": "keep 2"}))
        create(client, "lost@1.0.0", make_tree(tmp_path / "l", {"f": "lost 1"}))
        runner = probe_job(client, "wait('never')")
        ender = probe_job(client, "wait('never')", capsules=["keep@1.0.0"])
        client.attach_capsule(runner, "keep@1.0.0")
        client.attach_capsule(runner, "lost@1.0.0")
        pid, ender_pid = job_pid(client, runner), job_pid(client, ender)

    fresh_daemon.kill9()
    # While no daemon runs: the ender's process dies, and a mount disappears from the runner.
    os.kill(ender_pid, signal.SIGKILL)
    _in_job(pid, "umount", "/capsules/lost")
    assert "/capsules/lost" not in visible_mounts(pid)
    # ... and a swap to keep@2.0.0 was interrupted after its record, before the mount changed.
    with contextlib.closing(sqlite3.connect(fresh_daemon.home / "capsa.db")) as db, db:
        db.execute("INSERT INTO capsule_attachments (job_id, target, name, version_key, digest, attached_at)"
                   " VALUES (?, '/capsules/keep', 'keep', '2', ?, ?)", (runner, keep2.digest, time.time()))
    fresh_daemon.start()

    with fresh_daemon.client() as client:
        try:
            assert client.get_job(runner).state == "RUNNING" and job_pid(client, runner) == pid
            assert _in_job(pid, "cat", "/capsules/keep/f") == "keep 1"
            assert not client.inspect_capsule("keep@2.0.0").attachments   # what is mounted wins
            assert _in_job(pid, "cat", "/capsules/lost/f") == "lost 1"   # re-established
            assert [a.job_id for a in client.inspect_capsule("lost@1.0.0").attachments] == [runner]
            wait_for(lambda: [a.job_id for a in client.inspect_capsule("keep@1.0.0").attachments] == [runner],
                     what="the ended job's attachment to be released")
            # The restarted daemon drives the job's mounts as before.
            client.swap_capsule(runner, "keep@2.0.0")
            assert _in_job(pid, "cat", "/capsules/keep/f") == "keep 2"
            client.detach_capsule(runner, "lost")
            assert "/capsules/lost" not in visible_mounts(pid)
        finally:
            stop(client, runner)
        wait_for(lambda: not any(c.attachments for c in client.list_capsules()), what="release at the end")
