"""Dependency resolution over capsule versions (resolvelib + PEP 440)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from capsa.capsules.model import CapsuleVersion
from capsa.capsules.resolver import resolve
from capsa.errors import Conflict, NotFound

EPOCH = datetime.fromtimestamp(0, tz=UTC)


def cv(ref: str, *deps: str) -> CapsuleVersion:
    name, _, version = ref.partition("@")
    digest = "sha256:" + format(abs(hash(ref)), "x").rjust(64, "0")[:64]
    return CapsuleVersion(name, version, digest, 0, 0, deps, {}, False, EPOCH, EPOCH, Path("/nowhere"))


STORE = [
    cv("dataset@1.2.0"),
    cv("dataset@1.3.0"),
    cv("dataset@2.0.0"),
    cv("dataset@2.1.0rc1"),
    cv("model@3.0.0", "dataset>=1.2,<2"),
    cv("model@3.1.0", "dataset>=1.2,<2", "tokenizer~=1.0"),
    cv("tokenizer@1.0.0", "vocab==4.*"),
    cv("vocab@4.2.0"),
    cv("vocab@5.0.0"),
    cv("server@1.0.0", "dataset>=2"),
]


def refs(result: list[CapsuleVersion]) -> list[str]:
    return [v.ref for v in result]


def test_highest_acceptable_versions_win_and_dependencies_come_first() -> None:
    assert refs(resolve(STORE, ["model"])) == [
        "dataset@1.3.0",
        "vocab@4.2.0",
        "tokenizer@1.0.0",
        "model@3.1.0",
    ]


def test_exact_pins_are_honoured() -> None:
    assert refs(resolve(STORE, ["model==3.0.0"])) == ["dataset@1.3.0", "model@3.0.0"]
    assert refs(resolve(STORE, ["model==3.0.0", "dataset==1.2.0"])) == ["dataset@1.2.0", "model@3.0.0"]


def test_pre_releases_are_skipped_unless_asked_for() -> None:
    assert refs(resolve(STORE, ["dataset"])) == ["dataset@2.0.0"]
    assert refs(resolve(STORE, ["dataset>=2.1.0rc1"])) == ["dataset@2.1.0rc1"]


def test_the_resolver_backtracks_to_an_older_version() -> None:
    # model 3.1 needs tokenizer, tokenizer needs vocab 4.*; asking for vocab 5 forces model 3.0
    assert refs(resolve(STORE, ["model", "vocab>=5"])) == ["dataset@1.3.0", "model@3.0.0", "vocab@5.0.0"]


def test_a_conflict_names_the_capsules_and_the_incompatible_requirements() -> None:
    with pytest.raises(Conflict) as info:
        resolve(STORE, ["model==3.0.0", "server"])
    message = str(info.value)
    assert "dataset is required as" in message
    assert "'dataset<2,>=1.2' by model@3.0.0" in message
    assert "'dataset>=2' by server@1.0.0" in message
    assert "(available: 1.2.0, 1.3.0, 2.0.0, 2.1.0rc1)" in message


def test_a_missing_dependency_is_named_with_who_needs_it() -> None:
    broken = [*STORE, cv("app@1.0", "nonexistent>=1")]
    with pytest.raises(Conflict, match="nonexistent is required as 'nonexistent>=1' by app@1.0 .*no capsule"):
        resolve(broken, ["app"])


def test_an_unknown_requested_capsule_is_not_found() -> None:
    with pytest.raises(NotFound, match="no capsule named 'ghost'"):
        resolve(STORE, ["ghost"])


def test_dependency_cycles_resolve() -> None:
    cyclic = [cv("a@1.0", "b"), cv("b@1.0", "a")]
    assert refs(resolve(cyclic, ["a"])) == ["b@1.0", "a@1.0"]
