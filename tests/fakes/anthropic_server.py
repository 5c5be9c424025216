"""A loopback Anthropic Messages API for tests, driven by the real `anthropic` SDK.

Endpoints: POST /v1/messages (JSON, or the SSE event stream: message_start,
content_block_start/delta/stop with text_delta and input_json_delta, message_delta
with the stop reason and output tokens, message_stop), POST /v1/messages/count_tokens,
GET /v1/models. Errors use the real body {"type": "error", "error": {"type", "message"}}
and headers such as Retry-After. The SDK's base_url is the origin (no /v1).

    with anthropic_server() as fake:          # or the `anthropic_fake` fixture
        client = AsyncAnthropic(base_url=fake.base_url, api_key="sk-ant-test", max_retries=0)
        fake.script(Reply.tool("get_weather", {"city": "Paris"}), Reply(usage=(100, 5, 80)))

Reply.usage's third number is cache_read_input_tokens. See tests/fakes/llm_fake.py.

Prompt caching, as Anthropic does it (when Reply.usage is not scripted): the prompt is
tools, then system, then messages, block by block; a block marked `cache_control`
ends a prefix that is written to the cache (cache_creation_input_tokens) when it is at
least 1,024 tokens (2,048 for a Haiku model), and a later request whose prompt starts
with a cached prefix, up to one of its marks, reads it (cache_read_input_tokens);
input_tokens is the rest. More than 4 marks is the API's 400. `fake.prompt_cache`
holds the cached prefixes (a hash each); cache_control never changes a prefix's hash.
An image block counts 1,600 tokens; the default answer says how many images the last
user turn held ("Echo: what is this? [1 image]"), and `fake.images(request)` lists the
image blocks that arrived."""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tests.fakes.llm_fake import (
    Exchange,
    FakeLLMServer,
    RecordedRequest,
    Reply,
    chunks,
    estimate_tokens,
)

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
STOP_REASONS = {"stop": "end_turn", "tool_calls": "tool_use", "length": "max_tokens"}
IMAGE_TOKENS = 1600
MAX_CACHE_MARKS = 4


def _without_cache_control(item: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in item.items() if key != "cache_control"}


def _prompt_blocks(body: dict[str, Any]) -> list[tuple[dict[str, Any], int, bool]]:
    """The prompt in Anthropic's caching order (tools, system, messages), block by block:
    (the block as it counts for the prefix, its tokens, whether it carries cache_control)."""
    blocks: list[tuple[dict[str, Any], int, bool]] = []
    for tool in body.get("tools") or []:
        if isinstance(tool, dict):
            plain = _without_cache_control(tool)
            blocks.append(({"tool": plain}, estimate_tokens(json.dumps(plain)), "cache_control" in tool))
    system = body.get("system")
    if isinstance(system, str) and system:
        blocks.append(({"system": system}, estimate_tokens(system), False))
    elif isinstance(system, list):
        for block in system:
            if isinstance(block, dict):
                text = str(block.get("text", ""))
                blocks.append(({"system": text}, estimate_tokens(text), "cache_control" in block))
    for message in body.get("messages") or []:
        content = message.get("content")
        items = [{"type": "text", "text": content}] if isinstance(content, str) else content or []
        for index, block in enumerate(items):
            if not isinstance(block, dict):
                continue
            tokens = IMAGE_TOKENS if block.get("type") == "image" else estimate_tokens(_text_of([block]))
            plain = {"role": message.get("role"), "block": _without_cache_control(block)}
            blocks.append((plain, tokens + (4 if index == 0 else 0), "cache_control" in block))
    return blocks


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, dict):
                if block.get("type") == "text":
                    parts.append(str(block.get("text", "")))
                elif block.get("type") == "tool_result":
                    parts.append(_text_of(block.get("content")))
                elif block.get("type") == "tool_use":
                    parts.append(json.dumps(block.get("input")))
        return " ".join(parts)
    return ""


