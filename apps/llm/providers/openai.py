"""OpenAI through the official `openai` SDK (AsyncOpenAI): chat, streaming with tool
calls assembled from their deltas and usage from `stream_options.include_usage`,
native tools, JSON mode and JSON Schema output, embeddings.

The SDK's own retries are off (max_retries=0): the gateway retries, with its
backoff, circuit breakers and fallbacks, and must see every failure."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable
from dataclasses import replace
from typing import Any, ClassVar

import httpx2
import openai
from openai import AsyncOpenAI

from apps.llm.providers.base import (
    ContextWindowExceeded,
    InvalidProviderRequest,
    MalformedResponse,
    Provider,
    ProviderConfig,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
    tls_context,
)
from apps.llm.providers.http_errors import error_for_status, is_context_error
from apps.llm.providers.registry import register_provider
from apps.llm.tokens import estimate_message_tokens, family_of
from apps.llm.types import (
    ChatRequest,
    ChatResponse,
    EmbeddingResponse,
    FinishReason,
    Message,
    StreamChunk,
    ToolCall,
    Usage,
)

FINISH_REASONS: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
}
# What an answer that is not the promised shape raises while we read it.
SHAPE_ERRORS = (AttributeError, TypeError, KeyError, IndexError, ValueError)


def map_openai_error(exc: BaseException, provider: str, label: str = "") -> ProviderError:
    """An `openai` SDK (or its HTTP client's) failure as our provider error; `label` names
    the server in the message (e.g. "vllm server"), `provider` is the provider kind."""
    name = label or provider
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, openai.APITimeoutError | httpx2.TimeoutException):
        return ProviderTimeout(f"{name} did not answer in time", provider=provider)
    if isinstance(exc, openai.APIStatusError):
        body = exc.body
        message = exc.message
        if isinstance(body, dict):
            message = str(body.get("message") or message)
        return error_for_status(
            exc.status_code,
            message,
            provider=provider,
            label=name,
            headers=exc.response.headers,
            code=exc.code,
        )
    if isinstance(exc, openai.APIConnectionError | httpx2.TransportError):
        return ProviderUnavailable(f"{name} could not be reached: {exc}", provider=provider)
    if isinstance(exc, (openai.APIResponseValidationError, *SHAPE_ERRORS)):
        return MalformedResponse(f"{name} sent an answer that cannot be read: {exc}", provider=provider)
    if isinstance(exc, openai.APIError):  # an error event inside a stream that began with 200
        if is_context_error(exc.message, exc.code):
            return ContextWindowExceeded(f"{name}: {exc.message}", provider=provider)
        if exc.type == "invalid_request_error":
            return InvalidProviderRequest(f"{name}: {exc.message}", provider=provider)
        return ProviderUnavailable(
            f"{name} failed in the middle of the answer: {exc.message}", provider=provider
        )
    return ProviderError(f"{name}: {exc}", provider=provider)


def openai_messages(messages: Iterable[Message]) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = []
    for message in messages:
        item: dict[str, Any] = {"role": message.role}
        if message.role == "tool":
            item["tool_call_id"] = message.tool_call_id or ""
            item["content"] = message.content or ""
        elif message.role == "assistant" and message.tool_calls:
            item["content"] = message.content
            item["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
                for call in message.tool_calls
            ]
        elif message.images:
            item["content"] = openai_content_parts(message)
        else:
            item["content"] = message.content or ""
        if message.name and message.role != "tool":
            item["name"] = message.name
        result.append(item)
    return result


def openai_content_parts(message: Message) -> list[dict[str, Any]]:
    """A user message with images as content parts: its text, then an image_url part each."""
    parts: list[dict[str, Any]] = [{"type": "text", "text": message.content}] if message.content else []
    for image in message.images:
        url: dict[str, Any] = {"url": image.url}
        if image.detail != "auto":
            url["detail"] = image.detail
        parts.append({"type": "image_url", "image_url": url})
    return parts


JSON_INSTRUCTION = "Answer with one JSON object only, no text before or after it."


def with_json_instruction(messages: tuple[Message, ...]) -> tuple[Message, ...]:
    """The conversation with an instruction to answer in JSON at the end of its system prompt."""
    result = list(messages)
    if result and result[0].role == "system":
        result[0] = replace(result[0], content=f"{result[0].content or ''}\n\n{JSON_INSTRUCTION}".strip())
    else:
        result.insert(0, Message(role="system", content=JSON_INSTRUCTION))
    return tuple(result)


@register_provider
class OpenAIProvider(Provider):
    kind: ClassVar[str] = "openai"
    # OpenAI's newer models refuse max_tokens; servers that copy the API know only max_tokens.
    max_tokens_field: ClassVar[str] = "max_completion_tokens"

    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config)
        self.label = self.kind
        self.client = AsyncOpenAI(
            api_key=config.api_key or "none",  # keyless servers ignore it; the SDK insists on one
            base_url=config.base_url or None,
            timeout=config.timeout_seconds,
            max_retries=0,
            http_client=openai.DefaultAsyncHttpxClient(verify=tls_context()),
        )

    # -- translating ---------------------------------------------------------------------------------

    def request_body(self, request: ChatRequest) -> dict[str, Any]:
        messages = request.messages
        if (
            request.response_format == "json"
            and not request.json_schema
            and not any("json" in (message.content or "").lower() for message in messages)
        ):
            # JSON mode is refused unless the conversation says "JSON" somewhere; say it for the caller.
            messages = with_json_instruction(messages)
        body: dict[str, Any] = {
            "model": request.provider_model or request.model,
            "messages": openai_messages(messages),
        }
        if request.tools:
            body["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": tool.name,
                        "description": tool.description,
                        "parameters": tool.parameters,
                    },
                }
                for tool in request.tools
            ]
            if request.tool_choice in ("auto", "none", "required"):
                body["tool_choice"] = request.tool_choice
            elif request.tool_choice:
                body["tool_choice"] = {"type": "function", "function": {"name": request.tool_choice}}
        if request.response_format == "json":
            body["response_format"] = self.json_format(request)
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.top_p is not None:
            body["top_p"] = request.top_p
        if request.max_tokens is not None:
            body[self.max_tokens_field] = request.max_tokens
        if request.stop:
            body["stop"] = list(request.stop)
        if request.seed is not None:
            body["seed"] = request.seed
        return body

    def json_format(self, request: ChatRequest) -> dict[str, Any]:
        if request.json_schema:
            return {
                "type": "json_schema",
                "json_schema": {"name": "response", "schema": request.json_schema, "strict": False},
            }
        return {"type": "json_object"}

    def stream_options(self) -> dict[str, Any] | None:
        return {"include_usage": True}

    def _response(self, request: ChatRequest, completion: Any) -> ChatResponse:
        """Our answer from the completion's JSON (a dict, read as the API documents it)."""
        if not isinstance(completion, dict):
            raise MalformedResponse(
                f"{self.label} answered with something other than an object", provider=self.kind
            )
        choices = completion.get("choices")
        if not choices:
            raise MalformedResponse(f"{self.label} answered with no choices", provider=self.kind)
        choice = choices[0]
        message = choice["message"]
        calls = tuple(
            ToolCall(
                id=str(call.get("id") or ""),
                name=str(call["function"]["name"]),
                arguments=call["function"].get("arguments") or "{}",
            )
            for call in (message.get("tool_calls") or ())
            if call.get("function") is not None
        )
        usage = self._usage_json(completion.get("usage"))
        if usage is None:
            usage = Usage(self.count_tokens(request.model, request.messages), 0, 0)
        finish: FinishReason = FINISH_REASONS.get(str(choice.get("finish_reason")), "stop")
        if calls and finish == "stop":
            finish = "tool_calls"  # some servers say "stop" after a tool call
        content = message.get("content")
        if content is not None and not isinstance(content, str):
            raise MalformedResponse(
                f"{self.label} answered with content that is not text", provider=self.kind
            )
        refusal = message.get("refusal")
        if content is None and refusal:  # the model declined: say so, as a content filter would
            content, finish = str(refusal), "content_filter"
        return ChatResponse(
            model=request.model,
            message=Message(role="assistant", content=content, tool_calls=calls),
            finish_reason=finish,
            usage=usage,
            provider=self.kind,
            id=str(completion.get("id") or ""),
        )

    @staticmethod
    def _usage_json(usage: Any) -> Usage | None:
        if not isinstance(usage, dict):
            return None
        details = usage.get("prompt_tokens_details")
        cached = details.get("cached_tokens") if isinstance(details, dict) else None
        return Usage(
            input_tokens=int(usage.get("prompt_tokens") or 0),
            output_tokens=int(usage.get("completion_tokens") or 0),
            cached_tokens=int(cached or 0),
        )

    @staticmethod
    def _usage(usage: Any) -> Usage | None:
        if usage is None:
            return None
        details = getattr(usage, "prompt_tokens_details", None)
        cached = getattr(details, "cached_tokens", None) if details is not None else None
        return Usage(
            input_tokens=int(usage.prompt_tokens or 0),
            output_tokens=int(usage.completion_tokens or 0),
            cached_tokens=int(cached or 0),
        )

    # -- calls ---------------------------------------------------------------------------------------

    async def chat(self, request: ChatRequest) -> ChatResponse:
        try:
            # The SDK's client (auth, headers, timeouts, its errors) without the two steps that
            # cost most of its CPU per call: transforming the body against its TypedDicts (ours
            # is plain JSON already) and building pydantic models of the answer, which we would
            # only read back into our own types (bench/llm_gateway.py, concurrency 32).
            text = await self.client.post("/chat/completions", body=self.request_body(request), cast_to=str)
            return self._response(request, json.loads(text))
        except Exception as exc:
            raise map_openai_error(exc, self.kind, self.label) from exc

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamChunk]:
        body = self.request_body(request)
        options = self.stream_options()
        if options:
            body["stream_options"] = options
        calls: dict[int, dict[str, str]] = {}
        finish: FinishReason | None = None
        usage: Usage | None = None
        output = ""
        try:
            stream = await self.client.chat.completions.create(stream=True, **body)
            async with stream:
                async for chunk in stream:
                    usage = self._usage(getattr(chunk, "usage", None)) or usage
                    for choice in chunk.choices or ():
                        delta = choice.delta
                        if delta is not None and delta.content:
                            output += delta.content
                            yield StreamChunk(text=delta.content, model=request.model)
                        for part in (delta.tool_calls if delta is not None else None) or ():
                            index = part.index
                            if index is None:  # some servers leave it out: a new id is a new call
                                index = max(calls) if calls and not part.id else len(calls)
                            slot = calls.setdefault(index, {"id": "", "name": "", "arguments": ""})
                            slot["id"] = part.id or slot["id"]
                            if part.function is not None:
                                # Named once by OpenAI, on every piece by some servers: not appended.
                                slot["name"] = part.function.name or slot["name"]
                                slot["arguments"] += part.function.arguments or ""
                        if choice.finish_reason:
                            finish = FINISH_REASONS.get(str(choice.finish_reason), "stop")
        except Exception as exc:
            raise map_openai_error(exc, self.kind, self.label) from exc
        if finish is None:
            raise MalformedResponse(f"{self.label}'s stream ended before the answer did", provider=self.kind)
        tool_calls = tuple(
            ToolCall(id=slot["id"] or f"call_{index}", name=slot["name"], arguments=slot["arguments"] or "{}")
            for index, slot in sorted(calls.items())
        )
        if tool_calls and finish == "stop":
            finish = "tool_calls"
        if usage is None:  # a server that does not report usage on streams: our estimate
            usage = Usage(
                self.count_tokens(request.model, request.messages),
                self.estimate_output_tokens(output, tool_calls),
                0,
            )
        yield StreamChunk(tool_calls=tool_calls, finish_reason=finish, usage=usage, model=request.model)

    async def embed(self, model: str, inputs: list[str]) -> EmbeddingResponse:
        try:
            response = await self.client.embeddings.create(model=model, input=inputs, encoding_format="float")
            data = sorted(response.data, key=lambda item: item.index)
            vectors = tuple(tuple(float(value) for value in item.embedding) for item in data)
            if len(vectors) != len(inputs):
                raise MalformedResponse(
                    f"{self.label} returned {len(vectors)} embeddings for {len(inputs)} inputs",
                    provider=self.kind,
                )
            tokens = int(response.usage.prompt_tokens or 0) if response.usage else 0
        except Exception as exc:
            raise map_openai_error(exc, self.kind, self.label) from exc
        return EmbeddingResponse(model=model, vectors=vectors, usage=Usage(tokens, 0, 0), provider=self.kind)

    def count_tokens(self, model: str, messages: tuple[Message, ...]) -> int:
        return estimate_message_tokens(messages, family_of(self.kind))

    def estimate_output_tokens(self, text: str, calls: Iterable[ToolCall]) -> int:
        reply = Message(role="assistant", content=text, tool_calls=tuple(calls))
        return estimate_message_tokens((reply,), family_of(self.kind)) - family_of(self.kind).per_reply

    async def close(self) -> None:
        await self.client.close()
