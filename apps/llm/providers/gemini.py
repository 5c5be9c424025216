"""Google Gemini through the official `google-genai` SDK (the Gemini API, not Vertex).

The SDK takes a base URL in its HttpOptions, so tests point it at a loopback fake
(tests/fakes/gemini_server.py) like the other providers; no REST client of our own.
Its retries are off (HttpRetryOptions(attempts=1)) and so are its automatic function
calling and automatic continuation: the gateway retries, and tool calls go back to
the caller as ToolCalls. Its async calls go through httpx (a transport of our own),
never aiohttp, whatever else is installed.

Gemini's shapes: system messages go in `system_instruction`; the assistant is the
"model" role; a tool call is a functionCall part and its result a functionResponse
part that names the function (not the call id), so the adapter remembers which id
was which name. Gemini may give no call ids; we make random ones. An image is an
inline_data part (the bytes of a data: URL) or a file_data part (an https URL, with
the media type its file name suggests), after the message's text."""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import AsyncIterator, Iterable
from typing import Any, ClassVar

import httpx2
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types

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
from apps.llm.tokens import estimate_message_tokens, estimate_text_tokens, family_of
from apps.llm.types import (
    ChatRequest,
    ChatResponse,
    EmbeddingResponse,
    FinishReason,
    ImagePart,
    Message,
    StreamChunk,
    ToolCall,
    Usage,
)

FINISH_REASONS: dict[str, FinishReason] = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
}
SHAPE_ERRORS = (AttributeError, TypeError, KeyError, IndexError, ValueError)
PROVIDER = "gemini"


def map_gemini_error(exc: BaseException) -> ProviderError:
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, httpx2.TimeoutException):
        return ProviderTimeout("gemini did not answer in time", provider=PROVIDER)
    if isinstance(exc, genai_errors.APIError):
        status = int(exc.code or 500)
        message = str(exc.message or exc)
        if status == 400 and "api key" in message.lower():  # Gemini's answer to a bad key
            status = 401
        headers = getattr(getattr(exc, "response", None), "headers", None)
        return error_for_status(status, message, provider=PROVIDER, headers=headers)
    if isinstance(exc, httpx2.TransportError):
        return ProviderUnavailable(f"gemini could not be reached: {exc}", provider=PROVIDER)
    if isinstance(exc, SHAPE_ERRORS):
        return MalformedResponse(f"gemini sent an answer that cannot be read: {exc}", provider=PROVIDER)
    return ProviderError(f"gemini: {exc}", provider=PROVIDER)


