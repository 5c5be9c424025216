"""The platform's side of the runtime's gRPC API: the only way web and worker reach it.

Plain Python types in and out (no protobuf outside this module), and one
exception per kind of failure so callers can map them to HTTP statuses:

    client = RuntimeClient("127.0.0.1:50061", secret)
    client.create_sandbox(SandboxSpec(tenant="org_acme", sandbox_id="ws-1", template="base"))
    client.start_sandbox("org_acme", "ws-1")
    result = client.exec("org_acme", "ws-1", command="echo ok")

`AsyncRuntimeClient` is the same for asyncio code (the terminal consumer).
"""

from __future__ import annotations

import os
import threading
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio

from runtime.pb import runtime_pb2 as pb
from runtime.pb import runtime_pb2_grpc as pb_grpc

CHUNK_BYTES = 256 * 1024
# A unary call that takes longer than this is a runtime in trouble, not a slow sandbox.
DEFAULT_CALL_TIMEOUT = 30.0


# -- errors ---------------------------------------------------------------------------------------


class RuntimeServiceError(Exception):
    """A call to the runtime failed; `str()` is a message a person can read."""


class RuntimeUnavailable(RuntimeServiceError):
    """The runtime cannot be reached, or its backend cannot work on this host."""


class RuntimeUnauthenticated(RuntimeServiceError):
    """The runtime refused our credentials (RUNTIME_SECRET differs)."""


class SandboxNotFound(RuntimeServiceError):
    """No such sandbox for this tenant, or no such path in it."""


class SandboxExists(RuntimeServiceError):
    pass


class SandboxNotRunning(RuntimeServiceError):
    pass


class InvalidRequest(RuntimeServiceError):
    """Bad input: a path leaving the workspace, an unknown template, a bad allow-list entry."""


class LimitExceeded(RuntimeServiceError):
    pass


_ERRORS: dict[grpc.StatusCode, type[RuntimeServiceError]] = {
    grpc.StatusCode.UNAVAILABLE: RuntimeUnavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: RuntimeUnavailable,
    grpc.StatusCode.UNAUTHENTICATED: RuntimeUnauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: RuntimeUnauthenticated,
    grpc.StatusCode.NOT_FOUND: SandboxNotFound,
    grpc.StatusCode.ALREADY_EXISTS: SandboxExists,
    grpc.StatusCode.FAILED_PRECONDITION: SandboxNotRunning,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequest,
    grpc.StatusCode.OUT_OF_RANGE: InvalidRequest,
    grpc.StatusCode.RESOURCE_EXHAUSTED: LimitExceeded,
}


def translate(error: grpc.RpcError) -> RuntimeServiceError:
    code: grpc.StatusCode = error.code()
    details: str = error.details() or ""
    kind = _ERRORS.get(code, RuntimeServiceError)
    # gRPC's own text for a refused connection or a deadline is long and technical.
    technical = not details or "connect" in details.lower() or "deadline" in details.lower()
    if kind is RuntimeUnavailable and technical:
        details = "the workspace runtime is not reachable; try again in a moment"
    return kind(details or code.name.lower())


# -- plain types ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SandboxSpec:
    tenant: str
    sandbox_id: str
    template: str = "base"
    cpus: float = 0
    memory_bytes: int = 0
    disk_bytes: int = 0
    pids: int = 0
    allow: Sequence[str] = ()
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SandboxInfo:
    tenant: str
    sandbox_id: str
    state: str
    template: str
    cpus: float
    memory_bytes: int
    disk_bytes: int
    pids: int
    allow: tuple[str, ...]
    disk_used_bytes: int
    created_at: float
    started_at: float
    last_activity_at: float
    backend: str
    pty_sessions: tuple[str, ...]

    @property
    def running(self) -> bool:
        return self.state == "running"


@dataclass(frozen=True)
class ExecExit:
    exit_code: int
    timed_out: bool = False
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    duration_seconds: float = 0.0
    oom_killed: bool = False


