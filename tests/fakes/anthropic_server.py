"""A loopback Anthropic Messages API for tests, driven by the real `anthropic` SDK.

Endpoints: POST /v1/messages (JSON, or the SSE event stream: message_start,
content_block_start/delta/stop with text_delta and input_json_delta, message_delta
with the stop reason and output tokens, message_stop), POST /v1/messages/count_tokens,
GET /v1/models. Errors use the real body {"type": "error", "error": {"type", "message"}}
and headers such as Retry-After. The SDK's base_url is the origin (no /v1).

    with anthropic_server() as fake:          # or the `anthropic_fake` fixture
        client = AsyncAnthropic(base_url=fake.base_url, api_key="sk-ant-test", max_retries=0)
        fake.script(Reply.tool("get_weather", {"city": "Paris"}), Reply(usage=(100, 5, 80)))

Reply.usage's third number is cache_read_input_tokens. See tests/fakes/llm_fake.py."""

from __future__ import annotations

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

    @property
    def base_url(self) -> str:
        return self.origin

    @property
    def message_requests(self) -> list[RecordedRequest]:
        return [request for request in self.requests if request.path == "/v1/messages"]

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
    ) -> tuple[list[dict[str, Any]], list[str], str, tuple[int, int, int]]:
        """Content blocks, the raw JSON text of each tool_use block's input, stop reason, usage."""
        body = request.json
        if reply is None or reply.text is None:
            last_user = next(
                (
                    _text_of(m.get("content"))
                    for m in reversed(body.get("messages") or [])
                    if m.get("role") == "user"
                ),
                "",
            )
            text = f"Echo: {last_user}"
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
        if reply is not None and reply.usage is not None:
            usage = reply.usage
        else:
            usage = (self._input_tokens(body), estimate_tokens(text + "".join(raw_inputs)), 0)
        return blocks, raw_inputs, stop_reason, usage

    @staticmethod
    def _usage(usage: tuple[int, int, int]) -> dict[str, Any]:
        return {
            "input_tokens": usage[0],
            "output_tokens": usage[1],
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": usage[2],
        }

    def _messages(self, exchange: Exchange, request: RecordedRequest) -> None:
        reply = exchange.reply
        body = request.json
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
        start_usage = self._usage((usage[0], 1, usage[2]))
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
