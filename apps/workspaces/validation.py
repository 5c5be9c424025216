"""What a workspace may be made of: templates, resources within the settings' maxima,
network allow-list entries, environment variable names and workspace paths. Each
check raises Invalid naming the field at fault."""

import re
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from apps.core.errors import Invalid
from runtime.netpolicy import format_allow_entry, parse_allow_entry
from runtime.templates import TEMPLATES

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
SECRET_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
WORKSPACE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}$")
MAX_ENV_VARS = 100
MAX_ENV_VALUE = 32 * 1024
MAX_ALLOW_ENTRIES = 50
MAX_PATH = 4096
# Names the platform sets itself in sandboxes; a workspace may not override them.
RESERVED_ENV = {
    "HOME",
    "PATH",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "http_proxy",
    "https_proxy",
    "NO_PROXY",
    "no_proxy",
}


@dataclass(frozen=True)
class Template:
    key: str
    title: str
    description: str


def templates() -> dict[str, Template]:
    """The runtime's templates (runtime/templates.py), as choices with descriptions."""
    return {key: Template(key, key.capitalize(), template.description) for key, template in TEMPLATES.items()}


def validate_template(key: str) -> str:
    known = templates()
    if key not in known:
        raise Invalid(
            f"Unknown template {key!r}; choose one of: {', '.join(sorted(known))}.", field="template"
        )
    return key


def validate_name(name: str) -> str:
    name = name.strip()
    if not WORKSPACE_NAME.match(name):
        raise Invalid(
            "Give the workspace a name of 1-64 letters, digits, spaces, dots, dashes or underscores,"
            " starting with a letter or digit.",
            field="name",
        )
    return name


def _bounded(field: str, value: Any, low: float, high: float, unit: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise Invalid(
            f"{field} must be between {low:g} and {high:g} {unit} (this server's limit).", field=field
        )


def validate_resources(
    *, cpus: float, memory_mb: int, disk_mb: int, pids: int, idle_timeout_seconds: int
) -> None:
    _bounded("cpus", cpus, 0.1, settings.WORKSPACES_MAX_CPUS, "CPUs")
    _bounded("memory_mb", memory_mb, 64, settings.WORKSPACES_MAX_MEMORY_MB, "MB")
    _bounded("disk_mb", disk_mb, 64, settings.WORKSPACES_MAX_DISK_MB, "MB")
    _bounded("pids", pids, 16, settings.WORKSPACES_MAX_PIDS, "processes")
    _bounded(
        "idle_timeout_seconds",
        idle_timeout_seconds,
        60,
        settings.WORKSPACES_MAX_IDLE_TIMEOUT_SECONDS,
        "seconds",
    )


def validate_network_allow(entries: Any) -> list[str]:
    if not isinstance(entries, list) or not all(isinstance(entry, str) for entry in entries):
        raise Invalid('network_allow must be a list of "host:port" strings.', field="network_allow")
    if len(entries) > MAX_ALLOW_ENTRIES:
        raise Invalid(f"At most {MAX_ALLOW_ENTRIES} allow-list entries.", field="network_allow")
    cleaned: list[str] = []
    for raw in entries:
        try:
            entry = format_allow_entry(*parse_allow_entry(raw))
        except ValueError as exc:
            raise Invalid(f"Invalid allow-list entry: {exc}", field="network_allow") from None
        if entry not in cleaned:
            cleaned.append(entry)
    return cleaned


def validate_env(env: Any, *, field: str = "env") -> dict[str, str]:
    if not isinstance(env, dict):
        raise Invalid("env must be an object of NAME: value strings.", field=field)
    if len(env) > MAX_ENV_VARS:
        raise Invalid(f"At most {MAX_ENV_VARS} environment variables.", field=field)
    for name, value in env.items():
        if not isinstance(name, str) or not ENV_NAME.match(name):
            raise Invalid(
                f"{name!r} is not a valid environment variable name (letters, digits and _, not starting"
                " with a digit).",
                field=field,
            )
        if name in RESERVED_ENV:
            raise Invalid(f"{name} is set by the platform and cannot be overridden.", field=field)
        if not isinstance(value, str) or len(value) > MAX_ENV_VALUE or "\x00" in value:
            raise Invalid(f"The value of {name} must be a string of at most 32 KiB without NUL.", field=field)
    return dict(env)


def validate_path(path: str, *, field: str = "path", allow_root: bool = True) -> str:
    """A path relative to the workspace root. The runtime checks again, and also
    refuses symlinks that point out; this catches the obvious at once."""
    if "\x00" in path or len(path) > MAX_PATH:
        raise Invalid("The path is not valid.", field=field)
    if path.startswith("/"):
        raise Invalid("Give a path relative to the workspace, not an absolute path.", field=field)
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise Invalid("The path may not leave the workspace (no '..').", field=field)
    if any(len(part.encode("utf-8", "surrogatepass")) > 255 for part in parts):
        raise Invalid("A name in the path is longer than 255 bytes.", field=field)
    cleaned = "/".join(parts)
    if not cleaned and not allow_root:
        raise Invalid("Give the path of a file in the workspace.", field=field)
    return cleaned


def validate_secret_name(name: str) -> str:
    if not SECRET_NAME.match(name):
        raise Invalid(
            "A secret's name is 1-64 letters, digits and _, not starting with a digit (e.g. GITHUB_TOKEN).",
            field="name",
        )
    return name
