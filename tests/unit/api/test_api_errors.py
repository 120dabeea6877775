"""capsa's error vocabulary survives the trip over gRPC: the servicer's typed error comes back typed."""

from __future__ import annotations

import grpc
import pytest

import capsa.errors as errors
from capsa.api.errors import ERROR_CODE_KEY, from_rpc_error, status_for

ALL_ERRORS = sorted({cls for cls in vars(errors).values()
                     if isinstance(cls, type) and issubclass(cls, errors.CapsaError)}, key=lambda c: c.__name__)


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self._code, self._details, self._metadata = code, details, metadata

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata


@pytest.mark.parametrize("cls", ALL_ERRORS, ids=lambda c: c.__name__)
def test_a_typed_error_round_trips(cls: type[errors.CapsaError]) -> None:
    sent = cls("the message")
    wire = FakeRpcError(status_for(sent), str(sent), ((ERROR_CODE_KEY, sent.code),))
    back = from_rpc_error(wire, address="127.0.0.1:1")
    assert back.code == sent.code
    assert str(back) == "the message"
    assert back.exit_code == error_for_code(sent.code).exit_code


def error_for_code(code: str) -> type[errors.CapsaError]:
    return type(errors.error_from_code(code, ""))


def test_well_known_codes_get_matching_grpc_statuses() -> None:
    assert status_for(errors.NotFound("x")) == grpc.StatusCode.NOT_FOUND
    assert status_for(errors.InvalidArgument("x")) == grpc.StatusCode.INVALID_ARGUMENT
    assert status_for(errors.PermissionDenied("x")) == grpc.StatusCode.PERMISSION_DENIED
    assert status_for(errors.Unauthorized("x")) == grpc.StatusCode.UNAUTHENTICATED
    assert status_for(errors.Conflict("x")) == grpc.StatusCode.FAILED_PRECONDITION
    assert status_for(errors.Unavailable("x")) == grpc.StatusCode.UNAVAILABLE


def test_a_failed_handshake_is_explained() -> None:
    wire = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses; last error: "
                                                     "UNAVAILABLE: ipv4:127.0.0.1:7443: Socket closed")
    err = from_rpc_error(wire, address="127.0.0.1:7443")
    assert isinstance(err, errors.Unavailable)
    assert "127.0.0.1:7443" in str(err) and "TLS handshake failed" in str(err)


def test_a_status_without_capsa_code_still_maps() -> None:
    err = from_rpc_error(FakeRpcError(grpc.StatusCode.PERMISSION_DENIED, "no"), address="a:1")
    assert isinstance(err, errors.PermissionDenied)
    err = from_rpc_error(FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, ""), address="a:1")
    assert isinstance(err, errors.Timeout) and "a:1" in str(err)


def test_a_full_disk_met_by_a_servicer_is_resource_exhausted_naming_the_path() -> None:
    import errno

    from capsa.api.servicers._base import _status

    code, message, wire = _status(OSError(errno.ENOSPC, "No space left on device", "/var/lib/capsa/jobs/x"))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and wire == "resource_exhausted"
    assert "/var/lib/capsa/jobs/x" in message and "no space left" in message


def test_another_os_error_stays_internal() -> None:
    import errno

    from capsa.api.servicers._base import _status

    code, _message, wire = _status(OSError(errno.EBADF, "Bad file descriptor"))
    assert code == grpc.StatusCode.INTERNAL and wire == "internal"
