"""A loopback Gemini API (generativelanguage, v1beta) for tests, driven by the real
`google-genai` SDK (http_options base_url pointed here).

Endpoints: POST /v1beta/models/{model}:generateContent, :streamGenerateContent?alt=sse
(one GenerateContentResponse per SSE event; text in pieces, each function call whole,
the last event with finishReason and usageMetadata), :countTokens, :embedContent,
:batchEmbedContents, and GET /v1beta/models. Errors use the real body
{"error": {"code", "message", "status"}} and headers such as Retry-After.

    with gemini_server() as fake:             # or the `gemini_fake` fixture
        client = genai.Client(api_key="test", http_options=HttpOptions(base_url=fake.base_url))

Reply.usage's third number is cachedContentTokenCount. See tests/fakes/llm_fake.py.
An image is an inlineData or fileData part: `fake.images(request)` lists those that
arrived, the default answer says how many the last user turn held ("Echo: what is
this? [1 image]"), and each counts 258 prompt tokens."""

from __future__ import annotations

import json
import re
import secrets
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
)

STATUS_WORDS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
FINISH_REASONS = {"stop": "STOP", "tool_calls": "STOP", "length": "MAX_TOKENS", "content_filter": "SAFETY"}
MODEL_PATH = re.compile(r"^/(?P<version>v1\w*)/models/(?P<model>[^:/]+):(?P<method>\w+)$")


IMAGE_KEYS = ("inlineData", "inline_data", "fileData", "file_data")


def _image_parts(content: Any) -> list[dict[str, Any]]:
    if not isinstance(content, dict):
        return []
    return [
        part
        for part in content.get("parts") or []
        if isinstance(part, dict) and any(key in part for key in IMAGE_KEYS)
    ]


def _parts_text(content: Any) -> str:
    if not isinstance(content, dict):
        return ""
    texts = []
    for part in content.get("parts") or []:
        if isinstance(part, dict):
            if "text" in part:
                texts.append(str(part["text"]))
            for key in ("functionCall", "function_call", "functionResponse", "function_response"):
                if key in part:
                    texts.append(json.dumps(part[key]))
    return " ".join(texts)


