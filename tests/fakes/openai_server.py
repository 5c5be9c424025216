"""A loopback OpenAI API for tests, driven by the real `openai` SDK (and anything that
speaks the protocol: the gateway's OpenAI-compatible provider, LiteLLM in the bench).

Endpoints (with or without the /v1 prefix): POST /v1/chat/completions (JSON or SSE
streaming with `stream_options.include_usage`, text and tool calls assembled from
deltas the way the real API sends them), POST /v1/embeddings (float or base64),
GET /v1/models and /v1/models/{id}. Errors use the real error body
{"error": {"message", "type", "param", "code"}} and headers such as Retry-After.

    with openai_server() as fake:            # or the `openai_fake` fixture
        client = AsyncOpenAI(base_url=fake.base_url, api_key="sk-test", max_retries=0)
        fake.script(Reply(text="hi"), Reply.error(429, "slow down", retry_after=1))
        ...
        fake.requests[0].json["messages"]
        fake.images(fake.chat_requests[0])    # the image_url parts that arrived

A user message's content may be content parts (text and image_url); the default answer
then says how many images it saw ("Echo: what is this? [1 image]"), and each image
counts 765 prompt tokens (85 at detail "low"), as OpenAI counts a 1024 px image.

See tests/fakes/llm_fake.py for Reply (what can be scripted)."""

from __future__ import annotations

import base64
import secrets
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tests.fakes.llm_fake import (
    Exchange,
    FakeLLMServer,
    RecordedRequest,
    Reply,
    bag_of_words_vector,
    chunks,
    estimate_tokens,
    now,
)

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    429: "requests",
    500: "server_error",
    503: "server_error",
}
ERROR_CODES = {401: "invalid_api_key", 429: "rate_limit_exceeded"}


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return " ".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def _image_parts(content: Any) -> list[dict[str, Any]]:
    if not isinstance(content, list):
        return []
    return [part for part in content if isinstance(part, dict) and part.get("type") == "image_url"]


def _image_tokens(part: dict[str, Any]) -> int:
    return 85 if (part.get("image_url") or {}).get("detail") == "low" else 765


