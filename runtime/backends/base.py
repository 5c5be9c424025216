"""What a sandbox backend does; the gRPC server (runtime/server.py) does the rest.

The server owns the registry of sandboxes (tenant ownership, persisted configs),
input validation, path safety of the files API, output truncation, terminal
sessions (scrollback, several attachments) and activity times. A backend only
makes sandboxes exist, run processes in them, and stop them.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


class BackendError(Exception):
    """The backend cannot do this on this host (maps to UNAVAILABLE with this message)."""


@dataclass
class SandboxConfig:
    """Everything needed to (re)start a sandbox; persisted as JSON beside its files."""

    tenant: str
    sandbox_id: str
    template: str = "base"
    cpus: float = 0
    memory_bytes: int = 0
    disk_bytes: int = 0
    pids: int = 0
    allow: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    created_at: float = 0.0

    @property
    def key(self) -> str:
        """Unique on the host, safe as a file or cgroup name."""
        return f"{self.tenant}.{self.sandbox_id}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SandboxConfig:
        return cls(**data)


@dataclass(frozen=True)
class ExecSpec:
    argv: list[str]  # already resolved: a shell command arrives as ["/bin/sh", "-c", cmd]
    env: dict[str, str]  # the sandbox's env, then the request's on top
    cwd: str  # relative to the workspace root, validated by the server
    timeout_seconds: float  # > 0; the whole process group is killed at it
    stdin: bytes = b""


@dataclass(frozen=True)
class ExecOutput:
    stream: str  # "stdout" | "stderr"
    data: bytes


@dataclass(frozen=True)
class ExecFinished:
    exit_code: int  # -N when killed by signal N
    timed_out: bool = False
    oom_killed: bool = False


class PtyProcess(abc.ABC):
    """A process on a pseudo-terminal inside a sandbox."""

    @abc.abstractmethod
    async def read(self) -> bytes:
        """The next output; b"" once the process has exited and all output is read."""

    @abc.abstractmethod
    async def write(self, data: bytes) -> None: ...

    @abc.abstractmethod
    async def resize(self, rows: int, cols: int) -> None: ...

    @abc.abstractmethod
    async def wait(self) -> int:
        """The exit code (-N for signal N)."""

    @abc.abstractmethod
    async def kill(self) -> None: ...


class Backend(abc.ABC):
    name: str

    @abc.abstractmethod
    def capabilities(self) -> dict[str, str]:
        """What isolation this host gives, for Health: e.g. {"cgroups": "v1", "disk_quota": "loop"}."""

    @abc.abstractmethod
    def workspace_dir(self, config: SandboxConfig) -> Path:
        """The host directory holding the workspace's files (mounted at /workspace inside).
        Exists from create() to destroy(), whether the sandbox runs or not."""

    def file_owner(self, config: SandboxConfig) -> tuple[int, int] | None:
        """uid/gid that files written through the files API must belong to (None: leave as is)."""
        return None

    @abc.abstractmethod
    async def create(self, config: SandboxConfig) -> None:
        """Prepare storage; raise BackendError when the host cannot."""

    @abc.abstractmethod
    async def start(self, config: SandboxConfig) -> None:
        """Make the sandbox ready to exec within milliseconds. Idempotent."""

    @abc.abstractmethod
    async def stop(self, config: SandboxConfig) -> None:
        """Kill every process of the sandbox, leaving none behind. Idempotent."""

    @abc.abstractmethod
    async def destroy(self, config: SandboxConfig) -> None:
        """Stop and remove everything of the sandbox. Idempotent."""

    @abc.abstractmethod
    def is_running(self, config: SandboxConfig) -> bool: ...

    @abc.abstractmethod
    def exec(self, config: SandboxConfig, spec: ExecSpec) -> AsyncIterator[ExecOutput | ExecFinished]:
        """Run to completion (or timeout), yielding output as it comes and ExecFinished last."""

    @abc.abstractmethod
    async def open_pty(
        self, config: SandboxConfig, *, argv: list[str], env: dict[str, str], rows: int, cols: int
    ) -> PtyProcess: ...

    def disk_used(self, config: SandboxConfig) -> int:
        total = 0
        for path in self.workspace_dir(config).rglob("*"):
            try:
                if path.is_file() and not path.is_symlink():
                    total += path.stat().st_size
            except OSError:
                continue
        return total

    async def close(self) -> None:  # noqa: B027 (optional for a backend)
        """The runtime is shutting down (sandboxes keep their files; processes are stopped)."""
