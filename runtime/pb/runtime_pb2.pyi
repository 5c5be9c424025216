from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class HealthRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HealthReply(_message.Message):
    __slots__ = ("status", "backend", "version", "sandboxes_running", "capabilities")
    class CapabilitiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    STATUS_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SANDBOXES_RUNNING_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    status: str
    backend: str
    version: str
    sandboxes_running: int
    capabilities: _containers.ScalarMap[str, str]
    def __init__(self, status: _Optional[str] = ..., backend: _Optional[str] = ..., version: _Optional[str] = ..., sandboxes_running: _Optional[int] = ..., capabilities: _Optional[_Mapping[str, str]] = ...) -> None: ...

class SandboxRef(_message.Message):
    __slots__ = ("tenant", "sandbox_id")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    sandbox_id: str
    def __init__(self, tenant: _Optional[str] = ..., sandbox_id: _Optional[str] = ...) -> None: ...

class Resources(_message.Message):
    __slots__ = ("cpus", "memory_bytes", "disk_bytes", "pids")
    CPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    DISK_BYTES_FIELD_NUMBER: _ClassVar[int]
    PIDS_FIELD_NUMBER: _ClassVar[int]
    cpus: float
    memory_bytes: int
    disk_bytes: int
    pids: int
    def __init__(self, cpus: _Optional[float] = ..., memory_bytes: _Optional[int] = ..., disk_bytes: _Optional[int] = ..., pids: _Optional[int] = ...) -> None: ...

class NetworkPolicy(_message.Message):
    __slots__ = ("allow",)
    ALLOW_FIELD_NUMBER: _ClassVar[int]
    allow: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, allow: _Optional[_Iterable[str]] = ...) -> None: ...

class CreateSandboxRequest(_message.Message):
    __slots__ = ("ref", "template", "resources", "network", "env")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    REF_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    ref: SandboxRef
    template: str
    resources: Resources
    network: NetworkPolicy
    env: _containers.ScalarMap[str, str]
    def __init__(self, ref: _Optional[_Union[SandboxRef, _Mapping]] = ..., template: _Optional[str] = ..., resources: _Optional[_Union[Resources, _Mapping]] = ..., network: _Optional[_Union[NetworkPolicy, _Mapping]] = ..., env: _Optional[_Mapping[str, str]] = ...) -> None: ...

class SandboxInfo(_message.Message):
    __slots__ = ("ref", "state", "template", "resources", "network", "disk_used_bytes", "created_at", "started_at", "last_activity_at", "backend", "pty_sessions")
    REF_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    DISK_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_ACTIVITY_AT_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    PTY_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    ref: SandboxRef
    state: str
    template: str
    resources: Resources
    network: NetworkPolicy
    disk_used_bytes: int
    created_at: float
    started_at: float
    last_activity_at: float
    backend: str
    pty_sessions: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ref: _Optional[_Union[SandboxRef, _Mapping]] = ..., state: _Optional[str] = ..., template: _Optional[str] = ..., resources: _Optional[_Union[Resources, _Mapping]] = ..., network: _Optional[_Union[NetworkPolicy, _Mapping]] = ..., disk_used_bytes: _Optional[int] = ..., created_at: _Optional[float] = ..., started_at: _Optional[float] = ..., last_activity_at: _Optional[float] = ..., backend: _Optional[str] = ..., pty_sessions: _Optional[_Iterable[str]] = ...) -> None: ...

class DestroyReply(_message.Message):
    __slots__ = ("existed",)
    EXISTED_FIELD_NUMBER: _ClassVar[int]
    existed: bool
    def __init__(self, existed: _Optional[bool] = ...) -> None: ...

class ListSandboxesRequest(_message.Message):
    __slots__ = ("tenant",)
    TENANT_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    def __init__(self, tenant: _Optional[str] = ...) -> None: ...

class ListSandboxesReply(_message.Message):
    __slots__ = ("sandboxes",)
    SANDBOXES_FIELD_NUMBER: _ClassVar[int]
    sandboxes: _containers.RepeatedCompositeFieldContainer[SandboxInfo]
    def __init__(self, sandboxes: _Optional[_Iterable[_Union[SandboxInfo, _Mapping]]] = ...) -> None: ...

