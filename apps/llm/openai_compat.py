"""The OpenAI-compatible endpoint: /v1/chat/completions (JSON and SSE streaming),
/v1/embeddings, /v1/models and /v1/models/<id>, so the official `openai` SDK and
other OpenAI clients call the gateway unchanged (base_url = https://<host>/v1).

Authentication is an Agentyard API key (`Authorization: Bearer ayk_...`): the key
alone selects its organization, on the public host or on its organization's own
host; calling needs the scope `llm:write` (action llm.call), listing models
`llm:read`. Errors use OpenAI's body, {"error": {"message", "type", "param", "code"}},
with the gateway's stable codes, so OpenAI clients raise their usual exceptions.
Chat completions and embeddings need the plan's `ai_assistance` feature: without it a
403 `feature_not_in_plan` whose error also names `feature` and `plans`.

Beyond OpenAI's body: a user message's content may be OpenAI's content array with
`image_url` parts (https or data:image URLs, for models with vision); `fallbacks`
(a list of model names, LiteLLM's name for it) replaces the organization's fallback
chain for this request and `timeout` (seconds, 1 to 600) replaces
LLM_TIMEOUT_SECONDS for each attempt and each streamed chunk. The openai SDK sends
the last two with `extra_body={"fallbacks": [...], "timeout": 30}`.

The views are async (uvicorn, no thread per request). Under WSGI (gunicorn in
production) Django runs each async view on a fresh event loop, which would strand
the gateway's pooled connections; there every gateway call runs on one long-lived
loop thread instead, and a stream is a plain generator fed from that loop."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import struct
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from concurrent.futures import Future
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpRequest, HttpResponseBase, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

from apps.billing.features import FeatureNotInPlan, feature_check_cached
from apps.core.api import PrincipalRateThrottle, _throttle_redis
from apps.core.errors import ServiceError
from apps.llm.providers.base import ProviderError
from apps.llm.types import (
    MAX_IMAGES,
    CallContext,
    ChatRequest,
    ChatResponse,
    ImageDetail,
    ImagePart,
    Message,
    StreamChunk,
    Tool,
    ToolCall,
    image_check,
)
from apps.tenancy.api_keys import key_check, key_touch
from apps.tenancy.audit import client_ip
from apps.tenancy.models import ApiKey
from apps.tenancy.roles import ACTIONS, key_allows

T = TypeVar("T")

# OpenAI's error "type" for each status; the "code" is ours (stable, see apps/llm/errors.py).
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}
# Room for images as data: URLs (each at most MAX_IMAGE_BYTES decoded, apps/llm/types.py).
MAX_BODY_BYTES = 32 * 1024 * 1024
ROLES = {"system", "user", "assistant", "tool", "developer"}
IMAGE_DETAILS: dict[str, ImageDetail] = {"auto": "auto", "low": "low", "high": "high"}


class BadRequest(Exception):
    """The request itself is wrong: 400 naming the parameter."""

    def __init__(self, message: str, param: str | None = None, code: str = "invalid_request") -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


def openai_error(
    status: int,
    message: str,
    code: str,
    param: str | None = None,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> JsonResponse:
    body = {
        "error": {
            "message": message,
            "type": ERROR_TYPES.get(status, "api_error"),
            "param": param,
            "code": code,
            **(extra or {}),
        }
    }
    response = JsonResponse(body, status=status)
    if status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="api"'
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def _service_error(exc: ServiceError) -> JsonResponse:
    return openai_error(exc.status, exc.message, exc.code, exc.field)


def _provider_error(exc: ProviderError) -> JsonResponse:
    # A provider error that escaped the gateway's own mapping: still its stable code.
    headers = {"Retry-After": str(int(exc.retry_after))} if exc.retry_after else None
    return openai_error(exc.status, exc.message, exc.code, headers=headers)


# Authentication ---------------------------------------------------------------------------------


def _authenticate_sync(request: HttpRequest, action: str) -> ApiKey | JsonResponse:
    header = request.headers.get("Authorization", "")
    if not header.lower().startswith("bearer ") or not header[7:].strip():
        return openai_error(
            401,
            "Send an Agentyard API key as `Authorization: Bearer ayk_...` (Settings → API keys).",
            "missing_api_key",
        )
    check = key_check(header[7:].strip())
    if check.api_key is None:
        return openai_error(401, check.error_message, check.error_code)
    if check.error_code:
        return openai_error(403, check.error_message, check.error_code)
    api_key = check.api_key
    tenant = getattr(request, "tenant", None)
    if tenant is not None and tenant.pk != api_key.organization_id:
        return openai_error(403, "This API key belongs to another organization.", "wrong_organization")
    if not key_allows(api_key, action):
        return openai_error(403, f"This API key lacks the scope {ACTIONS[action].scope}.", "missing_scope")
    retry_after = _throttled(api_key)
    if retry_after is not None:
        return openai_error(
            429,
            f"Too many requests for this API key (API_RATE_LIMIT {settings.API_RATE_LIMIT});"
            f" retry after {retry_after} s.",
            "rate_limit_exceeded",
            headers={"Retry-After": str(retry_after)},
        )
    key_touch(api_key, client_ip(request))
    return api_key


def _throttled(api_key: ApiKey) -> int | None:
    """The REST API's per-key budget (apps.core.api.PrincipalRateThrottle), shared with it:
    seconds to wait when this request is over it, else None."""
    limit, window = PrincipalRateThrottle.rate()
    pipe = _throttle_redis().pipeline(transaction=False)
    key = f"throttle:key:{api_key.pk}"
    pipe.incr(key)
    pipe.expire(key, window, nx=True)
    pipe.ttl(key)
    count, _, ttl = pipe.execute()
    if int(count) <= limit:
        return None
    return int(ttl) if int(ttl) > 0 else window


_authenticate = sync_to_async(_authenticate_sync)


async def _ai_assistance_refused(api_key: ApiKey) -> JsonResponse | None:
    """The plan's `ai_assistance` feature, before a call: read from this process's reading
    of the organization's features (apps/billing/features.py, a few seconds old at most),
    so a call costs no query for it. The refusal is a 403 whose error also names the
    feature and the plans that have it (OpenAI clients show the error object as is)."""
    organization_id = api_key.organization_id
    if feature_check_cached(organization_id=organization_id, key="ai_assistance", cached_only=True):
        return None
    try:
        await sync_to_async(feature_check_cached)(organization_id=organization_id, key="ai_assistance")
    except FeatureNotInPlan as exc:
        return openai_error(
            exc.status, exc.message, exc.code, extra={"feature": exc.feature, "plans": exc.plans}
        )
    return None


def _context(
    api_key: ApiKey,
    request: HttpRequest,
    *,
    fallbacks: tuple[str, ...] | None = None,
    timeout: float | None = None,
) -> CallContext:
    # `Cache-Control: no-store` (or no-cache) opts this request out of the exact-match caches.
    cache_control = request.headers.get("Cache-Control", "").lower()
    return CallContext(
        organization_id=api_key.organization_id,
        api_key_id=api_key.pk,
        priority="interactive",
        cache="no-store" not in cache_control and "no-cache" not in cache_control,
        fallbacks=fallbacks,
        timeout_seconds=timeout,
    )


# Where gateway calls run ------------------------------------------------------------------------


class _LoopThread:
    """One event loop on a daemon thread, for WSGI workers (see the module docstring)."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, daemon=True, name="llm-openai-compat").start()
                self._loop = loop
            return self._loop

    def submit(self, coroutine: Awaitable[T]) -> Future[T]:
        async def run() -> T:
            return await coroutine

        return asyncio.run_coroutine_threadsafe(run(), self.loop())


