"""A loopback HTTP endpoint playing an organization's HTTP agent tool: it records every
request (path, headers, JSON body) and answers what the test scripted, in order, or
by default echoes the arguments back as JSON.

    with http_tool_server() as fake:
        fake.url                             # http://127.0.0.1:<port>/tool
        fake.script(Answer(status=503, body="down"), Answer(delay=3))
        fake.requests[0].json                # the arguments the agent sent
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Answer:
    status: int = 200
    body: str | None = None  # None: {"echo": <the arguments>}
    content_type: str = "application/json"
    delay: float = 0.0  # seconds before answering


@dataclass(frozen=True)
class ToolRequest:
    method: str
    path: str
    headers: dict[str, str]
    json: Any


@dataclass
class FakeHttpTool:
    port: int
    requests: list[ToolRequest] = field(default_factory=list)
    answers: list[Answer] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/tool"

    def script(self, *answers: Answer) -> None:
        with self.lock:
            self.answers.extend(answers)

    def next_answer(self) -> Answer:
        with self.lock:
            return self.answers.pop(0) if self.answers else Answer()


def _handler(fake: FakeHttpTool) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                arguments = json.loads(raw) if raw else None
            except json.JSONDecodeError:
                arguments = raw.decode(errors="replace")
            fake.requests.append(
                ToolRequest(
                    method="POST",
                    path=self.path,
                    headers={name.lower(): value for name, value in self.headers.items()},
                    json=arguments,
                )
            )
            answer = fake.next_answer()
            if answer.delay:
                time.sleep(answer.delay)
            body = (answer.body if answer.body is not None else json.dumps({"echo": arguments})).encode()
            try:
                self.send_response(answer.status)
                self.send_header("Content-Type", answer.content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the caller gave up waiting (a timeout test)

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


@contextmanager
def http_tool_server() -> Iterator[FakeHttpTool]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(FakeHttpTool(port=0)))
    fake = FakeHttpTool(port=int(server.server_address[1]))
    server.RequestHandlerClass = _handler(fake)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True, name="fake-http-tool")
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