class ExecRequest(_message.Message):
    __slots__ = ("ref", "argv", "command", "env", "cwd", "timeout_seconds", "max_output_bytes", "stdin")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    REF_FIELD_NUMBER: _ClassVar[int]
    ARGV_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    CWD_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MAX_OUTPUT_BYTES_FIELD_NUMBER: _ClassVar[int]
    STDIN_FIELD_NUMBER: _ClassVar[int]
    ref: SandboxRef
    argv: _containers.RepeatedScalarFieldContainer[str]
    command: str
    env: _containers.ScalarMap[str, str]
    cwd: str
    timeout_seconds: float
    max_output_bytes: int
    stdin: bytes
    def __init__(self, ref: _Optional[_Union[SandboxRef, _Mapping]] = ..., argv: _Optional[_Iterable[str]] = ..., command: _Optional[str] = ..., env: _Optional[_Mapping[str, str]] = ..., cwd: _Optional[str] = ..., timeout_seconds: _Optional[float] = ..., max_output_bytes: _Optional[int] = ..., stdin: _Optional[bytes] = ...) -> None: ...

class ExecEvent(_message.Message):
    __slots__ = ("stdout", "stderr", "exit")
    STDOUT_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    EXIT_FIELD_NUMBER: _ClassVar[int]
    stdout: bytes
    stderr: bytes
    exit: ExecExit
    def __init__(self, stdout: _Optional[bytes] = ..., stderr: _Optional[bytes] = ..., exit: _Optional[_Union[ExecExit, _Mapping]] = ...) -> None: ...

class ExecExit(_message.Message):
    __slots__ = ("exit_code", "timed_out", "stdout_truncated", "stderr_truncated", "duration_seconds", "oom_killed")
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    TIMED_OUT_FIELD_NUMBER: _ClassVar[int]
    STDOUT_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    STDERR_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    OOM_KILLED_FIELD_NUMBER: _ClassVar[int]
    exit_code: int
    timed_out: bool
    stdout_truncated: bool
    stderr_truncated: bool
    duration_seconds: float
    oom_killed: bool
    def __init__(self, exit_code: _Optional[int] = ..., timed_out: _Optional[bool] = ..., stdout_truncated: _Optional[bool] = ..., stderr_truncated: _Optional[bool] = ..., duration_seconds: _Optional[float] = ..., oom_killed: _Optional[bool] = ...) -> None: ...

class PtyRef(_message.Message):
    __slots__ = ("ref", "session")
    REF_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    ref: SandboxRef
    session: str
    def __init__(self, ref: _Optional[_Union[SandboxRef, _Mapping]] = ..., session: _Optional[str] = ...) -> None: ...

class PtyOpen(_message.Message):
    __slots__ = ("pty", "rows", "cols", "argv", "env", "replay")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PTY_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    COLS_FIELD_NUMBER: _ClassVar[int]
    ARGV_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    REPLAY_FIELD_NUMBER: _ClassVar[int]
    pty: PtyRef
    rows: int
    cols: int
    argv: _containers.RepeatedScalarFieldContainer[str]
    env: _containers.ScalarMap[str, str]
    replay: bool
    def __init__(self, pty: _Optional[_Union[PtyRef, _Mapping]] = ..., rows: _Optional[int] = ..., cols: _Optional[int] = ..., argv: _Optional[_Iterable[str]] = ..., env: _Optional[_Mapping[str, str]] = ..., replay: _Optional[bool] = ...) -> None: ...

class PtyResize(_message.Message):
    __slots__ = ("rows", "cols")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    COLS_FIELD_NUMBER: _ClassVar[int]
    rows: int
    cols: int
    def __init__(self, rows: _Optional[int] = ..., cols: _Optional[int] = ...) -> None: ...

class PtyInput(_message.Message):
    __slots__ = ("open", "data", "resize")
    OPEN_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    RESIZE_FIELD_NUMBER: _ClassVar[int]
    open: PtyOpen
    data: bytes
    resize: PtyResize
    def __init__(self, open: _Optional[_Union[PtyOpen, _Mapping]] = ..., data: _Optional[bytes] = ..., resize: _Optional[_Union[PtyResize, _Mapping]] = ...) -> None: ...

