"""Protobuf messages as JSON-ready dicts, the way ``MessageToDict(preserving_proto_field_name=True,
always_print_fields_with_no_presence=True)`` writes them, without importing json_format.

json_format pulls in text_format, the well-known-type helpers and more on every
CLI command that prints a job; this walks the descriptor directly. Same keys, same
order (set fields by number, then the unset fields without presence), same values:
64-bit integers as strings, enums by name, bytes as base64, NaN/Infinity as strings.
Well-known types (google.protobuf.*) and 32-bit floats, which capsa's API does not
use, are handed to json_format. tests/unit/cli/test_protojson.py compares both.
"""

from __future__ import annotations

import base64
import math
from typing import Any

__all__ = ["message_dict"]


def message_dict(message: Any) -> dict[str, Any]:
    descriptor = message.DESCRIPTOR
    if descriptor.full_name.startswith("google.protobuf."):
        return _json_format(message)
    out: dict[str, Any] = {}
    for field, value in message.ListFields():
        if field.is_extension:
            return _json_format(message)
        if _is_map(field):
            value_field = field.message_type.fields_by_name["value"]
            out[field.name] = {_map_key(k): _value(value_field, v) for k, v in value.items()}
        elif field.is_repeated:
            out[field.name] = [_value(field, v) for v in value]
        else:
            out[field.name] = _value(field, value)
    for field in descriptor.fields:
        if field.has_presence or field.name in out:
            continue
        if _is_map(field):
            out[field.name] = {}
        elif field.is_repeated:
            out[field.name] = []
        else:
            out[field.name] = _value(field, field.default_value)
    return out


def _is_map(field: Any) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def _map_key(key: Any) -> str:
    if isinstance(key, bool):
        return "true" if key else "false"
    return str(key)


def _value(field: Any, value: Any) -> Any:
    kind = field.cpp_type
    if kind == field.CPPTYPE_MESSAGE:
        return message_dict(value)
    if kind == field.CPPTYPE_ENUM:
        enum_value = field.enum_type.values_by_number.get(value)
        if field.enum_type.full_name == "google.protobuf.NullValue" or enum_value is None or \
                enum_value.GetOptions().ListFields():
            return _json_format_field(field, value)
        return enum_value.name
    if kind == field.CPPTYPE_STRING:
        return base64.b64encode(value).decode("utf-8") if field.type == field.TYPE_BYTES else str(value)
    if kind == field.CPPTYPE_BOOL:
        return bool(value)
    if kind in (field.CPPTYPE_INT64, field.CPPTYPE_UINT64):
        return str(value)
    if kind == field.CPPTYPE_DOUBLE:
        if math.isinf(value):
            return "-Infinity" if value < 0 else "Infinity"
        if math.isnan(value):
            return "NaN"
        return value
    if kind == field.CPPTYPE_FLOAT:
        return _json_format_field(field, value)
    return value


def _json_format(message: Any) -> dict[str, Any]:
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


def _json_format_field(field: Any, value: Any) -> Any:
    from google.protobuf.json_format import _Printer  # the one converter json_format itself uses

    return _Printer(preserving_proto_field_name=True, always_print_fields_with_no_presence=True) \
        ._FieldToJsonObject(field, value)
