"""The gateway's vocabulary: one set of plain types for every provider.

Providers translate these to and from their SDK's shapes; nothing above the
providers (router, caches, queue, metering, the HTTP endpoint, agents) sees an
SDK object."""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["system", "user", "assistant", "tool"]
Priority = Literal["interactive", "agent", "batch"]
ImageDetail = Literal["auto", "low", "high"]

# What every provider with vision reads (OpenAI, Anthropic and Gemini alike).
IMAGE_MEDIA_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")
MAX_IMAGES = 20  # per request
MAX_IMAGE_BYTES = 20 * 1024 * 1024  # decoded, per data: URL (OpenAI's limit per image)
DATA_URL = re.compile(r"^data:(?P<media_type>[^;,]*)(?P<params>(?:;[^;,]*)*),", re.IGNORECASE)


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
class ImagePart:
    """An image in a user message: an https URL, or a data: URL with the image itself
    (`data:image/png;base64,...`). `detail` is OpenAI's (low: one 512 px view, fewer
    tokens); other providers ignore it."""

    url: str
    detail: ImageDetail = "auto"

    @property
    def is_data(self) -> bool:
        return self.url[:5].lower() == "data:"

    def data(self) -> tuple[str, str]:
        """A data: URL's (media type, base64 text); call on a checked part (image_check)."""
        header, _, payload = self.url.partition(",")
        return header[5:].split(";", 1)[0].lower(), payload

    def media_type(self) -> str | None:
        """The data: URL's media type, or the one an https URL's file name suggests (None: unknown)."""
        if self.is_data:
            return self.data()[0]
        path = self.url.split("?", 1)[0].split("#", 1)[0].lower()
        for suffix, media_type in ((".png", "image/png"), (".gif", "image/gif"), (".webp", "image/webp")):
            if path.endswith(suffix):
                return media_type
        if path.endswith((".jpg", ".jpeg")):
            return "image/jpeg"
        return None


def image_check(image: ImagePart) -> str | None:
    """Why no provider would take this image (a sentence for a 400), or None when it is fine."""
    if image.detail not in ("auto", "low", "high"):
        return f"An image's detail must be auto, low or high, not {image.detail!r}."
    url = image.url
    if not url:
        return "An image needs a URL: https://... or data:image/...;base64,..."
    if url[:8].lower() == "https://":
        if len(url) > 2048 or any(char.isspace() for char in url) or len(url) == 8:
            return "An image's https URL must be a single URL of at most 2,048 characters."
        return None
    match = DATA_URL.match(url)
    if match is None:
        scheme = url.split(":", 1)[0][:20] if ":" in url else ""
        return f"An image URL must be https:// or data:, not {scheme + ':' if scheme else repr(url[:20])}."
    media_type = match.group("media_type").lower()
    if media_type not in IMAGE_MEDIA_TYPES:
        return (
            f"A data: URL must hold an image ({', '.join(IMAGE_MEDIA_TYPES)}),"
            f" not {media_type or 'text/plain'!r}."
        )
    if "base64" not in [param.strip().lower() for param in match.group("params").split(";")]:
        return "An image's data: URL must be base64 (data:image/png;base64,...)."
    payload = url[match.end() :]
    if not payload:
        return "An image's data: URL holds no data."
    # Decoded size from the base64 length, before decoding anything that large.
    size = len(payload) // 4 * 3 - payload[-2:].count("=")
    if size > MAX_IMAGE_BYTES:
        return (
            f"An image is {size / (1024 * 1024):.1f} MB; at most {MAX_IMAGE_BYTES // (1024 * 1024)} MB"
            " per image."
        )
    try:
        base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        return "An image's data: URL is not valid base64."
    return None


@dataclass(frozen=True)
class Message:
    role: Role
    content: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None  # role "tool": which call this answers
    name: str | None = None
    # Kept by context-window management whatever else is dropped (the system prompt always is).
    pinned: bool = False
    # Role "user" only: images shown with the text (models with vision only; see ImagePart).
    images: tuple[ImagePart, ...] = ()


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
    # Of input_tokens, written into the provider's prompt cache (Anthropic bills a premium on them).
    cache_write_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cached_tokens + other.cached_tokens,
            self.cache_write_tokens + other.cache_write_tokens,
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
    semantic_cache: bool = False  # L3, opt-in; never used for requests with tools or images
    # This call only (neither is part of a cache key):
    # the models to try, in order, after the chosen one fails; they REPLACE the organization's
    # routing-policy (or the catalog's) fallbacks for this call, () meaning none at all;
    # None: the usual chain. Unknown or unusable names are a 400 naming the model.
    fallbacks: tuple[str, ...] | None = None
    # Seconds each attempt and each wait for a streamed chunk may take, 1 to 600, instead
    # of LLM_TIMEOUT_SECONDS; None: the setting.
    timeout_seconds: float | None = None