class PtyOpened(_message.Message):
    __slots__ = ("created", "rows", "cols")
    CREATED_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    COLS_FIELD_NUMBER: _ClassVar[int]
    created: bool
    rows: int
    cols: int
    def __init__(self, created: _Optional[bool] = ..., rows: _Optional[int] = ..., cols: _Optional[int] = ...) -> None: ...

class PtyExit(_message.Message):
    __slots__ = ("exit_code",)
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    exit_code: int
    def __init__(self, exit_code: _Optional[int] = ...) -> None: ...

class PtyOutput(_message.Message):
    __slots__ = ("opened", "data", "exit")
    OPENED_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    EXIT_FIELD_NUMBER: _ClassVar[int]
    opened: PtyOpened
    data: bytes
    exit: PtyExit
    def __init__(self, opened: _Optional[_Union[PtyOpened, _Mapping]] = ..., data: _Optional[bytes] = ..., exit: _Optional[_Union[PtyExit, _Mapping]] = ...) -> None: ...

class PtyClosed(_message.Message):
    __slots__ = ("existed",)
    EXISTED_FIELD_NUMBER: _ClassVar[int]
    existed: bool
    def __init__(self, existed: _Optional[bool] = ...) -> None: ...

class PathRequest(_message.Message):
    __slots__ = ("ref", "path")
    REF_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    ref: SandboxRef
    path: str
    def __init__(self, ref: _Optional[_Union[SandboxRef, _Mapping]] = ..., path: _Optional[str] = ...) -> None: ...

class FileInfo(_message.Message):
    __slots__ = ("path", "name", "kind", "size", "modified_at", "mode")
    PATH_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    MODIFIED_AT_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    path: str
    name: str
    kind: str
    size: int
    modified_at: float
    mode: int
    def __init__(self, path: _Optional[str] = ..., name: _Optional[str] = ..., kind: _Optional[str] = ..., size: _Optional[int] = ..., modified_at: _Optional[float] = ..., mode: _Optional[int] = ...) -> None: ...

class ListDirReply(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[FileInfo]
    def __init__(self, entries: _Optional[_Iterable[_Union[FileInfo, _Mapping]]] = ...) -> None: ...

class ReadFileRequest(_message.Message):
    __slots__ = ("ref", "path", "offset", "limit")
    REF_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    ref: SandboxRef
    path: str
    offset: int
    limit: int
    def __init__(self, ref: _Optional[_Union[SandboxRef, _Mapping]] = ..., path: _Optional[str] = ..., offset: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class FileChunk(_message.Message):
    __slots__ = ("data", "total_size")
    DATA_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    total_size: int
    def __init__(self, data: _Optional[bytes] = ..., total_size: _Optional[int] = ...) -> None: ...

class WriteFileHeader(_message.Message):
    __slots__ = ("ref", "path", "mode", "make_parents")
    REF_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    MAKE_PARENTS_FIELD_NUMBER: _ClassVar[int]
    ref: SandboxRef
    path: str
    mode: int
    make_parents: bool
    def __init__(self, ref: _Optional[_Union[SandboxRef, _Mapping]] = ..., path: _Optional[str] = ..., mode: _Optional[int] = ..., make_parents: _Optional[bool] = ...) -> None: ...

class WriteFileChunk(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: WriteFileHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[WriteFileHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class DeletePathRequest(_message.Message):
    __slots__ = ("ref", "path", "recursive")
    REF_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    RECURSIVE_FIELD_NUMBER: _ClassVar[int]
    ref: SandboxRef
    path: str
    recursive: bool
    def __init__(self, ref: _Optional[_Union[SandboxRef, _Mapping]] = ..., path: _Optional[str] = ..., recursive: _Optional[bool] = ...) -> None: ...

class DeleteReply(_message.Message):
    __slots__ = ("existed",)
    EXISTED_FIELD_NUMBER: _ClassVar[int]
    existed: bool
    def __init__(self, existed: _Optional[bool] = ...) -> None: ...
