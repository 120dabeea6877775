"""Dataclass <-> JSON-object codec for the runtime's messages (see :mod:`capsa.runtime.protocol`).

A message is a frozen dataclass registered under a ``type`` tag. On the wire it is
``{"type": TAG, "id": N, "body": {field: value}}``. Decoding checks every field's type
against the dataclass annotation (``bool`` is not an ``int``, an ``int`` is a fine ``float``),
so a handler only ever sees well-typed values; range checks are the message's ``validate``.
Every decoding failure is an ``InvalidArgument`` naming the field.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from capsa.errors import InvalidArgument
from capsa.runtime.spec import JobSpec

__all__ = ["Message", "decode", "encode", "frame_id", "message", "register_type"]

M = TypeVar("M", bound="type[Message]")


class Message:
    """Base of every message; ``TYPE`` is its wire tag."""

    TYPE: ClassVar[str] = ""

    def validate(self) -> None:
        """Range checks beyond the field types (the supervisor calls it before any handler)."""


_BY_TAG: dict[str, type[Message]] = {}
_HINTS: dict[type[Message], list[tuple[str, Any, bool]]] = {}
_TYPES: dict[type, tuple[Callable[[Any], Any], Callable[[Any], Any]]] = {}


def message(tag: str) -> Callable[[M], M]:
    def register(cls: M) -> M:
        if tag in _BY_TAG:
            raise ValueError(f"message tag {tag!r} registered twice")
        cls.TYPE = tag
        _BY_TAG[tag] = cls
        return cls
    return register


def register_type(cls: type, to_wire: Callable[[Any], Any], from_wire: Callable[[Any], Any]) -> None:
    """Teach the codec a record type (``from_wire`` raises ``InvalidArgument`` on bad data)."""
    _TYPES[cls] = (to_wire, from_wire)


def encode(msg: Message, request_id: int = 0) -> dict[str, Any]:
    body = {f.name: _to_wire(getattr(msg, f.name)) for f in dataclasses.fields(msg)}  # type: ignore[arg-type]
    return {"type": msg.TYPE, "id": request_id, "body": body}


def decode(frame: object) -> tuple[int, Message]:
    """``(id, message)`` of one decoded frame; ``InvalidArgument`` if it is not a known, well-typed message."""
    if not isinstance(frame, dict):
        raise InvalidArgument("a frame must be a JSON object")
    request_id = frame.get("id", 0)
    if type(request_id) is not int or request_id < 0:
        raise InvalidArgument(f"frame id {request_id!r} is not a non-negative integer")
    tag, body = frame.get("type"), frame.get("body", {})
    cls = _BY_TAG.get(tag) if isinstance(tag, str) else None
    if cls is None:
        raise InvalidArgument(f"unknown message type {str(tag)[:40]!r}")
    if not isinstance(body, dict):
        raise InvalidArgument(f"{tag}: body must be a JSON object")
    values: dict[str, Any] = {}
    for name, hint, required in _fields(cls):
        if name not in body:
            if required:
                raise InvalidArgument(f"{tag}: missing field {name!r}")
            continue
        values[name] = _from_wire(hint, body[name], f"{tag}.{name}")
    return request_id, cls(**values)


def frame_id(frame: object) -> int:
    """The id of a frame that may not decode (to address its error reply), else 0."""
    request_id = frame.get("id") if isinstance(frame, dict) else 0
    return request_id if type(request_id) is int and request_id >= 0 else 0


def _fields(cls: type[Message]) -> list[tuple[str, Any, bool]]:
    cached = _HINTS.get(cls)
    if cached is None:
        hints = typing.get_type_hints(cls)
        cached = [(f.name, hints[f.name], f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
                  for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        _HINTS[cls] = cached
    return cached


def _to_wire(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_to_wire(v) for v in value]
    if isinstance(value, JobSpec):
        return dataclasses.asdict(value)
    codec = _TYPES.get(type(value))
    return codec[0](value) if codec is not None else value


def _from_wire(hint: Any, value: Any, where: str) -> Any:
    if hint is bool or hint is str:
        if type(value) is not hint:
            raise InvalidArgument(f"{where}: expected {hint.__name__}, got {type(value).__name__}")
        return value
    if hint is int:
        if type(value) is not int:
            raise InvalidArgument(f"{where}: expected an integer, got {type(value).__name__}")
        return value
    if hint is float:
        if type(value) not in (int, float):
            raise InvalidArgument(f"{where}: expected a number, got {type(value).__name__}")
        return float(value)
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, list):
            raise InvalidArgument(f"{where}: expected a list, got {type(value).__name__}")
        item = typing.get_args(hint)[0]
        return tuple(_from_wire(item, v, f"{where}[]") for v in value)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        return _from_wire(next(a for a in args if a is not type(None)), value, where)
    if hint is JobSpec:
        return _spec_from_wire(value, where)
    codec = _TYPES.get(hint)
    if codec is None:
        raise TypeError(f"the codec does not know {hint!r} ({where})")
    return codec[1](value)


_SPEC_STRINGS = ("job_id", "hostname", "job_dir")


def _spec_from_wire(value: Any, where: str) -> JobSpec:
    """A ``JobSpec`` from its dict, every field type-checked first (``from_dict`` trusts its input)."""
    if not isinstance(value, dict):
        raise InvalidArgument(f"{where}: expected an object")
    for name in _SPEC_STRINGS:
        if not isinstance(value.get(name), str):
            raise InvalidArgument(f"{where}.{name}: expected a string")
    argv, env = value.get("argv"), value.get("env")
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        raise InvalidArgument(f"{where}.argv: expected a list of strings")
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        raise InvalidArgument(f"{where}.env: expected an object of strings")
    for name in ("uid", "gid"):
        if type(value.get(name, 0)) is not int:
            raise InvalidArgument(f"{where}.{name}: expected an integer")
    for name in ("workdir", "seccomp"):
        if not isinstance(value.get(name, ""), str):
            raise InvalidArgument(f"{where}.{name}: expected a string")
    if not isinstance(value.get("resources", {}), dict):
        raise InvalidArgument(f"{where}.resources: expected an object")
    try:
        return JobSpec.from_dict(value)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InvalidArgument(f"{where}: bad job spec: {type(exc).__name__}: {exc}") from exc
