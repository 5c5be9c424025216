"""The runtime's gRPC service (runtime/proto/runtime.proto) around one sandbox backend.

What lives here and not in a backend: who may call (the shared secret), which tenant
owns which sandbox (a sandbox of another tenant is NOT_FOUND), validation of every
request, the registry persisted as RUNTIME_ROOT/sandboxes/<tenant>/<id>/sandbox.json
(reloaded on start, every sandbox stopped), output truncation, terminal sessions,
the files API (runtime/files.py) and activity times.

Start, stop and destroy of one sandbox hold its lock, so they never interleave.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import hmac
import json
import logging
import os
import re
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import grpc.aio

from runtime import files
from runtime.backends.base import Backend, BackendError, ExecFinished, ExecSpec, SandboxConfig
from runtime.config import RuntimeConfig
from runtime.pb import runtime_pb2 as pb
from runtime.pb import runtime_pb2_grpc as pb_grpc
from runtime.pty import Exited, Overflowed, PtySessions

logger = logging.getLogger("runtime")

VERSION = "1"
TENANT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
SANDBOX_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
SESSION = re.compile(r"^[a-z0-9-]{1,64}$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_ENV_BYTES = 128 * 1024
MAX_TERMINAL_SIZE = 1000
STREAM_CHUNK_BYTES = 64 * 1024
MESSAGE_LIMIT_BYTES = 16 * 1024 * 1024
DEFAULT_PTY_ENV = {"TERM": "xterm-256color"}
REGISTRY_FILE = "sandbox.json"


class Refused(Exception):
    """A request the runtime turns down, with its gRPC status and a message for a person."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> Refused:
    return Refused(grpc.StatusCode.INVALID_ARGUMENT, message)


def _status_of(exc: BaseException) -> tuple[grpc.StatusCode, str] | None:
    if isinstance(exc, Refused):
        return exc.code, exc.message
    if isinstance(exc, files.InvalidPath):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, files.PathNotFound):
        return grpc.StatusCode.NOT_FOUND, str(exc)
    if isinstance(exc, files.DiskFull):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)
    if isinstance(exc, files.FilesError):
        return grpc.StatusCode.FAILED_PRECONDITION, str(exc)
    if isinstance(exc, BackendError):
        return grpc.StatusCode.UNAVAILABLE, str(exc)
    if isinstance(exc, OSError) and exc.errno in _OS_ERRORS:
        return _OS_ERRORS[exc.errno], f"{exc.filename or 'the path'}: {exc.strerror}"
    return None


