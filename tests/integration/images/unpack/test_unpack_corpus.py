"""The hostile corpus, applied for real: the outcome each case states, and the host untouched.

Every case runs in "apply" mode from an uncompressed tar file (the copy_file_range
path) and from a gzip stream (the threaded decompression path); single-layer cases
also run in "overlay" mode. Around each run the test snapshots everything next to
the root — the sentinel directory that absolute and relative escapes aim at, and
the directory holding root itself — and requires it byte-for-byte unchanged.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import stat
import threading
from pathlib import Path

import pytest

from capsa.images.unpack import UnpackBudget, apply_layer, verify_layout
from tests.integration.images.unpack.unpack_corpus import (
    CASES,
    Absent,
    Case,
    Ctx,
    Dev,
    Dir,
    Fifo,
    File,
    Link,
    Same,
    Spec,
)

RUNS = [(case, mode, source) for case in CASES for mode, source in
        (("apply", "file"), ("apply", "gzip"), ("overlay", "file")) if mode == "apply" or case.overlay]


def _snapshot(top: Path, skip: set[str]) -> dict[str, tuple[object, ...]]:
    """Everything under ``top`` (never following symlinks), minus the ``skip`` subtrees."""
    seen: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        rel_dir = os.path.relpath(dirpath, top)
        dirnames[:] = [d for d in dirnames if os.path.normpath(os.path.join(rel_dir, d)) not in skip]
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                content: object = os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                content = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            else:
                content = None
            seen[os.path.relpath(path, top)] = (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns,
                                                st.st_ino, st.st_nlink, content)
    return seen


@pytest.fixture
def host(tmp_path: Path) -> Ctx:
    sentinel = tmp_path / "sentinel"
    (sentinel / "sub").mkdir(parents=True)
    (sentinel / "secret").write_text("top secret\n")
    (sentinel / "sub" / "file").write_text("sub file\n")
    os.chmod(sentinel / "secret", 0o640)
    (tmp_path / "neighbour.txt").write_text("next to the root\n")
    (tmp_path / "root").mkdir()
    (tmp_path / "layers").mkdir()
    return Ctx(root=tmp_path / "root", sentinel=sentinel)


def _lstat_inside(root: Path, rel: str) -> os.stat_result | None:
    """lstat ``root/rel`` without following any symlink on the way (None when absent)."""
    path = root
    parts = rel.split("/")
    for part in parts[:-1]:
        path = path / part
        st = os.lstat(path)  # a missing parent fails the test loudly
        assert stat.S_ISDIR(st.st_mode), f"{path} is not a real directory"
    try:
        return os.lstat(path / parts[-1])
    except FileNotFoundError:
        return None


def _check(root: Path, rel: str, spec: Spec) -> None:
    st = _lstat_inside(root, rel)
    if isinstance(spec, Absent):
        assert st is None, f"{rel} should not exist"
        return
    assert st is not None, f"{rel} is missing"
    if isinstance(spec, File):
        assert stat.S_ISREG(st.st_mode), f"{rel} is not a regular file"
        assert (root / rel).read_bytes() == spec.content
        if spec.mode is not None:
            assert stat.S_IMODE(st.st_mode) == spec.mode, f"{rel}: mode {stat.S_IMODE(st.st_mode):o}"
    elif isinstance(spec, Dir):
        assert stat.S_ISDIR(st.st_mode), f"{rel} is not a directory"
        if spec.mode is not None:
            assert stat.S_IMODE(st.st_mode) == spec.mode, f"{rel}: mode {stat.S_IMODE(st.st_mode):o}"
    elif isinstance(spec, Link):
        assert stat.S_ISLNK(st.st_mode) and os.readlink(root / rel) == spec.target
    elif isinstance(spec, Fifo):
        assert stat.S_ISFIFO(st.st_mode)
    elif isinstance(spec, Dev):
        assert (stat.S_ISCHR if spec.kind == "c" else stat.S_ISBLK)(st.st_mode)
        assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == (spec.major, spec.minor)
    elif isinstance(spec, Same):
        other = _lstat_inside(root, spec.other)
        assert other is not None and (st.st_dev, st.st_ino) == (other.st_dev, other.st_ino)


def _apply_all(case: Case, ctx: Ctx, mode: str, source: str, layers_dir: Path) -> None:
    budget = UnpackBudget()  # one image: limits are per image
    for i, tar in enumerate(case.build(ctx)):
        path = layers_dir / f"{i}.tar"
        path.write_bytes(gzip.compress(tar, compresslevel=1) if source == "gzip" else tar)
        apply_layer(path, ctx.root, limits=case.limits, budget=budget, whiteout_mode=mode)  # type: ignore[arg-type]


@pytest.mark.parametrize(("case", "mode", "source"), RUNS, ids=[f"{c.name}-{m}-{s}" for c, m, s in RUNS])
def test_hostile_corpus_case(case: Case, mode: str, source: str, host: Ctx) -> None:
    top = host.root.parent
    before = _snapshot(top, skip={"root", "layers"})
    threads_before = threading.active_count()
    if case.raises is not None:
        with pytest.raises(case.raises) as info:
            _apply_all(case, host, mode, source, top / "layers")
        assert case.names in str(info.value), f"message {str(info.value)!r} does not name {case.names!r}"
    else:
        _apply_all(case, host, mode, source, top / "layers")
        verify_layout(host.root, allow_devices=case.limits.allow_devices)
    for rel, spec in case.layout(host).items():
        _check(host.root, rel, spec)
    assert _snapshot(top, skip={"root", "layers"}) == before, "something outside the root changed"
    assert threading.active_count() == threads_before, "a decompression thread outlived apply_layer"


def test_corpus_is_big_enough() -> None:
    names = [case.name for case in CASES]
    assert len(names) == len(set(names))
    assert len(CASES) >= 50
    assert sum(case.raises is None for case in CASES) >= 20  # valid layouts, not only refusals