_wsgi_loop = _LoopThread()


def _under_asgi(request: HttpRequest) -> bool:
    return isinstance(request, ASGIRequest)


async def _run(request: HttpRequest, coroutine: Awaitable[T]) -> T:
    if _under_asgi(request):
        return await coroutine
    return await asyncio.wrap_future(_wsgi_loop.submit(coroutine))


def _gateway() -> Any:
    from apps.llm.gateway import gateway

    return gateway()


# Parsing ----------------------------------------------------------------------------------------


def _raw_body(request: HttpRequest) -> bytes:
    too_big = BadRequest(
        f"The request body is over {MAX_BODY_BYTES // (1024 * 1024)} MiB.", code="request_too_large"
    )
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length > MAX_BODY_BYTES:
        raise too_big
    try:
        raw = request.body
    except RequestDataTooBig:
        # Over Django's DATA_UPLOAD_MAX_MEMORY_SIZE (meant for forms), within ours: read it.
        raw = request.read(MAX_BODY_BYTES + 1)
    if len(raw) > MAX_BODY_BYTES:
        raise too_big
    return raw


def _body(request: HttpRequest) -> dict[str, Any]:
    raw = _raw_body(request)
    try:
        data = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("The request body is not valid JSON.", code="invalid_json") from None
    if not isinstance(data, dict):
        raise BadRequest("The request body must be a JSON object.", code="invalid_json")
    return data


