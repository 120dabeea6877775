"""PEP 440 versions, PEP 508-style requirements and capsule names."""

from __future__ import annotations

import pytest
from packaging.version import Version

from capsa.capsules.versions import (
    check_labels,
    check_name,
    parse_reference,
    parse_requirement,
    parse_version,
    satisfies,
    version_key,
)
from capsa.errors import InvalidArgument


def test_versions_order_by_pep_440() -> None:
    texts = ["1.10.0", "1.2.0", "1.9", "2.0.0rc1", "2.0.0", "2.0.0.post1", "2.0.0.dev3", "1.2.0a1"]
    ordered = sorted(texts, key=parse_version)
    assert ordered == ["1.2.0a1", "1.2.0", "1.9", "1.10.0", "2.0.0.dev3", "2.0.0rc1", "2.0.0", "2.0.0.post1"]


def test_equal_versions_share_one_key() -> None:
    assert version_key("1.2") == version_key("1.2.0") == version_key("1.02.0") == "1.2"
    assert version_key("1.2.1") != version_key("1.2")


@pytest.mark.parametrize("bad", ["", "one", "1.2.x", "v1..2", "latest"])
def test_invalid_versions_are_refused_with_the_scheme_named(bad: str) -> None:
    with pytest.raises(InvalidArgument, match="PEP 440"):
        parse_version(bad)


@pytest.mark.parametrize("good", ["dataset", "llama3-8b", "a", "x1-y2-z3"])
def test_valid_names(good: str) -> None:
    assert check_name(good) == good


@pytest.mark.parametrize(
    "bad", ["Dataset", "my_data", "a--b", "-a", "a-", "a.b", "", "x" * 64, "a/b", "../x"]
)
def test_invalid_names_are_refused(bad: str) -> None:
    with pytest.raises(InvalidArgument, match="invalid capsule name"):
        check_name(bad)


def test_invalid_name_suggests_the_normal_form() -> None:
    with pytest.raises(InvalidArgument, match="did you mean 'my-data'"):
        check_name("My_Data")


def test_requirements_are_normalised() -> None:
    req = parse_requirement("dataset >=1.2, <2")
    assert req.name == "dataset" and str(req) == "dataset<2,>=1.2"
    assert parse_requirement("Big_Data==1").name == "big-data"  # PEP 503: the same capsule


@pytest.mark.parametrize(
    "bad",
    [
        "dataset[extra]>=1",
        "dataset @ https://example.com/x.tar",
        "dataset>=1; python_version>'3'",
        ">=1",
        "x" * 70 + ">=1",
    ],
)
def test_requirements_carry_only_a_name_and_specifiers(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_requirement(bad)


def test_satisfies_follows_specifiers() -> None:
    req = parse_requirement("dataset>=1.2,<2")
    assert [v for v in ("1.1", "1.2", "1.9.9", "2.0") if satisfies(req, v)] == ["1.2", "1.9.9"]


def test_pre_releases_only_when_the_requirement_names_one() -> None:
    assert not satisfies(parse_requirement("dataset>=1"), "2.0rc1")
    assert not satisfies(parse_requirement("dataset"), Version("2.0rc1"))
    assert satisfies(parse_requirement("dataset>=2.0rc1"), "2.0rc1")
    assert satisfies(parse_requirement("dataset==2.0rc1"), "2.0rc1")


def test_references_split_name_and_version() -> None:
    assert parse_reference("dataset@1.2.0") == ("dataset", Version("1.2.0"))
    for bad in ("dataset", "dataset@", "Data@1"):
        with pytest.raises(InvalidArgument):
            parse_reference(bad)


def test_labels_are_validated() -> None:
    assert check_labels({"team": "ml", "a.b/c": ""}) == {"a.b/c": "", "team": "ml"}
    for bad in ({"": "x"}, {"k": "x" * 300}, {"bad key": "v"}):
        with pytest.raises(InvalidArgument):
            check_labels(bad)
