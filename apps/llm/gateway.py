"""The LLM gateway: one in-process entry point for every model call.

    from apps.llm.gateway import gateway, chat_sync
    response = await gateway().chat(request, context=CallContext(organization_id=org.pk))
    response.route  # {"model", "provider", "reason", "cache", "cost_usd", "latency_ms", "attempts", ...}

A chat call, in order:
  1. check the request (tools' schemas, parameters): InvalidTool / Invalid, 400;
  2. plan the route (apps/llm/router.py): the named model or `auto`, its usable
     fallbacks, context-window fallback; UnknownModel, ModelDisabled,
     MissingCredentials, ContextTooLong refuse here, before anything is sent;
  3. caches (apps/llm/cache.py): L1, L2 exact (unless CallContext.cache is False),
     L3 semantic (when asked for): a hit answers at once, free;
  4. budgets (apps/llm/budgets.py): the call's least cost is held on each budget
     that applies, in a ledger every process shares; BudgetExceeded, 402, nothing sent;
  5. each candidate in turn: skip it while its provider's circuit is open, wait
     for a slot in the provider's fair queue (apps/llm/queue.py), call with a
     timeout, retry retryable errors with backoff (apps/llm/resilience.py), then
     move on to the next; a bad request (400 from the provider) stops at once;
  6. meter the call (apps/llm/metering.py; failures cost nothing), settle the
     budgets' hold at its cost (release it when the call failed), store it in the
     caches, and record the route.

Streams fail over only before their first chunk; an error after it raises
ProviderFailed (code of the provider's error) at the consumer's next read.

Per call, CallContext.fallbacks replaces the organization's fallback chain (see
apps/llm/router.py) and CallContext.timeout_seconds (1 to 600) replaces
LLM_TIMEOUT_SECONDS for each attempt and each wait for a streamed chunk (a shorter
one that fires is the caller's limit, not the provider's failure: it neither counts
towards the circuit breaker nor the model's error rate). Images
(Message.images, user messages only) are checked here: at most MAX_IMAGES, https
or data:image URLs, at most MAX_IMAGE_BYTES each (apps/llm/types.py).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import jsonschema
from asgiref.sync import async_to_sync, sync_to_async
from django.conf import settings

from apps.core.errors import Invalid, ServiceError
from apps.llm import selectors
from apps.llm.budgets import NO_HOLD, BudgetHold, budgets_reserve
from apps.llm.cache import ResponseCache, cache_clear_shared, exact_key
from apps.llm.catalog import ALIASES
from apps.llm.errors import BudgetExceeded, InvalidTool, ProviderFailed
from apps.llm.metering import Meter, meter
from apps.llm.providers.base import (
    AuthenticationFailed,
    ContextWindowExceeded,
    Provider,
    ProviderConfig,
    ProviderError,
    ProviderTimeout,
)
from apps.llm.providers.registry import make_provider
from apps.llm.queue import Queues
from apps.llm.resilience import Breakers, CircuitBreaker, RetryPolicy, with_timeout
from apps.llm.router import Candidate, RoutePlan, Router, estimate_tokens
from apps.llm.selectors import ModelInfo, OrganizationConfig
from apps.llm.tool_emulation import chat_with_emulated_tools, stream_with_emulated_tools
from apps.llm.types import (
    MAX_IMAGES,
    CallContext,
    ChatRequest,
    ChatResponse,
    EmbeddingResponse,
    Message,
    StreamChunk,
    ToolCall,
    Usage,
    image_check,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")
ProviderKey = tuple[str, str, str, float, tuple[tuple[str, Any], ...]]
TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_EMBEDDING_INPUTS = 2048
MIN_TIMEOUT_SECONDS, MAX_TIMEOUT_SECONDS = 1.0, 600.0  # a call's own timeout (CallContext)


@asynccontextmanager
async def _no_slot() -> AsyncIterator[None]:
    yield


def _evolve(value: T, **changes: Any) -> T:
    """dataclasses.replace for our frozen, slot-less types on the hot path: a copy of the
    instance's fields with `changes`, without re-running __init__ (a few µs less a call)."""
    copy = object.__new__(type(value))
    fields = copy.__dict__
    fields.update(value.__dict__)
    fields.update(changes)
    return copy


