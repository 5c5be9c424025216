"""Anthropic through the official `anthropic` SDK (AsyncAnthropic, Messages API).

Our conversation differs from Anthropic's in four ways this adapter bridges:
system messages go in the separate `system` parameter; an assistant's tool calls are
`tool_use` content blocks and their results `tool_result` blocks in the next user
turn (several results of one turn in one message); images are `image` blocks before
the text (a base64 source for a data: URL, a url source otherwise); and
`input_tokens` excludes the prompt-cache reads and writes, which our Usage counts
inside input_tokens (reads also in cached_tokens, so metering prices them at the
catalog's cached price; writes, which Anthropic bills at 1.25x, at the input price).

Prompt caching (LLM_ANTHROPIC_PROMPT_CACHE, on by default): Anthropic caches a
prompt's prefix up to a block marked `cache_control: {"type": "ephemeral"}` for five
minutes, and reads it at a tenth of the input price. Up to 4 marks are allowed, and a
prefix shorter than the model's minimum (1,024 tokens; 2,048 for Haiku) is not cached,
so a mark goes only where the prefix before it is long enough (our estimate, which
errs high): after the last tool definition (the tools), on the system prompt (tools
and system), and on the last block before the newest user turn (the conversation so
far: on the next turn, Anthropic finds this prefix again by looking back from that
turn's mark). At most these three.

The SDK's own retries are off (max_retries=0): the gateway retries."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable
from dataclasses import replace
from typing import Any, ClassVar

import anthropic
import httpx2
from anthropic import AsyncAnthropic
from django.conf import settings

from apps.llm.providers.base import (
    MalformedResponse,
    Provider,
    ProviderConfig,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
    tls_context,
)
from apps.llm.providers.http_errors import error_for_status
from apps.llm.providers.registry import register_provider
from apps.llm.tokens import estimate_message_tokens, estimate_text_tokens, estimate_tool_tokens, family_of
from apps.llm.types import (
    ChatRequest,
    ChatResponse,
    FinishReason,
    ImagePart,
    Message,
    StreamChunk,
    ToolCall,
    Usage,
)

STOP_REASONS: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
# Error types as statuses, for errors that arrive inside a 200 event stream.
ERROR_TYPE_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "overloaded_error": 529,
}
DEFAULT_MAX_TOKENS = 4096  # Anthropic requires a limit; ours when the request sets none
JSON_INSTRUCTION = "Answer with one JSON object only, no text before or after it."
SHAPE_ERRORS = (AttributeError, TypeError, KeyError, IndexError, ValueError)
PROVIDER = "anthropic"
CACHE_CONTROL = {"type": "ephemeral"}
CACHE_MIN_TOKENS = 1024  # the shortest prefix Anthropic caches (Sonnet, Opus)
CACHE_MIN_TOKENS_HAIKU = 2048


def map_anthropic_error(exc: BaseException) -> ProviderError:
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, anthropic.APITimeoutError | httpx2.TimeoutException):
        return ProviderTimeout("anthropic did not answer in time", provider=PROVIDER)
    if isinstance(exc, anthropic.APIStatusError):
        status = exc.status_code
        if status < 400:  # an error event inside a stream that began with 200
            status = ERROR_TYPE_STATUS.get(str(exc.type or ""), 500)
        message = exc.api_message or exc.message
        return error_for_status(status, message, provider=PROVIDER, headers=exc.response.headers)
    if isinstance(exc, anthropic.APIConnectionError | httpx2.TransportError):
        return ProviderUnavailable(f"anthropic could not be reached: {exc}", provider=PROVIDER)
    if isinstance(exc, (anthropic.APIResponseValidationError, *SHAPE_ERRORS)):
        return MalformedResponse(f"anthropic sent an answer that cannot be read: {exc}", provider=PROVIDER)
    return ProviderError(f"anthropic: {exc}", provider=PROVIDER)


def _arguments(call: ToolCall) -> dict[str, Any]:
    try:
        value = json.loads(call.arguments or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def anthropic_messages(messages: Iterable[Message]) -> tuple[str, list[dict[str, Any]]]:
    """(the system prompt, the messages) in the Messages API's shape."""
    system: list[str] = []
    result: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if result and result[-1]["role"] == role:  # the API wants turns to alternate
            result[-1]["content"].extend(blocks)
        else:
            result.append({"role": role, "content": blocks})

    for message in messages:
        if message.role == "system":
            if message.content:
                system.append(message.content)
        elif message.role == "tool":
            add(
                "user",
                [
                    {
                        "type": "tool_result",
                        "tool_use_id": message.tool_call_id or "",
                        "content": message.content or "",
                    }
                ],
            )
        elif message.role == "assistant":
            blocks: list[dict[str, Any]] = (
                [{"type": "text", "text": message.content}] if message.content else []
            )
            blocks += [
                {"type": "tool_use", "id": call.id, "name": call.name, "input": _arguments(call)}
                for call in message.tool_calls
            ]
            if blocks:
                add("assistant", blocks)
        elif message.images:
            blocks = [_image_block(image) for image in message.images]
            if message.content:
                blocks.append({"type": "text", "text": message.content})
            add("user", blocks)
        else:
            add("user", [{"type": "text", "text": message.content or ""}])
    return "\n\n".join(system), result


