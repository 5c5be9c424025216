"""Declared variables of a prompt template: what a template may use and a caller
must (or may) pass, with a type each.

A declaration is a plain dict, stored as JSON on each version and written in a
file default's front matter as TOML:

    [variables]
    task = { type = "string", required = true, description = "What to do" }
    files = { type = "list", required = false, default = [] }

An optional variable with no default gets its type's empty value ("" / 0 / false /
[] / {}), so `{% if files %}` works in the template; a required one has no default."""

from __future__ import annotations

import json
import keyword
import re
from collections.abc import Mapping
from typing import Any, Final

from apps.core.errors import Invalid

TYPES: Final[dict[str, tuple[type, ...]]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "list": (list, tuple),
    "object": (dict,),
}
EMPTY: Final[dict[str, Any]] = {
    "string": "",
    "integer": 0,
    "number": 0,
    "boolean": False,
    "list": [],
    "object": {},
}
MAX_VARIABLES: Final = 50
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
# Names the template language itself gives a meaning to.
RESERVED: Final = frozenset(
    {"loop", "self", "super", "varargs", "kwargs", "caller", "true", "false", "none", "True", "False", "None"}
    | {"range", "dict", "lipsum", "cycler", "joiner", "namespace"}
)
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_KEYS: Final = frozenset({"name", "type", "required", "default", "description"})


def _fail(message: str) -> Invalid:
    return Invalid(message, code="invalid_variables", field="variables")


def type_matches(kind: str, value: Any) -> bool:
    if kind in {"integer", "number"} and isinstance(value, bool):
        return False
    return isinstance(value, TYPES[kind])


def normalize(declarations: Any) -> list[dict[str, Any]]:
    """Check declarations (a list of {name, type, required, default, description}) and
    return them in one shape; raise Invalid naming the first problem."""
    if declarations is None:
        return []
    if isinstance(declarations, Mapping):  # {"task": {"type": ...}} (the front matter's shape)
        declarations = [{"name": name, **(spec if isinstance(spec, Mapping) else {"type": spec})}
                        for name, spec in declarations.items()]  # fmt: skip
    if not isinstance(declarations, list):
        raise _fail("Declare variables as a list of objects with a name and a type.")
    if len(declarations) > MAX_VARIABLES:
        raise _fail(f"A template declares at most {MAX_VARIABLES} variables.")
    seen: set[str] = set()
    result = []
    for position, entry in enumerate(declarations, start=1):
        if not isinstance(entry, Mapping):
            raise _fail(f"Variable {position}: give an object with a name and a type.")
        unknown = sorted(set(entry) - _KEYS)
        if unknown:
            raise _fail(f"Variable {position}: unknown key {unknown[0]!r} (use {', '.join(sorted(_KEYS))}).")
        name = entry.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise _fail(
                f"Variable {position}: the name must start with a letter or _ and hold only letters,"
                " digits and _ (at most 64)."
            )
        if name in RESERVED or keyword.iskeyword(name):
            raise _fail(f"Variable {name!r}: the name is reserved by the template language.")
        if name in seen:
            raise _fail(f"Variable {name!r} is declared twice.")
        seen.add(name)
        kind = entry.get("type", "string")
        if kind not in TYPES:
            raise _fail(f"Variable {name!r}: the type must be one of {', '.join(TYPES)}.")
        required = entry.get("required", True)
        if not isinstance(required, bool):
            raise _fail(f"Variable {name!r}: required must be true or false.")
        description = entry.get("description", "")
        if not isinstance(description, str) or len(description) > 500:
            raise _fail(f"Variable {name!r}: the description must be text of at most 500 characters.")
        declaration: dict[str, Any] = {"name": name, "type": kind, "required": required}
        if "default" in entry and entry["default"] is not None:
            if required:
                raise _fail(f"Variable {name!r}: a required variable has no default; make it optional.")
            if not type_matches(kind, entry["default"]):
                raise _fail(f"Variable {name!r}: the default is not a {kind}.")
            if len(json.dumps(entry["default"])) > 10_000:
                raise _fail(f"Variable {name!r}: the default is too large (10,000 characters at most).")
            declaration["default"] = entry["default"]
        declaration["description"] = description
        result.append(declaration)
    return result


def bind(
    declarations: list[dict[str, Any]], values: Mapping[str, Any], *, template: str = ""
) -> dict[str, Any]:
    """The values a render gets: every declared variable, each of its type. Missing
    required variables and undeclared ones are refused by name, never rendered empty."""
    from apps.prompts.rendering import PromptError

    subject = f"The template {template}" if template else "The template"
    of = f" of {template}" if template else ""
    declared = {declaration["name"]: declaration for declaration in declarations}
    undeclared = sorted(set(values) - set(declared))
    if undeclared:
        listed = ", ".join(repr(name) for name in undeclared)
        known = ", ".join(repr(name) for name in declared) or "none"
        raise PromptError(
            f"{subject} does not declare {listed} (it declares: {known}).",
            code="prompt_variable_undeclared",
        )
    missing = [
        name for name, declaration in declared.items() if declaration["required"] and name not in values
    ]
    if missing:
        listed = ", ".join(repr(name) for name in missing)
        raise PromptError(
            f"{subject} needs the variable{'s' if len(missing) > 1 else ''} {listed}.",
            code="prompt_variable_missing",
        )
    bound: dict[str, Any] = {}
    for name, declaration in declared.items():
        if name in values:
            value = values[name]
            if not type_matches(declaration["type"], value):
                raise PromptError(
                    f"The variable {name!r}{of} must be a {declaration['type']}, not {_json_type(value)}.",
                    code="prompt_variable_type",
                )
            bound[name] = value
        else:
            default = declaration.get("default", EMPTY[declaration["type"]])
            bound[name] = json.loads(json.dumps(default))  # a copy: a render cannot change the declaration
    return bound


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def to_toml(declarations: list[dict[str, Any]]) -> str:
    """One `name = { ... }` line per variable, as the front matter and the edit page write them."""
    return "".join(f"{declaration['name']} = {_toml_value(_without_name(declaration))}\n"
                   for declaration in declarations)  # fmt: skip


def _without_name(declaration: dict[str, Any]) -> dict[str, Any]:
    spec = {key: value for key, value in declaration.items() if key != "name"}
    if not spec.get("description"):
        spec.pop("description", None)
    return spec


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    if isinstance(value, str):
        # A JSON string is a TOML basic string (both escape \\, \" and controls as \uXXXX).
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = ", ".join(f"{_toml_key(str(key))} = {_toml_value(item)}" for key, item in value.items())
        return "{ " + items + " }"
    raise ValueError(f"cannot write {type(value).__name__} as TOML")


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key, ensure_ascii=False)


def from_toml(text: str) -> list[dict[str, Any]]:
    """The edit page's variables box: `name = { type = ..., ... }` lines (TOML)."""
    import tomllib

    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _fail(f"The variables are not valid TOML: {exc}.") from None
    if "variables" in table and len(table) == 1 and isinstance(table["variables"], dict):
        table = table["variables"]
    for name, spec in table.items():
        if not isinstance(spec, dict):
            raise _fail(f'Variable {name!r}: write {name} = {{ type = "string", required = true }}.')
    return normalize(table)
