"""The capsule store on a real filesystem and a real SQLite database."""

from __future__ import annotations

import io
import os
import sqlite3
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from capsa.capsules import CapsuleStore
from capsa.errors import (
    AlreadyExists,
    ChecksumMismatch,
    Conflict,
    InvalidArgument,
    NotFound,
    UnsafeArchive,
)
from capsa.state.db import Database


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(tmp_path / "state.db")
    yield database
    database.close()


@pytest.fixture
def store(tmp_path: Path, db: Database) -> CapsuleStore:
    return CapsuleStore(tmp_path / "store", db)


def make_source(path: Path, **files: str) -> Path:
    path.mkdir(parents=True)
    for name, text in files.items():
        (path / name).write_text(text)
    return path


def test_create_materialises_a_read_only_tree_named_by_its_digest(
    store: CapsuleStore, tmp_path: Path
) -> None:
    source = make_source(tmp_path / "src", readme="hello", data="1,2,3\n")
    version = store.create("dataset", "1.2.0", source, labels={"team": "ml"})
    assert version.ref == "dataset@1.2.0" and version.size == 11 and version.entries == 2
    assert version.path == tmp_path / "store" / "content" / "sha256" / version.digest.removeprefix("sha256:")
    assert (version.path / "readme").read_text() == "hello"
    assert stat.S_IMODE(os.stat(version.path).st_mode) == 0o555
    assert stat.S_IMODE(os.stat(version.path / "data").st_mode) == 0o444
    assert store.get("dataset", "1.2.0") == version and version.labels == {"team": "ml"}
    assert list((tmp_path / "store" / "ingest").iterdir()) == []


def test_identical_content_under_two_names_shares_one_tree(store: CapsuleStore, tmp_path: Path) -> None:
    first = store.create("weights", "1.0", make_source(tmp_path / "a", w="0101"))
    second = store.create("weights-copy", "7.0", make_source(tmp_path / "b", w="0101"))
    assert first.digest == second.digest and first.path == second.path
    one, two = os.stat(first.path / "w"), os.stat(second.path / "w")
    assert (one.st_dev, one.st_ino) == (two.st_dev, two.st_ino)
    assert len(list((tmp_path / "store" / "content" / "sha256").iterdir())) == 1


def test_a_version_cannot_be_recreated_with_different_content(store: CapsuleStore, tmp_path: Path) -> None:
    original = store.create("dataset", "1.2.0", make_source(tmp_path / "a", f="v1"))
    with pytest.raises(AlreadyExists, match=r"dataset@1\.2\.0 already exists with different content"):
        store.create("dataset", "1.2.0", make_source(tmp_path / "b", f="v2"))
    with pytest.raises(AlreadyExists, match="immutable"):
        store.create("dataset", "1.2", make_source(tmp_path / "c", f="v3"))  # PEP 440: same version
    assert store.list() == [original] and (original.path / "f").read_text() == "v1"
    assert len(list((tmp_path / "store" / "content" / "sha256").iterdir())) == 1
    assert list((tmp_path / "store" / "ingest").iterdir()) == []


def test_recreating_with_identical_content_is_a_no_op(store: CapsuleStore, tmp_path: Path) -> None:
    original = store.create("dataset", "1.2.0", make_source(tmp_path / "a", f="v1"))
    again = store.create("dataset", "1.2", make_source(tmp_path / "b", f="v1"))
    assert again == original and again.created_at == original.created_at and again.version == "1.2.0"
    assert len(store.list()) == 1


def test_the_same_version_with_other_dependencies_is_refused(store: CapsuleStore, tmp_path: Path) -> None:
    source = make_source(tmp_path / "a", f="v1")
    store.create("dataset", "1.0", source)
    store.create("model", "1.0", source, deps=["dataset>=1"])
    with pytest.raises(AlreadyExists, match="dependencies"):
        store.create("model", "1.0", source, deps=["dataset>=2"])


def test_invalid_input_is_refused_before_any_work(store: CapsuleStore, tmp_path: Path) -> None:
    source = make_source(tmp_path / "a", f="v1")
    with pytest.raises(InvalidArgument):
        store.create("Bad Name", "1.0", source)
    with pytest.raises(InvalidArgument, match="PEP 440"):
        store.create("dataset", "latest", source)
    with pytest.raises(InvalidArgument, match="itself"):
        store.create("dataset", "1.0", source, deps=["dataset>=0"])
    with pytest.raises(NotFound):
        store.create("dataset", "1.0", tmp_path / "missing")


def test_a_refused_import_leaves_nothing_behind(store: CapsuleStore, tmp_path: Path) -> None:
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as archive:
        info = tarfile.TarInfo("../../etc/cron.d/x")
        info.size = 1
        archive.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(UnsafeArchive, match=r"'\.\.'"):
        store.create("evil", "1.0", evil)
    assert store.list() == []
    for sub in ("ingest", "content/sha256"):
        assert list((tmp_path / "store" / sub).iterdir()) == []


def test_ls_orders_versions_by_pep_440(store: CapsuleStore, tmp_path: Path) -> None:
    for index, version in enumerate(["1.10.0", "1.9.0", "1.2.0", "2.0.0rc1", "2.0.0"]):
        store.create("dataset", version, make_source(tmp_path / str(index), f=str(index)))
    store.create("alpha", "1", make_source(tmp_path / "x", f="x"))
    assert [v.ref for v in store.list()] == [
        "alpha@1",
        "dataset@1.2.0",
        "dataset@1.9.0",
        "dataset@1.10.0",
        "dataset@2.0.0rc1",
        "dataset@2.0.0",
    ]
    assert [v.version for v in store.list("alpha")] == ["1"]


