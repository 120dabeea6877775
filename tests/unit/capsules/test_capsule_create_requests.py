"""Idempotent capsule creation (issue 15.4): a retried create returns what the first one made."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from capsa.capsules import CapsuleStore
from capsa.capsules.distribution import CapsuleDistribution
from capsa.errors import AlreadyExists, InvalidArgument
from capsa.state import Database


@pytest.fixture
def store(tmp_path: Path) -> Iterator[CapsuleStore]:
    db = Database(tmp_path / "capsa.db")
    yield CapsuleStore(tmp_path / "capsules", db)
    db.close(checkpoint=False)


def _source(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.mkdir()
    (path / "README").write_text(text)
    return path


def _tar(text: str) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        info = tarfile.TarInfo("README")
        info.size = len(text)
        tar.addfile(info, io.BytesIO(text.encode()))
    return out.getvalue()


def test_a_retried_create_returns_the_first_version_without_importing(store: CapsuleStore, tmp_path: Path) -> None:
    first = store.create("model", "1.0.0", _source(tmp_path, "a", "one"), request_id="create-1")
    # Different content under the same request id: the retry is recognised, nothing is compared or imported.
    again = store.create("model", "1.0.0", _source(tmp_path, "b", "two"), request_id="create-1")
    assert again == first and (again.path / "README").read_text() == "one"


def test_without_a_request_id_different_content_is_still_refused(store: CapsuleStore, tmp_path: Path) -> None:
    store.create("model", "1.0.0", _source(tmp_path, "a", "one"))
    with pytest.raises(AlreadyExists):
        store.create("model", "1.0.0", _source(tmp_path, "b", "two"))


def test_a_failed_create_does_not_claim_its_request_id(store: CapsuleStore, tmp_path: Path) -> None:
    store.create("model", "1.0.0", _source(tmp_path, "a", "one"))
    with pytest.raises(AlreadyExists):
        store.create("model", "1.0.0", _source(tmp_path, "b", "two"), request_id="r")
    made = store.create("model", "1.0.1", _source(tmp_path, "c", "three"), request_id="r")
    assert made.version == "1.0.1"


def test_a_retried_upload_is_not_read(store: CapsuleStore) -> None:
    dist = CapsuleDistribution(store)
    first = dist.create_from_upload("data", "2.0.0", [_tar("rows")], request_id="up-7")

    def never_read() -> Iterator[bytes]:
        raise AssertionError("the retried upload was read")
        yield b""

    assert dist.create_from_upload("data", "2.0.0", never_read(), request_id="up-7") == first


def test_a_malformed_request_id_is_refused(store: CapsuleStore, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="request id"):
        store.create("model", "1.0.0", _source(tmp_path, "a", "one"), request_id="x" * 129)
