"""Sizes, names and request validation of volumes (nothing mounted)."""

from __future__ import annotations

from pathlib import Path

import pytest

from capsa.errors import Conflict, InvalidArgument, LimitExceeded, NotFound
from capsa.state import Database
from capsa.volumes import VolumeManager, format_size, parse_size, validate_volume_name
from capsa.volumes._store import Store


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1GB", 10**9), ("1gb", 10**9), ("1GiB", 1 << 30), ("1G", 1 << 30), ("1g", 1 << 30),
        ("512MiB", 512 << 20), ("512MB", 512 * 10**6), ("512M", 512 << 20), ("64KiB", 64 << 10),
        ("2TB", 2 * 10**12), ("1TiB", 1 << 40), ("1.5GB", 1_500_000_000), ("1.5GiB", 3 << 29),
        ("4096", 4096), ("4096B", 4096), (" 10 MiB ", 10 << 20), (123, 123),
    ],
)
def test_sizes_parse_with_si_and_iec_units(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "GB", "1XB", "-1GB", "0", "0MiB", "1,5GB", "1 G B", "1e9", True])
def test_bad_sizes_are_refused_with_the_accepted_units_named(text: object) -> None:
    with pytest.raises(InvalidArgument):
        parse_size(text)  # type: ignore[arg-type]


def test_format_size_is_binary_and_short() -> None:
    assert [format_size(n) for n in (512, 1 << 20, 3 << 29, 1 << 40)] == ["512 B", "1 MiB", "1.5 GiB", "1 TiB"]


@pytest.mark.parametrize("name", ["data", "Data-1", "a.b_c", "x" * 64])
def test_good_volume_names(name: str) -> None:
    assert validate_volume_name(name) == name


@pytest.mark.parametrize("name", ["", ".hidden", "-x", "a/b", "..", "a b", "x" * 65, "é"])
def test_bad_volume_names(name: str) -> None:
    with pytest.raises(InvalidArgument, match="invalid volume name"):
        validate_volume_name(name)


@pytest.fixture
def manager(tmp_path: Path) -> VolumeManager:
    return VolumeManager(Database(tmp_path / "db"), tmp_path / "volumes")


def test_create_refuses_bad_requests_before_touching_the_disk(manager: VolumeManager, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="volume type"):
        manager.create("v", "16MiB", "nfs")
    with pytest.raises(InvalidArgument, match="at least 8 MiB"):
        manager.create("v", "1MiB", "filesystem")
    with pytest.raises(InvalidArgument, match="at least 1 MiB"):
        manager.create("v", "64KiB", "memory")
    with pytest.raises(LimitExceeded, match="free space"):
        manager.create("v", "1000000TB", "filesystem")
    with pytest.raises(LimitExceeded, match="host's memory"):
        manager.create("v", "1000000TB", "memory")
    assert manager.list() == [] and list((tmp_path / "volumes").iterdir()) == []
    assert (tmp_path / "volumes").stat().st_mode & 0o777 == 0o700


def test_unknown_volumes_and_bad_job_ids(manager: VolumeManager) -> None:
    with pytest.raises(NotFound):
        manager.get("nope")
    with pytest.raises(NotFound):
        manager.remove("nope")
    with pytest.raises(NotFound):
        manager.acquire("nope", "job-1")
    with pytest.raises(InvalidArgument, match="job id"):
        manager.acquire("nope", "../job")


def test_store_counts_users_once_per_job_and_blocks_removal(tmp_path: Path) -> None:
    store = Store(Database(tmp_path / "db"))
    store.insert("v", "memory", 1 << 20)
    with pytest.raises(NotFound):  # still being created: nobody may use it yet
        store.add_user("v", "j1")
    store.set_state("v", "ready")
    assert store.add_user("v", "j1") is True
    assert store.add_user("v", "j1") is False
    assert store.add_user("v", "j2") is True
    with pytest.raises(Conflict, match="in use by 2 job"):
        store.begin_remove("v")
    assert store.remove_user("v", "j1") == 1
    assert store.remove_user("v", "j2") == 0
    store.begin_remove("v")
    assert store.get("v") is not None and store.get("v").state == "removing"  # type: ignore[union-attr]
    with pytest.raises(NotFound):
        store.require("v")
