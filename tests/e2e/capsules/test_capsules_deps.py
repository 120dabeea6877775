"""Dependency resolution at start and live, conflicts that name who asked for what, and gc racing attach."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from capsule_helpers import content_dir, create, job_pid, make_tree, probe_job, stop, visible_mounts

from capsa.api.client import CapsaClient
from capsa.api.gen.capsa.v1.capsules_pb2 import GcCapsulesResponse
from capsa.errors import CapsaError, Conflict, InvalidArgument, NotFound
from tests.fixtures.daemon import RunningDaemon
from tests.fixtures.images import LayoutImages


@pytest.fixture(scope="module")
def family(daemon: RunningDaemon, tmp_path_factory: pytest.TempPathFactory) -> RunningDaemon:
    """dataset 1.2.0, 1.3.0, 2.0.0 and model 3.0.0 requiring 'dataset>=1.2,<2'."""
    root = tmp_path_factory.mktemp("family")
    with daemon.client() as client:
        for version in ("1.2.0", "1.3.0", "2.0.0"):
            create(client, f"dataset@{version}", make_tree(root / version, {"d.txt": f"dataset {version}"}))
        create(client, "model@3.0.0", make_tree(root / "model", {"m.txt": "model 3"}), deps=("dataset>=1.2,<2",))
        for ref in ("dataset@1.2.0", "dataset@1.3.0", "dataset@2.0.0", "model@3.0.0"):
            client.pin_capsule(ref)   # the gc tests below must not take them
    return daemon


def test_run_with_a_capsule_mounts_its_dependencies(family: RunningDaemon) -> None:
    result = family.cli("run", "--capsule", "model@3.0.0", "--", "sh", "-c",
                        "cat /capsules/model/m.txt; echo; cat /capsules/dataset/d.txt; echo; "
                        "grep -c ' /capsules/' /proc/self/mountinfo")
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().split("\n") == ["model 3", "dataset 1.3.0", "2", ""]   # highest that fits
    with family.client() as client:
        assert not client.inspect_capsule("model@3.0.0").attachments   # released when it ended


def test_run_with_a_custom_path_and_a_specifier(family: RunningDaemon) -> None:
    result = family.cli("run", "--capsule", "dataset@>=1.2,<1.3:/capsules/data/old", "--", "cat",
                        "/capsules/data/old/d.txt")
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode() == "dataset 1.2.0"


def test_a_start_time_conflict_fails_the_request_naming_capsules_and_requirements(family: RunningDaemon) -> None:
    result = family.cli("run", "--capsule", "model@3.0.0", "--capsule", "dataset@2.0.0", "--", "true")
    message = result.stderr.decode()
    assert result.returncode == Conflict.exit_code, message
    assert "dataset is required as" in message
    assert "'dataset<2,>=1.2' by model@3.0.0" in message and "'dataset==2.0.0' by the request" in message
    assert "available: 1.2.0, 1.3.0, 2.0.0" in message
    with family.client() as client:
        assert not [j for j in client.list_jobs(all=True) if list(j.command) == ["true"]], "no job was made"


def test_start_time_paths_outside_capsules_are_refused_in_image_or_built_in_places(family: RunningDaemon) -> None:
    result = family.cli("run", "--capsule", "dataset@1.2.0:/etc/dataset", "--", "true")
    assert result.returncode == InvalidArgument.exit_code
    assert "capsule attach --at /etc/dataset" in result.stderr.decode()


def test_live_attach_resolves_with_what_the_job_holds(family: RunningDaemon) -> None:
    with family.client() as client:
        job = probe_job(client, "wait('never')")
        try:
            client.attach_capsule(job, "dataset@2.0.0")
            with pytest.raises(Conflict) as conflict:
                client.attach_capsule(job, "model@3.0.0")
            assert "'dataset<2,>=1.2' by model@3.0.0" in str(conflict.value)
            assert "already has dataset@2.0.0 attached" in str(conflict.value)
            client.swap_capsule(job, "dataset@1.3.0")
            change = client.attach_capsule(job, "model@3.0.0")
            assert [a.name for a in change.added] == ["model"] and [a.name for a in change.kept] == ["dataset"]
            # What the job holds must keep satisfying model: no swap out of range, no detach under it.
            with pytest.raises(Conflict, match="requires 'dataset<2,>=1.2'"):
                client.swap_capsule(job, "dataset@2.0.0")
            with pytest.raises(Conflict, match="detach model first"):
                client.detach_capsule(job, "dataset")
            client.detach_capsule(job, "model")
            client.detach_capsule(job, "dataset")
            assert set(visible_mounts(job_pid(client, job))) & {"/capsules/model", "/capsules/dataset"} == set()
        finally:
            stop(client, job)


def _race(client: CapsaClient, job: str, ref: str) -> tuple[object, GcCapsulesResponse]:
    """Attach ``ref`` and run ``gc --unused`` at the same instant; (attach result or error, gc report)."""
    results: dict[str, object] = {}
    start = threading.Barrier(2)

    def attach() -> None:
        start.wait()
        try:
            results["attach"] = client.attach_capsule(job, ref)
        except CapsaError as exc:
            results["attach"] = exc

    def collect() -> None:
        start.wait()
        results["gc"] = client.gc_capsules(unused=True)

    threads = [threading.Thread(target=attach), threading.Thread(target=collect)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    report = results["gc"]
    assert isinstance(report, GcCapsulesResponse)
    return results["attach"], report


def test_gc_racing_attach_never_removes_an_attached_version(family: RunningDaemon, tmp_path: Path) -> None:
    outcomes = {"attached": 0, "collected first": 0}
    target = "/capsules/race"
    with family.client() as client:
        job = probe_job(client, "wait('never')")
        pid = job_pid(client, job)
        try:
            for round_ in range(8):
                made = create(client, f"race@{round_}.0", make_tree(tmp_path / str(round_), {"r.txt": str(round_)}))
                attached, report = _race(client, job, f"race@{made.version}")
                if isinstance(attached, CapsaError):
                    assert isinstance(attached, NotFound), attached
                    assert f"race@{made.version}" in report.removed_versions
                    assert target not in visible_mounts(pid)
                    outcomes["collected first"] += 1
                    continue
                outcomes["attached"] += 1
                assert f"race@{made.version}" not in report.removed_versions
                assert content_dir(family, made.digest).is_dir()
                assert visible_mounts(pid)[target].root.endswith(made.digest.partition(":")[2])
                assert [a.job_id for a in client.inspect_capsule(f"race@{made.version}").attachments] == [job]
                client.detach_capsule(job, "race")
        finally:
            stop(client, job)
    assert sum(outcomes.values()) == 8, outcomes


def test_gc_unused_keeps_pinned_and_needed_versions_and_reports_bytes(daemon: RunningDaemon, tmp_path: Path) -> None:
    with daemon.client() as client:
        create(client, "gcbase@1.0.0", make_tree(tmp_path / "b", {"b": "b" * 1000}))
        create(client, "gctop@1.0.0", make_tree(tmp_path / "t", {"t": "t" * 10}), deps=("gcbase>=1",))
        create(client, "gcold@1.0.0", make_tree(tmp_path / "o", {"o": "o" * 500}))
        create(client, "gcpinned@1.0.0", make_tree(tmp_path / "p", {"p": "p" * 7}))
        client.pin_capsule("gcpinned@1.0.0")
        client.pin_capsule("gctop@1.0.0")
        dry = client.gc_capsules(unused=True, dry_run=True)
        assert "gcold@1.0.0" in dry.removed_versions and dry.dry_run
        assert not {"gcbase@1.0.0", "gctop@1.0.0", "gcpinned@1.0.0"} & set(dry.removed_versions)
        assert client.inspect_capsule("gcold@1.0.0").digest   # a dry run removes nothing
        done = client.gc_capsules(unused=True)
        assert "gcold@1.0.0" in done.removed_versions and done.bytes_freed >= 500
        with pytest.raises(NotFound):
            client.inspect_capsule("gcold@1.0.0")
        client.inspect_capsule("gcbase@1.0.0")
        with pytest.raises(Conflict, match="gctop@1.0.0 requires 'gcbase>=1'"):
            client.remove_capsule("gcbase@1.0.0")
        for ref in ("gctop@1.0.0", "gcpinned@1.0.0"):
            client.unpin_capsule(ref)
        client.remove_capsule("gctop@1.0.0")
        assert client.remove_capsule("gcbase@1.0.0") == "gcbase@1.0.0"


def test_a_job_with_an_image_gets_its_capsules_under_capsules(family: RunningDaemon, test_images: LayoutImages) -> None:
    image = test_images.ref("busybox")
    result = family.cli("run", "--image", image, "--capsule", "model@3.0.0", "--", "cat",
                        "/capsules/model/m.txt", "/capsules/dataset/d.txt")
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode() == "model 3dataset 1.3.0"
    refused = family.cli("run", "--image", image, "--capsule", "dataset@1.2.0:/data", "--", "true")
    assert refused.returncode == InvalidArgument.exit_code
    assert "in a job with an image" in refused.stderr.decode()