class FakeOpenAI(FakeLLMServer):
    endpoints = ("chat", "embeddings")

    def __init__(self) -> None:
        super().__init__()
        self.models = ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small"]

    @property
    def base_url(self) -> str:
        return f"{self.origin}/v1"

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        return self.requests_to("/chat/completions")

    @staticmethod
    def images(request: RecordedRequest) -> list[dict[str, Any]]:
        """The image_url content parts of a chat request, in order."""
        return [part for m in request.json.get("messages") or [] for part in _image_parts(m.get("content"))]

    def endpoint_of(self, request: RecordedRequest) -> str | None:
        if request.path.endswith("/chat/completions"):
            return "chat"
        if request.path.endswith("/embeddings"):
            return "embeddings"
        return None

    def authorized(self, request: RecordedRequest) -> bool:
        return self.api_key is None or request.headers.get("authorization") == f"Bearer {self.api_key}"

    def send_error(self, exchange: Exchange, reply: Reply) -> None:
        body = {
            "error": {
                "message": reply.error_message,
                "type": reply.error_type or ERROR_TYPES.get(reply.status, "server_error"),
                "param": None,
                "code": reply.error_code or ERROR_CODES.get(reply.status),
            }
        }
        exchange.send_json(reply.status, body, reply.headers)

    def send_stream_error(self, exchange: Exchange, reply: Reply) -> None:
        status = reply.stream_error_status
        error = {
            "message": reply.error_message or "The server had an error while processing your request.",
            "type": reply.error_type or ERROR_TYPES.get(status, "server_error"),
            "param": None,
            "code": reply.error_code or ERROR_CODES.get(status),
        }
        exchange.event({"error": error})

    def route(self, exchange: Exchange, request: RecordedRequest) -> None:
        path = request.path.removeprefix("/v1")
        if request.method == "POST" and path == "/chat/completions":
            self._chat(exchange, request)
        elif request.method == "POST" and path == "/embeddings":
            self._embeddings(exchange, request)
        elif request.method == "GET" and path == "/models":
            data = [
                {"id": name, "object": "model", "created": 1700000000, "owned_by": "fake"}
                for name in self.models
            ]
            exchange.send_json(200, {"object": "list", "data": data})
        elif request.method == "GET" and path.startswith("/models/"):
            name = path.removeprefix("/models/")
            if name in self.models:
                exchange.send_json(
                    200, {"id": name, "object": "model", "created": 1700000000, "owned_by": "fake"}
                )
            else:
                self.send_error(
                    exchange, Reply.error(404, f"The model '{name}' does not exist", code="model_not_found")
                )
        else:
            self.send_error(exchange, Reply.error(404, f"the fake has no {request.method} {request.path}"))

    # -- chat ---------------------------------------------------------------------------------------

    def _answer(
        self, request: RecordedRequest, reply: Reply | None
    ) -> tuple[str | None, list[dict[str, Any]], str, dict[str, Any]]:
        body = request.json
        messages = body.get("messages") or []
        if reply is None or reply.text is None:
            last: dict[str, Any] = next(
                (message for message in reversed(messages) if message.get("role") == "user"), {}
            )
            text: str | None = f"Echo: {_content_text(last.get('content'))}"
            seen = len(_image_parts(last.get("content")))
            if seen:
                text = f"{text} [{seen} image{'s' if seen > 1 else ''}]"
        else:
            text = reply.text
        calls: list[dict[str, Any]] = [
            {
                "id": f"call_{secrets.token_hex(8)}",
                "type": "function",
                "function": {"name": name, "arguments": (reply or Reply()).arguments_text(arguments)},
            }
            for name, arguments in (reply.tool_calls if reply else [])
        ]
        if calls and not text:
            text = None
        finish = (reply.finish_reason if reply else None) or ("tool_calls" if calls else "stop")
        if reply is not None and reply.usage is not None:
            prompt, completion, cached = reply.usage
        else:
            prompt = sum(
                estimate_tokens(_content_text(message.get("content")))
                + 4
                + sum(_image_tokens(part) for part in _image_parts(message.get("content")))
                for message in messages
            )
            completion = estimate_tokens(
                (text or "") + "".join(call["function"]["arguments"] for call in calls)
            )
            cached = 0
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        }
        return text, calls, finish, usage

    def _chat(self, exchange: Exchange, request: RecordedRequest) -> None:
        reply = exchange.reply
        body = request.json
        model = str(body.get("model") or "gpt-4o-mini")
        completion_id = f"chatcmpl-{secrets.token_hex(12)}"
        if body.get("stream"):
            self._stream(exchange, request, completion_id, model)
            return
        if reply is not None and reply.raw_body is not None:
            exchange.send_json(200, reply.raw_body, reply.headers)
            return
        text, calls, finish, usage = self._answer(request, reply)
        message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
        if calls:
            message["tool_calls"] = calls
        exchange.send_json(
            200,
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": now(),
                "model": model,
                "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
                "usage": usage,
                "system_fingerprint": "fp_fake",
            },
            reply.headers if reply else None,
        )

    def _stream(self, exchange: Exchange, request: RecordedRequest, completion_id: str, model: str) -> None:
        reply = exchange.reply
        size = reply.chunk_size if reply else 4
        exchange.start_stream(reply.headers if reply else None)
        if reply is not None and reply.raw_body is not None:
            exchange.event(reply.raw_body.decode(errors="replace"))
            exchange.end_stream()
            return
        if reply is not None and reply.raw_events is not None:  # another server's dialect
            for data in reply.raw_events:
                exchange.event(data)
            exchange.end_stream()
            return
        text, calls, finish, usage = self._answer(request, reply)
        created = now()

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
            return {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_fake",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
            }

        exchange.event(chunk({"role": "assistant", "content": "", "refusal": None}))
        for piece in chunks(text or "", size):
            exchange.event(chunk({"content": piece}))
        for index, call in enumerate(calls):
            head = {
                "index": index,
                "id": call["id"],
                "type": "function",
                "function": {"name": call["function"]["name"], "arguments": ""},
            }
            exchange.event(chunk({"tool_calls": [head]}))
            for piece in chunks(call["function"]["arguments"], size):
                exchange.event(chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}))
        exchange.event(chunk({}, finish))
        if (request.json.get("stream_options") or {}).get("include_usage"):
            exchange.event(
                {
                    "id": completion_id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "choices": [],
                    "usage": usage,
                }
            )
        exchange.event("[DONE]")
        exchange.end_stream()

    # -- embeddings ---------------------------------------------------------------------------------

    def _embeddings(self, exchange: Exchange, request: RecordedRequest) -> None:
        reply = exchange.reply
        if reply is not None and reply.raw_body is not None:
            exchange.send_json(200, reply.raw_body, reply.headers)
            return
        body = request.json
        inputs = body.get("input")
        texts = [inputs] if isinstance(inputs, str) else [str(item) for item in (inputs or [])]
        dimensions = int(body.get("dimensions") or 64)
        if reply is not None and reply.vectors is not None:
            vectors = reply.vectors
        else:
            vectors = [bag_of_words_vector(text, dimensions) for text in texts]
        data = []
        for index, vector in enumerate(vectors):
            embedding: Any = vector
            if body.get("encoding_format") == "base64":
                embedding = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        tokens = (
            reply.usage[0]
            if reply is not None and reply.usage
            else sum(estimate_tokens(text) for text in texts)
        )
        exchange.send_json(
            200,
            {
                "object": "list",
                "data": data,
                "model": str(body.get("model") or "text-embedding-3-small"),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
        )


@contextmanager
def openai_server() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI()
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()
