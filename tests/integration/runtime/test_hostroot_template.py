"""The zygote's prepared host root (capsa.runtime.hostroot) against the root stage two assembles itself.

Each root is built by the real ``stage2.build_root`` in a forked child inside a throwaway mount
namespace; the child reports the mount table and the tree it sees under the root. A job whose
root is a clone of the template must see exactly what a job with a root of its own sees.
"""

from __future__ import annotations

import json
import os
import select
import time
import traceback
from pathlib import Path

import pytest

from capsa import linux
from capsa.runtime import hostroot, stage2
from capsa.runtime.spec import BindSpec, JobSpec
from capsa.runtime.wire import write_frame


def _spec(job_dir: Path, **fields: object) -> JobSpec:
    for sub in ("root", "work"):
        (job_dir / sub).mkdir(parents=True, exist_ok=True)
    return JobSpec(job_id="t" * 8, argv=("/bin/true",), env={}, hostname="t", job_dir=str(job_dir), **fields)


def _view(root: str) -> dict[str, object]:
    """Mounts at or under ``root`` (relative point, per-mount options, propagation, type, super options) and
    every path of the root's own tree with its type and mode, not descending into other mounts."""
    mounts = []
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            left, _, right = line.rstrip("\n").partition(" - ")
            fields = left.split(" ")
            point = fields[4]
            if point == root or point.startswith(root + "/"):
                fstype, _source, options = right.split(" ")[:3]
                mounts.append([point[len(root):] or "/", fields[5], fields[6:], fstype,
                               ",".join(sorted(o for o in options.split(",") if not o.startswith("inode")))])
    tree = []
    root_dev = os.lstat(root).st_dev
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            st = os.lstat(os.path.join(dirpath, name))
            tree.append([os.path.join(dirpath, name)[len(root):], oct(st.st_mode), st.st_dev == root_dev])
        dirnames[:] = [d for d in dirnames if os.lstat(os.path.join(dirpath, d)).st_dev == root_dev]
    return {"mounts": sorted(mounts), "tree": sorted(tree)}


def _build(spec: JobSpec, use_template: bool) -> dict[str, object]:
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        out: dict[str, object] = {}
        try:
            os.close(read_end)
            template = hostroot.HostRootTemplate()
            fd = template.current() if use_template else -1
            out["template"] = fd
            linux.unshare(linux.CLONE_NEWNS)
            stage2.build_root(spec, (), fd)
            out.update(_view(spec.root_dir))
        except BaseException:
            out["crash"] = traceback.format_exc()
        finally:
            os.write(write_end, json.dumps(out).encode())
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as fh:
        data = fh.read()
    os.waitpid(child, 0)
    result = json.loads(data)
    assert "crash" not in result, result["crash"]
    return result


def test_a_cloned_host_root_is_the_root_stage_two_would_assemble(tmp_path: Path) -> None:
    capsule = tmp_path / "capsule"
    capsule.mkdir()
    (capsule / "f").write_text("x")
    spec = _spec(tmp_path / "job", binds=(BindSpec(str(capsule), "/capsules/c", readonly=True),))
    assert hostroot.template_applies(spec)
    own = _build(spec, use_template=False)
    cloned = _build(spec, use_template=True)
    assert cloned["template"] >= 0
    assert own["template"] == -1
    assert cloned["mounts"] == own["mounts"]
    assert cloned["tree"] == own["tree"]
    usr = [m for m in own["mounts"] if m[0] == "/usr"]
    assert usr and usr[0][1].split(",")[:3] == ["ro", "nosuid", "nodev"]
    assert [m for m in own["mounts"] if m[0] == "/"][0][1].startswith("ro,")


def test_the_template_is_used_only_where_the_job_cannot_write_its_root(tmp_path: Path) -> None:
    assert hostroot.template_applies(_spec(tmp_path / "a"))
    assert hostroot.template_applies(_spec(tmp_path / "b", binds=(BindSpec("/x", "/work/data"),)))
    assert not hostroot.template_applies(_spec(tmp_path / "c", binds=(BindSpec("/x", "/data"),)))
    assert not hostroot.template_applies(_spec(tmp_path / "d", capabilities=("cap_sys_admin",)))
    assert hostroot.template_applies(_spec(tmp_path / "e", capabilities=("NET_RAW",)))


@pytest.fixture
def etc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory whose ``hosts`` the template mirrors, beside the host's own files."""
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "hosts").write_text("one\n")
    real_sources = hostroot._sources
    monkeypatch.setattr(hostroot, "_sources", lambda: [*real_sources(), str(etc / "hosts")])
    return etc


