from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class PruneRequest(_message.Message):
    __slots__ = ("older_than", "states", "dry_run")
    OLDER_THAN_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    older_than: str
    states: _containers.RepeatedScalarFieldContainer[str]
    dry_run: bool
    def __init__(self, older_than: _Optional[str] = ..., states: _Optional[_Iterable[str]] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class PruneResponse(_message.Message):
    __slots__ = ("job_ids", "bytes_freed", "fsm_runs_removed")
    JOB_IDS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FREED_FIELD_NUMBER: _ClassVar[int]
    FSM_RUNS_REMOVED_FIELD_NUMBER: _ClassVar[int]
    job_ids: _containers.RepeatedScalarFieldContainer[str]
    bytes_freed: int
    fsm_runs_removed: int
    def __init__(self, job_ids: _Optional[_Iterable[str]] = ..., bytes_freed: _Optional[int] = ..., fsm_runs_removed: _Optional[int] = ...) -> None: ...
