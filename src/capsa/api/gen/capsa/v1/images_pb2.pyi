from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TagImageRequest(_message.Message):
    __slots__ = ("source", "target")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    source: str
    target: str
    def __init__(self, source: _Optional[str] = ..., target: _Optional[str] = ...) -> None: ...

class PushImageRequest(_message.Message):
    __slots__ = ("ref", "destination", "insecure")
    REF_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    INSECURE_FIELD_NUMBER: _ClassVar[int]
    ref: str
    destination: str
    insecure: bool
    def __init__(self, ref: _Optional[str] = ..., destination: _Optional[str] = ..., insecure: _Optional[bool] = ...) -> None: ...

class BlobTransfer(_message.Message):
    __slots__ = ("digest", "size", "done", "state", "media_type")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MEDIA_TYPE_FIELD_NUMBER: _ClassVar[int]
    digest: str
    size: int
    done: int
    state: str
    media_type: str
    def __init__(self, digest: _Optional[str] = ..., size: _Optional[int] = ..., done: _Optional[int] = ..., state: _Optional[str] = ..., media_type: _Optional[str] = ...) -> None: ...

class TransferProgress(_message.Message):
    __slots__ = ("blobs", "done", "destination", "digest", "message")
    BLOBS_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    blobs: _containers.RepeatedCompositeFieldContainer[BlobTransfer]
    done: bool
    destination: str
    digest: str
    message: str
    def __init__(self, blobs: _Optional[_Iterable[_Union[BlobTransfer, _Mapping]]] = ..., done: _Optional[bool] = ..., destination: _Optional[str] = ..., digest: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class SaveImageRequest(_message.Message):
    __slots__ = ("refs",)
    REFS_FIELD_NUMBER: _ClassVar[int]
    refs: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, refs: _Optional[_Iterable[str]] = ...) -> None: ...

class ArchiveChunk(_message.Message):
    __slots__ = ("data", "blob_bytes")
    DATA_FIELD_NUMBER: _ClassVar[int]
    BLOB_BYTES_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    blob_bytes: int
    def __init__(self, data: _Optional[bytes] = ..., blob_bytes: _Optional[int] = ...) -> None: ...

class LoadImageChunk(_message.Message):
    __slots__ = ("data", "tag", "done")
    DATA_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    tag: str
    done: bool
    def __init__(self, data: _Optional[bytes] = ..., tag: _Optional[str] = ..., done: _Optional[bool] = ...) -> None: ...

class LoadImageResponse(_message.Message):
    __slots__ = ("images",)
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[Image]
    def __init__(self, images: _Optional[_Iterable[_Union[Image, _Mapping]]] = ...) -> None: ...

class VerifyImagesRequest(_message.Message):
    __slots__ = ("ref", "all", "repair")
    REF_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    REPAIR_FIELD_NUMBER: _ClassVar[int]
    ref: str
    all: bool
    repair: bool
    def __init__(self, ref: _Optional[str] = ..., all: _Optional[bool] = ..., repair: _Optional[bool] = ...) -> None: ...

class ImageVerifyReport(_message.Message):
    __slots__ = ("ref", "digest", "ok", "blobs_checked", "diff_ids_checked", "snapshots_checked", "problems", "repaired", "repair_error")
    REF_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    BLOBS_CHECKED_FIELD_NUMBER: _ClassVar[int]
    DIFF_IDS_CHECKED_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOTS_CHECKED_FIELD_NUMBER: _ClassVar[int]
    PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    REPAIRED_FIELD_NUMBER: _ClassVar[int]
    REPAIR_ERROR_FIELD_NUMBER: _ClassVar[int]
    ref: str
    digest: str
    ok: bool
    blobs_checked: int
    diff_ids_checked: int
    snapshots_checked: int
    problems: _containers.RepeatedScalarFieldContainer[str]
    repaired: bool
    repair_error: str
    def __init__(self, ref: _Optional[str] = ..., digest: _Optional[str] = ..., ok: _Optional[bool] = ..., blobs_checked: _Optional[int] = ..., diff_ids_checked: _Optional[int] = ..., snapshots_checked: _Optional[int] = ..., problems: _Optional[_Iterable[str]] = ..., repaired: _Optional[bool] = ..., repair_error: _Optional[str] = ...) -> None: ...

class VerifyImagesResponse(_message.Message):
    __slots__ = ("reports",)
    REPORTS_FIELD_NUMBER: _ClassVar[int]
    reports: _containers.RepeatedCompositeFieldContainer[ImageVerifyReport]
    def __init__(self, reports: _Optional[_Iterable[_Union[ImageVerifyReport, _Mapping]]] = ...) -> None: ...

class BackupDatabaseRequest(_message.Message):
    __slots__ = ("dest",)
    DEST_FIELD_NUMBER: _ClassVar[int]
    dest: str
    def __init__(self, dest: _Optional[str] = ...) -> None: ...

class BackupDatabaseResponse(_message.Message):
    __slots__ = ("path", "bytes", "pages", "seconds", "integrity")
    PATH_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    PAGES_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    INTEGRITY_FIELD_NUMBER: _ClassVar[int]
    path: str
    bytes: int
    pages: int
    seconds: float
    integrity: str
    def __init__(self, path: _Optional[str] = ..., bytes: _Optional[int] = ..., pages: _Optional[int] = ..., seconds: _Optional[float] = ..., integrity: _Optional[str] = ...) -> None: ...

