"""Sandbox backends behind runtime/backends/base.py's interface; RUNTIME_BACKEND picks one."""

from __future__ import annotations

from runtime.backends.base import Backend
from runtime.config import RuntimeConfig


def make_backend(config: RuntimeConfig) -> Backend:
    """The configured backend; raises BackendError when it cannot work on this host."""
    if config.backend == "docker":
        from runtime.backends.docker import DockerBackend

        return DockerBackend(config)
    from runtime.backends.bwrap import BwrapBackend

    return BwrapBackend(config.root, sandbox_uid=config.sandbox_uid)
