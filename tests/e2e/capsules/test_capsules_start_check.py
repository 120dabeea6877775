"""A job never starts on a capsule whose stored tree was deleted or changed behind capsa's back."""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path

from capsule_helpers import content_dir, make_tree

from tests.fixtures.daemon import RunningDaemon


def _job_count(daemon: RunningDaemon) -> int:
    return len(json.loads(daemon.cli("ps", "-a", "--json", check=True).stdout))


def test_run_refuses_a_capsule_whose_tree_was_removed_or_changed(daemon: RunningDaemon, tmp_path: Path) -> None:
    ref = f"startcheck-{secrets.token_hex(3)}@1.0.0"
    make_tree(tmp_path / "t", {"a.txt": "alpha", "sub/b.txt": "beta"})
    created = json.loads(daemon.cli("capsule", "create", ref, str(tmp_path / "t"), "--json", check=True).stdout)
    name = ref.partition("@")[0]
    cat = ("run", "--capsule", ref, "--", "/bin/cat", f"/capsules/{name}/sub/b.txt")
    assert daemon.cli(*cat, check=True).stdout == b"beta"

    tree = content_dir(daemon, created["digest"])
    os.chmod(tree / "sub", 0o755)
    (tree / "sub" / "b.txt").chmod(0o644)
    (tree / "sub" / "b.txt").write_text("changed behind capsa's back")
    before = _job_count(daemon)
    res = daemon.cli(*cat)
    err = res.stderr.decode()
    assert res.returncode != 0 and f"{ref}: its stored tree was changed behind capsa's back" in err, err
    assert b"changed behind" not in res.stdout, "the job ran on the changed tree"
    assert _job_count(daemon) == before, "a job was recorded for a refused start"

    shutil.rmtree(tree)
    res = daemon.cli(*cat)
    err = res.stderr.decode()
    assert res.returncode != 0 and "is gone" in err and f"capsa capsule rm {ref}" in err, err
    assert _job_count(daemon) == before

    daemon.cli("capsule", "rm", ref, check=True)   # the way out the message names
    daemon.cli("capsule", "create", ref, str(tmp_path / "t"), check=True)
    assert daemon.cli(*cat, check=True).stdout == b"beta"