def test_export_gives_the_canonical_tar_that_reimports_to_the_same_digest(
    store: CapsuleStore, tmp_path: Path
) -> None:
    original = store.create("dataset", "1.0", make_source(tmp_path / "a", f="v1", g="v2"))
    (tmp_path / "export.tar").write_bytes(b"")
    with open(tmp_path / "export.tar", "wb") as out:
        assert store.export_tar("dataset", "1.0", out) == original.digest
    copy = store.create("mirror", "1.0", tmp_path / "export.tar")
    assert copy.digest == original.digest


def test_verify_detects_a_tampered_tree(store: CapsuleStore, tmp_path: Path) -> None:
    version = store.create("dataset", "1.0", make_source(tmp_path / "a", f="v1"))
    store.verify("dataset", "1.0")
    os.chmod(version.path / "f", 0o644)
    (version.path / "f").write_text("tampered")
    with pytest.raises(ChecksumMismatch, match="dataset@1.0"):
        store.verify("dataset", "1.0")


def test_attachments_are_recorded_and_forgotten(store: CapsuleStore, tmp_path: Path) -> None:
    store.create("dataset", "1.0", make_source(tmp_path / "a", f="1"))
    store.create("dataset", "2.0", make_source(tmp_path / "b", f="2"))
    first = store.record_attach("job-1", "dataset", "1.0", "/capsules/dataset")
    store.record_attach("job-1", "dataset", "2.0", "/capsules/dataset")  # swap: intent first
    assert [a.version for a in store.attachments("job-1")] == ["1.0", "2.0"]
    assert store.record_detach("job-1", "/capsules/dataset", version="1.0") == 1
    assert [(a.job_id, a.version, a.target) for a in store.attachments()] == [
        ("job-1", "2.0", "/capsules/dataset")
    ]
    assert first.digest == store.get("dataset", "1.0").digest
    assert store.record_detach("job-1", "/capsules/dataset") == 1
    assert store.attachments("job-1") == []
    with pytest.raises(NotFound, match="nothing attached"):
        store.record_attach("job-1", "dataset", "9.9", "/capsules/dataset")


def test_rm_is_refused_while_attached_pinned_or_needed(store: CapsuleStore, tmp_path: Path) -> None:
    source = make_source(tmp_path / "a", f="1")
    store.create("dataset", "1.2.0", source)
    store.create("model", "3.0.0", make_source(tmp_path / "m", w="w"), deps=["dataset>=1.2,<2"])
    with pytest.raises(
        Conflict, match=r"model@3\.0\.0 requires 'dataset<2,>=1\.2' and dataset@1\.2\.0 is the only"
    ):
        store.remove("dataset", "1.2.0")
    store.record_attach("job-7", "model", "3.0.0", "/capsules/model")
    with pytest.raises(Conflict, match="attached to job job-7 at /capsules/model"):
        store.remove("model", "3.0.0")
    store.record_detach("job-7", "/capsules/model")
    store.pin("model", "3.0.0")
    with pytest.raises(Conflict, match="pinned"):
        store.remove("model", "3.0.0")
    store.unpin("model", "3.0.0")
    store.remove("model", "3.0.0")
    store.remove("dataset", "1.2.0")
    assert store.list() == []
    assert list((tmp_path / "store" / "content" / "sha256").iterdir()) == []
    with pytest.raises(NotFound):
        store.remove("dataset", "1.2.0")


def test_rm_allows_removing_one_of_several_satisfying_versions(store: CapsuleStore, tmp_path: Path) -> None:
    store.create("dataset", "1.2.0", make_source(tmp_path / "a", f="1"))
    store.create("dataset", "1.3.0", make_source(tmp_path / "b", f="2"))
    store.create("model", "3.0.0", make_source(tmp_path / "m", w="w"), deps=["dataset>=1.2,<2"])
    store.remove("dataset", "1.2.0")
    with pytest.raises(Conflict, match="only version"):
        store.remove("dataset", "1.3.0")


def test_rm_keeps_content_shared_with_another_name(store: CapsuleStore, tmp_path: Path) -> None:
    kept = store.create("a", "1", make_source(tmp_path / "a", f="same"))
    store.create("b", "1", make_source(tmp_path / "b", f="same"))
    store.remove("b", "1")
    assert (kept.path / "f").read_text() == "same"


def test_the_database_itself_refuses_to_drop_an_attached_version(
    store: CapsuleStore, db: Database, tmp_path: Path
) -> None:
    store.create("dataset", "1.0", make_source(tmp_path / "a", f="1"))
    store.record_attach("job-1", "dataset", "1.0", "/capsules/dataset")
    with pytest.raises(sqlite3.IntegrityError):
        db.execute("DELETE FROM capsule_versions WHERE name = 'dataset'")


def test_resolve_uses_the_stored_versions(store: CapsuleStore, tmp_path: Path) -> None:
    store.create("dataset", "1.2.0", make_source(tmp_path / "a", f="1"))
    store.create("dataset", "2.0.0", make_source(tmp_path / "b", f="2"))
    store.create("model", "3.0.0", make_source(tmp_path / "m", w="w"), deps=["dataset>=1.2,<2"])
    assert [v.ref for v in store.resolve(["model"])] == ["dataset@1.2.0", "model@3.0.0"]
    with pytest.raises(Conflict, match="'dataset>=2' by the request"):
        store.resolve(["model", "dataset>=2"])
