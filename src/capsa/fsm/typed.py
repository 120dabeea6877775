"""Typed transitions: requests and responses as dataclasses (superfly/fsm's ``Register[R, W]``).

The engine stores requests and outputs as JSON and hands transitions *decoded JSON*. A
transition whose request parameter is annotated with a dataclass gets that dataclass
instead: the machine builder wraps it with :func:`typed`, which rebuilds the value (nested
dataclasses, ``list[...]``, ``dict[str, ...]``, ``X | None``) from the JSON, so the same
function runs on a fresh request and on one read back after a restart::

    @dataclass
    class FetchRequest:
        ref: str
        layer: LayerDesc

    def download(ctx: Context, req: FetchRequest) -> FetchResult: ...

    Machine.define("blob.fetch", queue="download").start("download", download).end()

Returned dataclasses are stored with :func:`dataclasses.asdict` (see ``dump_json``).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from collections.abc import Callable
from typing import Any

from capsa.errors import InvalidArgument

__all__ = ["decode", "request_type", "typed"]


def request_type(fn: Callable[..., Any]) -> type | None:
    """The dataclass a transition's second parameter is annotated with, if any."""
    try:
        params = list(inspect.signature(fn).parameters.values())
        hints = typing.get_type_hints(fn)
    except (TypeError, ValueError, NameError):
        return None  # builtins, partials without hints, or hints naming what is not importable
    if len(params) < 2:
        return None
    hint = hints.get(params[1].name)
    return hint if isinstance(hint, type) and dataclasses.is_dataclass(hint) else None


def typed(fn: Callable[[Any, Any], Any], cls: type) -> Callable[[Any, Any], Any]:
    """Wrap ``fn`` so it receives ``cls`` decoded from the JSON request."""

    @functools.wraps(fn)
    def transition(ctx: Any, request: Any) -> Any:
        return fn(ctx, request if isinstance(request, cls) else decode(cls, request))

    transition.__wrapped_request__ = cls  # type: ignore[attr-defined]
    return transition


def decode(tp: Any, value: Any) -> Any:
    """Rebuild a value of type ``tp`` from JSON; raises InvalidArgument naming what did not fit."""
    if tp is Any or tp is object:
        return value
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return decode(arg, value)
            except (InvalidArgument, TypeError, ValueError):
                continue
        raise InvalidArgument(f"{value!r} fits none of {tp}")
    if origin in (list, tuple, set, frozenset):
        if not isinstance(value, list | tuple):
            raise InvalidArgument(f"expected a list for {tp}, got {type(value).__name__}")
        (item,) = typing.get_args(tp)[:1] or (Any,)
        items = [decode(item, v) for v in value]
        return origin(items) if origin is not list else items
    if origin is dict:
        if not isinstance(value, dict):
            raise InvalidArgument(f"expected an object for {tp}, got {type(value).__name__}")
        _, val_t = typing.get_args(tp) or (str, Any)
        return {str(k): decode(val_t, v) for k, v in value.items()}
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise InvalidArgument(f"{value!r} is not one of {typing.get_args(tp)}")
        return value
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise InvalidArgument(f"expected an object for {tp.__name__}, got {type(value).__name__}")
        hints = typing.get_type_hints(tp)
        kwargs = {f.name: decode(hints[f.name], value[f.name])
                  for f in dataclasses.fields(tp) if f.init and f.name in value}
        try:
            return tp(**kwargs)
        except TypeError as exc:
            raise InvalidArgument(f"cannot build {tp.__name__} from {sorted(value)}: {exc}") from exc
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(tp, type) and issubclass(tp, str) and isinstance(value, str):
        return tp(value)  # str enums and NewType-like str subclasses
    if isinstance(tp, type) and not isinstance(value, tp):
        raise InvalidArgument(f"expected {tp.__name__}, got {type(value).__name__} {value!r}")
    return value
