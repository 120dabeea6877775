"""A runtime build survives `kill -9` of the daemon in the middle of a build job."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import time
from pathlib import Path

from tests.fixtures.daemon import CAPSA, RunningDaemon
from tests.fixtures.images import LayoutImages


def test_build_resumes_after_kill_9_mid_step(fresh_daemon: RunningDaemon, test_images: LayoutImages,
                                             tmp_path: Path) -> None:
    spec = tmp_path / "slow.yaml"
    spec.write_text(f"""name: slow
version: "1"
base: {json.dumps({"image": test_images.ref("busybox")})}
steps:
  - run: "echo first > /a"
  - run: "echo started-second; sleep 3; echo second > /b"
""")
    builds = fresh_daemon.home / "runtimes" / "builds"
    cmd = [*CAPSA, "--config", str(fresh_daemon.home / "client-admin.yaml"), "runtime", "build", str(spec)]
    first = subprocess.Popen(cmd, env=fresh_daemon.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        logs = list(builds.glob("*.log"))
        if logs and "started-second" in logs[0].read_text():
            break
        time.sleep(0.05)
    else:
        first.kill()
        raise AssertionError("the second step never started")
    fresh_daemon.kill9()
    first.communicate(timeout=30)   # the CLI loses its daemon
    fresh_daemon.start()

    again = fresh_daemon.cli("runtime", "build", str(spec), timeout=120)
    out = again.stdout.decode()
    assert again.returncode == 0, again.stderr.decode()
    assert len(list(builds.glob("*.log"))) == 1          # the same durable run, resumed and re-joined
    assert "step 1/2: run: echo first > /a (cached)" in out
    r = fresh_daemon.cli("run", "--runtime", "slow@1", "--", "/bin/cat", "/a", "/b")
    assert r.stdout == b"first\nsecond\n"
    jobs = json.loads(fresh_daemon.cli("ps", "-a", "--json", check=True).stdout)
    assert not [j for j in jobs if j["name"].startswith("runtime-build/")]   # build jobs are gone
    with contextlib.closing(sqlite3.connect(fresh_daemon.home / "capsa.db")) as db:
        keys = [row[0] for row in db.execute("SELECT key FROM snapshots")]
    assert keys and not [k for k in keys if k.startswith("extract-runtime-")]   # no scratch snapshot left
