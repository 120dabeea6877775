"""Archive names → paths under the root, and the symlink-target policy."""

from __future__ import annotations

import pytest

from capsa.errors import LimitExceeded, UnsafeArchive
from capsa.images.unpack import UnpackLimits
from capsa.images.unpack._names import split_name, symlink_escapes, validate_link_target

LIMITS = UnpackLimits()


@pytest.mark.parametrize(("name", "expected"), [
    ("usr/lib/x.py", ("usr/lib", "x.py")),
    ("usr/lib/", ("usr", "lib")),
    ("./usr/lib", ("usr", "lib")),
    ("/etc/passwd", ("etc", "passwd")),
    ("//etc//./passwd/", ("etc", "passwd")),
    ("top", ("", "top")),
    ("./", ("", "")),
    ("/", ("", "")),
    (".", ("", "")),
    ("a..b/..c/d..", ("a..b/..c", "d..")),
    ("ünï/cødé", ("ünï", "cødé")),
])
def test_names_fold_into_the_root(name: str, expected: tuple[str, str]) -> None:
    assert split_name(name, repr(name), LIMITS) == expected


@pytest.mark.parametrize("name", ["..", "../x", "a/../b", "a/b/..", "/../etc", "./.././x"])
def test_any_dotdot_component_is_refused(name: str) -> None:
    with pytest.raises(UnsafeArchive, match=r"'\.\.' component"):
        split_name(name, repr(name), LIMITS)


def test_nul_and_length_limits() -> None:
    with pytest.raises(UnsafeArchive, match="NUL"):
        split_name("a\0b", "'x'", LIMITS)
    with pytest.raises(LimitExceeded, match="max_path_bytes=4096"):
        split_name("d/" * 2049, "'x'", LIMITS)
    with pytest.raises(LimitExceeded, match="max_name_bytes=255"):
        split_name("ok/" + "n" * 256, "'x'", LIMITS)
    split_name("ok/" + "n" * 255, "'x'", LIMITS)
    with pytest.raises(LimitExceeded, match="max_name_bytes=255"):
        split_name("é" * 128, "'x'", LIMITS)  # 256 bytes in UTF-8, 128 characters


@pytest.mark.parametrize(("parent", "target", "escapes"), [
    ("", "/etc", False),
    ("", "/", False),
    ("a/b", "/dummy/../etc", False),
    ("a/b", "../../c", False),
    ("a/b", "../../../c", True),
    ("", "../x", True),
    ("", "/../etc", True),
    ("a", "x/../../..", True),
    ("a", "./././../b", False),
    ("a/b/c", "../../../..", True),
    ("a", "..foo/../..", False),
])
def test_symlink_targets_that_climb_above_the_root(parent: str, target: str, escapes: bool) -> None:
    assert symlink_escapes(parent, target) is escapes


def test_link_targets_are_validated() -> None:
    with pytest.raises(UnsafeArchive, match="empty"):
        validate_link_target("", "'l'", LIMITS)
    with pytest.raises(UnsafeArchive, match="NUL"):
        validate_link_target("a\0", "'l'", LIMITS)
    with pytest.raises(LimitExceeded, match="max_path_bytes"):
        validate_link_target("x" * 5000, "'l'", LIMITS)