def _string(
    data: dict[str, Any], key: str, *, required: bool = False, param: str | None = None
) -> str | None:
    value = data.get(key)
    if value is None:
        if required:
            raise BadRequest(
                f"Missing required parameter: '{param or key}'.", param or key, "missing_required_parameter"
            )
        return None
    if not isinstance(value, str):
        raise BadRequest(f"'{param or key}' must be a string.", param or key, "invalid_type")
    return value


def _number(data: dict[str, Any], key: str, low: float, high: float) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRequest(f"'{key}' must be a number.", key, "invalid_type")
    if not low <= value <= high:
        raise BadRequest(f"'{key}' must be between {low:g} and {high:g}.", key, "invalid_value")
    return float(value)


def _integer(data: dict[str, Any], key: str, low: int) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"'{key}' must be an integer.", key, "invalid_type")
    if value < low:
        raise BadRequest(f"'{key}' must be at least {low}.", key, "invalid_value")
    return int(value)


def _image(part: dict[str, Any], param: str) -> ImagePart:
    spec = part.get("image_url")
    if not isinstance(spec, dict) or not isinstance(spec.get("url"), str):
        raise BadRequest(f"'{param}.image_url' must be {{'url': ..., 'detail': ...}}.", f"{param}.image_url")
    detail = IMAGE_DETAILS.get(str(spec.get("detail") or "auto"))
    if detail is None:
        raise BadRequest(
            f"'{param}.image_url.detail' must be auto, low or high.",
            f"{param}.image_url.detail",
            "invalid_value",
        )
    image = ImagePart(url=spec["url"], detail=detail)
    problem = image_check(image)
    if problem is not None:
        raise BadRequest(problem, f"{param}.image_url.url", "invalid_image")
    return image


def _content(value: Any, param: str, role: str) -> tuple[str | None, tuple[ImagePart, ...]]:
    """A message's content: its text, and its images (OpenAI's image_url parts, user messages only)."""
    if value is None or isinstance(value, str):
        return value, ()
    if isinstance(value, list):
        texts: list[str] = []
        images: list[ImagePart] = []
        for index, part in enumerate(value):
            where = f"{param}[{index}]"
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            if isinstance(part, dict) and kind == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif isinstance(part, dict) and kind == "image_url" and role == "user":
                images.append(_image(part, where))
            elif kind == "image_url":
                raise BadRequest(
                    f"Only user messages may hold images; '{where}' is in a {role} message.", where
                )
            else:
                raise BadRequest(
                    f"Content parts here are text and (in user messages) image_url; '{where}' is {kind!r}.",
                    where,
                    "unsupported_content",
                )
        return "".join(texts), tuple(images)
    raise BadRequest(f"'{param}' must be a string or a list of content parts.", param, "invalid_type")


def _tool_calls(value: Any, param: str) -> tuple[ToolCall, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise BadRequest(f"'{param}' must be a list.", param, "invalid_type")
    calls = []
    for index, call in enumerate(value):
        where = f"{param}[{index}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise BadRequest(
                f"'{where}' must be {{'id', 'type': 'function', 'function': {{'name', 'arguments'}}}}.", where
            )
        arguments = function.get("arguments", "")
        if not isinstance(arguments, str):
            raise BadRequest(
                f"'{where}.function.arguments' must be a JSON string.", f"{where}.function.arguments"
            )
        calls.append(ToolCall(id=str(call.get("id") or ""), name=function["name"], arguments=arguments))
    return tuple(calls)