@dataclass(frozen=True)
class ExecResult(ExecExit):
    stdout: bytes = b""
    stderr: bytes = b""

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


@dataclass(frozen=True)
class FileEntry:
    path: str
    name: str
    kind: str
    size: int
    modified_at: float
    mode: int


def _info(message: pb.SandboxInfo) -> SandboxInfo:
    return SandboxInfo(
        tenant=message.ref.tenant,
        sandbox_id=message.ref.sandbox_id,
        state=message.state,
        template=message.template,
        cpus=message.resources.cpus,
        memory_bytes=message.resources.memory_bytes,
        disk_bytes=message.resources.disk_bytes,
        pids=message.resources.pids,
        allow=tuple(message.network.allow),
        disk_used_bytes=message.disk_used_bytes,
        created_at=message.created_at,
        started_at=message.started_at,
        last_activity_at=message.last_activity_at,
        backend=message.backend,
        pty_sessions=tuple(message.pty_sessions),
    )


def _entry(message: pb.FileInfo) -> FileEntry:
    return FileEntry(
        path=message.path,
        name=message.name,
        kind=message.kind,
        size=message.size,
        modified_at=message.modified_at,
        mode=message.mode,
    )


def _exit(message: pb.ExecExit) -> ExecExit:
    return ExecExit(
        exit_code=message.exit_code,
        timed_out=message.timed_out,
        stdout_truncated=message.stdout_truncated,
        stderr_truncated=message.stderr_truncated,
        duration_seconds=message.duration_seconds,
        oom_killed=message.oom_killed,
    )


def _ref(tenant: str, sandbox_id: str) -> pb.SandboxRef:
    return pb.SandboxRef(tenant=tenant, sandbox_id=sandbox_id)


def _create_request(spec: SandboxSpec) -> pb.CreateSandboxRequest:
    return pb.CreateSandboxRequest(
        ref=_ref(spec.tenant, spec.sandbox_id),
        template=spec.template,
        resources=pb.Resources(
            cpus=spec.cpus, memory_bytes=spec.memory_bytes, disk_bytes=spec.disk_bytes, pids=spec.pids
        ),
        network=pb.NetworkPolicy(allow=list(spec.allow)),
        env=dict(spec.env),
    )


def _exec_request(
    tenant: str,
    sandbox_id: str,
    *,
    command: str | None,
    argv: Sequence[str] | None,
    env: dict[str, str] | None,
    cwd: str,
    timeout: float,
    max_output_bytes: int,
    stdin: bytes,
) -> pb.ExecRequest:
    if (command is None) == (argv is None):
        raise ValueError("give exactly one of command and argv")
    return pb.ExecRequest(
        ref=_ref(tenant, sandbox_id),
        command=command or "",
        argv=list(argv or ()),
        env=dict(env or {}),
        cwd=cwd,
        timeout_seconds=timeout,
        max_output_bytes=max_output_bytes,
        stdin=stdin,
    )


def _write_chunks(
    tenant: str, sandbox_id: str, path: str, data: bytes | Iterable[bytes], mode: int, make_parents: bool
) -> Iterator[pb.WriteFileChunk]:
    header = pb.WriteFileHeader(ref=_ref(tenant, sandbox_id), path=path, mode=mode, make_parents=make_parents)
    yield pb.WriteFileChunk(header=header)
    if isinstance(data, bytes):
        for start in range(0, len(data), CHUNK_BYTES):
            yield pb.WriteFileChunk(data=data[start : start + CHUNK_BYTES])
    else:
        for piece in data:
            for start in range(0, len(piece), CHUNK_BYTES):
                yield pb.WriteFileChunk(data=piece[start : start + CHUNK_BYTES])


def _channel_options() -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", 8 * CHUNK_BYTES),
        ("grpc.max_send_message_length", 8 * CHUNK_BYTES),
        # A restarted runtime is retried at once instead of after gRPC's backoff.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ]