class PullImageRequest(_message.Message):
    __slots__ = ("ref", "platform", "insecure", "expected_digest", "request_id")
    REF_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    INSECURE_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_DIGEST_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ref: str
    platform: str
    insecure: bool
    expected_digest: str
    request_id: str
    def __init__(self, ref: _Optional[str] = ..., platform: _Optional[str] = ..., insecure: _Optional[bool] = ..., expected_digest: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class LayerProgress(_message.Message):
    __slots__ = ("digest", "bytes", "total", "state")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    digest: str
    bytes: int
    total: int
    state: str
    def __init__(self, digest: _Optional[str] = ..., bytes: _Optional[int] = ..., total: _Optional[int] = ..., state: _Optional[str] = ...) -> None: ...

class PullProgress(_message.Message):
    __slots__ = ("run_id", "phase", "layers", "done", "image", "message")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    phase: str
    layers: _containers.RepeatedCompositeFieldContainer[LayerProgress]
    done: bool
    image: Image
    message: str
    def __init__(self, run_id: _Optional[str] = ..., phase: _Optional[str] = ..., layers: _Optional[_Iterable[_Union[LayerProgress, _Mapping]]] = ..., done: _Optional[bool] = ..., image: _Optional[_Union[Image, _Mapping]] = ..., message: _Optional[str] = ...) -> None: ...

class Layer(_message.Message):
    __slots__ = ("digest", "size", "media_type")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    MEDIA_TYPE_FIELD_NUMBER: _ClassVar[int]
    digest: str
    size: int
    media_type: str
    def __init__(self, digest: _Optional[str] = ..., size: _Optional[int] = ..., media_type: _Optional[str] = ...) -> None: ...

class Image(_message.Message):
    __slots__ = ("ref", "digest", "size", "created_at_ns", "layers", "config_json", "source", "in_use_by", "unpacked_size")
    REF_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_NS_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    IN_USE_BY_FIELD_NUMBER: _ClassVar[int]
    UNPACKED_SIZE_FIELD_NUMBER: _ClassVar[int]
    ref: str
    digest: str
    size: int
    created_at_ns: int
    layers: _containers.RepeatedCompositeFieldContainer[Layer]
    config_json: str
    source: str
    in_use_by: _containers.RepeatedScalarFieldContainer[str]
    unpacked_size: int
    def __init__(self, ref: _Optional[str] = ..., digest: _Optional[str] = ..., size: _Optional[int] = ..., created_at_ns: _Optional[int] = ..., layers: _Optional[_Iterable[_Union[Layer, _Mapping]]] = ..., config_json: _Optional[str] = ..., source: _Optional[str] = ..., in_use_by: _Optional[_Iterable[str]] = ..., unpacked_size: _Optional[int] = ...) -> None: ...

class ListImagesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListImagesResponse(_message.Message):
    __slots__ = ("images",)
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[Image]
    def __init__(self, images: _Optional[_Iterable[_Union[Image, _Mapping]]] = ...) -> None: ...

class InspectImageRequest(_message.Message):
    __slots__ = ("ref",)
    REF_FIELD_NUMBER: _ClassVar[int]
    ref: str
    def __init__(self, ref: _Optional[str] = ...) -> None: ...

class RemoveImageRequest(_message.Message):
    __slots__ = ("ref", "force")
    REF_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    ref: str
    force: bool
    def __init__(self, ref: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class RemoveImageResponse(_message.Message):
    __slots__ = ("removed",)
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    removed: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, removed: _Optional[_Iterable[str]] = ...) -> None: ...

class PruneImagesRequest(_message.Message):
    __slots__ = ("all", "dry_run")
    ALL_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    all: bool
    dry_run: bool
    def __init__(self, all: _Optional[bool] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class PruneImagesResponse(_message.Message):
    __slots__ = ("removed", "bytes_freed")
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    BYTES_FREED_FIELD_NUMBER: _ClassVar[int]
    removed: _containers.RepeatedScalarFieldContainer[str]
    bytes_freed: int
    def __init__(self, removed: _Optional[_Iterable[str]] = ..., bytes_freed: _Optional[int] = ...) -> None: ...

class ImageHistoryRequest(_message.Message):
    __slots__ = ("ref", "limit")
    REF_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    ref: str
    limit: int
    def __init__(self, ref: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class FsmEvent(_message.Message):
    __slots__ = ("seq", "kind", "transition", "message", "at_ns")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TRANSITION_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    AT_NS_FIELD_NUMBER: _ClassVar[int]
    seq: int
    kind: str
    transition: str
    message: str
    at_ns: int
    def __init__(self, seq: _Optional[int] = ..., kind: _Optional[str] = ..., transition: _Optional[str] = ..., message: _Optional[str] = ..., at_ns: _Optional[int] = ...) -> None: ...

class FsmRun(_message.Message):
    __slots__ = ("run_id", "machine", "resource_id", "action", "state", "current_transition", "attempt", "error_code", "error_message", "created_at_ns", "finished_at_ns", "events")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    MACHINE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CURRENT_TRANSITION_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_NS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_NS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    machine: str
    resource_id: str
    action: str
    state: str
    current_transition: str
    attempt: int
    error_code: str
    error_message: str
    created_at_ns: int
    finished_at_ns: int
    events: _containers.RepeatedCompositeFieldContainer[FsmEvent]
    def __init__(self, run_id: _Optional[str] = ..., machine: _Optional[str] = ..., resource_id: _Optional[str] = ..., action: _Optional[str] = ..., state: _Optional[str] = ..., current_transition: _Optional[str] = ..., attempt: _Optional[int] = ..., error_code: _Optional[str] = ..., error_message: _Optional[str] = ..., created_at_ns: _Optional[int] = ..., finished_at_ns: _Optional[int] = ..., events: _Optional[_Iterable[_Union[FsmEvent, _Mapping]]] = ...) -> None: ...

class ImageHistoryResponse(_message.Message):
    __slots__ = ("runs",)
    RUNS_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[FsmRun]
    def __init__(self, runs: _Optional[_Iterable[_Union[FsmRun, _Mapping]]] = ...) -> None: ...
