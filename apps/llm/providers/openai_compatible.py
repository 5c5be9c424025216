"""Any server that speaks OpenAI's chat completions API, by base URL: vLLM, TGI,
llama.cpp's server, Ollama, TabbyAPI (ExLlama EXL2) or another.

They copy the API unevenly, so ProviderConfig.options says how this one differs:

    server        "vllm" | "tgi" | "llamacpp" | "ollama" | "tabbyapi" | "generic" (default):
                  a preset of the options below, which override it one by one
    tools         "native" (send `tools`) or "emulated" (describe them in the prompt and
                  parse the answer: apps/llm/tool_emulation.py), for servers or models
                  that have no tool calling
    json          "json_schema" (response_format json_schema), "json_object",
                  "tgi" (TGI's {"type": "json", "value": schema}) or "prompt" (ask in words)
    stream_usage  whether the server honours stream_options.include_usage; without it
                  a stream's usage is our estimate (apps/llm/tokens.py)
    embeddings    whether /v1/embeddings is served

No API key is needed for a server that wants none (Ollama, a local llama.cpp)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any, ClassVar

from apps.llm.providers.base import InvalidProviderRequest, ProviderConfig
from apps.llm.providers.openai import OpenAIProvider, with_json_instruction
from apps.llm.providers.registry import register_provider
from apps.llm.tool_emulation import chat_with_emulated_tools, stream_with_emulated_tools
from apps.llm.types import ChatRequest, ChatResponse, EmbeddingResponse, StreamChunk

SERVER_PRESETS: dict[str, dict[str, Any]] = {
    # vLLM: tools need --enable-auto-tool-choice and a --tool-call-parser on the server.
    "vllm": {"tools": "native", "json": "json_schema", "stream_usage": True, "embeddings": True},
    "tgi": {"tools": "native", "json": "tgi", "stream_usage": False, "embeddings": False},
    # llama.cpp's server: tools need --jinja.
    "llamacpp": {"tools": "native", "json": "json_schema", "stream_usage": True, "embeddings": True},
    "ollama": {"tools": "native", "json": "json_schema", "stream_usage": True, "embeddings": True},
    "tabbyapi": {"tools": "emulated", "json": "json_schema", "stream_usage": False, "embeddings": True},
    "generic": {"tools": "native", "json": "json_object", "stream_usage": False, "embeddings": True},
}
OPTION_VALUES = {
    "tools": ("native", "emulated"),
    "json": ("json_schema", "json_object", "tgi", "prompt"),
}


def resolve_options(options: dict[str, Any]) -> dict[str, Any]:
    server = str(options.get("server") or "generic")
    if server not in SERVER_PRESETS:
        raise ValueError(f"unknown OpenAI-compatible server {server!r}; known: {', '.join(SERVER_PRESETS)}")
    resolved = {"server": server, **SERVER_PRESETS[server]}
    for name in ("tools", "json", "stream_usage", "embeddings"):
        if name in options and options[name] is not None:
            resolved[name] = options[name]
    for name, allowed in OPTION_VALUES.items():
        if resolved[name] not in allowed:
            raise ValueError(f"option {name} must be one of {', '.join(allowed)}, not {resolved[name]!r}")
    return resolved


@register_provider
class OpenAICompatibleProvider(OpenAIProvider):
    kind: ClassVar[str] = "openai_compatible"
    max_tokens_field: ClassVar[str] = "max_tokens"

    def __init__(self, config: ProviderConfig) -> None:
        if not config.base_url:
            raise ValueError("an OpenAI-compatible provider needs the server's base URL")
        super().__init__(config)
        self.options = resolve_options(config.options)
        self.label = (
            f"{self.options['server']} server" if self.options["server"] != "generic" else "the server"
        )

    @property
    def emulates_tools(self) -> bool:
        return bool(self.options["tools"] == "emulated")

    def request_body(self, request: ChatRequest) -> dict[str, Any]:
        if request.response_format == "json" and self.options["json"] == "prompt":
            request = _with_json_instruction(request)
        return super().request_body(request)

    def json_format(self, request: ChatRequest) -> dict[str, Any]:
        mode = self.options["json"]
        if mode == "tgi":
            return {"type": "json", "value": request.json_schema or {"type": "object"}}
        if mode == "json_schema" and request.json_schema:
            return super().json_format(request)
        return {"type": "json_object"}

    def stream_options(self) -> dict[str, Any] | None:
        return {"include_usage": True} if self.options["stream_usage"] else None

    async def chat(self, request: ChatRequest) -> ChatResponse:
        if self.emulates_tools and (request.tools or _has_tool_turns(request)):
            return await chat_with_emulated_tools(_Native(self), request)
        return await super().chat(request)

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamChunk]:
        source = (
            stream_with_emulated_tools(_Native(self), request)
            if self.emulates_tools and (request.tools or _has_tool_turns(request))
            else super().stream(request)
        )
        async for chunk in source:
            yield chunk

    async def embed(self, model: str, inputs: list[str]) -> EmbeddingResponse:
        if not self.options["embeddings"]:
            raise InvalidProviderRequest(f"{self.label} serves no embeddings", provider=self.kind)
        return await super().embed(model, inputs)


class _Native(OpenAICompatibleProvider):
    """The same provider without emulation, for tool_emulation to call once it has
    rewritten the request (so nothing is emulated twice)."""

    def __init__(self, outer: OpenAICompatibleProvider) -> None:
        # Shares the outer provider's client and options; no second SDK client.
        self.config = outer.config
        self.options = outer.options
        self.label = outer.label
        self.client = outer.client

    @property
    def emulates_tools(self) -> bool:
        return False


def _has_tool_turns(request: ChatRequest) -> bool:
    return any(message.tool_calls or message.role == "tool" for message in request.messages)


def _with_json_instruction(request: ChatRequest) -> ChatRequest:
    return replace(request, messages=with_json_instruction(request.messages), response_format="text")