def _messages(value: Any) -> tuple[Message, ...]:
    if not isinstance(value, list) or not value:
        raise BadRequest("'messages' must be a non-empty list.", "messages", "invalid_value")
    messages = []
    seen_images = 0
    for index, item in enumerate(value):
        where = f"messages[{index}]"
        if not isinstance(item, dict):
            raise BadRequest(f"'{where}' must be an object.", where, "invalid_type")
        role = item.get("role")
        if role not in ROLES:
            raise BadRequest(
                f"'{where}.role' must be one of system, developer, user, assistant, tool.",
                f"{where}.role",
                "invalid_value",
            )
        content, images = _content(item.get("content"), f"{where}.content", str(role))
        tool_calls = _tool_calls(item.get("tool_calls"), f"{where}.tool_calls") if role == "assistant" else ()
        tool_call_id = item.get("tool_call_id")
        if role == "tool" and not isinstance(tool_call_id, str):
            raise BadRequest(
                f"'{where}.tool_call_id' is required for a tool message.", f"{where}.tool_call_id"
            )
        seen_images += len(images)
        if seen_images > MAX_IMAGES:
            raise BadRequest(f"At most {MAX_IMAGES} images per request.", "messages", "too_many_images")
        if content is None and not tool_calls:
            raise BadRequest(
                f"'{where}.content' is required.", f"{where}.content", "missing_required_parameter"
            )
        name = item.get("name")
        messages.append(
            Message(
                role="system" if role == "developer" else role,
                content=content,
                tool_calls=tool_calls,
                tool_call_id=tool_call_id if role == "tool" else None,
                name=name if isinstance(name, str) else None,
                images=images,
            )
        )
    return tuple(messages)