# -- sync client ----------------------------------------------------------------------------------


class RuntimeClient:
    """Thread-safe; one per process (a forked child makes its own channel)."""

    def __init__(self, address: str, secret: str, *, timeout: float = DEFAULT_CALL_TIMEOUT) -> None:
        self.address = address
        self._metadata = (("authorization", f"Bearer {secret}"),)
        self._timeout = timeout
        self._lock = threading.Lock()
        self._pid = 0
        self._channel: grpc.Channel | None = None
        self._stub: pb_grpc.RuntimeStub | None = None

    @property
    def stub(self) -> pb_grpc.RuntimeStub:
        with self._lock:
            if self._stub is None or self._pid != os.getpid():
                self._channel = grpc.insecure_channel(self.address, options=_channel_options())
                self._stub = pb_grpc.RuntimeStub(  # type: ignore[no-untyped-call]
                    self._channel
                )
                self._pid = os.getpid()
            return self._stub

    def close(self) -> None:
        with self._lock:
            if self._channel is not None and self._pid == os.getpid():
                self._channel.close()
            self._channel = self._stub = None

    def _call(self, method: Any, request: Any, timeout: float | None = None) -> Any:
        try:
            return method(request, metadata=self._metadata, timeout=timeout or self._timeout)
        except grpc.RpcError as error:
            raise translate(error) from None

    def health(self) -> dict[str, Any]:
        reply = self._call(self.stub.Health, pb.HealthRequest(), timeout=5)
        return {
            "status": reply.status,
            "backend": reply.backend,
            "version": reply.version,
            "sandboxes_running": reply.sandboxes_running,
            "capabilities": dict(reply.capabilities),
        }

    def create_sandbox(self, spec: SandboxSpec) -> SandboxInfo:
        return _info(self._call(self.stub.CreateSandbox, _create_request(spec)))

    def start_sandbox(self, tenant: str, sandbox_id: str) -> SandboxInfo:
        return _info(self._call(self.stub.StartSandbox, _ref(tenant, sandbox_id)))

    def stop_sandbox(self, tenant: str, sandbox_id: str) -> SandboxInfo:
        return _info(self._call(self.stub.StopSandbox, _ref(tenant, sandbox_id)))

    def destroy_sandbox(self, tenant: str, sandbox_id: str) -> bool:
        return bool(self._call(self.stub.DestroySandbox, _ref(tenant, sandbox_id)).existed)

    def get_sandbox(self, tenant: str, sandbox_id: str) -> SandboxInfo:
        return _info(self._call(self.stub.GetSandbox, _ref(tenant, sandbox_id)))

    def list_sandboxes(self, tenant: str = "") -> list[SandboxInfo]:
        reply = self._call(self.stub.ListSandboxes, pb.ListSandboxesRequest(tenant=tenant))
        return [_info(item) for item in reply.sandboxes]

    def exec_stream(
        self,
        tenant: str,
        sandbox_id: str,
        *,
        command: str | None = None,
        argv: Sequence[str] | None = None,
        env: dict[str, str] | None = None,
        cwd: str = "",
        timeout: float = 0,
        max_output_bytes: int = 0,
        stdin: bytes = b"",
    ) -> Iterator[tuple[str, bytes] | ExecExit]:
        """Yields ("stdout", bytes) / ("stderr", bytes) as they come, then the ExecExit."""
        request = _exec_request(
            tenant,
            sandbox_id,
            command=command,
            argv=argv,
            env=env,
            cwd=cwd,
            timeout=timeout,
            max_output_bytes=max_output_bytes,
            stdin=stdin,
        )
        # The runtime enforces the command's own timeout; ours only catches a runtime that hangs.
        deadline = (timeout or 3600) + self._timeout
        try:
            for event in self.stub.Exec(request, metadata=self._metadata, timeout=deadline):
                which = event.WhichOneof("event")
                if which == "exit":
                    yield _exit(event.exit)
                elif which in ("stdout", "stderr"):
                    yield which, getattr(event, which)
        except grpc.RpcError as error:
            raise translate(error) from None

    def exec(
        self,
        tenant: str,
        sandbox_id: str,
        *,
        command: str | None = None,
        argv: Sequence[str] | None = None,
        env: dict[str, str] | None = None,
        cwd: str = "",
        timeout: float = 0,
        max_output_bytes: int = 0,
        stdin: bytes = b"",
    ) -> ExecResult:
        out: list[bytes] = []
        err: list[bytes] = []
        final = ExecExit(exit_code=-1)
        for item in self.exec_stream(
            tenant,
            sandbox_id,
            command=command,
            argv=argv,
            env=env,
            cwd=cwd,
            timeout=timeout,
            max_output_bytes=max_output_bytes,
            stdin=stdin,
        ):
            if isinstance(item, ExecExit):
                final = item
            elif item[0] == "stdout":
                out.append(item[1])
            else:
                err.append(item[1])
        return ExecResult(**final.__dict__, stdout=b"".join(out), stderr=b"".join(err))

    def stat(self, tenant: str, sandbox_id: str, path: str) -> FileEntry:
        return _entry(self._call(self.stub.StatPath, pb.PathRequest(ref=_ref(tenant, sandbox_id), path=path)))

    def list_dir(self, tenant: str, sandbox_id: str, path: str = "") -> list[FileEntry]:
        reply = self._call(self.stub.ListDir, pb.PathRequest(ref=_ref(tenant, sandbox_id), path=path))
        return [_entry(item) for item in reply.entries]

    def read_file_chunks(
        self, tenant: str, sandbox_id: str, path: str, *, offset: int = 0, limit: int = 0
    ) -> Iterator[bytes]:
        request = pb.ReadFileRequest(ref=_ref(tenant, sandbox_id), path=path, offset=offset, limit=limit)
        try:
            for chunk in self.stub.ReadFile(request, metadata=self._metadata, timeout=self._timeout * 10):
                yield chunk.data
        except grpc.RpcError as error:
            raise translate(error) from None

    def read_file(self, tenant: str, sandbox_id: str, path: str, *, offset: int = 0, limit: int = 0) -> bytes:
        return b"".join(self.read_file_chunks(tenant, sandbox_id, path, offset=offset, limit=limit))

    def write_file(
        self,
        tenant: str,
        sandbox_id: str,
        path: str,
        data: bytes | Iterable[bytes],
        *,
        mode: int = 0,
        make_parents: bool = False,
    ) -> FileEntry:
        chunks = _write_chunks(tenant, sandbox_id, path, data, mode, make_parents)
        return _entry(self._call(self.stub.WriteFile, chunks, timeout=self._timeout * 10))

    def delete_path(self, tenant: str, sandbox_id: str, path: str, *, recursive: bool = False) -> bool:
        request = pb.DeletePathRequest(ref=_ref(tenant, sandbox_id), path=path, recursive=recursive)
        return bool(self._call(self.stub.DeletePath, request).existed)

    def close_pty(self, tenant: str, sandbox_id: str, session: str) -> bool:
        request = pb.PtyRef(ref=_ref(tenant, sandbox_id), session=session)
        return bool(self._call(self.stub.ClosePty, request).existed)


