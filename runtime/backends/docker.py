"""Sandboxes as Docker containers, through the official SDK against DOCKER_HOST.

One container per running sandbox, created on start and removed on stop (its root file
system is read-only and /tmp is a tmpfs, so nothing is lost but running processes); the
workspace is a host directory bind-mounted at /workspace, so files outlive the container
and the files API works on them while it is stopped.

Isolation: no capabilities, no-new-privileges, never privileged, CPU/memory (swap
included)/pids quotas, and the Docker socket never mounted unless
RUNTIME_DOCKER_ALLOW_SOCKET=1. Network: "none" by default; with an allow-list the
container joins a network of its own created `internal` (no route out of the host), so
an allow-list is NOT honoured by this backend: the sandbox gets no egress at all, and
reaching the listed hosts would need an egress proxy attached to that network (the
bwrap backend has one). The disk quota is not enforced either: a bind mount has no size
limit in Docker (`storage_opt size` applies only to the container's own layer, and only on
some storage drivers); capabilities() says so.

Exec timeouts kill the command's process tree by its host pid, which works when the
engine runs on this host (one runtime per sandbox host); with a remote engine the
runtime stops waiting and reports the timeout, and the process may live on.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import docker.errors
import requests.exceptions
from docker.utils import socket as docker_socket

import docker
from runtime.backends.base import (
    Backend,
    BackendError,
    ExecFinished,
    ExecOutput,
    ExecSpec,
    PtyProcess,
    SandboxConfig,
)
from runtime.config import RuntimeConfig
from runtime.templates import TEMPLATES

API_VERSION = "1.41"
ENGINE_TIMEOUT_SECONDS = 30
HEALTH_TTL_SECONDS = 5.0
DOCKER_SOCKET = "/var/run/docker.sock"
LABEL = "dev.agentyard.sandbox"
T = TypeVar("T")


def container_name(config: SandboxConfig) -> str:
    return f"agentyard-{config.tenant}-{config.sandbox_id}".replace("_", "-")


def network_name(config: SandboxConfig) -> str:
    return f"{container_name(config)}-net"


def image_for(config: SandboxConfig, runtime: RuntimeConfig) -> str:
    return runtime.docker_images.get(config.template, runtime.docker_image)


def container_config(config: SandboxConfig, runtime: RuntimeConfig, *, workspace: Path) -> dict[str, Any]:
    """The keyword arguments of `client.containers.create()` for a sandbox: everything that
    decides what the container may do, in one pure function."""
    uid = runtime.sandbox_uid
    volumes: dict[str, dict[str, str]] = {str(workspace): {"bind": "/workspace", "mode": "rw"}}
    if runtime.docker_allow_socket:
        volumes[DOCKER_SOCKET] = {"bind": DOCKER_SOCKET, "mode": "rw"}
    return {
        "image": image_for(config, runtime),
        # The container only keeps the sandbox's namespaces alive; work arrives as execs.
        "command": ["sleep", "infinity"],
        "name": container_name(config),
        "hostname": config.sandbox_id,
        "labels": {LABEL: config.key, f"{LABEL}.tenant": config.tenant},
        "user": f"{uid}:{uid}",
        "working_dir": "/workspace",
        "environment": dict(config.env),
        "detach": True,
        "init": True,
        "privileged": False,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "read_only": True,
        "tmpfs": {"/tmp": "rw,nosuid,nodev,size=256m"},  # noqa: S108 (inside the container)
        "volumes": volumes,
        "nano_cpus": int(config.cpus * 1_000_000_000),
        "mem_limit": config.memory_bytes,
        "memswap_limit": config.memory_bytes,  # the same: no swap beyond the memory limit
        "pids_limit": config.pids,
        "network_mode": network_name(config) if config.allow else "none",
        "ipc_mode": "private",
    }


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def _kill_tree(pid: int) -> None:
    if pid <= 0:
        return
    for target in reversed(_descendants(pid)):
        with contextlib.suppress(OSError):
            os.kill(target, signal.SIGKILL)


def _frames(sock: socket.socket) -> Iterator[tuple[int, bytes]]:
    """(stream, data) from an exec's multiplexed stdout/stderr, as the engine sends them."""
    frames: Iterator[tuple[int, bytes]] = docker_socket.frames_iter(  # type: ignore[no-untyped-call]
        sock, False
    )
    return frames


def _login_shell(template: str) -> list[str]:
    known = TEMPLATES.get(template)
    return list(known.login_shell) if known is not None else ["/bin/sh", "-l"]


def _raw_socket(sock: Any) -> socket.socket:
    raw = getattr(sock, "_sock", sock)
    assert isinstance(raw, socket.socket)
    return raw


