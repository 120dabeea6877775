"""CapsaClient.copy_in when the daemon closes the fast-copy connection mid-stream (it refused the copy)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from capsa.api.client import CapsaClient
from capsa.errors import InvalidArgument
from capsa.fdpass import ConnectionGone


class _Refused(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.INVALID_ARGUMENT

    def details(self) -> str:
        return "path escapes /work"

    def trailing_metadata(self) -> tuple[()]:
        return ()


class _Files:
    def __init__(self) -> None:
        self.sent: list[Any] = []

    def CopyIn(self, messages: Iterator[Any], timeout: float | None = None) -> Any:  # noqa: N802 (gRPC's name)
        self.sent = list(messages)   # gRPC drains the requests; an exception here would mask the status
        raise _Refused()


def _chunks() -> Iterator[bytes]:
    yield b"tar bytes"
    raise ConnectionGone("the fast copy connection is gone (Broken pipe); the copy stopped")


def test_a_connection_closed_by_the_daemon_gives_the_daemons_reason_and_no_done() -> None:
    client = object.__new__(CapsaClient)   # no channel: only the stream logic is under test
    client.address = "127.0.0.1:1"
    files = _Files()
    client.__dict__["files"] = files
    with pytest.raises(InvalidArgument, match="escapes"):
        client.copy_in("a" * 32, "/work/x", _chunks(), fast_token="t")
    assert [m.data for m in files.sent[1:]] == [b"tar bytes"]
    assert not any(m.done for m in files.sent)   # ended without `done`: the daemon keeps nothing
