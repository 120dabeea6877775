"""`capsa capsule verify` re-hashes stored trees; a pull never hands out a damaged stored version."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from capsule_helpers import content_dir, make_tree

from tests.fixtures.daemon import RunningDaemon, running_daemon
from tests.fixtures.servers import MotoServer


@pytest.fixture(scope="module")
def vdaemon(moto_server: MotoServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDaemon]:
    patch = pytest.MonkeyPatch()
    for name in [k for k in os.environ if k.startswith("AWS_")]:
        patch.delenv(name)
    for name, value in moto_server.env.items():
        patch.setenv(name, value)
    try:
        daemon_cm = running_daemon(tmp_path_factory.mktemp("capsa-verify") / "home")
        daemon = daemon_cm.__enter__()
    finally:
        patch.undo()
    try:
        yield daemon
    finally:
        daemon_cm.__exit__(None, None, None)


def test_verify_reports_changed_and_removed_trees_and_pull_refuses_them(vdaemon: RunningDaemon, s3_bucket: str,
                                                                       tmp_path: Path) -> None:
    make_tree(tmp_path / "a", {"a.txt": "alpha " * 50, "sub/b.txt": "beta"})
    created = json.loads(vdaemon.cli("capsule", "create", "vdata@1.0.0", str(tmp_path / "a"), "--json",
                                     check=True).stdout)
    ok = json.loads(vdaemon.cli("capsule", "verify", "vdata@1.0.0", "--json", check=True).stdout)
    assert [(r["ref"], r["ok"], r["entries"]) for r in ok] == [("vdata@1.0.0", True, 3)]
    pushed = json.loads(vdaemon.cli("capsule", "push", "vdata@1.0.0", f"s3://{s3_bucket}/c/", "--json",
                                    check=True).stdout)

    tree = content_dir(vdaemon, created["digest"])
    victim = tree / "sub" / "b.txt"
    os.chmod(tree / "sub", 0o755)
    victim.chmod(0o644)
    victim.write_text("changed behind capsa's back")
    res = vdaemon.cli("capsule", "verify", "--all", "--json")
    assert res.returncode == 1
    report = json.loads(res.stdout)[0]
    assert report["ok"] is False and "hashes to" in report["problem"]

    shutil.rmtree(tree)
    res = vdaemon.cli("capsule", "verify", "vdata@1.0.0")
    out = res.stdout.decode()
    assert res.returncode == 1 and "DAMAGED" in out and "is gone" in out
    res = vdaemon.cli("capsule", "pull", pushed["location"])
    assert res.returncode != 0 and "damaged" in res.stderr.decode() and "capsule rm vdata@1.0.0" in res.stderr.decode()

    res = vdaemon.cli("capsule", "verify", "vdata@1.0.0", "--repair", "--json")
    assert res.returncode == 1 and "no recorded source" in json.loads(res.stdout)[0]["repair_error"]
    vdaemon.cli("capsule", "rm", "vdata@1.0.0", check=True)  # the documented way out
    vdaemon.cli("capsule", "pull", pushed["location"], check=True)
    assert json.loads(vdaemon.cli("capsule", "verify", "vdata@1.0.0", "--json", check=True).stdout)[0]["ok"]

    shutil.rmtree(tree)  # damaged again; this time it was pulled, so its source is known
    repaired = json.loads(vdaemon.cli("capsule", "verify", "--all", "--repair", "--json", check=True).stdout)[0]
    assert repaired["ok"] is False and repaired["repaired"] is True and tree.is_dir()
    assert json.loads(vdaemon.cli("capsule", "verify", "vdata@1.0.0", "--json", check=True).stdout)[0]["ok"]
