"""Mutual-TLS identity and the role check, applied to every RPC in one place.

gRPC's Python server interceptors do not see the peer's certificate, so the
interceptor wraps each method handler; the wrapper reads the verified client
certificate from the call's auth context, takes the role from its OU and
compares it with :data:`capsa.api.roles.RPC_ROLES` before the servicer runs.

The same wrapper refuses requests whose bytes could not be decoded (see
:mod:`capsa.api.wire`) and counts streams against :class:`StreamLimits` by the
caller's common name, because only here is the caller known.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
from cryptography import x509
from cryptography.x509.oid import NameOID

from capsa.api.errors import ERROR_CODE_KEY, status_for
from capsa.api.limits import StreamLimits
from capsa.api.roles import required_role
from capsa.api.validation import validate
from capsa.api.wire import Malformed, is_async, passing_encoded, rewrap, tolerant, unwrap_requests
from capsa.errors import CapsaError, PermissionDenied, Unauthorized
from capsa.pki import Principal, role_from_cert_pem

__all__ = ["AuthInterceptor", "Identity", "identity_of"]

log = logging.getLogger("capsa.api")


@dataclass(frozen=True)
class Identity:
    common_name: str
    role: Principal


@functools.lru_cache(maxsize=256)
def _parse_identity(pem: bytes | str) -> Identity:
    """Parsing a certificate costs more than a small RPC: each distinct client certificate is parsed once."""
    role = role_from_cert_pem(pem)
    cert = x509.load_pem_x509_certificate(pem if isinstance(pem, bytes) else pem.encode())
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return Identity(common_name=str(cns[0].value) if cns else "", role=role)


def identity_of(context: Any) -> Identity:
    auth = context.auth_context()
    pems = auth.get("x509_pem_cert") or []
    if not pems:
        raise Unauthorized("no client certificate presented")
    return _parse_identity(pems[0])


def _admit(method: str, context: Any) -> Identity:
    """The caller, if the role table lets them call ``method``; else the typed refusal."""
    needed = required_role(method)
    if needed is None:
        raise PermissionDenied(f"{method} is not in the role table; refused for every role")
    who = identity_of(context)
    if not who.role.allows(needed):
        raise PermissionDenied(f"role {who.role.value!r} ({who.common_name}) may not call {method.rsplit('/', 1)[-1]};"
                               f" it needs {needed.value!r} or higher")
    return who


def _refusal(exc: CapsaError) -> tuple[grpc.StatusCode, str, tuple[tuple[str, str], ...]]:
    return status_for(exc), str(exc), ((ERROR_CODE_KEY, exc.code),)


def _deny_sync(context: Any, exc: CapsaError) -> None:
    code, message, trailers = _refusal(exc)
    context.set_trailing_metadata(trailers)
    context.abort(code, message)


async def _deny_async(context: Any, exc: CapsaError) -> None:
    code, message, trailers = _refusal(exc)
    await context.abort(code, message, trailing_metadata=trailers)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Role check, malformed-request refusal and stream accounting for every method of an aio server."""

    def __init__(self, streams: StreamLimits | None = None) -> None:
        self.streams = streams

    async def intercept_service(self, continuation: Callable[..., Any], handler_call_details: Any) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        return rewrap(handler, lambda behaviour, req_stream, resp_stream: self._guard(
            method, behaviour, req_stream, req_stream or resp_stream), tolerant(handler.request_deserializer),
            passing_encoded(handler.response_serializer))

    def _enter(self, method: str, request: Any, context: Any, streaming: bool,
               req_stream: bool) -> tuple[Any, str | None]:
        """Admit the call: (the request to hand on, the client holding a stream slot or None)."""
        who = _admit(method, context)
        if isinstance(request, Malformed):
            # One line, no traceback: a client sending garbage is not a daemon bug.
            log.warning("refused a malformed request to %s from %s: %s", method, who.common_name, request.reason)
            raise request.error(method)
        if req_stream:
            request = unwrap_requests(request, method)
        else:
            validate(request)
        if streaming and self.streams is not None:
            self.streams.acquire(who.common_name, method)
            return request, who.common_name
        return request, None

    def _leave(self, client: str | None) -> None:
        if client is not None and self.streams is not None:
            self.streams.release(client)

    def _guard(self, method: str, behaviour: Callable[..., Any], req_stream: bool,
               streaming: bool) -> Callable[..., Any]:
        enter, leave = self._enter, self._leave
        if inspect.isasyncgenfunction(behaviour):
            async def guarded_agen(request: Any, context: Any) -> AsyncIterator[Any]:
                try:
                    request, client = enter(method, request, context, streaming, req_stream)
                except CapsaError as exc:
                    await _deny_async(context, exc)
                    return
                try:
                    async for item in behaviour(request, context):
                        yield item
                finally:
                    leave(client)
            return guarded_agen
        if is_async(behaviour):
            async def guarded_coro(request: Any, context: Any) -> Any:
                try:
                    request, client = enter(method, request, context, streaming, req_stream)
                except CapsaError as exc:
                    await _deny_async(context, exc)
                    return None
                try:
                    return await behaviour(request, context)
                finally:
                    leave(client)
            return guarded_coro

        def guarded(request: Any, context: Any) -> Any:
            try:
                request, client = enter(method, request, context, streaming, req_stream)
            except CapsaError as exc:
                _deny_sync(context, exc)
                return None
            if not streaming or req_stream:
                try:
                    return behaviour(request, context)
                finally:
                    leave(client)
            return _released(behaviour(request, context), lambda: leave(client))
        return guarded


def _released(items: Iterator[Any], release: Callable[[], None]) -> Iterator[Any]:
    try:
        yield from items
    finally:
        release()
