"""What the loopback LLM fakes (openai_server, anthropic_server, gemini_server) share:
a threaded HTTP server on 127.0.0.1, a per-endpoint queue of scripted replies, a record
of every request, and the ways a reply can go wrong (status codes with headers, delays,
malformed bodies, a dropped connection, a stream cut after some events).

A test scripts what the next requests get, in order:

    fake.script(Reply(text="hi"), Reply.error(429, "slow down", retry_after=2))
    fake.script(Reply.tool("get_weather", {"city": "Paris"}))
    fake.script(Reply.malformed(), endpoint="embeddings")
    fake.default = Reply.error(500, "down")          # what unscripted requests get

With nothing scripted and no default, a chat answers "Echo: <the last user message>"
(so different prompts get different answers) and embeddings are a bag-of-words hash
(so texts with the same words get the same vector, and similar texts near ones).
Each fake renders a Reply in its own API's shapes, streaming or not, as the request asks.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Reply:
    """One scripted answer. Fields a fake's API does not use are ignored."""

    text: str | None = None  # None: the fake's default answer for the request
    tool_calls: list[tuple[str, Any]] = field(default_factory=list)  # (name, arguments dict or raw JSON text)
    finish_reason: str | None = None  # None: "tool_calls"/"stop", in the API's own words
    # (input, output, cached) tokens; None: estimated from the request and the answer.
    usage: tuple[int, int, int] | None = None
    vectors: list[list[float]] | None = None  # embeddings: these instead of the hash
    status: int = 200
    error_message: str = ""
    error_type: str = ""  # the API's error type/status word; "" picks one from the status
    error_code: str | None = None  # e.g. "context_length_exceeded"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before the response starts
    chunk_delay: float = 0.0  # streaming: seconds between events
    stall_after_events: int | None = None  # streaming: after this many events, wait stall_seconds once
    stall_seconds: float = 0.0
    raw_body: bytes | None = None  # sent as is (a malformed body); streaming: as one event's data
    raw_events: list[Any] | None = None  # streaming: these events' data (dicts as JSON) instead
    drop: bool = False  # close the connection without answering
    cut_after_events: int | None = None  # streaming: close the connection after this many events
    # streaming: after this many events, the API's own error event (type from stream_error_status)
    stream_error_after: int | None = None
    stream_error_status: int = 500
    chunk_size: int = 4  # streaming: characters per text/argument delta

    @classmethod
    def tool(cls, name: str, arguments: Any, *, text: str = "", **kwargs: Any) -> Reply:
        return cls(text=text, tool_calls=[(name, arguments)], **kwargs)

    @classmethod
    def error(
        cls,
        status: int,
        message: str = "",
        *,
        retry_after: float | None = None,
        code: str | None = None,
        error_type: str = "",
        **kwargs: Any,
    ) -> Reply:
        headers = dict(kwargs.pop("headers", {}))
        if retry_after is not None:
            headers["Retry-After"] = f"{retry_after:g}"
        return cls(
            status=status,
            error_message=message or f"fake error {status}",
            error_code=code,
            error_type=error_type,
            headers=headers,
            **kwargs,
        )

    @classmethod
    def malformed(cls, body: bytes = b'{"id": "broken", "choices": [', **kwargs: Any) -> Reply:
        return cls(raw_body=body, **kwargs)

    @classmethod
    def slow(cls, seconds: float, **kwargs: Any) -> Reply:
        return cls(delay=seconds, **kwargs)

    def arguments_text(self, arguments: Any) -> str:
        return arguments if isinstance(arguments, str) else json.dumps(arguments)


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: Any  # parsed JSON, or the raw text when it is not JSON

    @property
    def json(self) -> dict[str, Any]:
        return self.body if isinstance(self.body, dict) else {}


def estimate_tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4)) if text else 0


def bag_of_words_vector(text: str, dimensions: int = 64) -> list[float]:
    vector = [0.0] * dimensions
    for word in re.findall(r"\w+", text.lower()):
        digest = hashlib.sha256(word.encode()).digest()
        vector[int.from_bytes(digest[:4], "big") % dimensions] += 1.0 if digest[4] % 2 else -1.0
    norm = math.sqrt(sum(value * value for value in vector)) or 1.0
    return [value / norm for value in vector]


def chunks(text: str, size: int) -> list[str]:
    return [text[index : index + size] for index in range(0, len(text), max(1, size))]


class Abort(Exception):
    """The reply closes the connection (drop, or a stream cut)."""


