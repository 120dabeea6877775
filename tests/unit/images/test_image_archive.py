"""OCI image-layout archives without a daemon: what save writes and what load's reader accepts or refuses."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from capsa.errors import ChecksumMismatch, InvalidArgument, UnsafeArchive
from capsa.images.archive import LoadedArchive, read_archive, save_archive
from capsa.images.content import ContentStore
from capsa.images.oci import OCI_CONFIG, OCI_LAYER_TAR, OCI_MANIFEST
from capsa.images.store import ImageRecord, ImageStore
from capsa.state.db import Database


@pytest.fixture
def content(tmp_path: Path) -> ContentStore:
    return ContentStore(tmp_path / "content", Database(tmp_path / "capsa.db"))


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _stored_image(content: ContentStore, tmp_path: Path) -> ImageRecord:
    layer = b"layer bytes " * 1000
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers",
                                                                          "diff_ids": [_sha(layer)]}}).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": {"mediaType": OCI_CONFIG, "digest": _sha(config), "size": len(config)},
                           "layers": [{"mediaType": OCI_LAYER_TAR, "digest": _sha(layer), "size": len(layer)}]}).encode()
    for blob in (layer, config, manifest):
        content.put_bytes(blob, expected=_sha(blob))
    rec = ImageRecord(ref="example.test/team/app:3", digest=_sha(manifest), source="registry",
                      config=json.loads(config), layers=[{"digest": _sha(layer), "size": len(layer),
                                                          "media_type": OCI_LAYER_TAR}],
                      chain=["k"], top_snapshot="k", size=len(layer), created_ns=1)
    ImageStore(content.db).put(rec)
    return rec


def _chunks(data: bytes, size: int = 7000) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


def test_save_streams_a_layout_whose_members_and_index_describe_the_image(content: ContentStore,
                                                                          tmp_path: Path) -> None:
    rec = _stored_image(content, tmp_path)
    total, stream = save_archive(content, [rec])
    data = b"".join(stream)
    assert len(data) % tarfile.RECORDSIZE == 0
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = tar.getnames()
        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
        for name in names:
            if name.startswith("blobs/sha256/") and tar.getmember(name).isreg():
                assert hashlib.sha256(tar.extractfile(name).read()).hexdigest() == name.rsplit("/", 1)[1]  # type: ignore[union-attr]
    assert names[:2] == ["oci-layout", "index.json"] and len([n for n in names if n.count("/") == 2]) == 3
    assert index["manifests"] == [{"mediaType": OCI_MANIFEST, "digest": rec.digest, "size": index["manifests"][0]["size"],
                                   "annotations": {"io.containerd.image.name": rec.ref,
                                                   "org.opencontainers.image.ref.name": "3"}}]
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert total == sum(m.size for m in tar.getmembers() if m.name.startswith("blobs/sha256/") and m.isreg())


def test_what_save_writes_read_archive_takes_back_in_any_chunking(content: ContentStore, tmp_path: Path) -> None:
    rec = _stored_image(content, tmp_path)
    data = b"".join(save_archive(content, [rec])[1])
    other = ContentStore(tmp_path / "other", Database(tmp_path / "other.db"))
    loaded = read_archive(other, _chunks(data, 513))
    assert loaded.blobs == 3 and other.exists(rec.digest)
    assert loaded.images() == [(loaded.index["manifests"][0], rec.ref)]   # type: ignore[index]
    assert loaded.images("example.test/renamed:1")[0][1] == "example.test/renamed:1"


def test_bytes_after_the_end_of_the_archive_are_refused(content: ContentStore, tmp_path: Path) -> None:
    data = b"".join(save_archive(content, [_stored_image(content, tmp_path)])[1])
    read_archive(content, _chunks(data + b"\0" * 4096))          # more zero padding: fine
    with pytest.raises(InvalidArgument, match="goes on after"):
        read_archive(content, _chunks(data + b"x" * (2 << 20)))


def _tar(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for info, data in members:
            if info.isreg():
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


def _reg(name: str, data: bytes = b"") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _special(name: str, kind: bytes, link: str = "") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info, b""


@pytest.mark.parametrize("member", [
    _special("blobs/sha256/" + "a" * 64, tarfile.SYMTYPE, "/etc/shadow"),
    _special("index.json", tarfile.LNKTYPE, "oci-layout"),
    _special("dev", tarfile.CHRTYPE),
    _special("fifo", tarfile.FIFOTYPE),
    _reg("/etc/passwd", b"x"),
    _reg("blobs/../../x", b"x"),
], ids=["symlink", "hardlink", "device", "fifo", "absolute", "climbing"])
def test_unsafe_members_refuse_the_archive(content: ContentStore, member: tuple[tarfile.TarInfo, bytes]) -> None:
    with pytest.raises(UnsafeArchive):
        read_archive(content, [_tar(_reg("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'), member)])


def test_a_blob_that_is_not_what_its_name_says_is_not_kept(content: ContentStore) -> None:
    name = "0" * 64
    with pytest.raises(ChecksumMismatch):
        read_archive(content, [_tar(_reg(f"blobs/sha256/{name}", b"something else"))])
    assert not content.exists("sha256:" + name) and content.ingests() == []


def test_names_come_from_annotations_or_tag(content: ContentStore) -> None:
    def archive(*annotations: dict[str, str]) -> LoadedArchive:
        entries = [{"mediaType": OCI_MANIFEST, "digest": "sha256:" + "1" * 64, "size": 1, "annotations": a}
                   for a in annotations]
        return LoadedArchive(index={"manifests": entries}, blobs=0)

    assert archive({"io.containerd.image.name": "example.test/a:1"}).images()[0][1] == "example.test/a:1"
    assert archive({"org.opencontainers.image.ref.name": "team/app:5"}).images()[0][1] == "docker.io/team/app:5"
    with pytest.raises(InvalidArgument, match="--tag"):
        archive({"org.opencontainers.image.ref.name": "latest"}).images()   # a bare tag names no repository
    with pytest.raises(InvalidArgument, match="names one image"):
        archive({}, {}).images("example.test/x:1")
    with pytest.raises(InvalidArgument, match="registry-style"):
        archive({}).images("oci:/tmp/x")