class DockerPty(PtyProcess):
    def __init__(self, backend: DockerBackend, exec_id: str, sock: socket.socket) -> None:
        self.backend = backend
        self.exec_id = exec_id
        self.sock = sock
        sock.setblocking(False)

    async def read(self) -> bytes:
        loop = asyncio.get_running_loop()
        try:
            return await loop.sock_recv(self.sock, 65536)
        except OSError:
            return b""

    async def write(self, data: bytes) -> None:
        with contextlib.suppress(OSError):
            await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def resize(self, rows: int, cols: int) -> None:
        await self.backend.engine(
            self.backend.client().api.exec_resize, self.exec_id, height=rows, width=cols
        )

    async def wait(self) -> int:
        while True:
            state = await self.backend.engine(self.backend.client().api.exec_inspect, self.exec_id)
            if not state.get("Running"):
                return int(state.get("ExitCode") or 0)
            await asyncio.sleep(0.05)

    async def kill(self) -> None:
        with contextlib.suppress(BackendError):
            state = await self.backend.engine(self.backend.client().api.exec_inspect, self.exec_id)
            _kill_tree(int(state.get("Pid") or 0))
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)


class DockerBackend(Backend):
    name = "docker"

    def __init__(self, runtime: RuntimeConfig) -> None:
        self.runtime = runtime
        self.host = runtime.docker_host
        self._client: docker.DockerClient | None = None
        self._running: set[str] = set()
        self._problem: str | None = None
        self._checked_at = 0.0
        self._checking = threading.Lock()
        self._refresh()

    # -- the engine ---------------------------------------------------------------------------

    def client(self) -> docker.DockerClient:
        if self._client is None:
            try:
                self._client = docker.DockerClient(
                    base_url=self.host, version=API_VERSION, timeout=ENGINE_TIMEOUT_SECONDS
                )
            except docker.errors.DockerException as exc:
                raise BackendError(f"no Docker engine at {self.host}: {exc}") from None
        return self._client

    def _translate(self, exc: Exception) -> BackendError:
        if isinstance(exc, docker.errors.ImageNotFound):
            return BackendError(
                f"the image is not on the Docker engine at {self.host}; pull it first ({exc})"
            )
        if isinstance(exc, docker.errors.APIError):
            return BackendError(f"the Docker engine at {self.host} refused: {exc.explanation or exc}")
        if isinstance(exc, requests.exceptions.Timeout):
            reason = "it did not answer in time"
        elif isinstance(exc, requests.exceptions.ConnectionError | OSError):
            # The platform shows this to people; the SDK's text is a nested repr of urllib3 errors.
            reason = "nothing answers there (is the Docker daemon running, and is DOCKER_HOST right?)"
        else:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return BackendError(f"no Docker engine at {self.host}: {reason}")

    def call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return function(*args, **kwargs)
        except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as exc:
            raise self._translate(exc) from None

    async def engine(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.to_thread(self.call, function, *args, **kwargs)

    def _refresh(self) -> None:
        with self._checking:
            try:
                self.call(self.client().ping)
                self._problem = None
            except BackendError as exc:
                self._problem = str(exc)
            self._checked_at = time.monotonic()

    def capabilities(self) -> dict[str, str]:
        if time.monotonic() - self._checked_at > HEALTH_TTL_SECONDS and not self._checking.locked():
            threading.Thread(target=self._refresh, daemon=True).start()
        capabilities = {
            "isolation": "container",
            "cgroups": "docker",
            "disk_quota": "none",
            "network": "none; allow-list: internal network, no egress",
            "docker_socket": "mounted" if self.runtime.docker_allow_socket else "never",
        }
        if self._problem:
            capabilities["error"] = self._problem
        return capabilities

    async def _require_engine(self) -> docker.DockerClient:
        client = self.client()
        await self.engine(client.ping)
        return client

    # -- sandboxes ----------------------------------------------------------------------------

    def _directory(self, config: SandboxConfig) -> Path:
        return self.runtime.sandboxes_dir / config.tenant / config.sandbox_id

    def workspace_dir(self, config: SandboxConfig) -> Path:
        return self._directory(config) / "workspace"

    def file_owner(self, config: SandboxConfig) -> tuple[int, int] | None:
        return self.runtime.sandbox_uid, self.runtime.sandbox_uid

    async def create(self, config: SandboxConfig) -> None:
        await self._require_engine()
        workspace = self.workspace_dir(config)
        workspace.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            os.chown(workspace, self.runtime.sandbox_uid, self.runtime.sandbox_uid)

    async def start(self, config: SandboxConfig) -> None:
        client = await self._require_engine()
        if config.key in self._running:
            return
        await self._remove_container(client, config)
        if config.allow:
            await self._ensure_network(client, config)
        settings = container_config(config, self.runtime, workspace=self.workspace_dir(config))
        container = await self.engine(client.containers.create, **settings)
        try:
            await self.engine(container.start)
        except BackendError:
            await self._remove_container(client, config)
            raise
        self._running.add(config.key)

    async def _ensure_network(self, client: docker.DockerClient, config: SandboxConfig) -> None:
        name = network_name(config)
        existing = await self.engine(client.networks.list, names=[name])
        if not existing:
            await self.engine(
                client.networks.create, name, driver="bridge", internal=True, labels={LABEL: config.key}
            )

    async def _remove_container(self, client: docker.DockerClient, config: SandboxConfig) -> None:
        try:
            container = await self.engine(client.containers.get, container_name(config))
        except BackendError as exc:
            if "404" in str(exc) or "No such container" in str(exc):
                return
            raise
        await self.engine(container.remove, force=True)

    async def stop(self, config: SandboxConfig) -> None:
        self._running.discard(config.key)
        client = self.client()
        await self._remove_container(client, config)
        if config.allow:
            for network in await self.engine(client.networks.list, names=[network_name(config)]):
                await self.engine(network.remove)

    async def destroy(self, config: SandboxConfig) -> None:
        await self.stop(config)
        shutil.rmtree(self.workspace_dir(config), ignore_errors=True)

    def is_running(self, config: SandboxConfig) -> bool:
        return config.key in self._running

    # -- processes ----------------------------------------------------------------------------

    def _workdir(self, cwd: str) -> str:
        return f"/workspace/{cwd}" if cwd else "/workspace"

    async def exec(self, config: SandboxConfig, spec: ExecSpec) -> AsyncIterator[ExecOutput | ExecFinished]:
        api = self.client().api
        uid = self.runtime.sandbox_uid
        exec_id = (
            await self.engine(
                api.exec_create,
                container_name(config),
                spec.argv,
                stdin=bool(spec.stdin),
                environment=spec.env,
                workdir=self._workdir(spec.cwd),
                user=f"{uid}:{uid}",
            )
        )["Id"]
        sock = _raw_socket(await self.engine(api.exec_start, exec_id, socket=True))
        loop = asyncio.get_running_loop()
        # A small queue: the reading thread waits for us, so output is never buffered unbounded.
        queue: asyncio.Queue[tuple[int, bytes] | None] = asyncio.Queue(maxsize=16)

        def pump() -> None:
            try:
                if spec.stdin:
                    sock.sendall(spec.stdin)
                    sock.shutdown(socket.SHUT_WR)
                for frame in _frames(sock):
                    asyncio.run_coroutine_threadsafe(queue.put(frame), loop).result()
            except (OSError, RuntimeError, docker_socket.SocketError):
                pass
            finally:
                with contextlib.suppress(RuntimeError):
                    asyncio.run_coroutine_threadsafe(queue.put(None), loop).result()

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        deadline = loop.time() + spec.timeout_seconds
        timed_out = False
        try:
            while True:
                try:
                    frame = await asyncio.wait_for(queue.get(), max(deadline - loop.time(), 0))
                except TimeoutError:
                    timed_out = True
                    break
                if frame is None:
                    break
                stream, data = frame
                yield ExecOutput("stderr" if stream == docker_socket.STDERR else "stdout", data)
        finally:
            if timed_out or reader.is_alive():
                with contextlib.suppress(BackendError):
                    state = await self.engine(api.exec_inspect, exec_id)
                    _kill_tree(int(state.get("Pid") or 0))
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                while reader.is_alive():  # let the thread hand over what it holds and end
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(queue.get(), 0.1)
            sock.close()
        state = await self.engine(api.exec_inspect, exec_id)
        exit_code = int(state.get("ExitCode") or 0) if not timed_out else -int(signal.SIGKILL)
        yield ExecFinished(exit_code=exit_code, timed_out=timed_out)

    async def open_pty(
        self, config: SandboxConfig, *, argv: list[str], env: dict[str, str], rows: int, cols: int
    ) -> PtyProcess:
        api = self.client().api
        uid = self.runtime.sandbox_uid
        exec_id = (
            await self.engine(
                api.exec_create,
                container_name(config),
                argv or _login_shell(config.template),
                stdin=True,
                tty=True,
                environment={**config.env, **env},
                workdir="/workspace",
                user=f"{uid}:{uid}",
            )
        )["Id"]
        sock = _raw_socket(await self.engine(api.exec_start, exec_id, socket=True, tty=True))
        process = DockerPty(self, exec_id, sock)
        with contextlib.suppress(BackendError):
            await process.resize(rows, cols)
        return process

    async def close(self) -> None:
        if self._client is not None:
            self._client.close()