# -- async client (terminals) ---------------------------------------------------------------------


@dataclass(frozen=True)
class PtyOpened:
    created: bool
    rows: int
    cols: int


@dataclass(frozen=True)
class PtyExited:
    exit_code: int


class PtyStream:
    """One attachment to a terminal session: write input, resize, iterate over output.

    Iterating yields PtyOpened first, then bytes (the scrollback when replay was
    asked for, then live output), and PtyExited when the shell ends."""

    def __init__(self, call: Any, queue: Any) -> None:
        self._call = call
        self._queue = queue

    async def write(self, data: bytes) -> None:
        await self._queue.put(pb.PtyInput(data=data))

    async def resize(self, rows: int, cols: int) -> None:
        await self._queue.put(pb.PtyInput(resize=pb.PtyResize(rows=rows, cols=cols)))

    async def close(self) -> None:
        """Detach (the session and its shell live on)."""
        await self._queue.put(None)
        self._call.cancel()

    def __aiter__(self) -> AsyncIterator[PtyOpened | PtyExited | bytes]:
        return self._events()

    async def _events(self) -> AsyncIterator[PtyOpened | PtyExited | bytes]:
        try:
            async for message in self._call:
                which = message.WhichOneof("output")
                if which == "data":
                    yield message.data
                elif which == "opened":
                    yield PtyOpened(message.opened.created, message.opened.rows, message.opened.cols)
                elif which == "exit":
                    yield PtyExited(message.exit.exit_code)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.CANCELLED:
                return
            raise translate(error) from None