def test_the_template_is_rebuilt_when_a_mirrored_file_is_replaced(etc: Path) -> None:
    published: list[int] = []   # what the zygote shares with its standbys
    template = hostroot.HostRootTemplate(on_build=published.append)
    first = template.current()
    assert first >= 0 and template.current() == first and template.builds == 1
    (etc / "hosts.new").write_text("new\n")
    os.replace(etc / "hosts.new", etc / "hosts")   # what editors and resolvconf do: a new inode
    assert template.current() >= 0
    assert template.builds == 2
    assert published == [1, 2]


def test_the_mirrored_paths_are_lstat_ed_again_only_after_their_directory_changed(
        etc: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_identity = hostroot._identity
    looked: list[str] = []
    monkeypatch.setattr(hostroot, "_identity", lambda path: looked.append(path) or real_identity(path))
    template = hostroot.HostRootTemplate()
    first = template.current()
    assert first >= 0 and template._watch >= 0
    looked.clear()
    for _ in range(3):
        assert template.current() == first
    assert looked == []   # nothing changed: one poll, no lstat
    (etc / "other").write_text("not mirrored\n")   # an event in a watched directory: compare, keep
    assert template.current() == first and template.builds == 1 and str(etc / "hosts") in looked
    looked.clear()
    assert template.current() == first and looked == []   # the event was consumed
    (etc / "hosts").unlink()
    assert template.current() >= 0 and template.builds == 2


def test_a_mount_elsewhere_keeps_the_template_and_one_over_a_mirrored_path_rebuilds_it(
        etc: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    template = hostroot.HostRootTemplate()
    first = template.current()
    assert first >= 0
    mounted: list[Path] = []
    try:
        linux.mount("tmpfs", str(elsewhere), "tmpfs", 0, "size=64k")
        mounted.append(elsewhere)
        assert template.current() == first and template.builds == 1
        linux.mount("tmpfs", str(etc), "tmpfs", 0, "size=64k")   # /etc/hosts is no longer what was mirrored
        mounted.append(etc)
        assert template.current() >= 0 and template.builds == 2
    finally:
        for path in reversed(mounted):
            linux.umount2(str(path), linux.MNT_DETACH)


def _idle_poll(template: hostroot.HostRootTemplate, timeout_ms: int = 1000) -> dict[int, int]:
    """What the zygote's idle loop does: poll the template's descriptors, hand the events over."""
    poller = select.poll()
    for fd, mask in template.watched().items():
        poller.register(fd, mask)
    events = dict(poller.poll(timeout_ms))
    template.refresh(events)
    return events


def test_changes_seen_while_idle_are_dealt_with_then_not_at_the_next_start(
        etc: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    real_relevant = hostroot._relevant_mounts
    reads: list[int] = []
    monkeypatch.setattr(hostroot, "_relevant_mounts", lambda fd: reads.append(fd) or real_relevant(fd))
    template = hostroot.HostRootTemplate()
    assert template.watched() == {}   # nothing built, nothing to watch
    first = template.current()
    assert first >= 0 and len(template.watched()) == 2
    mounted: list[Path] = []
    try:
        linux.mount("tmpfs", str(elsewhere), "tmpfs", 0, "size=64k")   # what runc does per container
        mounted.append(elsewhere)
        reads.clear()
        assert _idle_poll(template) and reads and template.builds == 1
        reads.clear()
        assert template.current() == first and reads == []   # the start pays no mount-table read
        # Nothing of ours changed: an idle zygote sleeps in poll (mountinfo is always readable; polling it for
        # POLLIN would return at once, every time). Other tests' mounts may still wake it now and then.
        wakeups, until = 0, time.monotonic() + 0.3
        while time.monotonic() < until:
            wakeups += bool(_idle_poll(template, 50))
        assert wakeups < 20, f"{wakeups} wake-ups in 0.3 s of idling"
        linux.mount("tmpfs", str(etc), "tmpfs", 0, "size=64k")   # over a mirrored path: rebuilt while idle
        mounted.append(etc)
        _idle_poll(template)
        assert template.builds == 2
        rebuilt = template.current()
        assert rebuilt >= 0 and template.builds == 2
    finally:
        for path in reversed(mounted):
            linux.umount2(str(path), linux.MNT_DETACH)


def test_a_job_with_a_root_of_its_own_reports_a_failed_clone_like_any_step(tmp_path: Path) -> None:
    spec = _spec(tmp_path / "job")
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            linux.unshare(linux.CLONE_NEWNS)
            stage2.build_root(spec, (), 1_000_000)   # no such descriptor
        except stage2.StageError as exc:
            write_frame(write_end, {"step": exc.step, "errno": exc.errno})
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as fh:
        data = fh.read()
    os.waitpid(child, 0)
    assert b'"step": "clone read-only host root"' in data or b'"step":"clone read-only host root"' in data
    assert b'"errno": 9' in data or b'"errno":9' in data
