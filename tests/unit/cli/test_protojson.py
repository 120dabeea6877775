"""message_dict gives what MessageToDict gives (keys, order, values) for capsa's API messages."""

from __future__ import annotations

import json
import math

import pytest
from google.protobuf.json_format import MessageToDict

from capsa.api.gen.capsa.v1 import capsules_pb2 as cpb
from capsa.api.gen.capsa.v1 import images_pb2 as ipb
from capsa.api.gen.capsa.v1 import jobs_pb2 as pb
from capsa.api.gen.capsa.v1 import metrics_pb2 as mpb
from capsa.api.gen.capsa.v1 import networks_pb2 as npb
from capsa.api.gen.capsa.v1 import runtimes_pb2 as rpb
from capsa.api.gen.capsa.v1 import workflows_pb2 as wpb
from capsa.cli.protojson import message_dict


def _reference(message: object) -> dict:
    return MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


MESSAGES = [
    pb.Job(),
    pb.Job(id="abc", state="RUNNING", command=["/bin/sh", "-c", "echo hi"], env={"A": "1", "B": "2"},
           exit_code=3, ended=True, created_at_ns=1_700_000_000_123_456_789,
           resources=pb.Resources(max_cpu=50, max_memory_mb=1 << 40, max_iobps=7)),
    pb.LogChunk(seq=9, stream=2, data=b"\x00\xffbytes", timestamp_ns=12),
    pb.UploadChunk(entry=pb.UploadEntry(path="a/b", size=5), data=b"hello"),
    mpb.NodeStats(cpu_percent=12.5, memory_total_bytes=1 << 33, load1=float("inf"), load5=float("nan")),
    mpb.JobMetrics(cpu_percent=1.5, memory_current_bytes=0),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_same_dict_in_the_same_order(message: object) -> None:
    ours, theirs = message_dict(message), _reference(message)
    assert json.dumps(ours) == json.dumps(theirs)   # NaN included: both say "NaN"
    assert list(ours) == list(theirs)


def test_every_message_type_of_the_api_with_defaults_matches() -> None:
    for module in (pb, ipb, mpb, wpb, cpb, npb, rpb):
        for name in module.DESCRIPTOR.message_types_by_name:
            message = getattr(module, name)()
            assert message_dict(message) == _reference(message), name


def test_doubles_keep_their_value() -> None:
    value = message_dict(mpb.NodeStats(load15=math.pi))["load15"]
    assert value == math.pi


def test_enums_and_bool_map_keys_as_json_format_writes_them() -> None:
    """capsa's API has neither today; a message built at run time covers those branches."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    fdp = descriptor_pb2.FileDescriptorProto(name="capsa_test_protojson.proto", package="capsatest", syntax="proto3")
    color = fdp.enum_type.add(name="Color")
    color.value.add(name="COLOR_UNSET", number=0)
    color.value.add(name="RED", number=1)
    msg = fdp.message_type.add(name="M")
    entry = msg.nested_type.add(name="FlagsEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=8, label=1)      # bool
    entry.field.add(name="value", number=2, type=9, label=1)    # string
    msg.field.add(name="color", number=1, type=14, label=1, type_name=".capsatest.Color")
    msg.field.add(name="colors", number=2, type=14, label=3, type_name=".capsatest.Color")
    msg.field.add(name="flags", number=3, type=11, label=3, type_name=".capsatest.M.FlagsEntry")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    cls = message_factory.GetMessageClass(pool.FindMessageTypeByName("capsatest.M"))
    for message in (cls(), cls(color=1, colors=[1, 0, 7], flags={True: "y", False: "n"})):
        assert json.dumps(message_dict(message)) == json.dumps(_reference(message))


def _filled(cls: type, depth: int = 0) -> object:
    """A message of ``cls`` with every field set to a non-default value (nested messages two levels deep)."""
    message = cls()
    for field in message.DESCRIPTOR.fields:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            if value_field.message_type is None:
                getattr(message, field.name)["k"] = _scalar(value_field)
            elif depth < 2:
                getattr(message, field.name)["k"].CopyFrom(_filled(type(getattr(message, field.name)["k"]), depth + 1))
        elif field.message_type is not None:
            if depth < 2:
                if field.is_repeated:
                    getattr(message, field.name).add().CopyFrom(
                        _filled(type(getattr(message, field.name).add()), depth + 1))
                else:
                    getattr(message, field.name).CopyFrom(_filled(type(getattr(message, field.name)), depth + 1))
        elif field.is_repeated:
            getattr(message, field.name).extend([_scalar(field), _scalar(field)])
        else:
            setattr(message, field.name, _scalar(field))
    return message


def _scalar(field: object) -> object:
    kind = field.cpp_type  # type: ignore[attr-defined]
    if kind == field.CPPTYPE_STRING:  # type: ignore[attr-defined]
        return b"\x00\xfe" if field.type == field.TYPE_BYTES else "x"  # type: ignore[attr-defined]
    if kind == field.CPPTYPE_BOOL:  # type: ignore[attr-defined]
        return True
    if kind in (field.CPPTYPE_DOUBLE, field.CPPTYPE_FLOAT):  # type: ignore[attr-defined]
        return 1.5
    if kind == field.CPPTYPE_ENUM:  # type: ignore[attr-defined]
        return 1
    return 7 if kind in (field.CPPTYPE_INT32, field.CPPTYPE_UINT32) else (1 << 40)  # type: ignore[attr-defined]


def test_every_message_type_of_the_api_filled_matches() -> None:
    for module in (pb, ipb, mpb, wpb, cpb, npb, rpb):
        for name in module.DESCRIPTOR.message_types_by_name:
            message = _filled(getattr(module, name))
            assert json.dumps(message_dict(message)) == json.dumps(_reference(message)), name
