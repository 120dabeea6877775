from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class FastPathRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class FastPathReply(_message.Message):
    __slots__ = ("socket_path", "token", "ttl_seconds")
    SOCKET_PATH_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    socket_path: str
    token: str
    ttl_seconds: float
    def __init__(self, socket_path: _Optional[str] = ..., token: _Optional[str] = ..., ttl_seconds: _Optional[float] = ...) -> None: ...

class CopyOutRequest(_message.Message):
    __slots__ = ("job_id", "path", "fast_token")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    FAST_TOKEN_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    path: str
    fast_token: str
    def __init__(self, job_id: _Optional[str] = ..., path: _Optional[str] = ..., fast_token: _Optional[str] = ...) -> None: ...

class TarChunk(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class CopyInChunk(_message.Message):
    __slots__ = ("job_id", "path", "data", "done", "fast_token")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    FAST_TOKEN_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    path: str
    data: bytes
    done: bool
    fast_token: str
    def __init__(self, job_id: _Optional[str] = ..., path: _Optional[str] = ..., data: _Optional[bytes] = ..., done: _Optional[bool] = ..., fast_token: _Optional[str] = ...) -> None: ...

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
