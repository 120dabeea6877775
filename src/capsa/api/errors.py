"""Mapping between capsa's error vocabulary and gRPC status codes (both directions)."""

from __future__ import annotations

import grpc

from capsa.errors import CapsaError, error_from_code

__all__ = ["ERROR_CODE_KEY", "from_rpc_error", "status_for"]

ERROR_CODE_KEY = "capsa-error-code"

_STATUS = {
    "invalid_argument": grpc.StatusCode.INVALID_ARGUMENT,
    "not_found": grpc.StatusCode.NOT_FOUND,
    "already_exists": grpc.StatusCode.ALREADY_EXISTS,
    "conflict": grpc.StatusCode.FAILED_PRECONDITION,
    "failed_precondition": grpc.StatusCode.FAILED_PRECONDITION,
    "permission_denied": grpc.StatusCode.PERMISSION_DENIED,
    "unauthenticated": grpc.StatusCode.UNAUTHENTICATED,
    "unavailable": grpc.StatusCode.UNAVAILABLE,
    "deadline_exceeded": grpc.StatusCode.DEADLINE_EXCEEDED,
    "canceled": grpc.StatusCode.CANCELLED,
    "unimplemented": grpc.StatusCode.UNIMPLEMENTED,
    "resource_exhausted": grpc.StatusCode.RESOURCE_EXHAUSTED,
    # Refusals with a class of their own: a status that says what kind of refusal it is (the
    # capsa-error-code trailer still carries the exact class to the client).
    "unsafe_archive": grpc.StatusCode.INVALID_ARGUMENT,
    "checksum_mismatch": grpc.StatusCode.DATA_LOSS,
    "pool_full": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "device_exists": grpc.StatusCode.ALREADY_EXISTS,
    "device_not_found": grpc.StatusCode.NOT_FOUND,
}

_FALLBACK = {
    grpc.StatusCode.INVALID_ARGUMENT: "invalid_argument",
    grpc.StatusCode.NOT_FOUND: "not_found",
    grpc.StatusCode.ALREADY_EXISTS: "already_exists",
    grpc.StatusCode.FAILED_PRECONDITION: "failed_precondition",
    grpc.StatusCode.PERMISSION_DENIED: "permission_denied",
    grpc.StatusCode.UNAUTHENTICATED: "unauthenticated",
    grpc.StatusCode.UNAVAILABLE: "unavailable",
    grpc.StatusCode.DEADLINE_EXCEEDED: "deadline_exceeded",
    grpc.StatusCode.CANCELLED: "canceled",
    grpc.StatusCode.UNIMPLEMENTED: "unimplemented",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "resource_exhausted",
}


def status_for(exc: CapsaError) -> grpc.StatusCode:
    return _STATUS.get(exc.code, grpc.StatusCode.INTERNAL)


def from_rpc_error(exc: grpc.RpcError, *, address: str = "") -> CapsaError:
    """Turn a failed call into the typed error the server raised (or a clear transport error)."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else str(exc)
    wire_code = ""
    for key, value in (exc.trailing_metadata() or ()) if hasattr(exc, "trailing_metadata") else ():
        if key == ERROR_CODE_KEY:
            wire_code = str(value)
    if wire_code:
        return error_from_code(wire_code, details or "")
    if code == grpc.StatusCode.UNAVAILABLE:
        text = (details or "").lower()
        hint = ""
        if "handshake" in text or "ssl" in text or "certificate" in text or "tls" in text or "socket closed" in text:
            hint = (" (TLS handshake failed: the daemon refused this client certificate, or the daemon's"
                    " certificate is not signed by the CA in your client config)")
        return error_from_code("unavailable", f"cannot reach the capsa daemon at {address}{hint}: {details}")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return error_from_code("deadline_exceeded", f"the daemon at {address} did not answer in time")
    return error_from_code(_FALLBACK.get(code, "internal"), details or str(code))