class AsyncRuntimeClient:
    """For asyncio code; create one per event loop."""

    def __init__(self, address: str, secret: str, *, timeout: float = DEFAULT_CALL_TIMEOUT) -> None:
        self.address = address
        self._metadata = (("authorization", f"Bearer {secret}"),)
        self._timeout = timeout
        self._channel = grpc.aio.insecure_channel(address, options=_channel_options())
        self.stub = pb_grpc.RuntimeStub(  # type: ignore[no-untyped-call]
            self._channel
        )

    async def close(self) -> None:
        await self._channel.close()

    async def get_sandbox(self, tenant: str, sandbox_id: str) -> SandboxInfo:
        try:
            reply = await self.stub.GetSandbox(
                _ref(tenant, sandbox_id), metadata=self._metadata, timeout=self._timeout
            )
        except grpc.aio.AioRpcError as error:
            raise translate(error) from None
        return _info(reply)

    async def exec(
        self,
        tenant: str,
        sandbox_id: str,
        *,
        command: str | None = None,
        argv: Sequence[str] | None = None,
        env: dict[str, str] | None = None,
        cwd: str = "",
        timeout: float = 0,
        max_output_bytes: int = 0,
        stdin: bytes = b"",
    ) -> ExecResult:
        request = _exec_request(
            tenant,
            sandbox_id,
            command=command,
            argv=argv,
            env=env,
            cwd=cwd,
            timeout=timeout,
            max_output_bytes=max_output_bytes,
            stdin=stdin,
        )
        out: list[bytes] = []
        err: list[bytes] = []
        final = ExecExit(exit_code=-1)
        try:
            call = self.stub.Exec(request, metadata=self._metadata, timeout=(timeout or 3600) + self._timeout)
            async for event in call:
                which = event.WhichOneof("event")
                if which == "exit":
                    final = _exit(event.exit)
                elif which == "stdout":
                    out.append(event.stdout)
                elif which == "stderr":
                    err.append(event.stderr)
        except grpc.aio.AioRpcError as error:
            raise translate(error) from None
        return ExecResult(**final.__dict__, stdout=b"".join(out), stderr=b"".join(err))

    async def open_pty(
        self,
        tenant: str,
        sandbox_id: str,
        session: str,
        *,
        rows: int = 24,
        cols: int = 80,
        replay: bool = True,
        argv: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> PtyStream:
        import asyncio

        queue: asyncio.Queue[pb.PtyInput | None] = asyncio.Queue()
        opening = pb.PtyOpen(
            pty=pb.PtyRef(ref=_ref(tenant, sandbox_id), session=session),
            rows=rows,
            cols=cols,
            replay=replay,
            argv=list(argv),
            env=dict(env or {}),
        )
        await queue.put(pb.PtyInput(open=opening))

        async def requests() -> AsyncIterator[pb.PtyInput]:
            while (item := await queue.get()) is not None:
                yield item

        call = self.stub.Pty(requests(), metadata=self._metadata)
        return PtyStream(call, queue)
