from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BuildRuntimeRequest(_message.Message):
    __slots__ = ("spec_yaml", "force", "source")
    SPEC_YAML_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    spec_yaml: str
    force: bool
    source: str
    def __init__(self, spec_yaml: _Optional[str] = ..., force: _Optional[bool] = ..., source: _Optional[str] = ...) -> None: ...

class BuildProgress(_message.Message):
    __slots__ = ("run_id", "phase", "step", "steps", "log", "done", "up_to_date", "runtime")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    LOG_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    UP_TO_DATE_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    phase: str
    step: int
    steps: int
    log: bytes
    done: bool
    up_to_date: bool
    runtime: Runtime
    def __init__(self, run_id: _Optional[str] = ..., phase: _Optional[str] = ..., step: _Optional[int] = ..., steps: _Optional[int] = ..., log: _Optional[bytes] = ..., done: _Optional[bool] = ..., up_to_date: _Optional[bool] = ..., runtime: _Optional[_Union[Runtime, _Mapping]] = ...) -> None: ...

class RuntimeLayer(_message.Message):
    __slots__ = ("digest", "size", "media_type")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    MEDIA_TYPE_FIELD_NUMBER: _ClassVar[int]
    digest: str
    size: int
    media_type: str
    def __init__(self, digest: _Optional[str] = ..., size: _Optional[int] = ..., media_type: _Optional[str] = ...) -> None: ...

class BuildRun(_message.Message):
    __slots__ = ("run_id", "state", "error_message", "created_at_ns", "finished_at_ns")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_NS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_NS_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    state: str
    error_message: str
    created_at_ns: int
    finished_at_ns: int
    def __init__(self, run_id: _Optional[str] = ..., state: _Optional[str] = ..., error_message: _Optional[str] = ..., created_at_ns: _Optional[int] = ..., finished_at_ns: _Optional[int] = ...) -> None: ...

class Runtime(_message.Message):
    __slots__ = ("name", "version", "ref", "image_ref", "digest", "size", "created_at_ns", "spec_hash", "spec_json", "base", "description", "layers", "in_use_by", "builds")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REF_FIELD_NUMBER: _ClassVar[int]
    IMAGE_REF_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_NS_FIELD_NUMBER: _ClassVar[int]
    SPEC_HASH_FIELD_NUMBER: _ClassVar[int]
    SPEC_JSON_FIELD_NUMBER: _ClassVar[int]
    BASE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    IN_USE_BY_FIELD_NUMBER: _ClassVar[int]
    BUILDS_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    ref: str
    image_ref: str
    digest: str
    size: int
    created_at_ns: int
    spec_hash: str
    spec_json: str
    base: str
    description: str
    layers: _containers.RepeatedCompositeFieldContainer[RuntimeLayer]
    in_use_by: _containers.RepeatedScalarFieldContainer[str]
    builds: _containers.RepeatedCompositeFieldContainer[BuildRun]
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., ref: _Optional[str] = ..., image_ref: _Optional[str] = ..., digest: _Optional[str] = ..., size: _Optional[int] = ..., created_at_ns: _Optional[int] = ..., spec_hash: _Optional[str] = ..., spec_json: _Optional[str] = ..., base: _Optional[str] = ..., description: _Optional[str] = ..., layers: _Optional[_Iterable[_Union[RuntimeLayer, _Mapping]]] = ..., in_use_by: _Optional[_Iterable[str]] = ..., builds: _Optional[_Iterable[_Union[BuildRun, _Mapping]]] = ...) -> None: ...

class ListRuntimesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListRuntimesResponse(_message.Message):
    __slots__ = ("runtimes",)
    RUNTIMES_FIELD_NUMBER: _ClassVar[int]
    runtimes: _containers.RepeatedCompositeFieldContainer[Runtime]
    def __init__(self, runtimes: _Optional[_Iterable[_Union[Runtime, _Mapping]]] = ...) -> None: ...

class InspectRuntimeRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class RemoveRuntimeRequest(_message.Message):
    __slots__ = ("name", "force")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    force: bool
    def __init__(self, name: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class RemoveRuntimeResponse(_message.Message):
    __slots__ = ("removed",)
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    removed: str
    def __init__(self, removed: _Optional[str] = ...) -> None: ...
