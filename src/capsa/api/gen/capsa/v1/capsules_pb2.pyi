from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CapsuleHeader(_message.Message):
    __slots__ = ("name", "version", "dependencies", "labels", "request_id")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DEPENDENCIES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    dependencies: _containers.RepeatedScalarFieldContainer[str]
    labels: _containers.ScalarMap[str, str]
    request_id: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., dependencies: _Optional[_Iterable[str]] = ..., labels: _Optional[_Mapping[str, str]] = ..., request_id: _Optional[str] = ...) -> None: ...

class CreateCapsuleRequest(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: CapsuleHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[CapsuleHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class CapsuleAttachment(_message.Message):
    __slots__ = ("job_id", "name", "version", "digest", "target", "attached_at_ns")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    ATTACHED_AT_NS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    name: str
    version: str
    digest: str
    target: str
    attached_at_ns: int
    def __init__(self, job_id: _Optional[str] = ..., name: _Optional[str] = ..., version: _Optional[str] = ..., digest: _Optional[str] = ..., target: _Optional[str] = ..., attached_at_ns: _Optional[int] = ...) -> None: ...

class Capsule(_message.Message):
    __slots__ = ("name", "version", "digest", "size", "entries", "dependencies", "labels", "pinned", "created_at_ns", "last_used_at_ns", "attachments")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    DEPENDENCIES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    PINNED_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_NS_FIELD_NUMBER: _ClassVar[int]
    LAST_USED_AT_NS_FIELD_NUMBER: _ClassVar[int]
    ATTACHMENTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    digest: str
    size: int
    entries: int
    dependencies: _containers.RepeatedScalarFieldContainer[str]
    labels: _containers.ScalarMap[str, str]
    pinned: bool
    created_at_ns: int
    last_used_at_ns: int
    attachments: _containers.RepeatedCompositeFieldContainer[CapsuleAttachment]
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., digest: _Optional[str] = ..., size: _Optional[int] = ..., entries: _Optional[int] = ..., dependencies: _Optional[_Iterable[str]] = ..., labels: _Optional[_Mapping[str, str]] = ..., pinned: _Optional[bool] = ..., created_at_ns: _Optional[int] = ..., last_used_at_ns: _Optional[int] = ..., attachments: _Optional[_Iterable[_Union[CapsuleAttachment, _Mapping]]] = ...) -> None: ...

class CapsuleRef(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class ListCapsulesRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListCapsulesResponse(_message.Message):
    __slots__ = ("capsules",)
    CAPSULES_FIELD_NUMBER: _ClassVar[int]
    capsules: _containers.RepeatedCompositeFieldContainer[Capsule]
    def __init__(self, capsules: _Optional[_Iterable[_Union[Capsule, _Mapping]]] = ...) -> None: ...

class RemoveCapsuleResponse(_message.Message):
    __slots__ = ("removed",)
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    removed: str
    def __init__(self, removed: _Optional[str] = ...) -> None: ...

class AttachCapsuleRequest(_message.Message):
    __slots__ = ("job_id", "capsule", "target")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    CAPSULE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    capsule: str
    target: str
    def __init__(self, job_id: _Optional[str] = ..., capsule: _Optional[str] = ..., target: _Optional[str] = ...) -> None: ...

class SwapCapsuleRequest(_message.Message):
    __slots__ = ("job_id", "capsule")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    CAPSULE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    capsule: str
    def __init__(self, job_id: _Optional[str] = ..., capsule: _Optional[str] = ...) -> None: ...

class DetachCapsuleRequest(_message.Message):
    __slots__ = ("job_id", "name")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    name: str
    def __init__(self, job_id: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class MountChange(_message.Message):
    __slots__ = ("job_id", "added", "removed", "kept", "latency_ns")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ADDED_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    KEPT_FIELD_NUMBER: _ClassVar[int]
    LATENCY_NS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    added: _containers.RepeatedCompositeFieldContainer[CapsuleAttachment]
    removed: _containers.RepeatedCompositeFieldContainer[CapsuleAttachment]
    kept: _containers.RepeatedCompositeFieldContainer[CapsuleAttachment]
    latency_ns: int
    def __init__(self, job_id: _Optional[str] = ..., added: _Optional[_Iterable[_Union[CapsuleAttachment, _Mapping]]] = ..., removed: _Optional[_Iterable[_Union[CapsuleAttachment, _Mapping]]] = ..., kept: _Optional[_Iterable[_Union[CapsuleAttachment, _Mapping]]] = ..., latency_ns: _Optional[int] = ...) -> None: ...

class PushCapsuleRequest(_message.Message):
    __slots__ = ("capsule", "destination", "insecure")
    CAPSULE_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    INSECURE_FIELD_NUMBER: _ClassVar[int]
    capsule: str
    destination: str
    insecure: bool
    def __init__(self, capsule: _Optional[str] = ..., destination: _Optional[str] = ..., insecure: _Optional[bool] = ...) -> None: ...

class PushCapsuleResponse(_message.Message):
    __slots__ = ("location", "digest", "size", "manifest_digest")
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_DIGEST_FIELD_NUMBER: _ClassVar[int]
    location: str
    digest: str
    size: int
    manifest_digest: str
    def __init__(self, location: _Optional[str] = ..., digest: _Optional[str] = ..., size: _Optional[int] = ..., manifest_digest: _Optional[str] = ...) -> None: ...

class PullCapsuleRequest(_message.Message):
    __slots__ = ("source", "insecure")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    INSECURE_FIELD_NUMBER: _ClassVar[int]
    source: str
    insecure: bool
    def __init__(self, source: _Optional[str] = ..., insecure: _Optional[bool] = ...) -> None: ...

class GcCapsulesRequest(_message.Message):
    __slots__ = ("unused", "older_than_seconds", "dry_run")
    UNUSED_FIELD_NUMBER: _ClassVar[int]
    OLDER_THAN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    unused: bool
    older_than_seconds: float
    dry_run: bool
    def __init__(self, unused: _Optional[bool] = ..., older_than_seconds: _Optional[float] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class GcCapsulesResponse(_message.Message):
    __slots__ = ("removed_versions", "removed_content", "bytes_freed", "dry_run")
    REMOVED_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    REMOVED_CONTENT_FIELD_NUMBER: _ClassVar[int]
    BYTES_FREED_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    removed_versions: _containers.RepeatedScalarFieldContainer[str]
    removed_content: _containers.RepeatedScalarFieldContainer[str]
    bytes_freed: int
    dry_run: bool
    def __init__(self, removed_versions: _Optional[_Iterable[str]] = ..., removed_content: _Optional[_Iterable[str]] = ..., bytes_freed: _Optional[int] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class VerifyCapsulesRequest(_message.Message):
    __slots__ = ("ref", "all", "repair")
    REF_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    REPAIR_FIELD_NUMBER: _ClassVar[int]
    ref: str
    all: bool
    repair: bool
    def __init__(self, ref: _Optional[str] = ..., all: _Optional[bool] = ..., repair: _Optional[bool] = ...) -> None: ...

class CapsuleVerifyReport(_message.Message):
    __slots__ = ("ref", "digest", "ok", "problem", "entries", "repaired", "repair_error")
    REF_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    REPAIRED_FIELD_NUMBER: _ClassVar[int]
    REPAIR_ERROR_FIELD_NUMBER: _ClassVar[int]
    ref: str
    digest: str
    ok: bool
    problem: str
    entries: int
    repaired: bool
    repair_error: str
    def __init__(self, ref: _Optional[str] = ..., digest: _Optional[str] = ..., ok: _Optional[bool] = ..., problem: _Optional[str] = ..., entries: _Optional[int] = ..., repaired: _Optional[bool] = ..., repair_error: _Optional[str] = ...) -> None: ...

class VerifyCapsulesResponse(_message.Message):
    __slots__ = ("reports",)
    REPORTS_FIELD_NUMBER: _ClassVar[int]
    reports: _containers.RepeatedCompositeFieldContainer[CapsuleVerifyReport]
    def __init__(self, reports: _Optional[_Iterable[_Union[CapsuleVerifyReport, _Mapping]]] = ...) -> None: ...
