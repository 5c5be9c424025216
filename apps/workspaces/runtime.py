"""The one adapter to the sandbox runtime: a client per process, and its errors
turned into ours (apps/core/errors.py), each with the HTTP status a person gets."""

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from django.conf import settings
from django.db import connection

from apps.core.errors import Conflict, Invalid, NotFound, ServiceError, Unavailable
from runtime.client import (
    InvalidRequest,
    LimitExceeded,
    RuntimeClient,
    RuntimeServiceError,
    RuntimeUnauthenticated,
    RuntimeUnavailable,
    SandboxExists,
    SandboxNotFound,
    SandboxNotRunning,
)

UNAVAILABLE_MESSAGE = (
    "The workspace runtime is not reachable, so nothing was changed; try again in a moment."
    " If this goes on, ask an administrator to check the runtime service."
)

_lock = threading.Lock()
_client: RuntimeClient | None = None
_client_settings: tuple[str, str] | None = None


def runtime_client() -> RuntimeClient:
    """One client (one gRPC channel) per process, made again when the settings change."""
    global _client, _client_settings
    wanted = (str(settings.RUNTIME_ADDRESS), str(settings.RUNTIME_SECRET))
    with _lock:
        if _client is None or _client_settings != wanted:
            if _client is not None:
                _client.close()
            _client = RuntimeClient(*wanted)
            _client_settings = wanted
        return _client


def tenant() -> str:
    """The runtime's tenant for the organization of the current request or task."""
    return str(getattr(connection, "schema_name", ""))


@contextmanager
def runtime_errors(
    *, path_field: str | None = None, missing: str = "No such file or directory."
) -> Iterator[None]:
    """Runtime failures as ServiceErrors: 503 unreachable, 409 not running, 400 bad input
    (on `path_field` when the call names a path), 404 missing (`missing` says what)."""
    try:
        yield
    except ServiceError:
        raise
    except RuntimeUnavailable:
        raise Unavailable(UNAVAILABLE_MESSAGE, code="runtime_unavailable") from None
    except RuntimeUnauthenticated:
        raise Unavailable(
            "The workspace runtime refused this server's credentials (RUNTIME_SECRET differs);"
            " nothing was changed. Ask an administrator to fix the configuration.",
            code="runtime_unavailable",
        ) from None
    except SandboxNotRunning as exc:
        raise Conflict(
            f"The workspace is not running; start it first. ({exc})", code="workspace_not_running"
        ) from None
    except InvalidRequest as exc:
        raise Invalid(str(exc), field=path_field) from None
    except SandboxNotFound as exc:
        raise NotFound(f"{missing} ({exc})" if path_field else str(exc)) from None
    except SandboxExists as exc:
        raise Conflict(str(exc)) from None
    except LimitExceeded as exc:
        raise Conflict(f"The runtime host is at its limit: {exc}", code="runtime_limit") from None
    except RuntimeServiceError as exc:
        raise Unavailable(f"The workspace runtime failed: {exc}", code="runtime_error") from None