# What the files API's system calls may report about a path a caller gave.
_OS_ERRORS = {
    errno.ENAMETOOLONG: grpc.StatusCode.INVALID_ARGUMENT,
    errno.ENOTDIR: grpc.StatusCode.INVALID_ARGUMENT,
    errno.EISDIR: grpc.StatusCode.INVALID_ARGUMENT,
    errno.ELOOP: grpc.StatusCode.INVALID_ARGUMENT,
    errno.ENOENT: grpc.StatusCode.NOT_FOUND,
    errno.ENOSPC: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errno.EDQUOT: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


async def _abort_for(exc: Exception, context: grpc.aio.ServicerContext[Any, Any]) -> None:
    status = _status_of(exc)
    if status is None:
        logger.exception("unexpected error")
        status = grpc.StatusCode.INTERNAL, "internal error in the runtime; see its log"
    await context.abort(*status)


Handler = TypeVar("Handler", bound=Callable[..., Awaitable[Any]])


def unary(method: Handler) -> Handler:
    """Turns our exceptions into gRPC statuses for a handler returning one reply."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await method(self, request, context)
        except Exception as exc:
            if isinstance(exc, grpc.aio.AbortError):
                raise
            await _abort_for(exc, context)

    return wrapper  # type: ignore[return-value]


def streaming(method: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
    """The same for a handler that streams its replies."""

    @functools.wraps(method)
    async def wrapper(
        self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        try:
            async for reply in method(self, request, context):
                yield reply
        except Exception as exc:
            if isinstance(exc, grpc.aio.AbortError):
                raise
            await _abort_for(exc, context)

    return wrapper


# -- validation -----------------------------------------------------------------------------------


def _check_ref(ref: pb.SandboxRef) -> tuple[str, str]:
    if not TENANT.match(ref.tenant):
        raise invalid(f"tenant must match {TENANT.pattern}, not {ref.tenant!r}")
    if not SANDBOX_ID.match(ref.sandbox_id):
        raise invalid(f"sandbox_id must match {SANDBOX_ID.pattern}, not {ref.sandbox_id!r}")
    return ref.tenant, ref.sandbox_id


def _check_env(env: Iterable[tuple[str, str]], field_name: str) -> dict[str, str]:
    checked: dict[str, str] = {}
    total = 0
    for name, value in env:
        if not ENV_NAME.match(name):
            raise invalid(f"{field_name}: {name!r} is not a valid environment variable name")
        if "\x00" in value:
            raise invalid(f"{field_name}: the value of {name} contains a NUL byte")
        total += len(name) + len(value.encode())
        checked[name] = value
    if total > MAX_ENV_BYTES:
        raise invalid(f"{field_name} is larger than {MAX_ENV_BYTES} bytes")
    return checked


def _resolve(field_name: str, requested: float, default: float, maximum: float, unit: str = "") -> float:
    if requested < 0 or requested != requested:
        raise invalid(f"resources.{field_name} cannot be negative")
    if requested == 0:
        return default
    if requested > maximum:
        raise invalid(
            f"resources.{field_name} {requested:g}{unit} is above this host's maximum {maximum:g}{unit}"
        )
    return requested


def _known_templates() -> Iterable[str]:
    from runtime.templates import TEMPLATES

    return TEMPLATES


def _check_allow(entries: Iterable[str]) -> list[str]:
    from runtime.netpolicy import parse_allow_entry

    allow = []
    for entry in entries:
        try:
            parse_allow_entry(entry)
        except ValueError as exc:
            raise invalid(f"network.allow: {exc}") from None
        allow.append(entry)
    return allow


def _terminal_size(rows: int, cols: int) -> tuple[int, int]:
    rows, cols = rows or 24, cols or 80
    if not (0 < rows <= MAX_TERMINAL_SIZE and 0 < cols <= MAX_TERMINAL_SIZE):
        raise invalid(f"a terminal is 1 to {MAX_TERMINAL_SIZE} rows and columns, not {rows}x{cols}")
    return rows, cols


def _chunks(data: bytes) -> Iterable[bytes]:
    for start in range(0, len(data), STREAM_CHUNK_BYTES):
        yield data[start : start + STREAM_CHUNK_BYTES]


# -- the registry ---------------------------------------------------------------------------------


@dataclass
class Sandbox:
    config: SandboxConfig
    directory: Path
    ptys: PtySessions
    started_at: float = 0.0
    last_activity_at: float = 0.0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def touch(self) -> None:
        self.last_activity_at = time.time()

    def save(self) -> None:
        """Write sandbox.json atomically (a reader never sees half of it)."""
        data = {**self.config.to_json(), "last_activity_at": self.last_activity_at}
        temp = self.directory / f".{REGISTRY_FILE}.tmp"
        temp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(temp, self.directory / REGISTRY_FILE)


class RuntimeService(pb_grpc.RuntimeServicer):
    def __init__(self, config: RuntimeConfig, backend: Backend) -> None:
        self.config = config
        self.backend = backend
        self.sandboxes: dict[tuple[str, str], Sandbox] = {}
        self._creating: set[tuple[str, str]] = set()

    # -- registry -----------------------------------------------------------------------------

    def _directory(self, tenant: str, sandbox_id: str) -> Path:
        return self.config.sandboxes_dir / tenant / sandbox_id

    async def load(self) -> None:
        """Read every sandbox.json under RUNTIME_ROOT and make sure none of them runs."""
        for path in sorted(self.config.sandboxes_dir.glob(f"*/*/{REGISTRY_FILE}")):
            try:
                data = json.loads(path.read_text())
                last_activity = float(data.pop("last_activity_at", 0.0))
                config = SandboxConfig.from_json(data)
            except (OSError, ValueError, TypeError) as exc:
                logger.error("ignoring %s: %s", path, exc)
                continue
            if (config.tenant, config.sandbox_id) != (path.parent.parent.name, path.parent.name):
                logger.error("ignoring %s: it names another sandbox", path)
                continue
            sandbox = Sandbox(
                config, path.parent, PtySessions(self.config.scrollback_bytes), last_activity_at=last_activity
            )
            self.sandboxes[(config.tenant, config.sandbox_id)] = sandbox
            try:
                await self.backend.stop(config)
            except BackendError as exc:
                logger.error("could not stop %s after a restart: %s", config.key, exc)

    def _get(self, ref: pb.SandboxRef) -> Sandbox:
        tenant, sandbox_id = _check_ref(ref)
        sandbox = self.sandboxes.get((tenant, sandbox_id))
        if sandbox is None:
            raise Refused(grpc.StatusCode.NOT_FOUND, f"no sandbox {sandbox_id!r} in {tenant!r}")
        return sandbox

    def _running(self, sandbox: Sandbox) -> bool:
        return sandbox.started_at > 0 and self.backend.is_running(sandbox.config)

    def _require_running(self, sandbox: Sandbox) -> None:
        if not self._running(sandbox):
            raise Refused(
                grpc.StatusCode.FAILED_PRECONDITION, f"sandbox {sandbox.config.sandbox_id!r} is not running"
            )

    def _workspace(self, sandbox: Sandbox) -> files.Workspace:
        config = sandbox.config
        return files.Workspace(self.backend.workspace_dir(config), self.backend.file_owner(config))

    async def _info(self, sandbox: Sandbox) -> pb.SandboxInfo:
        config = sandbox.config
        running = self._running(sandbox)
        used = 0
        with contextlib.suppress(OSError):
            used = await asyncio.to_thread(self.backend.disk_used, config)
        return pb.SandboxInfo(
            ref=pb.SandboxRef(tenant=config.tenant, sandbox_id=config.sandbox_id),
            state="running" if running else "stopped",
            template=config.template,
            resources=pb.Resources(
                cpus=config.cpus,
                memory_bytes=config.memory_bytes,
                disk_bytes=config.disk_bytes,
                pids=config.pids,
            ),
            network=pb.NetworkPolicy(allow=config.allow),
            disk_used_bytes=used,
            created_at=config.created_at,
            started_at=sandbox.started_at if running else 0.0,
            last_activity_at=sandbox.last_activity_at,
            backend=self.backend.name,
            pty_sessions=sandbox.ptys.names(),
        )

    def _config_from(self, request: pb.CreateSandboxRequest) -> SandboxConfig:
        tenant, sandbox_id = _check_ref(request.ref)
        template = request.template or "base"
        templates = _known_templates()
        if template not in templates:
            raise invalid(f"template {template!r} is unknown; known: {', '.join(sorted(templates))}")
        wanted = request.resources
        limits = self.config
        return SandboxConfig(
            tenant=tenant,
            sandbox_id=sandbox_id,
            template=template,
            cpus=_resolve("cpus", wanted.cpus, limits.cpus.default, limits.cpus.maximum),
            memory_bytes=int(
                _resolve(
                    "memory_bytes",
                    wanted.memory_bytes,
                    limits.memory_bytes.default,
                    limits.memory_bytes.maximum,
                )
            ),
            disk_bytes=int(
                _resolve(
                    "disk_bytes", wanted.disk_bytes, limits.disk_bytes.default, limits.disk_bytes.maximum
                )
            ),
            pids=int(_resolve("pids", wanted.pids, limits.pids.default, limits.pids.maximum)),
            allow=_check_allow(request.network.allow),
            env=_check_env(request.env.items(), "env"),
            created_at=time.time(),
        )

    # -- lifecycle ----------------------------------------------------------------------------

    @unary
    async def Health(self, request: pb.HealthRequest, context: Any) -> pb.HealthReply:
        capabilities = dict(self.backend.capabilities())
        status = "unavailable" if "error" in capabilities else "ok"
        running = sum(1 for sandbox in self.sandboxes.values() if self._running(sandbox))
        return pb.HealthReply(
            status=status,
            backend=self.backend.name,
            version=VERSION,
            sandboxes_running=running,
            capabilities=capabilities,
        )

    @unary
    async def CreateSandbox(self, request: pb.CreateSandboxRequest, context: Any) -> pb.SandboxInfo:
        config = self._config_from(request)
        key = (config.tenant, config.sandbox_id)
        if key in self.sandboxes or key in self._creating:
            raise Refused(grpc.StatusCode.ALREADY_EXISTS, f"sandbox {config.sandbox_id!r} already exists")
        self._creating.add(key)
        directory = self._directory(*key)
        try:
            directory.mkdir(parents=True, exist_ok=True)
            sandbox = Sandbox(config, directory, PtySessions(self.config.scrollback_bytes))
            try:
                await self.backend.create(config)
                sandbox.save()
            except BaseException:
                with contextlib.suppress(Exception):
                    await self.backend.destroy(config)
                self._remove_directory(directory)
                raise
            self.sandboxes[key] = sandbox
        finally:
            self._creating.discard(key)
        logger.info("created %s", config.key)
        return await self._info(sandbox)

    def _remove_directory(self, directory: Path) -> None:
        """Our file, then the sandbox's and tenant's directories if the backend left them empty."""
        for leftover in (directory / REGISTRY_FILE, directory / f".{REGISTRY_FILE}.tmp"):
            leftover.unlink(missing_ok=True)
        for empty in (directory, directory.parent):
            with contextlib.suppress(OSError):
                empty.rmdir()

    @unary
    async def StartSandbox(self, request: pb.SandboxRef, context: Any) -> pb.SandboxInfo:
        sandbox = self._get(request)
        async with sandbox.lock:
            self._get(request)  # destroyed while we waited for the lock
            if not self._running(sandbox):
                await self.backend.start(sandbox.config)
                sandbox.started_at = time.time()
                sandbox.touch()
                sandbox.save()
        return await self._info(sandbox)

    async def _stop(self, sandbox: Sandbox) -> None:
        await sandbox.ptys.close_all()
        await self.backend.stop(sandbox.config)
        sandbox.started_at = 0.0
        with contextlib.suppress(OSError):
            sandbox.save()

    @unary
    async def StopSandbox(self, request: pb.SandboxRef, context: Any) -> pb.SandboxInfo:
        sandbox = self._get(request)
        async with sandbox.lock:
            self._get(request)
            await self._stop(sandbox)
        return await self._info(sandbox)

    @unary
    async def DestroySandbox(self, request: pb.SandboxRef, context: Any) -> pb.DestroyReply:
        try:
            sandbox = self._get(request)
        except Refused as refused:
            if refused.code == grpc.StatusCode.NOT_FOUND:
                return pb.DestroyReply(existed=False)
            raise
        async with sandbox.lock:
            key = (sandbox.config.tenant, sandbox.config.sandbox_id)
            if self.sandboxes.get(key) is not sandbox:
                return pb.DestroyReply(existed=False)
            await sandbox.ptys.close_all()
            await self.backend.destroy(sandbox.config)
            del self.sandboxes[key]
            self._remove_directory(sandbox.directory)
        logger.info("destroyed %s", sandbox.config.key)
        return pb.DestroyReply(existed=True)

    @unary
    async def GetSandbox(self, request: pb.SandboxRef, context: Any) -> pb.SandboxInfo:
        return await self._info(self._get(request))

    @unary
    async def ListSandboxes(self, request: pb.ListSandboxesRequest, context: Any) -> pb.ListSandboxesReply:
        if request.tenant and not TENANT.match(request.tenant):
            raise invalid(f"tenant must match {TENANT.pattern}, not {request.tenant!r}")
        chosen = [
            sandbox
            for (tenant, _), sandbox in sorted(self.sandboxes.items())
            if not request.tenant or tenant == request.tenant
        ]
        return pb.ListSandboxesReply(sandboxes=[await self._info(sandbox) for sandbox in chosen])

    # -- exec ---------------------------------------------------------------------------------

    @streaming
    async def Exec(self, request: pb.ExecRequest, context: Any) -> AsyncIterator[pb.ExecEvent]:
        sandbox = self._get(request.ref)
        if bool(request.argv) == bool(request.command):
            raise invalid("give exactly one of argv and command")
        argv = list(request.argv) if request.argv else ["/bin/sh", "-c", request.command]
        if any("\x00" in arg for arg in argv):
            raise invalid("the command contains a NUL byte")
        limits = self.config
        timeout = _resolve(
            "timeout_seconds",
            request.timeout_seconds,
            limits.exec_timeout_seconds.default,
            limits.exec_timeout_seconds.maximum,
            "s",
        )
        output_limit = int(
            _resolve(
                "max_output_bytes",
                request.max_output_bytes,
                limits.exec_output_bytes.default,
                limits.exec_output_bytes.maximum,
            )
        )
        cwd = "/".join(files.split_path(request.cwd))
        env = {**sandbox.config.env, **_check_env(request.env.items(), "env")}
        self._require_running(sandbox)
        if cwd:
            await asyncio.to_thread(self._workspace(sandbox).require_dir, cwd)
        spec = ExecSpec(argv=argv, env=env, cwd=cwd, timeout_seconds=timeout, stdin=request.stdin)

        sandbox.touch()
        started = time.monotonic()
        sent = {"stdout": 0, "stderr": 0}
        truncated = {"stdout": False, "stderr": False}
        finished = ExecFinished(exit_code=-1)
        events = self.backend.exec(sandbox.config, spec)
        try:
            async for item in events:
                if isinstance(item, ExecFinished):
                    finished = item
                    continue
                room = output_limit - sent[item.stream]
                data = item.data[: max(room, 0)]
                if len(data) < len(item.data):
                    truncated[item.stream] = True
                sent[item.stream] += len(data)
                for piece in _chunks(data):
                    yield (
                        pb.ExecEvent(stdout=piece) if item.stream == "stdout" else pb.ExecEvent(stderr=piece)
                    )
        finally:
            closing = getattr(events, "aclose", None)
            if closing is not None:
                await closing()
        sandbox.touch()
        yield pb.ExecEvent(
            exit=pb.ExecExit(
                exit_code=finished.exit_code,
                timed_out=finished.timed_out,
                stdout_truncated=truncated["stdout"],
                stderr_truncated=truncated["stderr"],
                duration_seconds=time.monotonic() - started,
                oom_killed=finished.oom_killed,
            )
        )

    # -- terminals ----------------------------------------------------------------------------

    @streaming
    async def Pty(
        self, request_iterator: AsyncIterator[pb.PtyInput], context: Any
    ) -> AsyncIterator[pb.PtyOutput]:
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("input") != "open":
            raise invalid("the first message of a terminal stream must be `open`")
        opening = first.open
        sandbox = self._get(opening.pty.ref)
        name = opening.pty.session
        if not SESSION.match(name):
            raise invalid(f"session must match {SESSION.pattern}, not {name!r}")
        rows, cols = _terminal_size(opening.rows, opening.cols)
        env = {**DEFAULT_PTY_ENV, **sandbox.config.env, **_check_env(opening.env.items(), "env")}
        argv = list(opening.argv)  # empty: the backend starts the template's login shell
        if any("\x00" in arg for arg in argv):
            raise invalid("the command contains a NUL byte")
        self._require_running(sandbox)

        async def spawn() -> Any:
            return await self.backend.open_pty(sandbox.config, argv=argv, env=env, rows=rows, cols=cols)

        session, created = await sandbox.ptys.open(name, spawn, rows=rows, cols=cols)
        attachment, replay = session.attach(
            replay=opening.replay, max_pending_bytes=max(4 * self.config.scrollback_bytes, 1024 * 1024)
        )

        async def forward_input() -> None:
            async for message in request_iterator:
                which = message.WhichOneof("input")
                if which == "data":
                    sandbox.touch()
                    await session.write(message.data)
                elif which == "resize":
                    with contextlib.suppress(Refused):
                        await session.resize(*_terminal_size(message.resize.rows, message.resize.cols))

        pump = asyncio.create_task(forward_input())
        try:
            yield pb.PtyOutput(opened=pb.PtyOpened(created=created, rows=session.rows, cols=session.cols))
            for piece in _chunks(replay):
                yield pb.PtyOutput(data=piece)
            while True:
                item = await attachment.get()
                if isinstance(item, bytes):
                    yield pb.PtyOutput(data=item)
                elif isinstance(item, Exited):
                    yield pb.PtyOutput(exit=pb.PtyExit(exit_code=item.exit_code))
                    return
                elif isinstance(item, Overflowed):
                    raise Refused(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        "this terminal stream fell too far behind the output; attach again",
                    )
        finally:
            session.detach(attachment)
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pump

    @unary
    async def ClosePty(self, request: pb.PtyRef, context: Any) -> pb.PtyClosed:
        sandbox = self._get(request.ref)
        if not SESSION.match(request.session):
            raise invalid(f"session must match {SESSION.pattern}, not {request.session!r}")
        return pb.PtyClosed(existed=await sandbox.ptys.close(request.session))

    # -- files --------------------------------------------------------------------------------

    @staticmethod
    def _file_info(entry: files.Entry) -> pb.FileInfo:
        return pb.FileInfo(
            path=entry.path,
            name=entry.name,
            kind=entry.kind,
            size=entry.size,
            modified_at=entry.modified_at,
            mode=entry.mode,
        )

    @unary
    async def StatPath(self, request: pb.PathRequest, context: Any) -> pb.FileInfo:
        workspace = self._workspace(self._get(request.ref))
        return self._file_info(await asyncio.to_thread(workspace.stat, request.path))

    @unary
    async def ListDir(self, request: pb.PathRequest, context: Any) -> pb.ListDirReply:
        workspace = self._workspace(self._get(request.ref))
        entries = await asyncio.to_thread(workspace.list_dir, request.path)
        return pb.ListDirReply(entries=[self._file_info(entry) for entry in entries])

    @streaming
    async def ReadFile(self, request: pb.ReadFileRequest, context: Any) -> AsyncIterator[pb.FileChunk]:
        workspace = self._workspace(self._get(request.ref))
        if request.offset < 0 or request.limit < 0:
            raise invalid("offset and limit cannot be negative")
        fd, size = await asyncio.to_thread(workspace.open_read, request.path)
        try:
            position = request.offset
            end = size if not request.limit else min(size, request.offset + request.limit)
            first = True
            while first or position < end:
                want = min(files.READ_CHUNK_BYTES, max(end - position, 0))
                data = await asyncio.to_thread(os.pread, fd, want, position) if want else b""
                position += len(data)
                yield pb.FileChunk(data=data, total_size=size) if first else pb.FileChunk(data=data)
                first = False
                if not data:
                    break
        finally:
            os.close(fd)

    @unary
    async def WriteFile(
        self, request_iterator: AsyncIterator[pb.WriteFileChunk], context: Any
    ) -> pb.FileInfo:
        chunks = aiter(request_iterator)
        first = await anext(chunks, None)
        if first is None or first.WhichOneof("chunk") != "header":
            raise invalid("the first message of a file upload must be its header")
        header = first.header
        sandbox = self._get(header.ref)
        mode = header.mode or 0o644
        if mode > 0o777:
            raise invalid(f"mode must be permission bits (at most 0o777), not {oct(mode)}")
        workspace = self._workspace(sandbox)
        pending = await asyncio.to_thread(
            workspace.begin_write, header.path, mode=mode, make_parents=header.make_parents
        )
        try:
            async for chunk in chunks:
                if chunk.WhichOneof("chunk") != "data":
                    raise invalid("a file upload has one header, then data")
                await asyncio.to_thread(pending.write, chunk.data)
            entry = await asyncio.to_thread(pending.commit)
        except BaseException:
            pending.abort()
            raise
        sandbox.touch()
        return self._file_info(entry)

    @unary
    async def DeletePath(self, request: pb.DeletePathRequest, context: Any) -> pb.DeleteReply:
        sandbox = self._get(request.ref)
        workspace = self._workspace(sandbox)
        existed = await asyncio.to_thread(workspace.delete, request.path, recursive=request.recursive)
        sandbox.touch()
        return pb.DeleteReply(existed=existed)

    # -- shutdown -----------------------------------------------------------------------------

    async def stop_all(self) -> None:
        async def stop(sandbox: Sandbox) -> None:
            async with sandbox.lock:
                try:
                    await self._stop(sandbox)
                except Exception:
                    logger.exception("could not stop %s", sandbox.config.key)

        await asyncio.gather(*(stop(sandbox) for sandbox in list(self.sandboxes.values())))


# -- authentication -------------------------------------------------------------------------------


class SecretInterceptor(grpc.aio.ServerInterceptor):
    """Every call, Health included, carries `authorization: Bearer <secret>`, or is refused."""

    MESSAGE = "the runtime needs `authorization: Bearer <RUNTIME_SECRET>`; this call had no valid secret"

    def __init__(self, secret: str) -> None:
        self._expected = f"Bearer {secret}".encode()

    def _allowed(self, metadata: Any) -> bool:
        presented = b""
        for key, value in metadata or ():
            if key == "authorization":
                presented = value.encode() if isinstance(value, str) else value
        return hmac.compare_digest(presented, self._expected)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None or self._allowed(handler_call_details.invocation_metadata):
            return handler
        return self._refusal(handler)

    def _refusal(self, handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
        message = self.MESSAGE

        async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

        async def refuse_stream(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
            yield  # pragma: no cover (makes this an async generator)

        async def refuse_after_first(request_iterator: AsyncIterator[Any], context: Any) -> Any:
            # A client's first message is often still being written when a refusal would go
            # out; answering after it arrives (or a second) keeps the status from racing it.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(anext(aiter(request_iterator), None), 1)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

        async def refuse_stream_after_first(
            request_iterator: AsyncIterator[Any], context: Any
        ) -> AsyncIterator[Any]:
            await refuse_after_first(request_iterator, context)
            yield  # pragma: no cover (makes this an async generator)

        codecs = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(refuse_stream_after_first, **codecs)
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(refuse_after_first, **codecs)
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(refuse_stream, **codecs)
        return grpc.unary_unary_rpc_method_handler(refuse, **codecs)


# -- the process ----------------------------------------------------------------------------------


class ListenError(Exception):
    pass


async def build_server(service: RuntimeService) -> grpc.aio.Server:
    server = grpc.aio.server(
        interceptors=[SecretInterceptor(service.config.secret)],
        options=[
            ("grpc.max_receive_message_length", MESSAGE_LIMIT_BYTES),
            ("grpc.max_send_message_length", MESSAGE_LIMIT_BYTES),
            # Two runtimes on one port would split the calls between them; the second must fail.
            ("grpc.so_reuseport", 0),
        ],
    )
    pb_grpc.add_RuntimeServicer_to_server(service, server)  # type: ignore[no-untyped-call]
    try:
        port = server.add_insecure_port(service.config.listen)
    except RuntimeError:
        port = 0
    if not port:
        raise ListenError(
            f"cannot listen on {service.config.listen} (in use, or not an address of this host)"
        )
    return server


async def serve(config: RuntimeConfig, backend: Backend, *, ready: Callable[[], None] = lambda: None) -> None:
    """Serve until SIGTERM or SIGINT, then stop every sandbox and return."""
    config.sandboxes_dir.mkdir(parents=True, exist_ok=True)
    service = RuntimeService(config, backend)
    await service.load()
    server = await build_server(service)
    await server.start()
    ready()

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()
    logger.info("stopping: stopping every sandbox")
    try:
        await asyncio.wait_for(service.stop_all(), config.shutdown_grace_seconds)
    except TimeoutError:
        logger.error("sandboxes did not stop within %ss", config.shutdown_grace_seconds)
    await server.stop(grace=1)
    await backend.close()
