"""Mutual-TLS identity and the role check, applied to every RPC in one place.

gRPC's Python server interceptors do not see the peer's certificate, so the
interceptor wraps each method handler; the wrapper reads the verified client
certificate from the call's auth context, takes the role from its OU and
compares it with :data:`capsa.api.roles.RPC_ROLES` before the servicer runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from cryptography import x509
from cryptography.x509.oid import NameOID

from capsa.api.errors import ERROR_CODE_KEY
from capsa.api.roles import required_role
from capsa.errors import Unauthorized
from capsa.pki import Principal, role_from_cert_pem

__all__ = ["AuthInterceptor", "Identity", "identity_of"]


@dataclass(frozen=True)
class Identity:
    common_name: str
    role: Principal


def identity_of(context: grpc.ServicerContext) -> Identity:
    auth = context.auth_context()
    pems = auth.get("x509_pem_cert") or []
    if not pems:
        raise Unauthorized("no client certificate presented")
    pem = pems[0]
    role = role_from_cert_pem(pem)
    cert = x509.load_pem_x509_certificate(pem if isinstance(pem, bytes) else pem.encode())
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return Identity(common_name=str(cns[0].value) if cns else "", role=role)


def _deny(context: grpc.ServicerContext, code: grpc.StatusCode, wire: str, message: str) -> None:
    context.set_trailing_metadata(((ERROR_CODE_KEY, wire),))
    context.abort(code, message)


def _check(method: str, context: grpc.ServicerContext) -> None:
    needed = required_role(method)
    if needed is None:
        _deny(context, grpc.StatusCode.PERMISSION_DENIED, "permission_denied",
              f"{method} is not in the role table; refused for every role")
        return
    try:
        who = identity_of(context)
    except Unauthorized as exc:
        _deny(context, grpc.StatusCode.UNAUTHENTICATED, "unauthenticated", str(exc))
        return
    if not who.role.allows(needed):
        _deny(context, grpc.StatusCode.PERMISSION_DENIED, "permission_denied",
              f"role {who.role.value!r} ({who.common_name}) may not call {method.rsplit('/', 1)[-1]};"
              f" it needs {needed.value!r} or higher")


def _wrap(method: str, behaviour: Callable[..., Any]) -> Callable[..., Any]:
    def guarded(request: Any, context: grpc.ServicerContext) -> Any:
        _check(method, context)
        return behaviour(request, context)

    return guarded


class AuthInterceptor(grpc.ServerInterceptor):
    def intercept_service(self, continuation: Callable[..., Any], handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _wrap(method, handler.unary_unary), handler.request_deserializer, handler.response_serializer)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _wrap(method, handler.unary_stream), handler.request_deserializer, handler.response_serializer)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                _wrap(method, handler.stream_unary), handler.request_deserializer, handler.response_serializer)
        return grpc.stream_stream_rpc_method_handler(
            _wrap(method, handler.stream_stream), handler.request_deserializer, handler.response_serializer)