def _tools(value: Any) -> tuple[Tool, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise BadRequest("'tools' must be a list.", "tools", "invalid_type")
    tools = []
    for index, item in enumerate(value):
        where = f"tools[{index}]"
        function = item.get("function") if isinstance(item, dict) else None
        if (
            not isinstance(item, dict)
            or item.get("type", "function") != "function"
            or not isinstance(function, dict)
        ):
            raise BadRequest(f"'{where}' must be {{'type': 'function', 'function': {{...}}}}.", where)
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise BadRequest(
                f"'{where}.function.name' is required.",
                f"{where}.function.name",
                "missing_required_parameter",
            )
        parameters = function.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(parameters, dict):
            raise BadRequest(
                f"'{where}.function.parameters' must be a JSON Schema object.", f"{where}.function.parameters"
            )
        description = function.get("description") or ""
        tools.append(Tool(name=name, description=str(description), parameters=parameters))
    return tuple(tools)


def _tool_choice(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str) and value in ("auto", "none", "required"):
        return value
    if isinstance(value, dict) and isinstance(value.get("function"), dict):
        name = value["function"].get("name")
        if isinstance(name, str) and name:
            return name
    raise BadRequest(
        "'tool_choice' must be 'auto', 'none', 'required'"
        " or {'type': 'function', 'function': {'name': ...}}.",
        "tool_choice",
    )


def _response_format(value: Any) -> tuple[str, dict[str, Any] | None]:
    if value is None:
        return "text", None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return "text", None
    if kind == "json_object":
        return "json", None
    if kind == "json_schema":
        spec = value.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise BadRequest(
                "'response_format.json_schema.schema' must be a JSON Schema object.", "response_format"
            )
        return "json", schema
    raise BadRequest(
        "'response_format.type' must be 'text', 'json_object' or 'json_schema'.", "response_format.type"
    )


def call_options_from(data: dict[str, Any]) -> tuple[tuple[str, ...] | None, float | None]:
    """Agentyard's extra body fields: (`fallbacks`, `timeout`); None where not given."""
    fallbacks = data.get("fallbacks")
    if fallbacks is not None and (
        not isinstance(fallbacks, list) or not all(isinstance(name, str) and name for name in fallbacks)
    ):
        raise BadRequest("'fallbacks' must be a list of model names.", "fallbacks", "invalid_type")
    timeout = _number(data, "timeout", 1, 600)
    return (tuple(fallbacks) if fallbacks is not None else None), timeout


def chat_request_from(data: dict[str, Any]) -> ChatRequest:
    """An OpenAI chat completions body as our ChatRequest (400 naming the parameter if not)."""
    model = _string(data, "model", required=True)
    assert model is not None
    n = data.get("n")
    if n not in (None, 1):
        raise BadRequest("Only n=1 is supported.", "n", "unsupported_value")
    stop = data.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and (not isinstance(stop, list) or not all(isinstance(s, str) for s in stop)):
        raise BadRequest("'stop' must be a string or a list of strings.", "stop", "invalid_type")
    response_format, json_schema = _response_format(data.get("response_format"))
    max_tokens = _integer(data, "max_completion_tokens", 1)
    if max_tokens is None:
        max_tokens = _integer(data, "max_tokens", 1)
    seed = data.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise BadRequest("'seed' must be an integer.", "seed", "invalid_type")
    return ChatRequest(
        model=model,
        messages=_messages(data.get("messages")),
        tools=_tools(data.get("tools")),
        tool_choice=_tool_choice(data.get("tool_choice")),
        response_format=response_format,  # type: ignore[arg-type]
        json_schema=json_schema,
        temperature=_number(data, "temperature", 0, 2),
        top_p=_number(data, "top_p", 0, 1),
        max_tokens=max_tokens,
        stop=tuple(stop or ()),
        seed=seed,
    )


# Rendering --------------------------------------------------------------------------------------


def _completion_id(response_id: str = "") -> str:
    return response_id if response_id.startswith("chatcmpl-") else f"chatcmpl-{secrets.token_hex(12)}"


def _finish_reason(reason: str | None) -> str | None:
    return "stop" if reason == "error" else reason


def _tool_calls_json(calls: tuple[ToolCall, ...]) -> list[dict[str, Any]]:
    return [
        {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
        for call in calls
    ]


def _usage_json(input_tokens: int, output_tokens: int, cached_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": input_tokens,
        "completion_tokens": output_tokens,
        "total_tokens": input_tokens + output_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


def completion_json(response: ChatResponse) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": response.message.content, "refusal": None}
    if response.message.tool_calls:
        message["tool_calls"] = _tool_calls_json(response.message.tool_calls)
    usage = response.usage
    return {
        "id": _completion_id(response.id),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": response.model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": _finish_reason(response.finish_reason),
            }
        ],
        "usage": _usage_json(usage.input_tokens, usage.output_tokens, usage.cached_tokens),
        "system_fingerprint": None,
    }


def _route_headers(route: dict[str, Any]) -> dict[str, str]:
    """How the gateway served the call, for clients that want to know (ASCII only)."""
    headers = {}
    for key in ("model", "provider", "reason", "cache", "cost_usd", "latency_ms", "attempts"):
        value = route.get(key)
        if value is not None and value != "":
            if isinstance(value, list | dict):
                value = json.dumps(value, separators=(",", ":"), default=str)
            text = str(value).encode("ascii", "replace").decode()[:500].replace("\n", " ")
            headers[f"X-Agentyard-{key.replace('_', '-').title()}"] = text
    return headers


class _StreamWriter:
    """Our StreamChunks as OpenAI's chat.completion.chunk events (and the final [DONE])."""

    def __init__(self, model: str, include_usage: bool) -> None:
        self.id = _completion_id()
        self.created = int(time.time())
        self.model = model
        self.include_usage = include_usage
        self.tool_index = 0

    def _event(self, choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> bytes:
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": choices,
        }
        if self.include_usage:
            chunk["usage"] = usage
        return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"

    def _delta(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        return self._event([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}])

    def first(self) -> bytes:
        return self._delta({"role": "assistant", "content": "", "refusal": None})

    def chunk(self, chunk: StreamChunk) -> list[bytes]:
        if chunk.model:
            self.model = chunk.model
        events = []
        if chunk.text:
            events.append(self._delta({"content": chunk.text}))
        for call in chunk.tool_calls:
            events.append(
                self._delta(
                    {
                        "tool_calls": [
                            {
                                "index": self.tool_index,
                                "id": call.id,
                                "type": "function",
                                "function": {"name": call.name, "arguments": call.arguments},
                            }
                        ]
                    }
                )
            )
            self.tool_index += 1
        if chunk.finish_reason is not None:
            events.append(self._delta({}, _finish_reason(chunk.finish_reason)))
            if self.include_usage:
                usage = chunk.usage
                events.append(
                    self._event(
                        [],
                        _usage_json(usage.input_tokens, usage.output_tokens, usage.cached_tokens)
                        if usage
                        else _usage_json(0, 0, 0),
                    )
                )
        return events

    @staticmethod
    def error(exc: Exception) -> bytes:
        if isinstance(exc, ServiceError | ProviderError):
            status, message, code = exc.status, exc.message, exc.code
        else:
            status, message, code = 500, "The stream failed.", "internal_error"
        body = {
            "error": {
                "message": message,
                "type": ERROR_TYPES.get(status, "api_error"),
                "param": None,
                "code": code,
            }
        }
        return b"data: " + json.dumps(body).encode() + b"\n\n"

    done = b"data: [DONE]\n\n"


def _sse_response(content: Any) -> StreamingHttpResponse:
    response = StreamingHttpResponse(content, content_type="text/event-stream; charset=utf-8")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx in front must not hold events back
    return response


async def _stream_async(
    writer: _StreamWriter, first: StreamChunk | None, rest: AsyncIterator[StreamChunk]
) -> AsyncIterator[bytes]:
    try:
        yield writer.first()
        if first is not None:
            for event in writer.chunk(first):
                yield event
        async for chunk in rest:
            for event in writer.chunk(chunk):
                yield event
    except (ServiceError, ProviderError) as exc:
        yield writer.error(exc)
    finally:
        await _aclose(rest)
    yield writer.done


def _stream_sync(
    writer: _StreamWriter, first: StreamChunk | None, rest: AsyncIterator[StreamChunk]
) -> Iterator[bytes]:
    try:
        yield writer.first()
        if first is not None:
            yield from writer.chunk(first)
        while True:
            try:
                chunk = _wsgi_loop.submit(rest.__anext__()).result()
            except StopAsyncIteration:
                break
            yield from writer.chunk(chunk)
    except (ServiceError, ProviderError) as exc:
        yield writer.error(exc)
    finally:
        # Also when the client went away mid-stream (the server closes this generator).
        _wsgi_loop.submit(_aclose(rest)).result(timeout=10)
    yield writer.done


async def _aclose(iterator: AsyncIterator[Any]) -> None:
    close: Callable[[], Awaitable[None]] | None = getattr(iterator, "aclose", None)
    if close is not None:
        await close()


# Views ------------------------------------------------------------------------------------------


def _method_not_allowed(allowed: str) -> JsonResponse:
    return openai_error(405, f"Use {allowed} here.", "method_not_allowed", headers={"Allow": allowed})


View = Callable[..., Coroutine[Any, Any, HttpResponseBase]]


def _endpoint(view: View) -> View:
    """API keys only (no cookies, so no CSRF). The key is checked against the host's
    organization in the view, so the membership middleware lets everyone through
    (apps.tenancy.middleware.outsiders_allowed, which is typed for sync views)."""
    wrapped: View = csrf_exempt(view)
    wrapped.outsiders_allowed = True  # type: ignore[attr-defined]
    return wrapped


@_endpoint
async def chat_completions(request: HttpRequest) -> HttpResponseBase:
    if request.method != "POST":
        return _method_not_allowed("POST")
    api_key = await _authenticate(request, "llm.call")
    if isinstance(api_key, JsonResponse):
        return api_key
    refused = await _ai_assistance_refused(api_key)
    if refused is not None:
        return refused
    try:
        data = _body(request)
        chat = chat_request_from(data)
        fallbacks, timeout = call_options_from(data)
        stream = data.get("stream") or False
        if not isinstance(stream, bool):
            raise BadRequest("'stream' must be a boolean.", "stream", "invalid_type")
        options = data.get("stream_options") or {}
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
    except BadRequest as exc:
        return openai_error(400, exc.message, exc.code, exc.param)
    context = _context(api_key, request, fallbacks=fallbacks, timeout=timeout)
    try:
        if not stream:
            response: ChatResponse = await _run(request, _gateway().chat(chat, context=context))
            return JsonResponse(completion_json(response), headers=_route_headers(response.route))
        return await _stream(request, chat, context, include_usage)
    except ServiceError as exc:
        return _service_error(exc)
    except ProviderError as exc:
        return _provider_error(exc)


async def _stream(
    request: HttpRequest, chat: ChatRequest, context: CallContext, include_usage: bool
) -> HttpResponseBase:
    """Refusals (unknown model, budget, a provider down before the first token) come back
    as a plain error with its status: the first chunk is awaited before answering 200."""
    asgi = _under_asgi(request)

    async def open_stream() -> tuple[StreamChunk | None, AsyncIterator[StreamChunk]]:
        chunks: AsyncIterator[StreamChunk] = _gateway().stream(chat, context=context).__aiter__()
        try:
            return await chunks.__anext__(), chunks
        except StopAsyncIteration:
            return None, chunks
        except BaseException:
            await _aclose(chunks)
            raise

    first, rest = await _run(request, open_stream())
    writer = _StreamWriter(chat.model, include_usage)
    if asgi:
        return _sse_response(_stream_async(writer, first, rest))
    return _sse_response(_stream_sync(writer, first, rest))


def _embedding_inputs(value: Any) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(item, str) for item in value):
        raise BadRequest(
            "'input' must be a string or a non-empty list of strings (token arrays are not supported).",
            "input",
            "invalid_value",
        )
    if len(value) > 2048:
        raise BadRequest("At most 2048 inputs per request.", "input", "invalid_value")
    return value


