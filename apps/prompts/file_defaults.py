"""Prompt templates shipped with the platform (apps/prompts/defaults/<name>.j2), used
when an organization has no template of that name.

Each file starts with a Jinja comment holding TOML front matter (so the file is
still a valid template), then the body:

    {#-
    description = "What the template is for"
    [variables]
    task = { type = "string", required = true, description = "What to do" }
    -#}
    You are ...
"""

from __future__ import annotations

import functools
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from apps.prompts import variables as declared_variables

DIRECTORY: Final = Path(__file__).resolve().parent / "defaults"
NAME_PATTERN: Final = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")
_FRONT_MATTER = re.compile(r"\A\{#-?\n(?P<toml>.*?)\n-?#\}\n?", re.DOTALL)


@dataclass(frozen=True)
class FileDefault:
    name: str
    description: str
    variables: list[dict[str, Any]]
    body: str


def parse(name: str, text: str) -> FileDefault:
    match = _FRONT_MATTER.match(text)
    if match is None:
        return FileDefault(name=name, description="", variables=[], body=text)
    try:
        front = tomllib.loads(match.group("toml"))
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"prompt default {name}: the front matter is not TOML: {exc}") from None
    return FileDefault(
        name=name,
        description=str(front.get("description", "")),
        variables=declared_variables.normalize(front.get("variables", {})),
        body=text[match.end() :],
    )


@functools.cache
def _load_all() -> dict[str, FileDefault]:
    from apps.prompts.rendering import check_body

    found = {}
    for path in sorted(DIRECTORY.glob("*.j2")):
        name = path.name.removesuffix(".j2")
        if not NAME_PATTERN.match(name):
            raise ValueError(f"prompt default {path.name}: the name must match {NAME_PATTERN.pattern}")
        default = parse(name, path.read_text(encoding="utf-8"))
        check_body(default.body, default.variables, template=name)
        found[name] = default
    return found


def defaults() -> list[FileDefault]:
    return list(_load_all().values())


def default_get(name: str) -> FileDefault | None:
    return _load_all().get(name)
