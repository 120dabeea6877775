from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ExecInput(_message.Message):
    __slots__ = ("start", "stdin", "stdin_eof", "rows", "cols", "detach")
    START_FIELD_NUMBER: _ClassVar[int]
    STDIN_FIELD_NUMBER: _ClassVar[int]
    STDIN_EOF_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    COLS_FIELD_NUMBER: _ClassVar[int]
    DETACH_FIELD_NUMBER: _ClassVar[int]
    start: ExecRequest
    stdin: bytes
    stdin_eof: bool
    rows: int
    cols: int
    detach: bool
    def __init__(self, start: _Optional[_Union[ExecRequest, _Mapping]] = ..., stdin: _Optional[bytes] = ..., stdin_eof: _Optional[bool] = ..., rows: _Optional[int] = ..., cols: _Optional[int] = ..., detach: _Optional[bool] = ...) -> None: ...

class ExecOutput(_message.Message):
    __slots__ = ("data", "stream", "attached", "tty", "ended", "exit_code", "signal", "oom_killed", "start_latency_ns")
    DATA_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    ATTACHED_FIELD_NUMBER: _ClassVar[int]
    TTY_FIELD_NUMBER: _ClassVar[int]
    ENDED_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    OOM_KILLED_FIELD_NUMBER: _ClassVar[int]
    START_LATENCY_NS_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    stream: int
    attached: bool
    tty: bool
    ended: bool
    exit_code: int
    signal: int
    oom_killed: bool
    start_latency_ns: int
    def __init__(self, data: _Optional[bytes] = ..., stream: _Optional[int] = ..., attached: _Optional[bool] = ..., tty: _Optional[bool] = ..., ended: _Optional[bool] = ..., exit_code: _Optional[int] = ..., signal: _Optional[int] = ..., oom_killed: _Optional[bool] = ..., start_latency_ns: _Optional[int] = ...) -> None: ...

class AttachInput(_message.Message):
    __slots__ = ("job_id", "from_start", "stdin", "stdin_eof", "rows", "cols", "detach")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_START_FIELD_NUMBER: _ClassVar[int]
    STDIN_FIELD_NUMBER: _ClassVar[int]
    STDIN_EOF_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    COLS_FIELD_NUMBER: _ClassVar[int]
    DETACH_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    from_start: bool
    stdin: bytes
    stdin_eof: bool
    rows: int
    cols: int
    detach: bool
    def __init__(self, job_id: _Optional[str] = ..., from_start: _Optional[bool] = ..., stdin: _Optional[bytes] = ..., stdin_eof: _Optional[bool] = ..., rows: _Optional[int] = ..., cols: _Optional[int] = ..., detach: _Optional[bool] = ...) -> None: ...

class AttachOutput(_message.Message):
    __slots__ = ("data", "stream", "attached", "tty", "ended", "exit_code", "signal", "state", "reason")
    DATA_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    ATTACHED_FIELD_NUMBER: _ClassVar[int]
    TTY_FIELD_NUMBER: _ClassVar[int]
    ENDED_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    stream: int
    attached: bool
    tty: bool
    ended: bool
    exit_code: int
    signal: int
    state: str
    reason: str
    def __init__(self, data: _Optional[bytes] = ..., stream: _Optional[int] = ..., attached: _Optional[bool] = ..., tty: _Optional[bool] = ..., ended: _Optional[bool] = ..., exit_code: _Optional[int] = ..., signal: _Optional[int] = ..., state: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ExecRequest(_message.Message):
    __slots__ = ("job_id", "command", "env", "user", "workdir", "stdin", "tty", "rows", "cols")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    WORKDIR_FIELD_NUMBER: _ClassVar[int]
    STDIN_FIELD_NUMBER: _ClassVar[int]
    TTY_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    COLS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    command: _containers.RepeatedScalarFieldContainer[str]
    env: _containers.ScalarMap[str, str]
    user: str
    workdir: str
    stdin: bool
    tty: bool
    rows: int
    cols: int
    def __init__(self, job_id: _Optional[str] = ..., command: _Optional[_Iterable[str]] = ..., env: _Optional[_Mapping[str, str]] = ..., user: _Optional[str] = ..., workdir: _Optional[str] = ..., stdin: _Optional[bool] = ..., tty: _Optional[bool] = ..., rows: _Optional[int] = ..., cols: _Optional[int] = ...) -> None: ...

class ExecResult(_message.Message):
    __slots__ = ("exit_code", "signal", "stdout", "stderr", "oom_killed", "truncated", "start_latency_ns")
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    STDOUT_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    OOM_KILLED_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    START_LATENCY_NS_FIELD_NUMBER: _ClassVar[int]
    exit_code: int
    signal: int
    stdout: bytes
    stderr: bytes
    oom_killed: bool
    truncated: bool
    start_latency_ns: int
    def __init__(self, exit_code: _Optional[int] = ..., signal: _Optional[int] = ..., stdout: _Optional[bytes] = ..., stderr: _Optional[bytes] = ..., oom_killed: _Optional[bool] = ..., truncated: _Optional[bool] = ..., start_latency_ns: _Optional[int] = ...) -> None: ...