class _ModelFailed(Exception):
    """Every try on one model failed; the gateway moves on to the next candidate."""

    def __init__(self, error: ProviderError | None) -> None:
        super().__init__(error.message if error else "skipped")
        self.error = error


@dataclass
class _Served:
    candidate: Candidate
    latency_ms: float


def schema_problem(schema: dict[str, Any]) -> str | None:
    """Why `schema` is no valid JSON Schema, or None. Remembered by content: an agent sends
    the same tool schemas at every step, and checking them costs milliseconds each time."""
    try:
        key = json.dumps(schema, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError):
        return "it cannot be written as JSON"
    return _schema_problem(key)


@functools.lru_cache(maxsize=2048)
def _schema_problem(key: str) -> str | None:
    try:
        jsonschema.Draft202012Validator.check_schema(json.loads(key))
    except jsonschema.SchemaError as exc:
        return str(exc.message)
    return None


def validate_request(request: ChatRequest) -> None:
    """Refuse what no provider would take, with a 400 naming the problem."""
    if not request.messages:
        raise Invalid("Send at least one message.", field="messages")
    if request.temperature is not None and not 0 <= request.temperature <= 2:
        raise Invalid("temperature must be between 0 and 2.", field="temperature")
    if request.top_p is not None and not 0 <= request.top_p <= 1:
        raise Invalid("top_p must be between 0 and 1.", field="top_p")
    if request.max_tokens is not None and request.max_tokens < 1:
        raise Invalid("max_tokens must be at least 1.", field="max_tokens")
    images = 0
    for index, message in enumerate(request.messages):
        if not message.images:
            continue
        if message.role != "user":
            raise Invalid(
                f"Only user messages may hold images; message {index} is {message.role!r}.", field="messages"
            )
        images += len(message.images)
        if images > MAX_IMAGES:
            raise Invalid(f"At most {MAX_IMAGES} images per request.", field="messages")
        for image in message.images:
            problem = image_check(image)
            if problem is not None:
                raise Invalid(f"Message {index}: {problem}", field="messages")
    names = set()
    for tool in request.tools:
        if not TOOL_NAME.match(tool.name):
            raise InvalidTool(
                f"Tool name {tool.name!r} is invalid: use 1 to 64 letters, digits, _ or -.", field="tools"
            )
        if tool.name in names:
            raise InvalidTool(f"Two tools are named {tool.name!r}.", field="tools")
        names.add(tool.name)
        if not isinstance(tool.parameters, dict) or tool.parameters.get("type", "object") != "object":
            raise InvalidTool(
                f"The parameters of tool {tool.name!r} must be a JSON Schema of type object.", field="tools"
            )
        problem = schema_problem(tool.parameters)
        if problem is not None:
            raise InvalidTool(
                f"The parameters of tool {tool.name!r} are not a valid JSON Schema: {problem}",
                field="tools",
            )
    if request.tool_choice not in (None, "auto", "none", "required") and request.tool_choice not in names:
        raise InvalidTool(
            f"tool_choice names {request.tool_choice!r}, which is not among the tools.", field="tools"
        )
    if request.json_schema is not None:
        problem = schema_problem(request.json_schema)
        if problem is not None:
            raise Invalid(f"json_schema is not a valid JSON Schema: {problem}", field="json_schema")


def validate_context(context: CallContext) -> None:
    """A call's own fallbacks and timeout, before anything else (400 naming the field)."""
    timeout = context.timeout_seconds
    if timeout is not None and not MIN_TIMEOUT_SECONDS <= timeout <= MAX_TIMEOUT_SECONDS:
        raise Invalid(
            f"timeout must be between {MIN_TIMEOUT_SECONDS:g} and {MAX_TIMEOUT_SECONDS:g} seconds.",
            field="timeout",
        )
    if context.fallbacks is not None and not all(isinstance(n, str) and n for n in context.fallbacks):
        raise Invalid("fallbacks must be a list of model names.", field="fallbacks")