class FakeGemini(FakeLLMServer):
    endpoints = ("chat", "embeddings")

    def __init__(self) -> None:
        super().__init__()
        self.models = ["gemini-2.0-flash", "gemini-1.5-pro", "text-embedding-004"]

    @property
    def base_url(self) -> str:
        return self.origin

    @staticmethod
    def images(request: RecordedRequest) -> list[dict[str, Any]]:
        """The inlineData/fileData parts of a generate request, in order."""
        return [part for content in request.json.get("contents") or [] for part in _image_parts(content)]

    @property
    def generate_requests(self) -> list[RecordedRequest]:
        return [
            request for request in self.requests if "Generate" in request.path or "generate" in request.path
        ]

    def endpoint_of(self, request: RecordedRequest) -> str | None:
        match = MODEL_PATH.match(request.path)
        if match is None:
            return None
        method = match.group("method")
        if method in ("generateContent", "streamGenerateContent"):
            return "chat"
        if method in ("embedContent", "batchEmbedContents"):
            return "embeddings"
        return None

    def authorized(self, request: RecordedRequest) -> bool:
        given = request.headers.get("x-goog-api-key") or (request.query.get("key") or [""])[0]
        return self.api_key is None or given == self.api_key

    def send_error(self, exchange: Exchange, reply: Reply) -> None:
        status = 400 if reply.status == 401 else reply.status  # Gemini answers a bad key with 400
        body = {
            "error": {
                "code": status,
                "message": reply.error_message,
                "status": reply.error_type or STATUS_WORDS.get(reply.status, "INTERNAL"),
            }
        }
        exchange.send_json(status, body, reply.headers)

    def send_stream_error(self, exchange: Exchange, reply: Reply) -> None:
        status = reply.stream_error_status
        error = {
            "code": status,
            "message": reply.error_message or "An internal error has occurred.",
            "status": reply.error_type or STATUS_WORDS.get(status, "INTERNAL"),
        }
        exchange.event({"error": error})

    def route(self, exchange: Exchange, request: RecordedRequest) -> None:
        if request.method == "GET" and re.fullmatch(r"/v1\w*/models", request.path):
            data = [
                {"name": f"models/{name}", "displayName": name, "inputTokenLimit": 1048576}
                for name in self.models
            ]
            exchange.send_json(200, {"models": data})
            return
        match = MODEL_PATH.match(request.path)
        if request.method != "POST" or match is None:
            self.send_error(exchange, Reply.error(404, f"the fake has no {request.method} {request.path}"))
            return
        model, method = match.group("model"), match.group("method")
        if method == "generateContent":
            self._generate(exchange, request, model)
        elif method == "streamGenerateContent":
            self._stream(exchange, request, model)
        elif method == "countTokens":
            exchange.send_json(200, {"totalTokens": self._input_tokens(request.json)})
        elif method in ("embedContent", "batchEmbedContents"):
            self._embed(exchange, request, method)
        else:
            self.send_error(exchange, Reply.error(404, f"the fake has no method {method}"))

    def _input_tokens(self, body: dict[str, Any]) -> int:
        contents = body.get("contents") or []
        system = _parts_text(body.get("systemInstruction") or body.get("system_instruction"))
        return estimate_tokens(system) + sum(
            estimate_tokens(_parts_text(content)) + 4 + 258 * len(_image_parts(content))
            for content in contents
        )

    def _answer(
        self, request: RecordedRequest, reply: Reply | None
    ) -> tuple[str, list[dict[str, Any]], str, tuple[int, int, int]]:
        body = request.json
        if reply is None or reply.text is None:
            last: dict[str, Any] = next(
                (c for c in reversed(body.get("contents") or []) if c.get("role", "user") == "user"), {}
            )
            text = f"Echo: {_parts_text(last)}"
            seen = len(_image_parts(last))
            if seen:
                text = f"{text} [{seen} image{'s' if seen > 1 else ''}]"
        else:
            text = reply.text
        calls = []
        for name, arguments in reply.tool_calls if reply else []:
            raw = reply.arguments_text(arguments) if reply else "{}"
            try:
                args = json.loads(raw)
            except ValueError:
                args = raw  # not an object: the client must notice
            calls.append({"functionCall": {"name": name, "args": args}})
        finish = (reply.finish_reason if reply else None) or "stop"
        if reply is not None and reply.usage is not None:
            usage = reply.usage
        else:
            usage = (
                self._input_tokens(body),
                estimate_tokens(text + json.dumps(calls) if calls else text),
                0,
            )
        return text, calls, FINISH_REASONS.get(finish, finish), usage

    @staticmethod
    def _usage(usage: tuple[int, int, int]) -> dict[str, Any]:
        result = {
            "promptTokenCount": usage[0],
            "candidatesTokenCount": usage[1],
            "totalTokenCount": usage[0] + usage[1],
        }
        if usage[2]:
            result["cachedContentTokenCount"] = usage[2]
        return result

    def _response(
        self,
        model: str,
        parts: list[dict[str, Any]],
        finish: str | None,
        usage: dict[str, Any] | None,
        rid: str,
    ) -> dict[str, Any]:
        candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
        if finish:
            candidate["finishReason"] = finish
        response: dict[str, Any] = {"candidates": [candidate], "modelVersion": model, "responseId": rid}
        if usage:
            response["usageMetadata"] = usage
        return response

    def _generate(self, exchange: Exchange, request: RecordedRequest, model: str) -> None:
        reply = exchange.reply
        if reply is not None and reply.raw_body is not None:
            exchange.send_json(200, reply.raw_body, reply.headers)
            return
        text, calls, finish, usage = self._answer(request, reply)
        parts = ([{"text": text}] if text else []) + calls
        exchange.send_json(
            200,
            self._response(model, parts, finish, self._usage(usage), secrets.token_hex(8)),
            reply.headers if reply else None,
        )

    def _stream(self, exchange: Exchange, request: RecordedRequest, model: str) -> None:
        reply = exchange.reply
        size = reply.chunk_size if reply else 4
        exchange.start_stream(reply.headers if reply else None)
        if reply is not None and reply.raw_body is not None:
            exchange.event(reply.raw_body.decode(errors="replace"))
            exchange.end_stream()
            return
        text, calls, finish, usage = self._answer(request, reply)
        rid = secrets.token_hex(8)
        pieces: list[dict[str, Any]] = [{"text": piece} for piece in chunks(text, size)] + calls
        for index, part in enumerate(pieces):
            last = index == len(pieces) - 1
            exchange.event(
                self._response(
                    model, [part], finish if last else None, self._usage(usage) if last else None, rid
                )
            )
        if not pieces:
            exchange.event(self._response(model, [{"text": ""}], finish, self._usage(usage), rid))
        exchange.end_stream()

    def _embed(self, exchange: Exchange, request: RecordedRequest, method: str) -> None:
        reply = exchange.reply
        if reply is not None and reply.raw_body is not None:
            exchange.send_json(200, reply.raw_body, reply.headers)
            return
        body = request.json
        contents = (
            [item.get("content") for item in body.get("requests") or []]
            if method == "batchEmbedContents"
            else [body.get("content")]
        )
        texts = [_parts_text(content) for content in contents]
        dimensions = int((body.get("requests") or [body])[0].get("outputDimensionality") or 64)
        if reply is not None and reply.vectors is not None:
            vectors = reply.vectors
        else:
            vectors = [bag_of_words_vector(text, dimensions) for text in texts]
        if method == "embedContent":
            exchange.send_json(200, {"embedding": {"values": vectors[0]}})
        else:
            exchange.send_json(200, {"embeddings": [{"values": vector} for vector in vectors]})


@contextmanager
def gemini_server() -> Iterator[FakeGemini]:
    fake = FakeGemini()
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()
