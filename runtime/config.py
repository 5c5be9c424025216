"""The runtime's settings, from the environment, parsed once at start.

Every problem is one line naming the variable (`ConfigError`), so `python -m runtime`
can print it and exit instead of failing later with a traceback.

Sizes accept plain bytes or a unit: 512M, 1G, 1GiB, 256KiB (powers of 1024).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB

BACKENDS = ("bwrap", "docker")
MIN_SECRET_LENGTH = 16

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": KIB, "m": MIB, "g": GIB, "t": 1024 * GIB}


class ConfigError(Exception):
    """A setting is missing or malformed; the message names it."""


@dataclass(frozen=True)
class Limit:
    """A resource's value when a request asks for none (0), and the most a request may ask for."""

    default: float
    maximum: float


@dataclass(frozen=True)
class RuntimeConfig:
    listen: str = "127.0.0.1:50061"
    secret: str = ""
    root: Path = Path(".run/runtime")
    backend: str = "bwrap"
    sandbox_uid: int = 65534
    cpus: Limit = Limit(1, 2)
    memory_bytes: Limit = Limit(1 * GIB, 4 * GIB)
    disk_bytes: Limit = Limit(2 * GIB, 20 * GIB)
    pids: Limit = Limit(256, 4096)
    exec_timeout_seconds: Limit = Limit(600, 3600)
    exec_output_bytes: Limit = Limit(1 * MIB, 16 * MIB)
    scrollback_bytes: int = 256 * KIB
    # Seconds SIGTERM waits for sandboxes to stop before the runtime exits anyway.
    shutdown_grace_seconds: float = 20
    docker_host: str = ""
    docker_image: str = "agentyard/workspace:latest"
    # template -> image, for templates that need another image than docker_image.
    docker_images: Mapping[str, str] = field(default_factory=dict)
    docker_allow_socket: bool = False

    @property
    def sandboxes_dir(self) -> Path:
        return self.root / "sandboxes"


def parse_size(name: str, raw: str) -> int:
    match = _SIZE.match(raw)
    if not match:
        raise ConfigError(f"{name} must be a size in bytes such as 1073741824, 512M or 1G, not {raw!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def _number(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, not {raw!r}") from None
    if not value > 0 or value == float("inf"):
        raise ConfigError(f"{name} must be greater than 0, not {raw!r}")
    return value


def _integer(name: str, raw: str, *, minimum: int = 1) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, not {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, not {value}")
    return value


def _bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ConfigError(f"{name} must be true or false, not {raw!r}")


def _listen(raw: str) -> str:
    host, sep, port = raw.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"RUNTIME_LISTEN must be host:port such as 127.0.0.1:50061, not {raw!r}")
    return raw.strip()


def _images(raw: str) -> dict[str, str]:
    """RUNTIME_DOCKER_IMAGES: "python=img:tag,node=other:tag"."""
    images: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        template, sep, image = item.partition("=")
        if not sep or not template.strip() or not image.strip():
            raise ConfigError(f"RUNTIME_DOCKER_IMAGES must be template=image[,template=image], not {raw!r}")
        images[template.strip()] = image.strip()
    return images


def _limit(env: Mapping[str, str], name: str, fallback: Limit, parse: type[int] | type[float] | str) -> Limit:
    """RUNTIME_<NAME> (the default) and RUNTIME_MAX_<NAME> (the ceiling)."""

    def read(variable: str, current: float) -> float:
        raw = env.get(variable, "").strip()
        if not raw:
            return current
        if parse == "size":
            value = parse_size(variable, raw)
            if value <= 0:
                raise ConfigError(f"{variable} must be greater than 0")
            return value
        if parse is int:
            return _integer(variable, raw)
        return _number(variable, raw)

    default = read(f"RUNTIME_{name}", fallback.default)
    maximum = read(f"RUNTIME_MAX_{name}", fallback.maximum)
    if default > maximum:
        raise ConfigError(f"RUNTIME_{name} ({default:g}) is above RUNTIME_MAX_{name} ({maximum:g})")
    return Limit(default, maximum)


def load(environ: Mapping[str, str] | None = None) -> RuntimeConfig:
    env = os.environ if environ is None else environ
    secret = env.get("RUNTIME_SECRET", "")
    if not secret:
        raise ConfigError("RUNTIME_SECRET is not set; the runtime refuses to serve without a shared secret")
    if len(secret) < MIN_SECRET_LENGTH:
        raise ConfigError(f"RUNTIME_SECRET must be at least {MIN_SECRET_LENGTH} characters long")
    backend = env.get("RUNTIME_BACKEND", "").strip().lower() or "bwrap"
    if backend not in BACKENDS:
        raise ConfigError(f"RUNTIME_BACKEND must be one of {', '.join(BACKENDS)}, not {backend!r}")
    root = env.get("RUNTIME_ROOT", "").strip() or ".run/runtime"
    scrollback = env.get("RUNTIME_SCROLLBACK_BYTES", "").strip()
    grace = env.get("RUNTIME_SHUTDOWN_GRACE_SECONDS", "").strip()
    defaults = RuntimeConfig()
    return RuntimeConfig(
        listen=_listen(env.get("RUNTIME_LISTEN", "") or defaults.listen),
        secret=secret,
        root=Path(root).absolute(),
        backend=backend,
        sandbox_uid=_integer("RUNTIME_SANDBOX_UID", env.get("RUNTIME_SANDBOX_UID", "") or "65534"),
        cpus=_limit(env, "CPUS", defaults.cpus, float),
        memory_bytes=_limit(env, "MEMORY", defaults.memory_bytes, "size"),
        disk_bytes=_limit(env, "DISK", defaults.disk_bytes, "size"),
        pids=_limit(env, "PIDS", defaults.pids, int),
        exec_timeout_seconds=_limit(env, "EXEC_TIMEOUT", defaults.exec_timeout_seconds, float),
        exec_output_bytes=_limit(env, "EXEC_OUTPUT", defaults.exec_output_bytes, "size"),
        scrollback_bytes=(
            parse_size("RUNTIME_SCROLLBACK_BYTES", scrollback) if scrollback else defaults.scrollback_bytes
        ),
        shutdown_grace_seconds=(
            _number("RUNTIME_SHUTDOWN_GRACE_SECONDS", grace) if grace else defaults.shutdown_grace_seconds
        ),
        docker_host=env.get("DOCKER_HOST", "").strip() or "unix:///var/run/docker.sock",
        docker_image=env.get("RUNTIME_DOCKER_IMAGE", "").strip() or defaults.docker_image,
        docker_images=_images(env.get("RUNTIME_DOCKER_IMAGES", "")),
        docker_allow_socket=_bool("RUNTIME_DOCKER_ALLOW_SOCKET", env.get("RUNTIME_DOCKER_ALLOW_SOCKET", "")),
    )
