"""Response caches, looked up in order before a request is sent.

L1: in-process LRU (LLM_CACHE_L1_SIZE entries, default 2,048), fastest, per process.
L2: Redis exact match, shared by every process (TTL LLM_CACHE_TTL_SECONDS, default
    one hour). Keys hash the organization, the requested model, every parameter that
    changes the answer and the normalized prompt (whitespace collapsed at the ends
    and inside lines; roles, tool calls, tools and images kept).
L3: semantic, opt-in per request (CallContext.semantic_cache): the last message is
    embedded and compared (cosine) with earlier ones under the same organization,
    model, parameters and earlier conversation; a similarity of at least
    LLM_SEMANTIC_CACHE_THRESHOLD (default 0.95) is a hit. Never for requests with
    tools or images. Needs an embedder: the catalog model named by
    LLM_SEMANTIC_CACHE_MODEL (through the gateway, billed like any embedding) or one
    passed to the gateway; without one L3 is off and the route says so.

CallContext.cache=False skips L1 and L2 (lookup and store). Every lookup counts a
hit or miss per level in the Prometheus counter llm_cache_lookups_total.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict
from typing import Any

import redis
import redis.asyncio as aioredis
from django.conf import settings
from prometheus_client import Counter

from apps.llm.types import CallContext, ChatRequest, ChatResponse, Message, ToolCall, Usage

CACHE_LOOKUPS = Counter("llm_cache_lookups", "LLM response cache lookups", ["level", "result"])

REDIS_RETRY_SECONDS = 10.0

Embedder = Callable[[list[str], CallContext], Awaitable[Sequence[Sequence[float]]]]


def _normalize(text: str | None) -> str:
    if not text:
        return ""
    return "\n".join(" ".join(line.split()) for line in text.strip().splitlines())


def _message_key(message: Message) -> list[Any]:
    return [
        message.role,
        _normalize(message.content),
        [[call.name, call.arguments] for call in message.tool_calls],
        message.tool_call_id,
        message.name,
        # Images by their whole URL (a data: URL is the image itself): another image, another key.
        *([[[image.url, image.detail] for image in message.images]] if message.images else []),
    ]


def _parameters(request: ChatRequest) -> list[Any]:
    return [
        [[tool.name, tool.description, tool.parameters] for tool in request.tools],
        request.tool_choice,
        request.response_format,
        request.json_schema,
        request.temperature,
        request.top_p,
        request.max_tokens,
        list(request.stop),
        request.seed,
    ]


def exact_key(request: ChatRequest, organization_id: int) -> str:
    payload = [
        organization_id,
        request.model,
        _parameters(request),
        [_message_key(m) for m in request.messages],
    ]
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
    return f"llm:cache:v1:{organization_id}:{digest}"


def semantic_scope(request: ChatRequest, organization_id: int) -> str:
    """Everything but the last message, exactly: similar questions in the same setting."""
    payload = [
        organization_id,
        request.model,
        _parameters(request),
        [_message_key(m) for m in request.messages[:-1]],
    ]
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
    return f"llm:semantic:v1:{organization_id}:{digest}"


def response_dump(response: ChatResponse) -> str:
    data = asdict(response)
    data["route"] = {}
    return json.dumps(data)


def response_load(text: str | bytes) -> ChatResponse:
    data = json.loads(text)
    message = data["message"]
    return ChatResponse(
        model=data["model"],
        message=Message(
            role=message["role"],
            content=message["content"],
            tool_calls=tuple(ToolCall(**call) for call in message["tool_calls"]),
            tool_call_id=message["tool_call_id"],
            name=message["name"],
        ),
        finish_reason=data["finish_reason"],
        usage=Usage(**data["usage"]),
        provider=data["provider"],
        id=data["id"],
    )


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=False))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm else 0.0


class LRUCache:
    def __init__(self, size: int, ttl_seconds: float) -> None:
        self.size = size
        self.ttl_seconds = ttl_seconds
        self._lock = threading.Lock()
        self._items: OrderedDict[str, tuple[float, ChatResponse]] = OrderedDict()

    def get(self, key: str) -> ChatResponse | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            if item[0] < time.monotonic():
                del self._items[key]
                return None
            self._items.move_to_end(key)
            return item[1]

    def put(self, key: str, response: ChatResponse) -> None:
        with self._lock:
            self._items[key] = (time.monotonic() + self.ttl_seconds, response)
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


class ResponseCache:
    def __init__(self, embedder: Embedder | None = None) -> None:
        self.ttl_seconds = float(getattr(settings, "LLM_CACHE_TTL_SECONDS", 3600))
        self.l1 = LRUCache(int(getattr(settings, "LLM_CACHE_L1_SIZE", 2048)), self.ttl_seconds)
        self.embedder = embedder
        self.semantic_threshold = float(getattr(settings, "LLM_SEMANTIC_CACHE_THRESHOLD", 0.95))
        self.semantic_entries = int(getattr(settings, "LLM_SEMANTIC_CACHE_ENTRIES", 200))
        # After a Redis error L2/L3 are skipped for a while, so a Redis outage costs one
        # timeout, not one per call.
        self._redis_down_until = 0.0
        self._redis: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aioredis.Redis] = (
            weakref.WeakKeyDictionary()
        )

    @property
    def redis_down(self) -> bool:
        return time.monotonic() < self._redis_down_until

    def _redis_failed(self) -> None:
        self._redis_down_until = time.monotonic() + REDIS_RETRY_SECONDS

    def _client(self) -> aioredis.Redis:
        loop = asyncio.get_running_loop()
        client = self._redis.get(loop)
        if client is None:
            client = self._redis[loop] = aioredis.Redis.from_url(
                settings.REDIS_URL, socket_timeout=1, socket_connect_timeout=1
            )
        return client

    async def close_loop_clients(self) -> None:
        client = self._redis.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()

    # --- exact ----------------------------------------------------------------

    async def get_exact(self, key: str) -> tuple[ChatResponse, str] | None:
        response = self.l1.get(key)
        if response is not None:
            CACHE_LOOKUPS.labels("l1", "hit").inc()
            return response, "l1"
        CACHE_LOOKUPS.labels("l1", "miss").inc()
        raw = None
        if not self.redis_down:
            try:
                raw = await self._client().get(key)
            except (aioredis.RedisError, OSError):
                self._redis_failed()  # the cache is an optimisation: Redis down means a miss
        if raw is None:
            CACHE_LOOKUPS.labels("l2", "miss").inc()
            return None
        CACHE_LOOKUPS.labels("l2", "hit").inc()
        response = response_load(raw)
        self.l1.put(key, response)
        return response, "l2"

    async def put_exact(self, key: str, response: ChatResponse) -> None:
        self.l1.put(key, response)
        if self.redis_down:
            return
        try:
            await self._client().set(key, response_dump(response), ex=max(int(self.ttl_seconds), 1))
        except (aioredis.RedisError, OSError):
            self._redis_failed()

    # --- semantic -------------------------------------------------------------

    def semantic_unavailable(self, request: ChatRequest) -> str | None:
        """Why L3 cannot serve this request, or None when it can."""
        if self.embedder is None:
            return "off: no embedding model configured (LLM_SEMANTIC_CACHE_MODEL)"
        if request.tools or any(m.tool_calls or m.role == "tool" for m in request.messages):
            return "skipped: tool-calling turn"
        if any(m.images for m in request.messages):
            return "skipped: images in the request (only the text would be compared)"
        if not request.messages or not (request.messages[-1].content or "").strip():
            return "skipped: no text to compare"
        return None

    async def _embed(self, request: ChatRequest, context: CallContext) -> list[float]:
        assert self.embedder is not None
        vectors = await self.embedder([_normalize(request.messages[-1].content)], context)
        return [float(x) for x in vectors[0]]

    async def get_semantic(
        self, request: ChatRequest, context: CallContext
    ) -> tuple[ChatResponse | None, list[float] | None, float]:
        """(response on a hit, the query's vector for storing later, best similarity)."""
        vector = await self._embed(request, context)
        entries = []
        if not self.redis_down:
            try:
                entries = await self._client().lrange(semantic_scope(request, context.organization_id), 0, -1)
            except (aioredis.RedisError, OSError):
                self._redis_failed()
        best: tuple[float, str] | None = None
        for raw in entries:
            entry = json.loads(raw)
            similarity = cosine(vector, entry["v"])
            if best is None or similarity > best[0]:
                best = (similarity, entry["r"])
        if best is not None and best[0] >= self.semantic_threshold:
            CACHE_LOOKUPS.labels("l3", "hit").inc()
            return response_load(best[1]), vector, best[0]
        CACHE_LOOKUPS.labels("l3", "miss").inc()
        return None, vector, best[0] if best else 0.0

    async def put_semantic(
        self, request: ChatRequest, context: CallContext, vector: list[float], response: ChatResponse
    ) -> None:
        key = semantic_scope(request, context.organization_id)
        entry = json.dumps({"v": vector, "r": response_dump(response)})
        if self.redis_down:
            return
        try:
            async with self._client().pipeline(transaction=True) as pipe:
                pipe.lpush(key, entry)
                pipe.ltrim(key, 0, self.semantic_entries - 1)
                pipe.expire(key, max(int(self.ttl_seconds), 1))
                await pipe.execute()
        except (aioredis.RedisError, OSError):
            self._redis_failed()


def cache_clear_shared() -> int:
    """Delete every L2 and L3 entry in Redis (tests, and after a catalog change of prices
    if cached answers must not outlive it); the number of keys deleted."""
    client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
    deleted = 0
    try:
        for pattern in ("llm:cache:*", "llm:semantic:*"):
            keys = list(client.scan_iter(match=pattern, count=500))
            if keys:
                deleted += int(client.delete(*keys))
    except (redis.RedisError, OSError):
        return deleted  # nothing to clear where Redis cannot be reached
    finally:
        client.close()
    return deleted
