"""Capsule import limits (capsules/limits.py) and how damaged archives are refused."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import tarfile
from pathlib import Path

import pytest
from pydantic import ValidationError

from capsa.capsules import CapsuleLimits
from capsa.capsules.importer import import_source
from capsa.capsules.limits import check_expansion
from capsa.config.server import CapsuleLimitsConfig
from capsa.errors import InvalidArgument, LimitExceeded, UnsafeArchive


def _tar(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_defaults_mirror_the_image_unpack_limits() -> None:
    from capsa.images.unpack._limits import UnpackLimits

    image, capsule = UnpackLimits(), CapsuleLimits()
    for name in ("max_file_bytes", "max_total_bytes", "max_entries", "max_path_bytes", "max_name_bytes"):
        assert getattr(capsule, name) == getattr(image, name), name
    assert CapsuleLimits.from_config(CapsuleLimitsConfig()) == capsule


def test_server_yaml_section_parses_sizes_and_checks_consistency() -> None:
    cfg = CapsuleLimitsConfig.model_validate({"max_file_bytes": "512MiB", "max_expansion_ratio": 20})
    limits = CapsuleLimits.from_config(cfg)
    assert limits.max_file_bytes == 512 << 20 and limits.max_expansion_ratio == 20.0
    with pytest.raises(ValidationError, match="must not exceed"):
        CapsuleLimitsConfig.model_validate({"max_file_bytes": "2GiB", "max_total_bytes": "1GiB"})
    with pytest.raises(ValidationError):
        CapsuleLimitsConfig.model_validate({"max_entriez": 3})
    with pytest.raises(ValueError, match="max_entries must be positive"):
        CapsuleLimits(max_entries=0)


def test_expansion_ratio_applies_to_archives_past_the_grace_only() -> None:
    limits = CapsuleLimits(max_expansion_ratio=10, expansion_grace_bytes=1000)
    check_expansion(limits, "a", 999_999, None)  # a directory: no ratio
    check_expansion(limits, "a", 1000, 1)  # within the grace
    check_expansion(limits, "a", 5000, 500)  # exactly 10x
    with pytest.raises(LimitExceeded, match="max_expansion_ratio=10") as err:
        check_expansion(limits, "big", 5001, 500)
    assert err.value.detail == {"limit": "max_expansion_ratio", "entry": "big"}


def test_compressible_archive_over_the_ratio_is_refused_before_writing(tmp_path: Path) -> None:
    src = tmp_path / "bomb.tar.gz"
    src.write_bytes(gzip.compress(_tar({"a": bytes(300_000), "b": bytes(300_000)})))
    limits = CapsuleLimits(max_expansion_ratio=50, expansion_grace_bytes=100_000)
    with pytest.raises(LimitExceeded, match="max_expansion_ratio"):
        import_source(src, tmp_path / "out", limits)
    assert not (tmp_path / "out" / "a").exists()  # refused at the header of the first file
    text = b"".join(b"%d a line of text\n" % i for i in range(40_000))
    src.write_bytes(gzip.compress(_tar({"a.txt": text})))  # ~10x: ordinary compressible data passes
    import_source(src, tmp_path / "ok", CapsuleLimits(max_expansion_ratio=50, expansion_grace_bytes=100_000))


def test_name_and_header_limits(tmp_path: Path) -> None:
    src = tmp_path / "names.tar"
    src.write_bytes(_tar({"d/" + "n" * 40: b"x"}))
    with pytest.raises(LimitExceeded, match="longer than 32 bytes"):
        import_source(src, tmp_path / "o1", CapsuleLimits(max_name_bytes=32))
    long_path = "/".join(["p" * 200] * 10)  # 2 KiB: needs a pax header
    src.write_bytes(_tar({long_path: b"x"}))
    with pytest.raises(LimitExceeded, match="max_header_bytes=1024"):
        import_source(src, tmp_path / "o2", CapsuleLimits(max_header_bytes=1024))
    import_source(src, tmp_path / "o3")


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda raw: gzip.compress(raw)[: len(gzip.compress(raw)) // 2], id="truncated-gzip"),
        pytest.param(lambda raw: lzma.compress(raw)[:5000], id="truncated-xz"),
        pytest.param(lambda raw: bz2.compress(raw)[:40] + os.urandom(4000), id="garbled-bz2"),
        pytest.param(lambda raw: raw[:70_000], id="truncated-tar"),
    ],
)
def test_damaged_archives_are_unsafe_not_internal_errors(tmp_path: Path, damage: object) -> None:
    raw = _tar({"a": os.urandom(200_000)})
    src = tmp_path / "damaged"
    src.write_bytes(damage(raw))  # type: ignore[operator]
    with pytest.raises((UnsafeArchive, InvalidArgument)) as err:
        import_source(src, tmp_path / "out")
    # Not a tar at all is a bad argument (exit 2); one that breaks while being read is unsafe (exit 11).
    assert isinstance(err.value, UnsafeArchive) or "not a readable tar" in str(err.value)