def _image_block(image: ImagePart) -> dict[str, Any]:
    if image.is_data:
        media_type, data = image.data()
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    return {"type": "image", "source": {"type": "url", "url": image.url}}


def prompt_cache_enabled() -> bool:
    return bool(getattr(settings, "LLM_ANTHROPIC_PROMPT_CACHE", True))


def _cache_min_tokens(model: str) -> int:
    return CACHE_MIN_TOKENS_HAIKU if "haiku" in model.lower() else CACHE_MIN_TOKENS


def mark_cache_breakpoints(body: dict[str, Any], request: ChatRequest) -> None:
    """Add cache_control marks to a Messages API body where the prefix is long enough
    (see the module's docstring): the last tool, the system prompt, and the last block
    before the newest user turn."""
    family = family_of(PROVIDER)
    minimum = _cache_min_tokens(str(body["model"]))
    prefix = 0
    tools = body.get("tools") or []
    if tools:
        prefix += estimate_tool_tokens(request.tools, family)
        if prefix >= minimum:
            tools[-1]["cache_control"] = dict(CACHE_CONTROL)
    system = body.get("system")
    if system:
        prefix += estimate_text_tokens(str(system), family)
        if prefix >= minimum:
            body["system"] = [{"type": "text", "text": system, "cache_control": dict(CACHE_CONTROL)}]
    messages = body["messages"]
    if len(messages) < 2 or messages[-1]["role"] != "user":
        return
    # Our messages before the newest user turn (its trailing user and tool messages),
    # system messages aside: what Anthropic's messages[:-1] hold.
    turns = [message for message in request.messages if message.role != "system"]
    newest = len(turns)
    while newest and turns[newest - 1].role in ("user", "tool"):
        newest -= 1
    prefix += estimate_message_tokens(turns[:newest], family) - family.per_reply
    blocks = messages[-2]["content"]
    if prefix >= minimum and blocks:
        blocks[-1]["cache_control"] = dict(CACHE_CONTROL)


def _usage(usage: Any) -> Usage:
    cache_read = int(getattr(usage, "cache_read_input_tokens", 0) or 0)
    cache_write = int(getattr(usage, "cache_creation_input_tokens", 0) or 0)
    return Usage(
        input_tokens=int(usage.input_tokens or 0) + cache_read + cache_write,
        output_tokens=int(usage.output_tokens or 0),
        cached_tokens=cache_read,
        cache_write_tokens=cache_write,
    )


