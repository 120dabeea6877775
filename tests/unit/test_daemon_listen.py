"""The daemon refuses a listen address it cannot bind before it starts anything (no root needed)."""

from __future__ import annotations

import socket

import pytest

from capsa.daemon import check_bindable
from capsa.errors import Unavailable


def test_a_taken_port_is_one_clear_error_naming_the_address() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        address = f"127.0.0.1:{holder.getsockname()[1]}"
        with pytest.raises(Unavailable, match=f"cannot listen on {address}: Address already in use"):
            check_bindable(address)


def test_a_free_port_and_unix_addresses_pass() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    check_bindable(f"127.0.0.1:{port}")
    check_bindable("unix:/run/capsa/api.sock")


@pytest.mark.parametrize("address", ["localhost", "127.0.0.1:http", "192.0.2.1:7443"])
def test_an_address_that_is_not_host_port_of_this_host_is_refused(address: str) -> None:
    with pytest.raises(Unavailable, match=f"cannot listen on {address}"):
        check_bindable(address)
