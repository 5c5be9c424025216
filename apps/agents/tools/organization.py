"""The organization's own agent tools (OrganizationTool rows), as ToolSpecs for a run.

- An HTTP tool is one ToolSpec named after the row: its handler checks the model's
  arguments against the row's JSON Schema, then POSTs them as the JSON body to the
  row's URL with the row's headers (stored encrypted), and the response text is what
  the model reads. A non-2xx answer, a timeout or an unreachable host is an error
  outcome naming it, never an exception.
- An MCP server becomes one ToolSpec per tool it lists when the run connects (the
  official `mcp` SDK's client over streamable HTTP), named
  "<server name>__<tool name>": the gateway takes tool names of letters, digits, _
  and - only (apps/llm/gateway.py TOOL_NAME), so the "." of "<server>.<tool>" cannot
  be used, and characters of the server's own tool names outside that set become
  "_". Calling one opens a connection, calls the tool and closes it: a run's steps
  may land on different worker processes, so no connection outlives a call.

What a server lists is kept in the shared cache for the run's duration (keyed by
run, tool row and the row's last change), so a run connects to list tools once,
not at every step; a server that could not be listed is asked again after
DISCOVERY_RETRY_SECONDS.

Where an organization may point its tools: any http(s) address while
AGENTS_TOOLS_ALLOW_PRIVATE_URLS is on (development and tests, whose servers run on
loopback, as the LLM gateway's base URLs there); production turns it off, and then
only https addresses whose host resolves to public addresses are used, checked when
the tool is saved and again at every call (a name may resolve elsewhere later).
Otherwise an organization's manager could have agents read the platform's own
network back to them.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import logging
import re
import socket
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import anyio
import httpx2
import jsonschema
from django.conf import settings
from django.core.cache import cache

from apps.agents.models import OrganizationTool
from apps.agents.tools.base import ToolCallContext, ToolOutcome, ToolSpec
from apps.core.errors import ServiceError
from apps.workspaces import crypto

if TYPE_CHECKING:
    from mcp import Client
    from mcp.types import CallToolResult

    from apps.agents.models import AgentRun

logger = logging.getLogger(__name__)

T = TypeVar("T")

MCP_SEPARATOR = "__"
MAX_TOOL_NAME = 64  # the gateway's limit (apps/llm/gateway.py TOOL_NAME)
MAX_OUTPUT_CHARS = 16_000  # what the model reads back from one call
MAX_RESPONSE_BYTES = 1_000_000  # read from an HTTP tool before giving up on the rest
ERROR_EXCERPT_CHARS = 1_000
DISCOVERY_RETRY_SECONDS = 60
DEFAULT_RUN_SECONDS = 1800
EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}
USER_AGENT = "Agentyard-agent-tools"


@dataclass(frozen=True)
class ToolProblem:
    """An organization tool a run could not offer, and why (for the run's history)."""

    tool: str
    message: str


@dataclass
class Discovery:
    specs: list[ToolSpec] = field(default_factory=list)
    problems: list[ToolProblem] = field(default_factory=list)


@dataclass(frozen=True)
class DiscoveredTool:
    """One tool as an MCP server lists it."""

    name: str
    description: str
    parameters: dict[str, Any]


@dataclass(frozen=True)
class _Endpoint:
    """What a handler needs of its row, copied when the run's tools are built."""

    name: str
    url: str
    headers_encrypted: str
    timeout_seconds: int


# Where tools may point -------------------------------------------------------------------------


def tool_url_problem(url: str) -> str | None:
    """Why an organization tool must not be reached at `url`, or None when it may."""
    try:
        parts = urlsplit(url)
        hostname, port = parts.hostname, parts.port
    except ValueError:  # a bracketed host that is no IPv6 address, a port out of range
        return "That is not a valid web address."
    if parts.scheme not in {"http", "https"} or not hostname:
        return "Use an http:// or https:// address."
    if settings.AGENTS_TOOLS_ALLOW_PRIVATE_URLS:
        return None
    if parts.scheme != "https":
        return "Use an https:// address."
    try:
        infos = socket.getaddrinfo(hostname, port or 443, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return f"{hostname} does not resolve."
    for info in infos:
        address = str(info[4][0]).split("%", 1)[0]
        if not ipaddress.ip_address(address).is_global:
            return f"{hostname} resolves to a private or local address ({address})."
    return None


def tool_headers(tool: OrganizationTool | _Endpoint) -> dict[str, str]:
    """The stored headers, decrypted (Invalid when the encryption key changed)."""
    if not tool.headers_encrypted:
        return {}
    loaded = json.loads(crypto.decrypt_text(tool.headers_encrypted, what=f"headers of the tool {tool.name}"))
    return {str(name): str(value) for name, value in loaded.items()}


def _endpoint(tool: OrganizationTool) -> _Endpoint:
    return _Endpoint(
        name=tool.name,
        url=tool.url,
        headers_encrypted=tool.headers_encrypted,
        timeout_seconds=tool.timeout_seconds,
    )


def _network_risk(endpoint: _Endpoint) -> Callable[[dict[str, Any]], str | None]:
    """An organization tool acts outside the workspace, over the network, with the
    organization's credentials: in confirmation mode every call waits for a member, as the
    built-in tools' network commands do."""
    host = urlsplit(endpoint.url).hostname or endpoint.url
    reason = f"network: calls the organization's tool {endpoint.name} at {host}"
    return lambda arguments: reason


def _timeout(endpoint: _Endpoint, ctx: ToolCallContext | None) -> float:
    """The tool's own timeout, or less when the run's wall-time budget ends sooner."""
    timeout = float(endpoint.timeout_seconds)
    if ctx is not None:
        timeout = min(timeout, max(1.0, ctx.deadline - time.monotonic()))
    return timeout


def truncate_output(text: str, limit: int = MAX_OUTPUT_CHARS) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}\n[... output truncated: {len(text) - limit} more characters not shown]"


def _reason(exc: BaseException) -> str:
    """A readable cause: the first leaf of the SDK's exception groups, not the group."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return str(exc) or type(exc).__name__


# HTTP tools ------------------------------------------------------------------------------------


def _arguments_problem(parameters: dict[str, Any], arguments: dict[str, Any]) -> str | None:
    try:
        error = jsonschema.exceptions.best_match(
            jsonschema.Draft202012Validator(parameters).iter_errors(arguments)
        )
    except Exception:  # an invalid schema, a $ref that does not resolve (never fetched): the server judges
        return None
    if error is None:
        return None
    where = "/".join(str(part) for part in error.absolute_path)
    return f"{error.message}" + (f" (at {where})" if where else "")


def _http_handler(
    endpoint: _Endpoint, parameters: dict[str, Any]
) -> Callable[[ToolCallContext, dict[str, Any]], ToolOutcome]:
    def handle(ctx: ToolCallContext, arguments: dict[str, Any]) -> ToolOutcome:
        problem = _arguments_problem(parameters, arguments)
        if problem is not None:
            return ToolOutcome(
                output=f"The arguments do not match the tool {endpoint.name}'s schema: {problem}", error=True
            )
        return http_tool_call(endpoint, arguments, run_id=str(ctx.run.pk), timeout=_timeout(endpoint, ctx))

    return handle


def http_tool_call(
    endpoint: OrganizationTool | _Endpoint, arguments: dict[str, Any], *, run_id: str, timeout: float
) -> ToolOutcome:
    """POST the arguments to the tool; its answer (or why there is none) as an outcome."""
    problem = tool_url_problem(endpoint.url)
    if problem is not None:
        return ToolOutcome(output=f"The tool {endpoint.name} may not be called: {problem}", error=True)
    try:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "X-Agentyard-Run": run_id,
            **tool_headers(endpoint),
        }
    except ServiceError as exc:
        return ToolOutcome(output=f"The tool {endpoint.name} cannot be called: {exc.message}", error=True)
    started = time.monotonic()
    try:
        # Redirects are not followed: an allowed host could send the call (and its headers) elsewhere.
        with (
            httpx2.Client(timeout=timeout, follow_redirects=False) as client,
            client.stream("POST", endpoint.url, json=arguments, headers=headers) as response,
        ):
            body = bytearray()
            for chunk in response.iter_bytes():
                body.extend(chunk)
                if len(body) > MAX_RESPONSE_BYTES:
                    break
                # A server that trickles bytes must not outlast the timeout either.
                if time.monotonic() - started > timeout:
                    raise httpx2.ReadTimeout("the answer took too long")
            status = response.status_code
            text = body.decode(response.encoding or "utf-8", errors="replace")
    except httpx2.TimeoutException:
        return ToolOutcome(
            output=f"The tool {endpoint.name} did not answer within {timeout:g} s.",
            error=True,
            data={"timeout": True},
        )
    except httpx2.HTTPError as exc:
        return ToolOutcome(
            output=f"The tool {endpoint.name} could not be reached: {_reason(exc)}", error=True
        )
    if not 200 <= status < 300:
        excerpt = truncate_output(text, ERROR_EXCERPT_CHARS)
        return ToolOutcome(
            output=f"The tool {endpoint.name} answered HTTP {status}: {excerpt}",
            error=True,
            data={"status": status},
        )
    return ToolOutcome(output=truncate_output(text), data={"status": status})


# MCP servers -----------------------------------------------------------------------------------


def _run_sync(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to its end from synchronous code (a worker, a view), in a thread of
    its own when this one already has an event loop running."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


@asynccontextmanager
async def _mcp_client(url: str, headers: dict[str, str], timeout: float) -> AsyncIterator[Client]:
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client
    from mcp.types import Implementation

    async with httpx2.AsyncClient(headers={"User-Agent": USER_AGENT, **headers}, timeout=timeout) as http:
        client = Client(
            streamable_http_client(url, http_client=http),
            read_timeout_seconds=timeout,
            cache=None,
            client_info=Implementation(name="agentyard", version="1"),
        )
        async with client:
            yield client


async def _mcp_list(url: str, headers: dict[str, str], timeout: float) -> list[DiscoveredTool]:
    tools: list[DiscoveredTool] = []
    with anyio.fail_after(timeout):
        async with _mcp_client(url, headers, timeout) as client:
            cursor: str | None = None
            while True:
                page = await client.list_tools(cursor=cursor)
                tools.extend(
                    DiscoveredTool(
                        name=tool.name,
                        description=tool.description or tool.title or "",
                        parameters=dict(tool.input_schema),
                    )
                    for tool in page.tools
                )
                cursor = page.next_cursor
                if not cursor:
                    return tools


async def _mcp_call(
    url: str, headers: dict[str, str], timeout: float, tool: str, arguments: dict[str, Any]
) -> CallToolResult:
    with anyio.fail_after(timeout):
        async with _mcp_client(url, headers, timeout) as client:
            return await client.call_tool(tool, arguments)


def mcp_list_tools(
    tool: OrganizationTool | _Endpoint, *, timeout: float | None = None
) -> list[DiscoveredTool]:
    """Connect to the MCP server and list its tools; raises ConnectionError with the reason."""
    problem = tool_url_problem(tool.url)
    if problem is not None:
        raise ConnectionError(problem)
    try:
        headers = tool_headers(tool)
    except ServiceError as exc:
        raise ConnectionError(exc.message) from None
    seconds = float(timeout or tool.timeout_seconds)
    try:
        return _run_sync(lambda: _mcp_list(tool.url, headers, seconds))
    except TimeoutError:
        raise ConnectionError(f"no answer within {seconds:g} s") from None
    except Exception as exc:  # the SDK raises whatever its transport met: report it, never crash the run
        raise ConnectionError(_reason(exc)) from None


def mcp_tool_name(server: str, tool: str) -> str:
    """The name the model sees for an MCP server's tool, within the gateway's rules."""
    clean = re.sub(r"[^A-Za-z0-9_-]", "_", tool) or "tool"
    name = f"{server}{MCP_SEPARATOR}{clean}"
    if len(name) <= MAX_TOOL_NAME:
        return name
    # Cut the tool's part and keep a hash of the whole, so two long names stay apart.
    digest = hashlib.sha256(tool.encode()).hexdigest()[:8]
    room = MAX_TOOL_NAME - len(server) - len(MCP_SEPARATOR) - len(digest) - 1
    return f"{server}{MCP_SEPARATOR}{clean[:room]}-{digest}"


def _mcp_output(result: CallToolResult) -> str:
    from mcp.types import EmbeddedResource, ResourceLink, TextContent, TextResourceContents

    parts: list[str] = []
    for block in result.content:
        if isinstance(block, TextContent):
            parts.append(block.text)
        elif isinstance(block, EmbeddedResource) and isinstance(block.resource, TextResourceContents):
            parts.append(block.resource.text)
        elif isinstance(block, ResourceLink):
            parts.append(f"[resource {block.uri}]")
        else:
            parts.append(f"[{block.type} content of {getattr(block, 'mime_type', 'unknown type')}]")
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content, default=str))
    return "\n".join(parts)


def _mcp_handler(
    endpoint: _Endpoint, server_tool: str
) -> Callable[[ToolCallContext, dict[str, Any]], ToolOutcome]:
    def handle(ctx: ToolCallContext, arguments: dict[str, Any]) -> ToolOutcome:
        return mcp_tool_call(endpoint, server_tool, arguments, timeout=_timeout(endpoint, ctx))

    return handle


def mcp_tool_call(
    endpoint: OrganizationTool | _Endpoint, server_tool: str, arguments: dict[str, Any], *, timeout: float
) -> ToolOutcome:
    data = {"server": endpoint.name, "tool": server_tool}
    problem = tool_url_problem(endpoint.url)
    if problem is not None:
        return ToolOutcome(
            output=f"The MCP server {endpoint.name} may not be called: {problem}", error=True, data=data
        )
    try:
        headers = tool_headers(endpoint)
    except ServiceError as exc:
        return ToolOutcome(
            output=f"The MCP server {endpoint.name} cannot be called: {exc.message}", error=True
        )
    try:
        result = _run_sync(lambda: _mcp_call(endpoint.url, headers, timeout, server_tool, arguments))
    except TimeoutError:
        return ToolOutcome(
            output=f"The MCP server {endpoint.name} did not answer {server_tool} within {timeout:g} s.",
            error=True,
            data={**data, "timeout": True},
        )
    except Exception as exc:  # the SDK's protocol and transport errors alike: the model reads them
        return ToolOutcome(
            output=f"The MCP server {endpoint.name} failed to run {server_tool}: {_reason(exc)}",
            error=True,
            data=data,
        )
    output = truncate_output(_mcp_output(result))
    if result.is_error:
        return ToolOutcome(output=f"{server_tool} failed: {output}", error=True, data=data)
    return ToolOutcome(output=output, data=data)


def _discovery_key(run: AgentRun, tool: OrganizationTool) -> str:
    changed = int(tool.updated_at.timestamp() * 1000) if tool.updated_at else 0
    return f"agents:mcp-tools:{run.pk}:{tool.pk}:{changed}"


def _run_seconds(run: AgentRun) -> int:
    seconds = (run.settings or {}).get("max_seconds") or DEFAULT_RUN_SECONDS
    return max(60, min(int(seconds), 24 * 3600))


def _discovered(run: AgentRun, tool: OrganizationTool) -> list[DiscoveredTool]:
    """The server's tools for this run: from the cache, or listed now (ConnectionError)."""
    key = _discovery_key(run, tool)
    cached = cache.get(key)
    if cached is not None:
        if "error" in cached:
            raise ConnectionError(cached["error"])
        return [DiscoveredTool(**entry) for entry in cached["tools"]]
    try:
        tools = mcp_list_tools(tool)
    except ConnectionError as exc:
        cache.set(key, {"error": str(exc)}, DISCOVERY_RETRY_SECONDS)
        raise
    entries = [{"name": t.name, "description": t.description, "parameters": t.parameters} for t in tools]
    cache.set(key, {"tools": entries}, _run_seconds(run))
    return tools


def _schema_problem(parameters: Any) -> str | None:
    if not isinstance(parameters, dict) or parameters.get("type", "object") != "object":
        return "its parameters are not a JSON Schema of type object"
    try:
        jsonschema.Draft202012Validator.check_schema(parameters)
    except jsonschema.exceptions.SchemaError as exc:
        return f"its parameters are not a valid JSON Schema ({exc.message})"
    return None


def _mcp_specs(run: AgentRun, tool: OrganizationTool, taken: set[str], discovery: Discovery) -> None:
    try:
        listed = _discovered(run, tool)
    except ConnectionError as exc:
        discovery.problems.append(
            ToolProblem(
                tool=tool.name,
                message=f"The MCP server {tool.name} could not be reached ({exc}): "
                "its tools are not offered to this run.",
            )
        )
        return
    endpoint = _endpoint(tool)
    for server_tool in listed:
        name = mcp_tool_name(tool.name, server_tool.name)
        problem = _schema_problem(server_tool.parameters)
        if problem is None and name in taken:
            problem = f"another tool is already named {name}"
        if problem is not None:
            discovery.problems.append(
                ToolProblem(
                    tool=name,
                    message=f"The MCP server {tool.name}'s tool {server_tool.name} is left out: {problem}.",
                )
            )
            continue
        taken.add(name)
        description = server_tool.description or f"The {server_tool.name} tool"
        discovery.specs.append(
            ToolSpec(
                name=name,
                description=f"{description} (MCP server {tool.name})",
                parameters=server_tool.parameters,
                handler=_mcp_handler(endpoint, server_tool.name),
                risk=_network_risk(endpoint),
                source="mcp",
            )
        )


# For the registry ------------------------------------------------------------------------------


def organization_tools_discover(run: AgentRun) -> Discovery:
    """The run's organization tools and the problems met building them; no side effect
    beyond the discovery cache. Runs in the run's tenant schema."""
    discovery = Discovery()
    taken: set[str] = set()
    for tool in OrganizationTool.objects.filter(enabled=True).order_by("name"):
        if tool.kind == OrganizationTool.Kind.HTTP:
            parameters = tool.parameters or EMPTY_PARAMETERS
            taken.add(tool.name)
            discovery.specs.append(
                ToolSpec(
                    name=tool.name,
                    description=tool.description or f"The organization's {tool.name} tool (HTTP).",
                    parameters=parameters,
                    handler=_http_handler(_endpoint(tool), parameters),
                    risk=_network_risk(_endpoint(tool)),
                    source="http",
                )
            )
        elif tool.kind == OrganizationTool.Kind.MCP:
            _mcp_specs(run, tool, taken, discovery)
    return discovery


def tool_problems_record(run: AgentRun, problems: list[ToolProblem]) -> None:
    """Each problem as an error event of the run, once per run and tool (a step_key), so the
    timeline says why a tool is missing without repeating it at every step."""
    from apps.agents.events import event_append

    for problem in problems:
        logger.warning("run %s: %s", run.pk, problem.message)
        event_append(
            run=run,
            kind="error",
            payload={"message": problem.message, "code": "tool_unavailable", "tool": problem.tool},
            step=run.steps,
            step_key=f"tools:{problem.tool}:unavailable",
        )


def organization_tools(run: AgentRun) -> list[ToolSpec]:
    """The enabled organization tools for the run (HTTP tools, and each MCP server's
    listed tools). A server that cannot be reached, or a listed tool that cannot be
    offered, is left out and recorded as an error event on the run (once per run and
    tool); `organization_tools_discover` gives the same without writing anything."""
    discovery = organization_tools_discover(run)
    if discovery.problems:
        tool_problems_record(run, discovery.problems)
    return discovery.specs
