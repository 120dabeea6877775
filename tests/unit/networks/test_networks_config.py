"""Validation of network settings, names and job ids (no kernel involved)."""

from __future__ import annotations

import pytest

from capsa.errors import InvalidArgument
from capsa.networks import NetworkConfig, validate_network_name
from capsa.networks.model import validate_job_id


def test_defaults_are_the_documented_ranges() -> None:
    cfg = NetworkConfig()
    assert (cfg.isolated_pool, cfg.bridge_cidr, cfg.bridge_name) == ("10.203.0.0/16", "10.204.0.0/24", "capsa0")
    assert cfg.netns_dir is None and cfg.isolated_prefixlen == 30   # None: /run/capsa/<instance>/netns


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"isolated_pool": "10.203.0.0/16", "bridge_cidr": "10.203.5.0/24"}, "overlaps"),
        ({"isolated_pool": "10.203.0.1/16"}, "not a network"),
        ({"isolated_pool": "fd00::/64"}, "IPv6"),
        ({"isolated_prefixlen": 29}, "30 or 31"),
        ({"isolated_pool": "10.203.0.0/31", "isolated_prefixlen": 30}, "smaller than one /30"),
        ({"bridge_cidr": "10.204.0.0/31"}, "no room"),
        ({"bridge_name": "a-name-longer-than-15"}, "interface name"),
        ({"mtu": 100}, "mtu"),
        ({"chain_prefix": "capsa"}, "chain_prefix"),
    ],
)
def test_bad_settings_are_refused_with_a_reason(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        NetworkConfig(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["web", "team-a.net_1", "a" * 32, "0net"])
def test_good_network_names(name: str) -> None:
    assert validate_network_name(name) == name


@pytest.mark.parametrize("name", ["", "Web", "-web", "a b", "a" * 33, "../x", "net/1"])
def test_bad_network_names(name: str) -> None:
    with pytest.raises(InvalidArgument, match="invalid network name"):
        validate_network_name(name)


@pytest.mark.parametrize("name", ["host", "none", "isolated", "bridge", "default"])
def test_mode_names_are_reserved(name: str) -> None:
    with pytest.raises(InvalidArgument, match="reserved"):
        validate_network_name(name)


@pytest.mark.parametrize("job_id", ["../x", "a/b", "", ".hidden", "x" * 129])
def test_job_ids_that_cannot_name_a_netns_file_are_refused(job_id: str) -> None:
    with pytest.raises(InvalidArgument):
        validate_job_id(job_id)