@_endpoint
async def embeddings(request: HttpRequest) -> HttpResponseBase:
    if request.method != "POST":
        return _method_not_allowed("POST")
    api_key = await _authenticate(request, "llm.call")
    if isinstance(api_key, JsonResponse):
        return api_key
    refused = await _ai_assistance_refused(api_key)
    if refused is not None:
        return refused
    try:
        data = _body(request)
        model = _string(data, "model", required=True)
        assert model is not None
        inputs = _embedding_inputs(data.get("input"))
        encoding = data.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            raise BadRequest(
                "'encoding_format' must be 'float' or 'base64'.", "encoding_format", "invalid_value"
            )
        dimensions = _integer(data, "dimensions", 1)
    except BadRequest as exc:
        return openai_error(400, exc.message, exc.code, exc.param)
    try:
        result = await _run(request, _gateway().embed(model, inputs, context=_context(api_key, request)))
    except ServiceError as exc:
        return _service_error(exc)
    except ProviderError as exc:
        return _provider_error(exc)
    items = []
    for index, vector in enumerate(result.vectors):
        values = vector[:dimensions] if dimensions else vector
        embedding: Any = (
            base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()
            if encoding == "base64"
            else list(values)
        )
        items.append({"object": "embedding", "index": index, "embedding": embedding})
    tokens = result.usage.input_tokens
    return JsonResponse(
        {
            "object": "list",
            "data": items,
            "model": result.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


def _model_json(entry: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": entry["name"],
        "object": "model",
        "created": 0,
        "owned_by": entry.get("provider", ""),
        "context_window": entry.get("context_window"),
        "capabilities": entry.get("capabilities", {}),
    }


async def _enabled_models(request: HttpRequest, api_key: ApiKey) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = await _run(
        request, _gateway().models(organization_id=api_key.organization_id)
    )
    return [entry for entry in entries if entry.get("enabled")]


@_endpoint
async def models(request: HttpRequest) -> HttpResponseBase:
    if request.method != "GET":
        return _method_not_allowed("GET")
    api_key = await _authenticate(request, "llm.view")
    if isinstance(api_key, JsonResponse):
        return api_key
    entries = await _enabled_models(request, api_key)
    return JsonResponse({"object": "list", "data": [_model_json(entry) for entry in entries]})


@_endpoint
async def model_detail(request: HttpRequest, model_id: str) -> HttpResponseBase:
    if request.method != "GET":
        return _method_not_allowed("GET")
    api_key = await _authenticate(request, "llm.view")
    if isinstance(api_key, JsonResponse):
        return api_key
    for entry in await _enabled_models(request, api_key):
        if entry["name"] == model_id:
            return JsonResponse(_model_json(entry))
    return openai_error(
        404,
        f"The model '{model_id}' does not exist or is not enabled for this organization.",
        "model_not_found",
        "model",
    )


@_endpoint
async def unknown_endpoint(request: HttpRequest, endpoint: str) -> HttpResponseBase:
    """OpenAI clients reaching for an API we do not serve get OpenAI's 404, not a web page."""
    return openai_error(
        404,
        f"This server does not serve /v1/{endpoint}; it serves chat/completions, embeddings and models.",
        "unknown_endpoint",
    )