def _failed(error: ProviderError | None, model: str, attempts: list[dict[str, Any]]) -> ProviderFailed:
    tried = ", ".join(f"{a['model']}: {a['outcome']}" for a in attempts) or "none"
    if error is None:
        failure = ProviderFailed(
            f"No model could be tried for {model!r}: every provider in its chain is failing"
            f" (circuit open). Tried: {tried}.",
            code="circuit_open",
        )
        failure.status = 503
        return failure
    failure = ProviderFailed(f"{error.message} (tried: {tried})", code=error.code)
    if error.status == 400:
        failure.status = 400
    return failure


class Gateway:
    def __init__(
        self,
        *,
        embedder: Callable[[list[str], CallContext], Awaitable[Sequence[Sequence[float]]]] | None = None,
    ) -> None:
        self.router = Router()
        self.breakers = Breakers()
        self.queues = Queues()
        self.meter: Meter = meter()
        semantic_model = str(getattr(settings, "LLM_SEMANTIC_CACHE_MODEL", "") or "")
        if embedder is None and semantic_model:
            embedder = self._embedder(semantic_model)
        self.cache = ResponseCache(embedder)
        # Providers hold SDK clients bound to an event loop: one set per loop.
        self._providers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[ProviderKey, Provider]] = (
            weakref.WeakKeyDictionary()
        )

    def _embedder(
        self, model: str
    ) -> Callable[[list[str], CallContext], Awaitable[Sequence[Sequence[float]]]]:
        async def embed(texts: list[str], context: CallContext) -> Sequence[Sequence[float]]:
            response = await self.embed(
                model, texts, context=replace(context, cache=False, semantic_cache=False)
            )
            return response.vectors

        return embed

    # --- configuration --------------------------------------------------------

    async def _catalog(self) -> dict[str, ModelInfo]:
        cached = selectors.catalog_cached()
        if cached is not None:
            return cached
        return await sync_to_async(selectors.catalog_models)()

    async def _config(self, organization_id: int) -> OrganizationConfig:
        cached = selectors.organization_config_cached(organization_id)
        if cached is not None:
            return cached
        return await sync_to_async(selectors.organization_config)(organization_id=organization_id)

    @staticmethod
    def _timeout(context: CallContext | None = None) -> float:
        """Seconds an attempt (or a streamed chunk) may take: the call's own, else the setting."""
        if context is not None and context.timeout_seconds is not None:
            return float(context.timeout_seconds)
        return float(getattr(settings, "LLM_TIMEOUT_SECONDS", 60))

    def _caller_gave_up(self, error: ProviderError, context: CallContext) -> bool:
        """A timeout of the call's own, shorter than LLM_TIMEOUT_SECONDS: the caller's
        impatience, not a sign the provider is failing (no breaker failure, no error sample)."""
        return isinstance(error, ProviderTimeout) and self._timeout(context) < self._timeout()

    def _provider_config(self, model: ModelInfo, config: OrganizationConfig) -> ProviderConfig:
        credential = config.credential(model.provider)
        return ProviderConfig(
            kind=model.provider,
            api_key=credential.api_key if credential else "",
            base_url=credential.base_url if credential else "",
            timeout_seconds=self._timeout(),
            options=credential.options if credential else {},
        )

    def _provider(self, config: ProviderConfig) -> Provider:
        loop = asyncio.get_running_loop()
        providers = self._providers.setdefault(loop, {})
        key = (
            config.kind,
            config.api_key,
            config.base_url,
            config.timeout_seconds,
            tuple(sorted(config.options.items())),
        )
        provider = providers.get(key)
        if provider is None:
            provider = providers[key] = make_provider(config)
        return provider

    @staticmethod
    def _endpoint(config: ProviderConfig) -> str:
        """What a circuit breaker and a queue guard: one provider endpoint."""
        return f"{config.kind}:{config.base_url or 'default'}"

    def breaker_for(self, model: ModelInfo, config: OrganizationConfig) -> CircuitBreaker:
        return self.breakers.get(self._endpoint(self._provider_config(model, config)))

    async def close_loop_providers(self) -> None:
        """Close what was made for the running loop (sync callers, before their loop ends)."""
        providers = self._providers.pop(asyncio.get_running_loop(), {})
        for provider in providers.values():
            await provider.close()
        await self.cache.close_loop_clients()

    async def _flush_if_due(self) -> None:
        if self.meter.due():
            try:
                await sync_to_async(self.meter.flush)()
            except Exception:  # kept for the next flush; the call itself succeeded
                logger.exception("LLM usage flush failed")

    # --- trying one model -----------------------------------------------------

    async def _try_model(
        self,
        model: ModelInfo,
        config: OrganizationConfig,
        context: CallContext,
        attempts: list[dict[str, Any]],
        call: Callable[[Provider], Awaitable[T]],
        *,
        queued: bool = True,
    ) -> tuple[T, float]:
        """The result and its latency in ms, after retries; _ModelFailed when this model cannot serve.
        queued=False: the caller holds the provider's queue slot already (streams hold it throughout)."""
        provider_config = self._provider_config(model, config)
        timeout = self._timeout(context)
        if timeout > provider_config.timeout_seconds:
            # The SDK's own timeout must not cut a call given longer: a client with the
            # longest one (one more per credential at most); with_timeout is the limit.
            provider_config = replace(provider_config, timeout_seconds=MAX_TIMEOUT_SECONDS)
        endpoint = self._endpoint(provider_config)
        breaker = self.breakers.get(endpoint)
        if not breaker.allow():
            attempts.append(
                {"model": model.name, "outcome": "circuit_open", "retry_in_s": round(breaker.retry_in(), 1)}
            )
            raise _ModelFailed(None)
        provider = self._provider(provider_config)
        queue = self.queues.get(endpoint, provider_kind=model.provider)
        policy = RetryPolicy.from_settings()
        retry = 0
        while True:
            started = time.perf_counter()
            try:
                async with queue.slot(context.organization_id, context.priority) if queued else _no_slot():
                    started = time.perf_counter()
                    result = await with_timeout(call(provider), timeout, provider=model.provider)
            except ProviderError as error:
                if self._caller_gave_up(error, context):
                    breaker.abandon()
                else:
                    breaker.record_failure(error)
                    self.router.stats.record(model.name, ok=False)
                attempts.append({"model": model.name, "outcome": error.code, "message": error.message[:200]})
                if isinstance(error, ContextWindowExceeded | AuthenticationFailed):
                    raise _ModelFailed(error) from error  # another model may serve
                if not error.retryable:
                    raise _failed(error, model.name, attempts) from error
                delay = policy.delay(error, retry)
                if delay is None or breaker.state == CircuitBreaker.OPEN:
                    raise _ModelFailed(error) from error
                await asyncio.sleep(delay)
                retry += 1
                if not breaker.allow():
                    raise _ModelFailed(error) from error
                continue
            except asyncio.CancelledError:
                breaker.abandon()
                raise
            except Exception as exc:  # an SDK surprise the provider did not map: a clear 502, logged
                logger.exception("Provider %s raised an unmapped error", model.provider)
                unmapped = ProviderError(
                    f"{model.provider} failed unexpectedly: {type(exc).__name__}", provider=model.provider
                )
                breaker.record_failure(unmapped)
                attempts.append({"model": model.name, "outcome": unmapped.code})
                raise _failed(unmapped, model.name, attempts) from exc
            latency_ms = (time.perf_counter() - started) * 1000
            breaker.record_success()
            self.router.stats.record(model.name, ok=True, latency_ms=latency_ms)
            attempts.append({"model": model.name, "outcome": "ok"})
            return result, latency_ms

    @staticmethod
    def _call_request(request: ChatRequest, model: ModelInfo) -> ChatRequest:
        return _evolve(request, model=model.name, provider_model=model.provider_model)

    @staticmethod
    def _chat_call(request: ChatRequest) -> Callable[[Provider], Awaitable[ChatResponse]]:
        def call(provider: Provider) -> Awaitable[ChatResponse]:
            if request.tools and not provider.native_tools:
                return chat_with_emulated_tools(provider, request)
            return provider.chat(request)

        return call

    # --- chat -----------------------------------------------------------------

    async def _prepare(
        self, request: ChatRequest, context: CallContext
    ) -> tuple[OrganizationConfig, RoutePlan]:
        validate_request(request)
        validate_context(context)
        catalog = await self._catalog()
        config = await self._config(context.organization_id)
        return config, self.router.plan(request, catalog, config, fallbacks=context.fallbacks)

    def _route(
        self,
        plan: RoutePlan,
        candidate: Candidate,
        *,
        cache: str | None,
        cost_usd: float,
        latency_ms: float,
        attempts: list[dict[str, Any]],
        semantic_note: str | None = None,
    ) -> dict[str, Any]:
        route: dict[str, Any] = {
            "model": candidate.model.name,
            "provider": candidate.model.provider,
            "requested": plan.requested,
            "reason": candidate.reason,
            "cache": cache,
            "cost_usd": cost_usd,
            "latency_ms": round(latency_ms, 3),
            "attempts": attempts,
            "prompt_tokens_estimate": plan.prompt_tokens,
        }
        if plan.skipped:
            route["skipped"] = plan.skipped
        if semantic_note:
            route["semantic_cache"] = semantic_note
        return route

    async def chat(self, request: ChatRequest, *, context: CallContext) -> ChatResponse:
        started = time.perf_counter()
        config, plan = await self._prepare(request, context)
        primary = plan.candidates[0]
        key = exact_key(request, context.organization_id) if context.cache else None
        if key is not None:
            hit = await self.cache.get_exact(key)
            if hit is not None:
                return self._cached(hit[0], hit[1], plan, primary, context, started)
        semantic_note: str | None = None
        vector: list[float] | None = None
        if context.semantic_cache:
            semantic_note = self.cache.semantic_unavailable(request)
            if semantic_note is None:
                try:
                    cached, vector, similarity = await self.cache.get_semantic(request, context)
                except BudgetExceeded:
                    raise
                except ServiceError as exc:  # the cache is an optimisation: its embedder failing is a miss
                    cached, vector, similarity = None, None, 0.0
                    semantic_note = f"skipped: the embedding failed ({exc.code})"
                else:
                    semantic_note = f"similarity {similarity:.3f}"
                if cached is not None:
                    response = self._cached(cached, "l3", plan, primary, context, started)
                    response.route["semantic_cache"] = semantic_note
                    return response
        hold = await budgets_reserve(
            config=config,
            context=context,
            estimate_usd=primary.model.cost(plan.prompt_tokens, 0),
            meter=self.meter,
        )
        attempts: list[dict[str, Any]] = []
        last_error: ProviderError | None = None
        for candidate in plan.candidates:
            model = candidate.model
            try:
                response, latency_ms = await self._try_model(
                    model, config, context, attempts, self._chat_call(self._call_request(request, model))
                )
            except _ModelFailed as failed:
                last_error = failed.error or last_error
                continue
            except ProviderFailed:
                self.meter.record(context=context, model=model.name, provider=model.provider, failed=True)
                await hold.release()
                raise
            except BaseException:  # cancelled (the caller went away): nothing billed, the hold goes now
                await hold.release()
                raise
            usage = response.usage
            cost = model.usage_cost(usage)
            self.meter.record(
                context=context,
                model=model.name,
                provider=model.provider,
                usage=usage,
                cost_usd=cost,
                latency_ms=latency_ms,
            )
            await hold.settle(cost)
            response = _evolve(response, model=model.name, provider=model.provider)
            if response.finish_reason != "error":
                if key is not None:
                    await self.cache.put_exact(key, response)
                if vector is not None:
                    await self.cache.put_semantic(request, context, vector, response)
            route = self._route(
                plan,
                candidate,
                cache=None,
                cost_usd=cost,
                latency_ms=(time.perf_counter() - started) * 1000,
                attempts=attempts,
                semantic_note=semantic_note,
            )
            route["provider_latency_ms"] = round(latency_ms, 3)
            await self._flush_if_due()
            return _evolve(response, route=route)
        self.meter.record(
            context=context, model=primary.model.name, provider=primary.model.provider, failed=True
        )
        await hold.release()
        await self._flush_if_due()
        raise _failed(last_error, primary.model.name, attempts)

    def _cached(
        self,
        response: ChatResponse,
        level: str,
        plan: RoutePlan,
        primary: Candidate,
        context: CallContext,
        started: float,
    ) -> ChatResponse:
        served = Candidate(primary.model, f"{primary.reason}; answered from the {level.upper()} cache")
        if response.model != primary.model.name:
            served = Candidate(
                replace(primary.model, name=response.model, provider=response.provider), served.reason
            )
        self.meter.record(context=context, model=response.model, provider=response.provider, cache_hit=True)
        route = self._route(
            plan,
            served,
            cache=level,
            cost_usd=0.0,
            latency_ms=(time.perf_counter() - started) * 1000,
            attempts=[],
        )
        return replace(response, route=route)

    # --- streaming ------------------------------------------------------------

    async def stream(self, request: ChatRequest, *, context: CallContext) -> AsyncIterator[StreamChunk]:
        started = time.perf_counter()
        config, plan = await self._prepare(request, context)
        primary = plan.candidates[0]
        key = exact_key(request, context.organization_id) if context.cache else None
        if key is not None:
            hit = await self.cache.get_exact(key)
            if hit is not None:
                cached = self._cached(hit[0], hit[1], plan, primary, context, started)
                yield StreamChunk(
                    text=cached.message.content or "",
                    tool_calls=cached.message.tool_calls,
                    model=cached.model,
                )
                yield StreamChunk(finish_reason=cached.finish_reason, usage=Usage(), model=cached.model)
                return
        hold = await budgets_reserve(
            config=config,
            context=context,
            estimate_usd=primary.model.cost(plan.prompt_tokens, 0),
            meter=self.meter,
        )
        attempts: list[dict[str, Any]] = []
        last_error: ProviderError | None = None
        for candidate in plan.candidates:
            model = candidate.model
            call_request = self._call_request(request, model)
            opened: dict[str, Any] = {}

            async def first_chunk(
                provider: Provider, call_request: ChatRequest = call_request, opened: dict[str, Any] = opened
            ) -> StreamChunk | None:
                if request.tools and not provider.native_tools:
                    chunks = stream_with_emulated_tools(provider, call_request)
                else:
                    chunks = provider.stream(call_request)
                iterator = chunks.__aiter__()
                opened["iterator"] = iterator
                try:
                    return await iterator.__anext__()
                except StopAsyncIteration:
                    return None

            endpoint = self._endpoint(self._provider_config(model, config))
            async with self.queues.get(endpoint, provider_kind=model.provider).slot(
                context.organization_id, context.priority
            ):
                try:
                    first, _ = await self._try_model(
                        model, config, context, attempts, first_chunk, queued=False
                    )
                except _ModelFailed as failed:
                    last_error = failed.error or last_error
                    continue
                except ProviderFailed:
                    self.meter.record(context=context, model=model.name, provider=model.provider, failed=True)
                    await hold.release()
                    raise
                except BaseException:  # cancelled before the first chunk: nothing billed
                    await hold.release()
                    raise
                relay = self._relay(
                    first, opened["iterator"], model, config, plan, context, key, started, hold=hold
                )
                async for chunk in relay:
                    yield chunk
                return
        self.meter.record(
            context=context, model=primary.model.name, provider=primary.model.provider, failed=True
        )
        await hold.release()
        raise _failed(last_error, primary.model.name, attempts)

    async def _relay(
        self,
        first: StreamChunk | None,
        iterator: AsyncIterator[StreamChunk],
        model: ModelInfo,
        config: OrganizationConfig,
        plan: RoutePlan,
        context: CallContext,
        key: str | None,
        started: float,
        *,
        hold: BudgetHold = NO_HOLD,
    ) -> AsyncIterator[StreamChunk]:
        """Pass the stream on (after its first chunk no fallback: errors end it), then meter and cache it."""
        try:
            async for chunk in self._relay_chunks(
                first, iterator, model, config, plan, context, key, started, hold=hold
            ):
                yield chunk
        finally:
            close = getattr(iterator, "aclose", None)
            if close is not None:
                await close()
            await hold.settle_held()  # still open: the consumer stopped early

    async def _relay_chunks(
        self,
        first: StreamChunk | None,
        iterator: AsyncIterator[StreamChunk],
        model: ModelInfo,
        config: OrganizationConfig,
        plan: RoutePlan,
        context: CallContext,
        key: str | None,
        started: float,
        *,
        hold: BudgetHold = NO_HOLD,
    ) -> AsyncIterator[StreamChunk]:
        text: list[str] = []
        calls: list[ToolCall] = []
        finish: StreamChunk | None = None
        chunk = first
        while chunk is not None:
            text.append(chunk.text)
            calls.extend(chunk.tool_calls)
            if chunk.finish_reason is not None:
                finish = chunk
            yield replace(chunk, model=model.name)
            try:
                chunk = await with_timeout(
                    iterator.__anext__(), self._timeout(context), provider=model.provider
                )
            except StopAsyncIteration:
                chunk = None
            except Exception as exc:  # a ProviderError, or an SDK surprise the provider did not map
                error = exc if isinstance(exc, ProviderError) else ProviderError(type(exc).__name__)
                if not isinstance(exc, ProviderError):
                    logger.exception("Provider %s's stream raised an unmapped error", model.provider)
                if not self._caller_gave_up(error, context):
                    self.router.stats.record(model.name, ok=False)
                    self.breaker_for(model, config).record_failure(error)
                self.meter.record(context=context, model=model.name, provider=model.provider, failed=True)
                await hold.release()
                failure = ProviderFailed(
                    f"{model.name}: the stream broke after it started ({error.message})", code=error.code
                )
                raise failure from exc
        usage = finish.usage if finish is not None and finish.usage is not None else None
        if usage is None:
            usage = Usage(
                input_tokens=plan.prompt_tokens,
                output_tokens=estimate_tokens(
                    ChatRequest(
                        model=model.name, messages=(Message(role="assistant", content="".join(text)),)
                    ),
                    model.provider,
                ),
            )
        cost = model.usage_cost(usage)
        self.meter.record(
            context=context,
            model=model.name,
            provider=model.provider,
            usage=usage,
            cost_usd=cost,
            latency_ms=(time.perf_counter() - started) * 1000,
        )
        await hold.settle(cost)
        finish_reason = finish.finish_reason if finish is not None and finish.finish_reason else "stop"
        if key is not None and finish_reason != "error":
            response = ChatResponse(
                model=model.name,
                message=Message(role="assistant", content="".join(text) or None, tool_calls=tuple(calls)),
                finish_reason=finish_reason,
                usage=usage,
                provider=model.provider,
            )
            await self.cache.put_exact(key, response)
        await self._flush_if_due()

    # --- embeddings -----------------------------------------------------------

    async def embed(self, model: str, inputs: list[str], *, context: CallContext) -> EmbeddingResponse:
        if not inputs or not all(isinstance(text, str) and text for text in inputs):
            raise Invalid("Give one or more non-empty texts to embed.", field="input")
        if len(inputs) > MAX_EMBEDDING_INPUTS:
            raise Invalid(f"At most {MAX_EMBEDDING_INPUTS} texts per call.", field="input")
        validate_context(context)
        started = time.perf_counter()
        catalog = await self._catalog()
        config = await self._config(context.organization_id)
        info = self.router.lookup_embedding(catalog, model)
        self.router.check_usable(info, config)
        tokens = sum(len(text) for text in inputs) // 4 + len(inputs)
        hold = await budgets_reserve(
            config=config, context=context, estimate_usd=info.cost(tokens, 0), meter=self.meter
        )
        attempts: list[dict[str, Any]] = []

        def call(provider: Provider) -> Awaitable[EmbeddingResponse]:
            return provider.embed(info.provider_model, inputs)

        try:
            response, _ = await self._try_model(info, config, context, attempts, call)
        except _ModelFailed as failed:
            self.meter.record(context=context, model=info.name, provider=info.provider, failed=True)
            await hold.release()
            raise _failed(failed.error, info.name, attempts) from None
        except ProviderFailed:
            self.meter.record(context=context, model=info.name, provider=info.provider, failed=True)
            await hold.release()
            raise
        except BaseException:  # cancelled (the caller went away): nothing billed
            await hold.release()
            raise
        cost = info.cost(response.usage.input_tokens, 0)
        self.meter.record(
            context=context,
            model=info.name,
            provider=info.provider,
            usage=response.usage,
            cost_usd=cost,
            latency_ms=(time.perf_counter() - started) * 1000,
        )
        await hold.settle(cost)
        await self._flush_if_due()
        return replace(response, model=info.name, provider=info.provider)

    # --- reads ----------------------------------------------------------------

    def estimate_cost(self, request: ChatRequest, *, context: CallContext) -> dict[str, Any]:
        """What the call would cost, before sending it: the model the router would pick,
        the prompt's tokens, the most it may write, and the cost range in US dollars
        (low: the prompt only; high: the prompt and max_tokens, or the model's output
        limit). Sync (reads the database when its snapshot is stale)."""
        validate_request(request)
        validate_context(context)
        catalog = selectors.catalog_cached() or selectors.catalog_models()
        config = selectors.organization_config_cached(
            context.organization_id
        ) or selectors.organization_config(organization_id=context.organization_id)
        plan = self.router.plan(request, catalog, config, fallbacks=context.fallbacks)
        model = plan.candidates[0].model
        max_out = min(request.max_tokens or model.max_output_tokens, model.max_output_tokens)
        return {
            "model": model.name,
            "provider": model.provider,
            "reason": plan.candidates[0].reason,
            "input_tokens": plan.prompt_tokens,
            "max_output_tokens": max_out,
            "usd_low": model.cost(plan.prompt_tokens, 0),
            "usd_high": model.cost(plan.prompt_tokens, max_out),
        }

    def status(self) -> dict[str, Any]:
        """This process's view of the providers: circuit states per endpoint and the
        moving averages per model (for operators; nothing here is per organization)."""
        return {
            "circuits": self.breakers.states(),
            "models": self.router.stats.snapshot(),
            "l1_entries": len(self.cache.l1),
            "semantic_cache": "on" if self.cache.embedder is not None else "off",
        }

    async def models(self, *, organization_id: int) -> list[dict[str, Any]]:
        catalog = await self._catalog()
        config = await self._config(organization_id)
        aliases: dict[str, list[str]] = {}
        for alias, name in ALIASES.items():
            aliases.setdefault(name, []).append(alias)
        rows = []
        for model in catalog.values():
            row = model.as_dict(enabled=config.enabled(model))
            row["aliases"] = aliases.get(model.name, [])
            row["credentials"] = config.credential(model.provider) is not None
            rows.append(row)
        return rows


_gateway: Gateway | None = None


def gateway() -> Gateway:
    global _gateway
    if _gateway is None:
        _gateway = Gateway()
    return _gateway


def gateway_reset() -> None:
    """Forget every process-wide state: snapshots, caches, breakers, moving averages and
    unwritten usage (tests; a fresh gateway reads its settings again)."""
    global _gateway
    selectors.snapshots_clear()
    if _gateway is not None:
        _gateway.cache.l1.clear()
    cache_clear_shared()
    meter().discard()
    _gateway = None


def chat_sync(request: ChatRequest, *, context: CallContext) -> ChatResponse:
    """For Celery tasks and other sync code (not from inside a running event loop)."""

    async def call() -> ChatResponse:
        try:
            return await gateway().chat(request, context=context)
        finally:
            await gateway().close_loop_providers()

    return async_to_sync(call)()
