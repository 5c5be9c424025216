"""A loopback MCP server for tests: the official `mcp` SDK's own server side
(MCPServer) over streamable HTTP, served by uvicorn in a thread on a free port.

    with mcp_server() as fake:
        fake.url                      # http://127.0.0.1:<port>/mcp
        fake.requests[0].headers      # what each HTTP request to it carried
        fake.calls                    # [(tool name, arguments)] in the order they arrived

Its tools: `add(a, b)` (structured result), `echo(text)`, `fail(message)` (a tool
error: isError with the message), `sleep(seconds)` (for timeouts) and
`repo.search(query)`, whose dotted name no model gateway accepts as it is. Pass
`tools=` to serve other functions (name -> callable) instead.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings

from tests.conftest import free_port


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class FakeMCP:
    port: int
    path: str = "/mcp"
    requests: list[RecordedRequest] = field(default_factory=list)
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"


def _default_tools(fake: FakeMCP) -> dict[str, Callable[..., Any]]:
    def add(a: int, b: int) -> int:
        """Add two integers."""
        fake.calls.append(("add", {"a": a, "b": b}))
        return a + b

    def echo(text: str) -> str:
        """Say the text back."""
        fake.calls.append(("echo", {"text": text}))
        return f"echo: {text}"

    def fail(message: str) -> str:
        """Always fails with the message."""
        fake.calls.append(("fail", {"message": message}))
        raise ToolError(message)

    def sleep(seconds: float) -> str:
        """Wait, then answer."""
        fake.calls.append(("sleep", {"seconds": seconds}))
        time.sleep(seconds)
        return f"slept {seconds}"

    def search(query: str) -> str:
        """Search the repository index."""
        fake.calls.append(("repo.search", {"query": query}))
        return f"3 hits for {query}"

    return {"add": add, "echo": echo, "fail": fail, "sleep": sleep, "repo.search": search}


@contextmanager
def mcp_server(
    *, name: str = "fake-mcp", tools: dict[str, Callable[..., Any]] | None = None
) -> Iterator[FakeMCP]:
    fake = FakeMCP(port=free_port())
    server = MCPServer(name)
    for tool_name, function in (tools or _default_tools(fake)).items():
        server.add_tool(function, name=tool_name)
    # The SDK guards loopback servers against DNS rebinding by Host; tests reach it by address.
    security = TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=[f"127.0.0.1:{fake.port}"],
        allowed_origins=[f"http://127.0.0.1:{fake.port}"],
    )
    starlette_app = server.streamable_http_app(transport_security=security)

    async def recording_app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            fake.requests.append(
                RecordedRequest(
                    method=scope["method"],
                    path=scope["path"],
                    headers={
                        key.decode("latin-1"): value.decode("latin-1") for key, value in scope["headers"]
                    },
                )
            )
        await starlette_app(scope, receive, send)

    config = uvicorn.Config(
        recording_app, host="127.0.0.1", port=fake.port, log_level="warning", lifespan="on"
    )
    uvicorn_server = uvicorn.Server(config)
    thread = threading.Thread(target=uvicorn_server.run, daemon=True, name="fake-mcp")
    thread.start()
    deadline = time.monotonic() + 20
    while not uvicorn_server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the fake MCP server did not start")
        time.sleep(0.02)
    try:
        yield fake
    finally:
        uvicorn_server.should_exit = True
        thread.join(timeout=10)
