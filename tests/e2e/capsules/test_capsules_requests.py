"""The `NAME[@SPEC][:PATH]` grammar of `run --capsule` and `capsule attach` (no daemon needed)."""

from __future__ import annotations

import pytest

from capsa.capsules.distribution import CapsuleManifest
from capsa.capsules.manager import CapsuleRequest, parse_capsule_request
from capsa.errors import InvalidArgument, Unsupported


@pytest.mark.parametrize(("text", "expected"), [
    ("dataset", CapsuleRequest("dataset", "dataset")),
    ("model@3.0.0", CapsuleRequest("model", "model==3.0.0", exact="3.0.0")),
    ("model@3", CapsuleRequest("model", "model==3", exact="3")),
    ("dataset@>=1.2,<2", CapsuleRequest("dataset", "dataset<2,>=1.2")),
    ("dataset@~=1.4:/capsules/d", CapsuleRequest("dataset", "dataset~=1.4", target="/capsules/d")),
    ("dataset@1.2.0://data//x/", CapsuleRequest("dataset", "dataset==1.2.0", target="/data/x", exact="1.2.0")),
])
def test_requests_parse_to_a_requirement_and_a_target(text: str, expected: CapsuleRequest) -> None:
    assert parse_capsule_request(text) == expected


@pytest.mark.parametrize("text", ["Dataset", "data set", "dataset@", "dataset@not a version", "dataset@>=1;x",
                                  "dataset:relative", "dataset:/", "dataset:/a/../b", "dataset:/a/./b",
                                  "dataset[extra]@1.0"])
def test_malformed_requests_are_refused(text: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_capsule_request(text)


def test_a_path_comes_once() -> None:
    assert parse_capsule_request("dataset", at="/capsules/x").target == "/capsules/x"
    with pytest.raises(InvalidArgument, match="not both"):
        parse_capsule_request("dataset:/a", at="/b")


def test_a_pulled_description_is_validated_and_normalised() -> None:
    good = CapsuleManifest("dataset", "1.2", "sha256:" + "a" * 64, 10240, ("base >= 1",), {"team": "ml"})
    parsed = CapsuleManifest.from_json(good.to_json(), "test")
    assert parsed.version == "1.2" and parsed.deps == ("base>=1",) and parsed.labels == {"team": "ml"}
    with pytest.raises(Unsupported):
        CapsuleManifest.from_json(b'{"schema": "something-else"}', "test")
    for broken in (b"[]", b"{", b'{"schema": "capsa.capsule.v1", "name": "x"}',
                   good.to_json().replace(b'"size":10240', b'"size":-1'),
                   good.to_json().replace(b"sha256:", b"md5:")):
        with pytest.raises((InvalidArgument, Unsupported)):
            CapsuleManifest.from_json(broken, "test")
