"""Shared plumbing for servicers: typed errors become gRPC statuses in one place.

Servicer methods are sync (run in the server's bounded thread pool) or async (run
on its event loop: the long-lived streams); :func:`rpc` handles both kinds.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
import grpc.aio

from capsa.api.errors import ERROR_CODE_KEY, status_for
from capsa.errors import CapsaError, from_os_error, is_disk_full

__all__ = ["rpc"]

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("capsa.api")

# Raised by context.abort: already a status on its way out, not an error of the servicer.
_PASS_THROUGH = (grpc.RpcError, grpc.aio.AbortError)


def _status(exc: BaseException) -> tuple[grpc.StatusCode, str, str]:
    if isinstance(exc, OSError) and is_disk_full(exc):
        # A full disk anywhere below is the operator's to fix, not a bug: RESOURCE_EXHAUSTED naming the path.
        exc = from_os_error(exc)
    if isinstance(exc, CapsaError):
        return status_for(exc), str(exc), exc.code
    if isinstance(exc, RecursionError):
        # Input nested deeper than Python's stack: the request's fault, and no traceback is useful.
        log.warning("refused a request nested too deeply: %s", exc)
        return grpc.StatusCode.INVALID_ARGUMENT, "the request is nested too deeply", "invalid_argument"
    log.exception("internal error")
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}", "internal"


def _abort(context: Any, exc: BaseException) -> None:
    code, message, wire = _status(exc)
    context.set_trailing_metadata(((ERROR_CODE_KEY, wire),))
    context.abort(code, message)


async def _abort_async(context: Any, exc: BaseException) -> None:
    code, message, wire = _status(exc)
    await context.abort(code, message, trailing_metadata=((ERROR_CODE_KEY, wire),))


def rpc(fn: F) -> F:
    """Map CapsaError (and bugs) raised by a servicer method to a gRPC status."""
    if inspect.isasyncgenfunction(fn):
        @functools.wraps(fn)
        async def astream(self: Any, request: Any, context: Any) -> Any:
            try:
                async for item in fn(self, request, context):
                    yield item
            except _PASS_THROUGH:
                raise
            except Exception as exc:
                await _abort_async(context, exc)
        return astream  # type: ignore[return-value]

    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def aunary(self: Any, request: Any, context: Any) -> Any:
            try:
                return await fn(self, request, context)
            except _PASS_THROUGH:
                raise
            except Exception as exc:
                await _abort_async(context, exc)
        return aunary  # type: ignore[return-value]

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def stream(self: Any, request: Any, context: Any) -> Any:
            try:
                yield from fn(self, request, context)
            except _PASS_THROUGH:
                raise
            except Exception as exc:
                _abort(context, exc)
        return stream  # type: ignore[return-value]

    @functools.wraps(fn)
    def unary(self: Any, request: Any, context: Any) -> Any:
        try:
            return fn(self, request, context)
        except _PASS_THROUGH:
            raise
        except Exception as exc:
            _abort(context, exc)
    return unary  # type: ignore[return-value]
