"""The gateway's vocabulary: one set of plain types for every provider.

Providers translate these to and from their SDK's shapes; nothing above the
providers (router, caches, queue, metering, the HTTP endpoint, agents) sees an
SDK object."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["system", "user", "assistant", "tool"]
Priority = Literal["interactive", "agent", "batch"]


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as the model wrote it

    def parsed_arguments(self) -> dict[str, Any]:
        value = json.loads(self.arguments or "{}")
        if not isinstance(value, dict):
            raise ValueError("tool arguments must be a JSON object")
        return value


@dataclass(frozen=True)
class Message:
    role: Role
    content: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None  # role "tool": which call this answers
    name: str | None = None
    # Kept by context-window management whatever else is dropped (the system prompt always is).
    pinned: bool = False


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]  # JSON Schema of the arguments object


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: tuple[Message, ...]
    tools: tuple[Tool, ...] = ()
    # None/"auto": the model decides; "none"; "required": some tool; or one tool's name.
    tool_choice: str | None = None
    response_format: Literal["text", "json"] = "text"
    json_schema: dict[str, Any] | None = None  # with response_format "json": the shape wanted
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    # The provider's own model name when the catalog maps ours to another (set by the router).
    provider_model: str | None = None


@dataclass(frozen=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0  # of input_tokens, served from the provider's prompt cache

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cached_tokens + other.cached_tokens,
        )


FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "error"]


@dataclass(frozen=True)
class ChatResponse:
    model: str  # the model that answered (the catalog name)
    message: Message  # role "assistant"
    finish_reason: FinishReason
    usage: Usage
    provider: str  # provider kind, e.g. "openai"
    id: str = ""
    # Filled by the gateway: why this model served, cache level hit, cost, latency.
    route: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StreamChunk:
    """A piece of a streamed answer. Text arrives in `text` deltas; tool calls are
    assembled by the provider and arrive complete; the last chunk has finish_reason
    and usage."""

    text: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    model: str = ""


@dataclass(frozen=True)
class EmbeddingResponse:
    model: str
    vectors: tuple[tuple[float, ...], ...]
    usage: Usage
    provider: str


@dataclass(frozen=True)
class CallContext:
    """Who is calling, for routing policy, fair queueing, caching, budgets and metering."""

    organization_id: int
    user_id: int | None = None
    api_key_id: int | None = None
    run_id: str | None = None  # an agent run, when an agent calls
    priority: Priority = "interactive"
    cache: bool = True  # exact-match caches (L1/L2); False opts this request out
    semantic_cache: bool = False  # L3, opt-in; never used for requests with tools
