"""The organization's agent tools: create, update and delete (each audited in the same
transaction) and a connection test for MCP servers. (Their usage counters are written by
the registry's handler wrapper, apps/agents/tools/registry.py tool_stat_record, and read
by apps/agents/tool_selectors.py.)

Runs in the current organization's schema (the request's, or a task's). Who may call
what is the views' business: agents.manage for every write here."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import jsonschema
from django.db import IntegrityError, transaction

from apps.agents.models import OrganizationTool
from apps.agents.tools.organization import MCP_SEPARATOR, mcp_list_tools, tool_headers, tool_url_problem
from apps.core.errors import Conflict, Invalid, ServiceError
from apps.tenancy.audit import Actor, audit_record
from apps.tenancy.models import Organization
from apps.workspaces import crypto

MAX_TOOLS: Final = 100
# The gateway's tool-name rule (apps/llm/gateway.py TOOL_NAME), without "__", which joins an MCP
# server's name to its tools' names; an MCP server's name is shorter, leaving room for its tools'.
NAME_PATTERN: Final = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_MCP_NAME: Final = 40
# The built-in tools' names (apps/agents/tools/builtin.py): an organization tool never shadows one.
RESERVED_NAMES: Final = frozenset(
    {"bash", "python", "str_replace_editor", "search", "think", "finish", "knowledge_search"}
)
HEADER_NAME: Final = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}$")
# Set by the HTTP client from the request itself; a stored value would only break the call.
FORBIDDEN_HEADERS: Final = frozenset({"host", "content-length", "transfer-encoding", "connection"})
MAX_HEADERS: Final = 20
MAX_HEADER_VALUE: Final = 8192
MAX_PARAMETERS_BYTES: Final = 64 * 1024
MIN_TIMEOUT, MAX_TIMEOUT = 1, 300
EDITABLE: Final = ("name", "description", "url", "parameters", "headers", "timeout_seconds", "enabled")


def _user_id(actor: Actor) -> int | None:
    return actor.user.pk if actor.user is not None else None


def _validate_name(name: Any, kind: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.match(name.strip()):
        raise Invalid(
            "A tool name has 1 to 64 letters, digits, '_' or '-'.", code="invalid_name", field="name"
        )
    cleaned: str = name.strip()
    if MCP_SEPARATOR in cleaned:
        raise Invalid(
            f"A tool name may not contain {MCP_SEPARATOR!r}: it joins an MCP server's name to its tools'.",
            code="invalid_name",
            field="name",
        )
    if kind == OrganizationTool.Kind.MCP and len(cleaned) > MAX_MCP_NAME:
        raise Invalid(
            f"An MCP server's name has at most {MAX_MCP_NAME} characters (its tools are named"
            f" <server>{MCP_SEPARATOR}<tool>, 64 at most).",
            code="invalid_name",
            field="name",
        )
    if cleaned.lower() in RESERVED_NAMES:
        raise Invalid(
            f"{cleaned!r} is the name of a built-in tool; choose another.", code="name_taken", field="name"
        )
    return cleaned


def _validate_kind(kind: Any) -> str:
    if kind not in OrganizationTool.Kind.values:
        raise Invalid(
            f"The kind is one of {', '.join(OrganizationTool.Kind.values)}.",
            code="invalid_kind",
            field="kind",
        )
    return str(kind)


def _validate_url(url: Any) -> str:
    if not isinstance(url, str) or not url.strip():
        raise Invalid("Give the tool's URL.", field="url")
    cleaned: str = url.strip()
    if len(cleaned) > 2000:
        raise Invalid("The URL has at most 2,000 characters.", field="url")
    if any(character.isspace() for character in cleaned):
        raise Invalid("The URL may not contain spaces.", field="url")
    problem = tool_url_problem(cleaned)
    if problem is not None:
        raise Invalid(problem, code="invalid_url", field="url")
    return cleaned


def _validate_description(description: Any) -> str:
    if not isinstance(description, str) or len(description) > 2000:
        raise Invalid("The description is text of at most 2,000 characters.", field="description")
    return str(description).strip()


def _validate_parameters(parameters: Any, kind: str) -> dict[str, Any]:
    """The arguments' JSON Schema, checked as the gateway checks a tool's (Draft 2020-12, type object)."""
    if kind == OrganizationTool.Kind.MCP:
        if parameters not in (None, {}):
            raise Invalid(
                "An MCP server's tools describe their own parameters; leave parameters out.",
                field="parameters",
            )
        return {}
    if parameters is None or parameters == {}:
        return {"type": "object", "properties": {}}
    if not isinstance(parameters, dict) or parameters.get("type", "object") != "object":
        raise Invalid("The parameters must be a JSON Schema of type object.", field="parameters")
    if len(json.dumps(parameters)) > MAX_PARAMETERS_BYTES:
        raise Invalid("The parameters' schema is too large (64 KiB at most).", field="parameters")
    try:
        jsonschema.Draft202012Validator.check_schema(parameters)
    except jsonschema.exceptions.SchemaError as exc:
        raise Invalid(
            f"The parameters are not a valid JSON Schema: {exc.message}", field="parameters"
        ) from None
    return parameters


def _validate_headers(headers: Any) -> dict[str, str]:
    if not isinstance(headers, dict):
        raise Invalid(
            'The headers are an object of names and values, e.g. {"Authorization": "..."}.', field="headers"
        )
    if len(headers) > MAX_HEADERS:
        raise Invalid(f"At most {MAX_HEADERS} headers.", field="headers")
    cleaned: dict[str, str] = {}
    for name, value in headers.items():
        if not isinstance(name, str) or not HEADER_NAME.match(name):
            raise Invalid(f"{name!r} is not a valid header name.", field="headers")
        if name.lower() in FORBIDDEN_HEADERS:
            raise Invalid(f"The header {name} is set by the platform for each call.", field="headers")
        if not isinstance(value, str) or len(value) > MAX_HEADER_VALUE or any(c in value for c in "\r\n\x00"):
            raise Invalid(
                f"The header {name}'s value must be one line of text, {MAX_HEADER_VALUE} characters at most.",
                field="headers",
            )
        cleaned[name] = value
    return cleaned


def _validate_timeout(timeout_seconds: Any) -> int:
    if isinstance(timeout_seconds, bool) or not isinstance(timeout_seconds, int):
        raise Invalid("The timeout is a whole number of seconds.", field="timeout_seconds")
    if not MIN_TIMEOUT <= timeout_seconds <= MAX_TIMEOUT:
        raise Invalid(f"The timeout is {MIN_TIMEOUT} to {MAX_TIMEOUT} seconds.", field="timeout_seconds")
    return int(timeout_seconds)


def _validate_enabled(enabled: Any) -> bool:
    if not isinstance(enabled, bool):
        raise Invalid("enabled is true or false.", field="enabled")
    return enabled


def _encrypt_headers(headers: dict[str, str]) -> str:
    return crypto.encrypt_text(json.dumps(headers, sort_keys=True)) if headers else ""


def tool_header_names(tool: OrganizationTool) -> list[str]:
    """The stored headers' names (never their values); [] when they cannot be read."""
    try:
        return sorted(tool_headers(tool))
    except ServiceError:
        return []


