from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class CopyOutRequest(_message.Message):
    __slots__ = ("job_id", "path")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    path: str
    def __init__(self, job_id: _Optional[str] = ..., path: _Optional[str] = ...) -> None: ...

class TarChunk(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class CopyInChunk(_message.Message):
    __slots__ = ("job_id", "path", "data", "done")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    path: str
    data: bytes
    done: bool
    def __init__(self, job_id: _Optional[str] = ..., path: _Optional[str] = ..., data: _Optional[bytes] = ..., done: _Optional[bool] = ...) -> None: ...

class CopyInResult(_message.Message):
    __slots__ = ("path", "files", "dirs", "symlinks", "bytes")
    PATH_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    DIRS_FIELD_NUMBER: _ClassVar[int]
    SYMLINKS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    path: str
    files: int
    dirs: int
    symlinks: int
    bytes: int
    def __init__(self, path: _Optional[str] = ..., files: _Optional[int] = ..., dirs: _Optional[int] = ..., symlinks: _Optional[int] = ..., bytes: _Optional[int] = ...) -> None: ...