class FakeAnthropic(FakeLLMServer):
    endpoints = ("chat",)

    def __init__(self) -> None:
        super().__init__()
        self.models = ["claude-3-5-haiku-20241022", "claude-sonnet-4-20250514"]
        self.prompt_cache: set[str] = set()  # hashes of the cached prompt prefixes

    @property
    def base_url(self) -> str:
        return self.origin

    @property
    def message_requests(self) -> list[RecordedRequest]:
        return [request for request in self.requests if request.path == "/v1/messages"]

    @staticmethod
    def images(request: RecordedRequest) -> list[dict[str, Any]]:
        """The image blocks of a Messages request, in order."""
        return [
            block
            for message in request.json.get("messages") or []
            if isinstance(message.get("content"), list)
            for block in message["content"]
            if isinstance(block, dict) and block.get("type") == "image"
        ]

    @staticmethod
    def cache_marks(request: RecordedRequest) -> int:
        """How many blocks of a request carry cache_control."""
        return sum(1 for _, _, marked in _prompt_blocks(request.json) if marked)

    def reset(self) -> None:
        super().reset()
        with self.lock:
            self.prompt_cache.clear()

    def _cache_usage(self, body: dict[str, Any]) -> tuple[int, int, int]:
        """(input tokens in all, read from the cache, written to it) for this prompt."""
        minimum = 2048 if "haiku" in str(body.get("model", "")) else 1024
        digest = hashlib.sha256()
        total = 0
        prefixes: list[tuple[str, int, bool]] = []  # after each block: hash, tokens, marked
        for block, tokens, marked in _prompt_blocks(body):
            digest.update(json.dumps(block, sort_keys=True).encode())
            total += tokens
            prefixes.append((digest.hexdigest(), total, marked))
        marks = [index for index, (_, _, marked) in enumerate(prefixes) if marked]
        if not marks:
            return total, 0, 0
        with self.lock:
            read = max(
                (tokens for key, tokens, _ in prefixes[: marks[-1] + 1] if key in self.prompt_cache),
                default=0,
            )
            written = 0
            for index in marks:
                key, tokens, _ = prefixes[index]
                if tokens >= minimum and key not in self.prompt_cache:
                    self.prompt_cache.add(key)
                    written = max(written, tokens - read)
        return total, read, written

    def endpoint_of(self, request: RecordedRequest) -> str | None:
        return "chat" if request.path == "/v1/messages" else None

    def authorized(self, request: RecordedRequest) -> bool:
        # Older SDKs send x-api-key, newer ones a bearer token; the API takes either.
        given = request.headers.get("x-api-key") or request.headers.get("authorization", "").removeprefix(
            "Bearer "
        )
        return self.api_key is None or given == self.api_key

    def send_error(self, exchange: Exchange, reply: Reply) -> None:
        body = {
            "type": "error",
            "error": {
                "type": reply.error_type or ERROR_TYPES.get(reply.status, "api_error"),
                "message": reply.error_message,
            },
        }
        exchange.send_json(reply.status, body, {"request-id": f"req_{secrets.token_hex(8)}", **reply.headers})

    def send_stream_error(self, exchange: Exchange, reply: Reply) -> None:
        error = {
            "type": reply.error_type or ERROR_TYPES.get(reply.stream_error_status, "api_error"),
            "message": reply.error_message or "Overloaded",
        }
        exchange.event({"type": "error", "error": error}, event="error")

    def route(self, exchange: Exchange, request: RecordedRequest) -> None:
        if request.method == "POST" and request.path == "/v1/messages":
            self._messages(exchange, request)
        elif request.method == "POST" and request.path == "/v1/messages/count_tokens":
            exchange.send_json(200, {"input_tokens": self._input_tokens(request.json)})
        elif request.method == "GET" and request.path == "/v1/models":
            data = [
                {"type": "model", "id": name, "display_name": name, "created_at": "2024-10-22T00:00:00Z"}
                for name in self.models
            ]
            exchange.send_json(
                200, {"data": data, "has_more": False, "first_id": self.models[0], "last_id": self.models[-1]}
            )
        else:
            self.send_error(exchange, Reply.error(404, f"the fake has no {request.method} {request.path}"))

    def _input_tokens(self, body: dict[str, Any]) -> int:
        messages = body.get("messages") or []
        system = _text_of(body.get("system"))
        return estimate_tokens(system) + sum(
            estimate_tokens(_text_of(m.get("content"))) + 4 for m in messages
        )

    def _answer(
        self, request: RecordedRequest, reply: Reply | None
    ) -> tuple[list[dict[str, Any]], list[str], str, tuple[int, int, int, int]]:
        """Content blocks, the raw JSON text of each tool_use block's input, stop reason, usage
        (input, output, cache reads, cache writes)."""
        body = request.json
        if reply is None or reply.text is None:
            last: dict[str, Any] = next(
                (m for m in reversed(body.get("messages") or []) if m.get("role") == "user"), {}
            )
            text = f"Echo: {_text_of(last.get('content'))}"
            content = last.get("content")
            seen = sum(
                1
                for block in (content if isinstance(content, list) else [])
                if isinstance(block, dict) and block.get("type") == "image"
            )
            if seen:
                text = f"{text} [{seen} image{'s' if seen > 1 else ''}]"
        else:
            text = reply.text
        blocks: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
        raw_inputs: list[str] = []
        for name, arguments in reply.tool_calls if reply else []:
            raw = reply.arguments_text(arguments) if reply else "{}"
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = {}
            blocks.append(
                {"type": "tool_use", "id": f"toolu_{secrets.token_hex(10)}", "name": name, "input": parsed}
            )
            raw_inputs.append(raw)
        finish = (reply.finish_reason if reply else None) or ("tool_calls" if raw_inputs else "stop")
        stop_reason = STOP_REASONS.get(finish, finish)
        output = estimate_tokens(text + "".join(raw_inputs))
        if reply is not None and reply.usage is not None:
            usage = (*reply.usage, 0)
        elif any(marked for _, _, marked in _prompt_blocks(body)):
            total, read, written = self._cache_usage(body)
            usage = (total - read - written, output, read, written)
        else:
            usage = (self._input_tokens(body), output, 0, 0)
        return blocks, raw_inputs, stop_reason, usage

    @staticmethod
    def _usage(usage: tuple[int, int, int, int]) -> dict[str, Any]:
        return {
            "input_tokens": usage[0],
            "output_tokens": usage[1],
            "cache_creation_input_tokens": usage[3],
            "cache_read_input_tokens": usage[2],
        }

    def _messages(self, exchange: Exchange, request: RecordedRequest) -> None:
        reply = exchange.reply
        body = request.json
        if self.cache_marks(request) > MAX_CACHE_MARKS:
            self.send_error(
                exchange,
                Reply.error(
                    400, f"A maximum of {MAX_CACHE_MARKS} blocks with cache_control may be provided."
                ),
            )
            return
        model = str(body.get("model") or self.models[0])
        message_id = f"msg_{secrets.token_hex(12)}"
        if body.get("stream"):
            self._stream(exchange, request, message_id, model)
            return
        if reply is not None and reply.raw_body is not None:
            exchange.send_json(200, reply.raw_body, reply.headers)
            return
        blocks, _raw, stop_reason, usage = self._answer(request, reply)
        exchange.send_json(
            200,
            {
                "id": message_id,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": blocks,
                "stop_reason": stop_reason,
                "stop_sequence": None,
                "usage": self._usage(usage),
            },
            reply.headers if reply else None,
        )

    def _stream(self, exchange: Exchange, request: RecordedRequest, message_id: str, model: str) -> None:
        reply = exchange.reply
        size = reply.chunk_size if reply else 4
        exchange.start_stream(reply.headers if reply else None)
        if reply is not None and reply.raw_body is not None:
            exchange.event(reply.raw_body.decode(errors="replace"), event="message_start")
            exchange.end_stream()
            return
        blocks, raw_inputs, stop_reason, usage = self._answer(request, reply)
        start_usage = self._usage((usage[0], 1, usage[2], usage[3]))
        exchange.event(
            {
                "type": "message_start",
                "message": {
                    "id": message_id,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": start_usage,
                },
            },
            event="message_start",
        )
        exchange.event({"type": "ping"}, event="ping")
        tool_index = 0
        for index, block in enumerate(blocks):
            if block["type"] == "text":
                exchange.event(
                    {
                        "type": "content_block_start",
                        "index": index,
                        "content_block": {"type": "text", "text": ""},
                    },
                    event="content_block_start",
                )
                for piece in chunks(block["text"], size):
                    delta = {"type": "text_delta", "text": piece}
                    exchange.event(
                        {"type": "content_block_delta", "index": index, "delta": delta},
                        event="content_block_delta",
                    )
            else:
                head = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
                exchange.event(
                    {"type": "content_block_start", "index": index, "content_block": head},
                    event="content_block_start",
                )
                for piece in chunks(raw_inputs[tool_index], size):
                    delta = {"type": "input_json_delta", "partial_json": piece}
                    exchange.event(
                        {"type": "content_block_delta", "index": index, "delta": delta},
                        event="content_block_delta",
                    )
                tool_index += 1
            exchange.event({"type": "content_block_stop", "index": index}, event="content_block_stop")
        exchange.event(
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": usage[1]},
            },
            event="message_delta",
        )
        exchange.event({"type": "message_stop"}, event="message_stop")
        exchange.end_stream()


@contextmanager
def anthropic_server() -> Iterator[FakeAnthropic]:
    fake = FakeAnthropic()
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()