def _url_for_audit(url: str) -> str:
    """The URL without its query and credentials, which may carry a token."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _summary(tool: OrganizationTool, header_names: list[str]) -> dict[str, Any]:
    return {
        "name": tool.name,
        "kind": tool.kind,
        "url": _url_for_audit(tool.url),
        "headers": header_names,
        "timeout_seconds": tool.timeout_seconds,
        "enabled": tool.enabled,
    }


def _name_taken() -> Conflict:
    return Conflict("A tool with this name exists; choose another.", code="name_taken", field="name")


@transaction.atomic
def tool_create(
    *,
    actor: Actor,
    organization: Organization,
    name: str,
    kind: str,
    url: str,
    description: str = "",
    parameters: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    timeout_seconds: int = 30,
    enabled: bool = True,
) -> OrganizationTool:
    """An HTTP tool (its arguments' JSON Schema in `parameters`) or an MCP server (whose
    tools are listed when a run connects). Header values are stored encrypted."""
    kind = _validate_kind(kind)
    name = _validate_name(name, kind)
    cleaned_headers = _validate_headers(headers or {})
    tool = OrganizationTool(
        name=name,
        kind=kind,
        url=_validate_url(url),
        description=_validate_description(description),
        parameters=_validate_parameters(parameters, kind),
        headers_encrypted=_encrypt_headers(cleaned_headers),
        timeout_seconds=_validate_timeout(timeout_seconds),
        enabled=_validate_enabled(enabled),
        created_by_id=_user_id(actor),
    )
    if OrganizationTool.objects.count() >= MAX_TOOLS:
        raise Conflict(
            f"This organization has {MAX_TOOLS} agent tools, its limit; delete one first.",
            code="tool_quota_exceeded",
        )
    if OrganizationTool.objects.filter(name__iexact=name).exists():
        raise _name_taken()
    try:
        with transaction.atomic():
            tool.save()
    except IntegrityError:  # created by a concurrent request since the check above
        raise _name_taken() from None
    audit_record(
        actor=actor,
        organization=organization,
        action="agent_tool.created",
        target=tool,
        after=_summary(tool, sorted(cleaned_headers)),
    )
    return tool


@transaction.atomic
def tool_update(
    *, actor: Actor, organization: Organization, tool: OrganizationTool, **changes: Any
) -> OrganizationTool:
    """Change any of EDITABLE; `headers` replaces all of them ({} removes them), left out
    keeps them. The kind never changes: delete the tool and add another."""
    unknown = sorted(set(changes) - set(EDITABLE))
    if unknown:
        raise Invalid(f"{unknown[0]} cannot be changed.", field=unknown[0])
    tool = OrganizationTool.objects.select_for_update().get(pk=tool.pk)
    before = _summary(tool, tool_header_names(tool))
    if "name" in changes:
        name = _validate_name(changes["name"], tool.kind)
        if OrganizationTool.objects.filter(name__iexact=name).exclude(pk=tool.pk).exists():
            raise _name_taken()
        tool.name = name
    if "url" in changes:
        tool.url = _validate_url(changes["url"])
    if "description" in changes:
        tool.description = _validate_description(changes["description"])
    if "parameters" in changes:
        tool.parameters = _validate_parameters(changes["parameters"], tool.kind)
    header_names = before["headers"]
    if changes.get("headers") is not None:
        cleaned = _validate_headers(changes["headers"])
        tool.headers_encrypted = _encrypt_headers(cleaned)
        header_names = sorted(cleaned)
    if "timeout_seconds" in changes:
        tool.timeout_seconds = _validate_timeout(changes["timeout_seconds"])
    if "enabled" in changes:
        tool.enabled = _validate_enabled(changes["enabled"])
    try:
        with transaction.atomic():
            tool.save()
    except IntegrityError:
        raise _name_taken() from None
    audit_record(
        actor=actor,
        organization=organization,
        action="agent_tool.updated",
        target=tool,
        before=before,
        after=_summary(tool, header_names),
    )
    return tool


@transaction.atomic
def tool_delete(*, actor: Actor, organization: Organization, tool: OrganizationTool) -> None:
    """Runs in flight keep the tools they were given until their next step."""
    tool = OrganizationTool.objects.select_for_update().get(pk=tool.pk)
    audit_record(
        actor=actor,
        organization=organization,
        action="agent_tool.deleted",
        target=tool,
        before=_summary(tool, tool_header_names(tool)),
    )
    tool.delete()


@dataclass(frozen=True)
class ConnectionTest:
    ok: bool
    tools: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None


def tool_connection_test(*, tool: OrganizationTool) -> ConnectionTest:
    """Connect to an MCP server as a run would and list its tools, with the names runs
    will see; a server that cannot be reached is `ok=False` with the reason (not an error:
    the test worked, the server did not)."""
    from apps.agents.tools.organization import mcp_tool_name

    if tool.kind != OrganizationTool.Kind.MCP:
        raise Invalid(
            "Only an MCP server can be tested: an HTTP tool is called with arguments only a run gives.",
            code="not_mcp",
        )
    try:
        listed = mcp_list_tools(tool)
    except ConnectionError as exc:
        return ConnectionTest(ok=False, error=str(exc))
    return ConnectionTest(
        ok=True,
        tools=[
            {
                "name": mcp_tool_name(tool.name, entry.name),
                "server_name": entry.name,
                "description": entry.description,
                "parameters": entry.parameters,
            }
            for entry in listed
        ],
    )
