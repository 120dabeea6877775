"""Bounds on every request, checked at the API boundary before any servicer code runs.

One walk over the decoded message checks every field it sets against a rule:
the rule named for ``Message.field`` in :data:`RULES`, else the default for the
field's type. Numbers must be finite and in range, strings short and free of
NUL, repeated fields and maps bounded in entries and total bytes. A violation
is ``InvalidArgument`` naming the field (``RunJobRequest.env``) and the limit;
docs/jobs.md "Limits" lists the same numbers. Domain packages still check
meaning (a cpuset, a capsule name); this module keeps sizes and magnitudes
from ever reaching them.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from capsa.errors import InvalidArgument

__all__ = ["RULES", "Rule", "validate"]

KiB = 1024
MiB = 1024 * KiB
_INT_MAX = (1 << 53) - 1   # beyond this a JSON/float round trip loses digits; no capsa quantity needs more


@dataclass(frozen=True)
class Rule:
    """Bounds for one field. ``max_bytes`` bounds each string; ``max_items`` and ``max_total`` bound a
    repeated field or map (total = UTF-8 bytes of every key and value); ``low``/``high`` bound numbers."""

    max_bytes: int = 4 * KiB
    max_items: int = 1024
    max_total: int = 128 * KiB
    low: float = 0
    high: float = _INT_MAX
    pattern: re.Pattern[str] | None = None
    hint: str = ""


_NAME = Rule(max_bytes=128, pattern=re.compile(r"[^\x00-\x1f\x7f]*"), hint="printable characters")
_REQUEST_ID = Rule(max_bytes=128, pattern=re.compile(r"[A-Za-z0-9._:-]*"), hint="letters, digits and . _ : -")
_YAML = Rule(max_bytes=1 * MiB)
_SECONDS = Rule(high=10 * 365 * 86400)   # ten years

RULES: dict[str, Rule] = {
    # jobs
    "RunJobRequest.name": _NAME,
    "RunJobRequest.command": Rule(max_bytes=128 * KiB, max_items=256, max_total=128 * KiB),
    "RunJobRequest.env": Rule(max_bytes=128 * KiB, max_items=1024, max_total=128 * KiB),
    "RunJobRequest.secret_env": Rule(max_bytes=64 * KiB, max_items=256, max_total=64 * KiB),
    "RunJobRequest.volumes": Rule(max_items=64, max_total=16 * KiB),
    "RunJobRequest.capsules": Rule(max_items=64, max_total=16 * KiB),
    "RunJobRequest.gpus": Rule(high=64),
    "RunJobRequest.request_id": _REQUEST_ID,
    "Resources.max_cpu": Rule(high=100 * 4096),            # percent of one core, up to 4,096 cores
    "Resources.max_memory_mb": Rule(high=1 << 30),         # 1 PiB
    "Resources.max_iobps": Rule(high=1 << 50),
    "Resources.max_pids": Rule(high=1 << 22),              # the kernel's PID_MAX_LIMIT
    "StopJobRequest.grace_seconds": Rule(high=86400),
    "StreamLogsRequest.from_seq": Rule(high=(1 << 62)),
    "ListJobsRequest.limit": Rule(high=10_000),
    "ListJobsRequest.page_token": Rule(max_bytes=256),
    # names, labels, filters, log selection (wall-clock ns run past 2**53: their own high)
    "RunJobRequest.labels": Rule(max_bytes=1 * KiB, max_items=64, max_total=64 * KiB),
    "ListJobsRequest.since_ns": Rule(high=(1 << 63) - 1),
    "ListJobsRequest.labels": Rule(max_items=64, max_total=64 * KiB),
    "StreamLogsRequest.since_ns": Rule(high=(1 << 63) - 1),
    "StreamLogsRequest.until_ns": Rule(high=(1 << 63) - 1),
    "StreamLogsRequest.tail": Rule(low=-1, high=1 << 40),   # -1: no history, only what follows
    "EventsRequest.since_ns": Rule(high=(1 << 63) - 1),
    "EventsRequest.types": Rule(max_items=8),
    "EventsRequest.ids": Rule(max_items=1024, max_total=64 * KiB),
    "UploadEntry.mode": Rule(high=0o7777),
    "UploadEntry.size": Rule(high=1 << 50),
    # workflows, runtimes
    "SubmitWorkflowRequest.yaml": _YAML,
    "SubmitPoolWorkflowRequest.yaml": _YAML,   # cluster: a pool workflow is the same document
    "SubmitWorkflowRequest.request_id": _REQUEST_ID,
    "ListWorkflowsRequest.limit": Rule(high=100_000),
    "SubmitWorkflowRequest.labels": Rule(max_bytes=1 * KiB, max_items=64, max_total=64 * KiB),
    "BuildRuntimeRequest.spec_yaml": _YAML,
    # images
    "PullImageRequest.request_id": _REQUEST_ID,
    "ImageHistoryRequest.limit": Rule(high=10_000),
    # capsules
    "CapsuleHeader.name": _NAME,
    "CapsuleHeader.dependencies": Rule(max_items=256, max_total=64 * KiB),
    "CapsuleHeader.labels": Rule(max_bytes=1 * KiB, max_items=256, max_total=64 * KiB),
    "CapsuleHeader.request_id": _REQUEST_ID,
    "GcCapsulesRequest.older_than_seconds": _SECONDS,
    # networks, volumes
    "CreateNetworkRequest.name": _NAME,
    "CreateVolumeRequest.name": _NAME,
}

_STRINGS = {FieldDescriptor.TYPE_STRING}
_FLOATS = {FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT}
_INTS = {
    FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED32, FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED32,
    FieldDescriptor.TYPE_SFIXED64,
}
_DEFAULT = Rule()
_MAX_DEPTH = 8   # capsa's messages nest three deep; anything deeper is not ours


def validate(message: Message) -> None:
    """Raise InvalidArgument naming the first field of ``message`` that breaks its rule."""
    _message(message, 0)


def _message(message: Message, depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise InvalidArgument(f"{message.DESCRIPTOR.name}: nested too deeply")
    for fd, value in message.ListFields():
        where = f"{message.DESCRIPTOR.name}.{fd.name}"
        rule = RULES.get(where, _DEFAULT)
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            _map(where, rule, value, fd.message_type.fields_by_name["value"], depth)
        elif _is_repeated(fd):
            if len(value) > rule.max_items:
                raise InvalidArgument(f"{where} has {len(value)} entries; the limit is {rule.max_items}")
            total = 0
            for item in value:
                total += _one(where, rule, fd, item, depth)
                if total > rule.max_total:
                    raise InvalidArgument(f"{where} is larger than {_size(rule.max_total)} in total")
        else:
            _one(where, rule, fd, value, depth)


def _is_repeated(fd: FieldDescriptor) -> bool:
    is_repeated = getattr(fd, "is_repeated", None)   # newer protobuf; `label` is deprecated there
    if is_repeated is not None:
        return bool(is_repeated)
    return fd.label == FieldDescriptor.LABEL_REPEATED  # type: ignore[attr-defined,no-any-return]


def _map(where: str, rule: Rule, value: Any, value_fd: FieldDescriptor, depth: int) -> None:
    if len(value) > rule.max_items:
        raise InvalidArgument(f"{where} has {len(value)} entries; the limit is {rule.max_items}")
    total = 0
    for key, item in value.items():
        total += _string(f"{where} key", rule, key) if isinstance(key, str) else 8
        total += _one(f"{where}[{str(key)[:40]!r}]", rule, value_fd, item, depth)
        if total > rule.max_total:
            raise InvalidArgument(f"{where} is larger than {_size(rule.max_total)} in total")


def _one(where: str, rule: Rule, fd: FieldDescriptor, value: Any, depth: int) -> int:
    """Check one (non-repeated) value; return its size in bytes for the totals."""
    if fd.type in _STRINGS:
        return _string(where, rule, value)
    if fd.type in _FLOATS:
        if not math.isfinite(value):
            raise InvalidArgument(f"{where} must be a finite number, got {value!r}")
        _range(where, rule, value)
        return 8
    if fd.type in _INTS:
        _range(where, rule, value)
        return 8
    if fd.type == FieldDescriptor.TYPE_MESSAGE:
        _message(value, depth + 1)
        return value.ByteSize()   # type: ignore[no-any-return]
    if fd.type == FieldDescriptor.TYPE_BYTES:
        return len(value)
    return 1


def _range(where: str, rule: Rule, value: float) -> None:
    if value < rule.low or value > rule.high:
        raise InvalidArgument(f"{where} must be between {rule.low:g} and {rule.high:g}, got {value!r}")


def _string(where: str, rule: Rule, value: str) -> int:
    if len(value) > rule.max_bytes:   # characters >= bytes / 4: a cheap first cut before encoding
        raise InvalidArgument(f"{where} is longer than {_size(rule.max_bytes)}")
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > rule.max_bytes:
        raise InvalidArgument(f"{where} is longer than {_size(rule.max_bytes)}")
    if "\x00" in value:
        raise InvalidArgument(f"{where} contains a NUL character")
    if rule.pattern is not None and not rule.pattern.fullmatch(value):
        raise InvalidArgument(f"{where} may contain only {rule.hint}, got {value[:64]!r}")
    return size


def _size(n: int) -> str:
    if n >= MiB and n % MiB == 0:
        return f"{n // MiB} MiB"
    if n >= KiB and n % KiB == 0:
        return f"{n // KiB} KiB"
    return f"{n} bytes"
