"""The canonical tar and its digest depend on content only."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path

from capsa.capsules.canonical import tree_digest, write_canonical_tar
from capsa.capsules.importer import import_source

FILES = {"data/b.bin": b"\x00\x01" * 1000, "data/a.txt": b"alpha", "run.sh": b"#!/bin/sh\n", "z": b""}


def build_dir(root: Path, *, mtime: int, owner: int, reverse: bool = False) -> Path:
    root.mkdir()
    items = sorted(FILES.items(), reverse=reverse)
    for rel, data in items:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (root / "run.sh").chmod(0o700)
    (root / "data" / "link").symlink_to("a.txt")
    (root / "empty").mkdir()
    for path in [root, *root.rglob("*")]:
        if os.geteuid() == 0:   # only root can give files away; other users check mtimes and order only
            os.lchown(path, owner, owner)
        os.utime(path, (mtime, mtime), follow_symlinks=False)
    return root


def build_tar(path: Path, *, reverse: bool, uid: int, mtime: int) -> Path:
    members: list[tuple[tarfile.TarInfo, bytes | None]] = []
    for rel, data in FILES.items():
        info = tarfile.TarInfo("./" + rel)
        info.size, info.mode, info.uid, info.uname, info.mtime = len(data), 0o640, uid, "someone", mtime
        if rel == "run.sh":
            info.mode = 0o750
        members.append((info, data))
    link = tarfile.TarInfo("data/link")
    link.type, link.linkname, link.mtime = tarfile.SYMTYPE, "a.txt", mtime
    empty = tarfile.TarInfo("empty/")
    empty.type, empty.mode, empty.mtime = tarfile.DIRTYPE, 0o700, mtime
    members += [(link, None), (empty, None)]
    members.sort(key=lambda m: m[0].name, reverse=reverse)
    with tarfile.open(path, "w:gz" if reverse else "w", format=tarfile.GNU_FORMAT) as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def staged_digest(source: Path, staging: Path) -> str:
    import_source(source, staging)
    return tree_digest(staging).digest


def test_digest_ignores_mtimes_owners_and_creation_order(tmp_path: Path) -> None:
    one = build_dir(tmp_path / "one", mtime=1_000_000, owner=0)
    two = build_dir(tmp_path / "two", mtime=2_000_000_000, owner=1234, reverse=True)
    assert tree_digest(one).digest == tree_digest(two).digest


def test_directory_and_tars_in_any_order_give_one_digest(tmp_path: Path) -> None:
    source = build_dir(tmp_path / "src", mtime=5, owner=0)
    forward = build_tar(tmp_path / "f.tar", reverse=False, uid=0, mtime=7)
    backward = build_tar(tmp_path / "b.tar.gz", reverse=True, uid=99, mtime=99999)
    digests = {
        staged_digest(source, tmp_path / "s1"),
        staged_digest(forward, tmp_path / "s2"),
        staged_digest(backward, tmp_path / "s3"),
        tree_digest(source).digest,
    }
    assert len(digests) == 1


def test_content_and_the_exec_bit_change_the_digest(tmp_path: Path) -> None:
    base = build_dir(tmp_path / "base", mtime=0, owner=0)
    before = tree_digest(base).digest
    (base / "run.sh").chmod(0o600)
    assert tree_digest(base).digest != before
    (base / "run.sh").chmod(0o700)
    assert tree_digest(base).digest == before
    (base / "z").write_bytes(b"!")
    assert tree_digest(base).digest != before


def test_canonical_tar_is_normalised_and_hashes_to_the_digest(tmp_path: Path) -> None:
    source = build_dir(tmp_path / "src", mtime=12345, owner=77)
    out = io.BytesIO()
    result = write_canonical_tar(source, out)
    raw = out.getvalue()
    assert result.digest == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert len(raw) % 10240 == 0
    with tarfile.open(fileobj=io.BytesIO(raw)) as archive:
        members = archive.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names, key=lambda n: n.encode())
    assert names == ["data", "data/a.txt", "data/b.bin", "data/link", "empty", "run.sh", "z"]
    for member in members:
        assert (member.uid, member.gid, member.uname, member.gname, member.mtime) == (0, 0, "", "", 0)
    modes = {m.name: m.mode for m in members}
    assert modes == {
        "data": 0o755,
        "data/a.txt": 0o644,
        "data/b.bin": 0o644,
        "data/link": 0o777,
        "empty": 0o755,
        "run.sh": 0o755,
        "z": 0o644,
    }
    assert result.size == sum(len(d) for d in FILES.values()) and result.entries == 7


def test_long_and_non_ascii_names_use_pax_and_stay_stable(tmp_path: Path) -> None:
    first = tmp_path / "a"
    second = tmp_path / "b"
    for root in (first, second):
        deep = root / ("d" * 120) / "ünïcødé"
        deep.mkdir(parents=True)
        (deep / "f").write_text("x")
    assert tree_digest(first).digest == tree_digest(second).digest
    out = io.BytesIO()
    write_canonical_tar(first, out)
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as archive:
        assert archive.getnames()[-1] == "d" * 120 + "/ünïcødé/f"
