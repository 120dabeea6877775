"""Shared plumbing for servicers: typed errors become gRPC statuses in one place."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from capsa.api.errors import ERROR_CODE_KEY, status_for
from capsa.errors import CapsaError

__all__ = ["rpc"]

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("capsa.api")


def _abort(context: grpc.ServicerContext, exc: BaseException) -> None:
    if isinstance(exc, CapsaError):
        context.set_trailing_metadata(((ERROR_CODE_KEY, exc.code),))
        context.abort(status_for(exc), str(exc))
    log.exception("internal error")
    context.set_trailing_metadata(((ERROR_CODE_KEY, "internal"),))
    context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")


def rpc(fn: F) -> F:
    """Map CapsaError (and bugs) raised by a servicer method to a gRPC status."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def stream(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
            try:
                yield from fn(self, request, context)
            except Exception as exc:
                if isinstance(exc, grpc.RpcError):
                    raise
                _abort(context, exc)
        return stream  # type: ignore[return-value]

    @functools.wraps(fn)
    def unary(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return fn(self, request, context)
        except Exception as exc:
            if isinstance(exc, grpc.RpcError):
                raise
            _abort(context, exc)
    return unary  # type: ignore[return-value]
