"""Role checks with real effects: maintainers manage the store, developers mount into jobs, readers look."""

from __future__ import annotations

from pathlib import Path

import pytest
from capsule_helpers import create, make_tree, probe_job, stop

from capsa.errors import PermissionDenied
from tests.fixtures.daemon import RunningDaemon


def test_each_role_does_exactly_its_part(daemon: RunningDaemon, tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "r", {"r.txt": "roles"})
    with daemon.client("reader") as reader, daemon.client("developer") as developer, \
            daemon.client("maintainer") as maintainer:
        for refused in (reader, developer):
            with pytest.raises(PermissionDenied):
                create(refused, "roles@1.0.0", tree)
        create(maintainer, "roles@1.0.0", tree)
        create(maintainer, "roles@2.0.0", make_tree(tmp_path / "r2", {"r.txt": "roles 2"}))
        assert [c.version for c in reader.list_capsules("roles")] == ["1.0.0", "2.0.0"]
        assert reader.inspect_capsule("roles@1.0.0").digest

        job = probe_job(developer, "wait('never')")
        try:
            with pytest.raises(PermissionDenied):
                reader.attach_capsule(job, "roles@1.0.0")
            developer.attach_capsule(job, "roles@1.0.0")
            with pytest.raises(PermissionDenied):
                reader.swap_capsule(job, "roles@2.0.0")
            developer.swap_capsule(job, "roles@2.0.0")
            with pytest.raises(PermissionDenied):
                reader.detach_capsule(job, "roles")
            developer.detach_capsule(job, "roles")
        finally:
            stop(developer, job)

        for call in (lambda c: c.remove_capsule("roles@1.0.0"), lambda c: c.pin_capsule("roles@1.0.0"),
                     lambda c: c.gc_capsules(dry_run=True), lambda c: c.pull_capsule("s3://nobucket/x/"),
                     lambda c: c.push_capsule("roles@1.0.0", "s3://nobucket/x/")):
            for refused in (reader, developer):
                with pytest.raises(PermissionDenied):
                    call(refused)
        maintainer.pin_capsule("roles@1.0.0")
        maintainer.unpin_capsule("roles@1.0.0")
        assert maintainer.remove_capsule("roles@1.0.0") == "roles@1.0.0"
        assert maintainer.gc_capsules(dry_run=True).dry_run