@register_provider
class AnthropicProvider(Provider):
    kind: ClassVar[str] = "anthropic"

    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config)
        self.client = AsyncAnthropic(
            # Never None: the SDK would look for a key in the environment and profile files.
            api_key=config.api_key or "none",
            base_url=config.base_url or None,
            timeout=config.timeout_seconds,
            max_retries=0,
            open_telemetry=False,
            http_client=anthropic.DefaultAsyncHttpxClient(verify=tls_context()),
        )

    def request_body(self, request: ChatRequest) -> dict[str, Any]:
        system, messages = anthropic_messages(request.messages)
        body: dict[str, Any] = {
            "model": request.provider_model or request.model,
            "messages": messages,
            "max_tokens": request.max_tokens
            or int(self.config.options.get("max_tokens", DEFAULT_MAX_TOKENS)),
        }
        extra: dict[str, Any] = {}
        if request.response_format == "json":
            if request.json_schema:
                body["output_config"] = {"format": {"type": "json_schema", "schema": request.json_schema}}
            else:
                system = f"{system}\n\n{JSON_INSTRUCTION}".strip()
        if system:
            body["system"] = system
        if request.tools:
            body["tools"] = [
                {"name": tool.name, "description": tool.description, "input_schema": tool.parameters}
                for tool in request.tools
            ]
            choice = request.tool_choice
            if choice == "required":
                body["tool_choice"] = {"type": "any"}
            elif choice in ("auto", "none"):
                body["tool_choice"] = {"type": choice}
            elif choice:
                body["tool_choice"] = {"type": "tool", "name": choice}
        if request.stop:
            body["stop_sequences"] = list(request.stop)
        if prompt_cache_enabled():
            mark_cache_breakpoints(body, request)
        # Sampling knobs the SDK no longer lists; the API takes them for the models that allow them.
        if request.temperature is not None:
            extra["temperature"] = request.temperature
        if request.top_p is not None:
            extra["top_p"] = request.top_p
        if extra:
            body["extra_body"] = extra
        return body

    async def chat(self, request: ChatRequest) -> ChatResponse:
        try:
            message = await self.client.messages.create(**self.request_body(request))
            texts: list[str] = []
            calls: list[ToolCall] = []
            for block in message.content:
                if block.type == "text":
                    texts.append(block.text)
                elif block.type == "tool_use":
                    calls.append(ToolCall(id=block.id, name=block.name, arguments=json.dumps(block.input)))
            finish = STOP_REASONS.get(str(message.stop_reason), "stop")
            usage = _usage(message.usage)
            return ChatResponse(
                model=request.model,
                message=Message(role="assistant", content="".join(texts) or None, tool_calls=tuple(calls)),
                finish_reason="tool_calls" if calls and finish == "stop" else finish,
                usage=usage,
                provider=self.kind,
                id=str(message.id or ""),
            )
        except Exception as exc:
            raise map_anthropic_error(exc) from exc

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamChunk]:
        blocks: dict[int, dict[str, str]] = {}  # tool_use blocks by index: id, name, json so far
        usage = Usage()
        finish: FinishReason | None = None
        stopped = False
        try:
            stream = await self.client.messages.create(stream=True, **self.request_body(request))
            async with stream:
                async for event in stream:
                    kind = event.type
                    if kind == "message_start":
                        usage = _usage(event.message.usage)
                    elif kind == "content_block_start":
                        block = event.content_block
                        if block.type == "tool_use":
                            blocks[event.index] = {"id": block.id, "name": block.name, "json": ""}
                    elif kind == "content_block_delta":
                        delta = event.delta
                        if delta.type == "text_delta" and delta.text:
                            yield StreamChunk(text=delta.text, model=request.model)
                        elif delta.type == "input_json_delta" and event.index in blocks:
                            blocks[event.index]["json"] += delta.partial_json
                    elif kind == "message_delta":
                        finish = STOP_REASONS.get(str(event.delta.stop_reason), "stop")
                        output = getattr(event.usage, "output_tokens", None)
                        if output is not None:
                            usage = replace(usage, output_tokens=int(output))
                    elif kind == "message_stop":
                        stopped = True
        except Exception as exc:
            raise map_anthropic_error(exc) from exc
        if not stopped or finish is None:
            raise MalformedResponse("anthropic's stream ended before the answer did", provider=self.kind)
        calls = tuple(
            ToolCall(id=block["id"], name=block["name"], arguments=_valid_json(block["json"]))
            for _, block in sorted(blocks.items())
        )
        yield StreamChunk(
            tool_calls=calls,
            finish_reason="tool_calls" if calls and finish == "stop" else finish,
            usage=usage,
            model=request.model,
        )

    def count_tokens(self, model: str, messages: tuple[Message, ...]) -> int:
        return estimate_message_tokens(messages, family_of(self.kind))

    async def close(self) -> None:
        await self.client.close()


def _valid_json(text: str) -> str:
    """A tool_use block's streamed input: "" is {} (a tool without arguments)."""
    if not text.strip():
        return "{}"
    try:
        json.loads(text)
    except ValueError as exc:
        raise MalformedResponse(
            f"anthropic streamed tool input that is not JSON: {exc}", provider=PROVIDER
        ) from exc
    return text