class Exchange:
    """One request being answered: what a fake's route() writes the response with."""

    def __init__(self, handler: BaseHTTPRequestHandler, server: FakeLLMServer, reply: Reply | None) -> None:
        self.handler = handler
        self.server = server
        self.reply = reply
        self.events_sent = 0
        self.failing = False

    def send_json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.handler.send_response(status)
        for name, value in (headers or {}).items():
            self.handler.send_header(name, value)
        self.handler.send_header("Content-Type", "application/json")
        self.handler.send_header("Content-Length", str(len(payload)))
        self.handler.end_headers()
        self.handler.wfile.write(payload)
        self.handler.wfile.flush()

    def start_stream(self, headers: dict[str, str] | None = None) -> None:
        self.handler.send_response(200)
        for name, value in (headers or {}).items():
            self.handler.send_header(name, value)
        self.handler.send_header("Content-Type", "text/event-stream")
        self.handler.send_header("Cache-Control", "no-cache")
        self.handler.send_header("Transfer-Encoding", "chunked")
        self.handler.end_headers()

    def event(self, data: Any, *, event: str | None = None) -> None:
        reply = self.reply
        if (
            reply is not None
            and reply.cut_after_events is not None
            and self.events_sent >= reply.cut_after_events
        ):
            raise Abort
        if (
            reply is not None
            and reply.stream_error_after is not None
            and self.events_sent >= reply.stream_error_after
            and not self.failing
        ):
            self.failing = True
            self.server.send_stream_error(self, reply)
            self.end_stream()
            raise Abort
        if self.events_sent and reply is not None and reply.chunk_delay:
            self.server.sleep(reply.chunk_delay)
        if reply is not None and reply.stall_after_events == self.events_sent and reply.stall_seconds:
            self.server.sleep(reply.stall_seconds)
        text = data if isinstance(data, str) else json.dumps(data)
        frame = (f"event: {event}\n" if event else "") + f"data: {text}\n\n"
        self._chunk(frame.encode())
        self.events_sent += 1

    def end_stream(self) -> None:
        self._chunk(b"")

    def _chunk(self, payload: bytes) -> None:
        self.handler.wfile.write(f"{len(payload):x}\r\n".encode() + payload + b"\r\n")
        self.handler.wfile.flush()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # a benchmark opens 64+ connections at once; the default backlog is 5


class FakeLLMServer:
    """Base of the fakes: subclasses define route(exchange, request) and their endpoints."""

    endpoints: tuple[str, ...] = ("chat",)

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: list[RecordedRequest] = []
        self.default: Reply | None = None
        self.api_key: str | None = None  # set: requests with another key get the API's 401
        self.record = True  # False: keep no requests (a benchmark's 100,000 calls)
        self._queues: dict[str, deque[Reply]] = {endpoint: deque() for endpoint in self.endpoints}
        self._closing = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self.origin = ""

    # -- what tests use -----------------------------------------------------------------------------

    def script(self, *replies: Reply, endpoint: str = "chat") -> None:
        with self.lock:
            self._queues[endpoint].extend(replies)

    def pending(self, endpoint: str = "chat") -> int:
        with self.lock:
            return len(self._queues[endpoint])

    def requests_to(self, endpoint_path_part: str) -> list[RecordedRequest]:
        return [request for request in self.requests if endpoint_path_part in request.path]

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            for queue in self._queues.values():
                queue.clear()
            self.default = None

    def sleep(self, seconds: float) -> None:
        """A delay that ends early when the server shuts down (no thread left hanging)."""
        self._closing.wait(seconds)

    # -- subclasses ---------------------------------------------------------------------------------

    def route(self, exchange: Exchange, request: RecordedRequest) -> None:
        raise NotImplementedError

    def endpoint_of(self, request: RecordedRequest) -> str | None:
        """Which queue a request draws from (None: it draws none, e.g. a model listing)."""
        raise NotImplementedError

    def authorized(self, request: RecordedRequest) -> bool:
        return True

    def send_error(self, exchange: Exchange, reply: Reply) -> None:
        raise NotImplementedError

    def send_stream_error(self, exchange: Exchange, reply: Reply) -> None:
        """The API's error event in a stream that had begun (status 200 already sent)."""
        raise NotImplementedError

    # -- the machinery ------------------------------------------------------------------------------

    def next_reply(self, request: RecordedRequest) -> Reply | None:
        endpoint = self.endpoint_of(request)
        with self.lock:
            if self.record:
                self.requests.append(request)
            if endpoint is None:
                return None
            queue = self._queues[endpoint]
            return queue.popleft() if queue else self.default

    def serve(self, handler: BaseHTTPRequestHandler) -> None:
        url = urlsplit(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        body: Any
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        request = RecordedRequest(
            method=handler.command,
            path=url.path,
            query=parse_qs(url.query),
            headers={name.lower(): value for name, value in handler.headers.items()},
            body=body,
        )
        reply = self.next_reply(request)
        exchange = Exchange(handler, self, reply)
        try:
            if reply is not None and reply.delay:
                self.sleep(reply.delay)
                if self._closing.is_set():
                    raise Abort
            if reply is not None and reply.drop:
                raise Abort
            if not self.authorized(request):
                self.send_error(exchange, Reply.error(401, "Incorrect API key provided."))
                return
            if reply is not None and reply.status >= 400:
                self.send_error(exchange, reply)
                return
            self.route(exchange, request)
        except Abort:
            handler.close_connection = True
            with contextlib.suppress(OSError):
                handler.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (its timeout)
            handler.close_connection = True

    def start(self) -> None:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
                pass

            def _serve(self) -> None:
                fake.serve(self)

            do_GET = do_POST = do_DELETE = _serve

        self._server = _Server(("127.0.0.1", 0), Handler)
        self.origin = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def stop(self) -> None:
        self._closing.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def now() -> int:
    return int(time.time())