def _arguments(call: ToolCall) -> dict[str, Any]:
    try:
        value = json.loads(call.arguments or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def gemini_contents(messages: Iterable[Message]) -> tuple[str, list[genai_types.Content]]:
    """(the system instruction, the contents) in the Gemini API's shape."""
    system: list[str] = []
    contents: list[genai_types.Content] = []
    names: dict[str, str] = {}

    def add(role: str, parts: list[genai_types.Part]) -> None:
        if contents and contents[-1].role == role and contents[-1].parts is not None:
            contents[-1].parts.extend(parts)
        else:
            contents.append(genai_types.Content(role=role, parts=parts))

    for message in messages:
        if message.role == "system":
            if message.content:
                system.append(message.content)
        elif message.role == "tool":
            name = names.get(message.tool_call_id or "", message.name or "tool")
            response = genai_types.FunctionResponse(name=name, response={"result": message.content or ""})
            add("user", [genai_types.Part(function_response=response)])
        elif message.role == "assistant":
            parts = [genai_types.Part(text=message.content)] if message.content else []
            for call in message.tool_calls:
                names[call.id] = call.name
                parts.append(
                    genai_types.Part(
                        function_call=genai_types.FunctionCall(name=call.name, args=_arguments(call))
                    )
                )
            if parts:
                add("model", parts)
        elif message.images:
            parts = [genai_types.Part(text=message.content)] if message.content else []
            add("user", parts + [_image_part(image) for image in message.images])
        else:
            add("user", [genai_types.Part(text=message.content or "")])
    return "\n\n".join(system), contents


def _image_part(image: ImagePart) -> genai_types.Part:
    if image.is_data:
        media_type, data = image.data()
        return genai_types.Part(
            inline_data=genai_types.Blob(mime_type=media_type, data=base64.b64decode(data))
        )
    return genai_types.Part(file_data=genai_types.FileData(file_uri=image.url, mime_type=image.media_type()))


def _usage(metadata: Any) -> Usage | None:
    if metadata is None:
        return None
    return Usage(
        input_tokens=int(metadata.prompt_token_count or 0),
        # Thinking is billed as output.
        output_tokens=int(metadata.candidates_token_count or 0) + int(metadata.thoughts_token_count or 0),
        cached_tokens=int(metadata.cached_content_token_count or 0),
    )


def _finish(candidate: Any) -> FinishReason | None:
    reason = getattr(candidate, "finish_reason", None)
    if reason is None:
        return None
    value = str(getattr(reason, "value", reason))
    return FINISH_REASONS.get(value, "stop")


@register_provider
class GeminiProvider(Provider):
    kind: ClassVar[str] = "gemini"

    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config)
        options = genai_types.HttpOptions(
            base_url=config.base_url or None,
            timeout=int(config.timeout_seconds * 1000),
            retry_options=genai_types.HttpRetryOptions(attempts=1),
            # Its own HTTP client, not aiohttp: the SDK switches to aiohttp whenever it is
            # importable (another package may bring it), and its errors are not httpx's.
            async_client_args={"transport": httpx2.AsyncHTTPTransport(verify=tls_context())},
        )
        self.client = genai.Client(api_key=config.api_key or "none", http_options=options)

    def _config(self, request: ChatRequest, system: str) -> genai_types.GenerateContentConfig:
        settings: dict[str, Any] = {
            "automatic_function_calling": genai_types.AutomaticFunctionCallingConfig(disable=True),
            "automatic_continuation": False,
        }
        if system:
            settings["system_instruction"] = system
        if request.temperature is not None:
            settings["temperature"] = request.temperature
        if request.top_p is not None:
            settings["top_p"] = request.top_p
        if request.max_tokens is not None:
            settings["max_output_tokens"] = request.max_tokens
        if request.stop:
            settings["stop_sequences"] = list(request.stop)
        if request.seed is not None:
            settings["seed"] = request.seed
        if request.response_format == "json":
            settings["response_mime_type"] = "application/json"
            if request.json_schema:
                settings["response_json_schema"] = request.json_schema
        if request.tools:
            declarations = [
                genai_types.FunctionDeclaration(
                    name=tool.name, description=tool.description, parameters_json_schema=tool.parameters
                )
                for tool in request.tools
            ]
            settings["tools"] = [genai_types.Tool(function_declarations=declarations)]
            choice = request.tool_choice
            mode = None
            allowed = None
            if choice == "required":
                mode = genai_types.FunctionCallingConfigMode.ANY
            elif choice == "none":
                mode = genai_types.FunctionCallingConfigMode.NONE
            elif choice == "auto":
                mode = genai_types.FunctionCallingConfigMode.AUTO
            elif choice:
                mode, allowed = genai_types.FunctionCallingConfigMode.ANY, [choice]
            if mode is not None:
                settings["tool_config"] = genai_types.ToolConfig(
                    function_calling_config=genai_types.FunctionCallingConfig(
                        mode=mode, allowed_function_names=allowed
                    )
                )
        return genai_types.GenerateContentConfig(**settings)

    def _arguments(
        self, request: ChatRequest
    ) -> tuple[str, list[genai_types.Content], genai_types.GenerateContentConfig]:
        system, contents = gemini_contents(request.messages)
        return request.provider_model or request.model, contents, self._config(request, system)

    @staticmethod
    def _parts(response: Any) -> tuple[str, list[ToolCall]]:
        texts: list[str] = []
        calls: list[ToolCall] = []
        candidates = response.candidates or []
        if not candidates:
            return "", []
        content = candidates[0].content
        for part in (content.parts if content is not None else None) or []:
            if part.function_call is not None:
                call = part.function_call
                args = call.args if call.args is not None else {}
                if not isinstance(args, dict):
                    raise MalformedResponse(
                        "gemini sent function arguments that are not an object", provider=PROVIDER
                    )
                calls.append(
                    ToolCall(
                        id=call.id or f"call_{secrets.token_hex(8)}",  # Gemini may give none
                        name=str(call.name),
                        arguments=json.dumps(args),
                    )
                )
            elif part.text and not part.thought:
                texts.append(part.text)
        return "".join(texts), calls

    async def chat(self, request: ChatRequest) -> ChatResponse:
        model, contents, config = self._arguments(request)
        try:
            response = await self.client.aio.models.generate_content(
                model=model, contents=contents, config=config
            )
            if not response.candidates:
                feedback = getattr(response, "prompt_feedback", None)
                if feedback is not None and feedback.block_reason is not None:
                    return self._blocked(request, response)
                raise MalformedResponse("gemini answered with no candidates", provider=self.kind)
            text, calls = self._parts(response)
            finish = _finish(response.candidates[0]) or "stop"
            usage = _usage(response.usage_metadata) or Usage(
                self.count_tokens(request.model, request.messages)
            )
        except Exception as exc:
            raise map_gemini_error(exc) from exc
        return ChatResponse(
            model=request.model,
            message=Message(role="assistant", content=text or None, tool_calls=tuple(calls)),
            finish_reason="tool_calls" if calls and finish == "stop" else finish,
            usage=usage,
            provider=self.kind,
            id=str(getattr(response, "response_id", "") or ""),
        )

    def _blocked(self, request: ChatRequest, response: Any) -> ChatResponse:
        return ChatResponse(
            model=request.model,
            message=Message(role="assistant", content=None),
            finish_reason="content_filter",
            usage=_usage(response.usage_metadata)
            or Usage(self.count_tokens(request.model, request.messages)),
            provider=self.kind,
            id=str(getattr(response, "response_id", "") or ""),
        )

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamChunk]:
        model, contents, config = self._arguments(request)
        calls: list[ToolCall] = []
        finish: FinishReason | None = None
        usage: Usage | None = None
        try:
            stream = await self.client.aio.models.generate_content_stream(
                model=model, contents=contents, config=config
            )
            async for response in stream:
                text, found = self._parts(response)
                calls += found
                usage = _usage(response.usage_metadata) or usage
                if response.candidates:
                    finish = _finish(response.candidates[0]) or finish
                if text:
                    yield StreamChunk(text=text, model=request.model)
        except Exception as exc:
            raise map_gemini_error(exc) from exc
        if finish is None:
            raise MalformedResponse("gemini's stream ended before the answer did", provider=self.kind)
        yield StreamChunk(
            tool_calls=tuple(calls),
            finish_reason="tool_calls" if calls and finish == "stop" else finish,
            usage=usage or Usage(self.count_tokens(request.model, request.messages)),
            model=request.model,
        )

    async def embed(self, model: str, inputs: list[str]) -> EmbeddingResponse:
        try:
            response = await self.client.aio.models.embed_content(model=model, contents=list(inputs))
            embeddings = response.embeddings or []
            vectors = tuple(tuple(float(value) for value in (item.values or [])) for item in embeddings)
            if len(vectors) != len(inputs) or any(not vector for vector in vectors):
                raise MalformedResponse(
                    f"gemini returned {len(vectors)} embeddings for {len(inputs)} inputs", provider=self.kind
                )
        except Exception as exc:
            raise map_gemini_error(exc) from exc
        tokens = sum(
            estimate_text_tokens(text, family_of(self.kind)) for text in inputs
        )  # Gemini reports none
        return EmbeddingResponse(model=model, vectors=vectors, usage=Usage(tokens, 0, 0), provider=self.kind)

    def count_tokens(self, model: str, messages: tuple[Message, ...]) -> int:
        return estimate_message_tokens(messages, family_of(self.kind))

    async def close(self) -> None:
        await self.client.aio.aclose()
