"""Which model serves a request, in what order the alternatives are tried, and why.

A named model (or an alias such as "local") serves first when the organization may
use it: it must be enabled for the organization, have credentials, be within the
organization's price ceiling and fit the prompt. Its fallback chain (the
organization's routing policy, else the catalog's) follows, keeping only models
that pass the same checks; among those, a model whose observed error rate is high
moves to the back. A prompt too long for the named model is served by the first
model in its chain with a long enough window ("context fallback"); with none, the
request is refused naming the window.

`auto` picks by this heuristic (classify_request):
  hard when any of: tools are offered; JSON with a schema is wanted; the prompt is
  over LLM_AUTO_LONG_PROMPT_TOKENS (default 2,000) tokens; there are more than 8
  messages; the text holds code (a ``` fence, or lines that look like code) or asks
  for reasoning work ("debug", "refactor", "prove", "step by step", ...); or
  max_tokens is over 2,000.
  Otherwise simple. Simple requests go to "small" tier models, hard ones to "large"
  tier ones (the other tier follows as fallback). Within a tier the organization's
  preferred models come first, in its order; the rest are ranked by expected cost
  of this request, plus observed latency (exponential moving average, 1 ms weighs
  as much as $0.00001) and error rate. With no usable model of either tier, the
  local model serves.

Per-request fallbacks (CallContext.fallbacks, `fallbacks` on /v1/chat/completions)
REPLACE the chain for that call: the named (or `auto`'s) model first, then exactly
those models in the caller's order (no reordering by error rate), an empty list
meaning no fallback at all. A name that is unknown, or that the organization may not
use (disabled, no credentials, over its price ceiling), is a 400 naming it, before
anything is sent; one that cannot serve this request (window too small, no vision)
is skipped and listed in the route, as in the organization's chain.

Images (Message.images) need a model with `vision` in the catalog: naming one
without is a 400 saying so, before anything is sent; `auto` and every fallback
chain keep only models with vision (the local model has none).

Observed latency and error rate are exponential moving averages per model (alpha
LLM_ROUTER_EMA_ALPHA, default 0.2), kept in each process and shared through Redis
every LLM_ROUTER_STATS_SYNC_SECONDS (ModelStats), so a model failing in one worker is
avoided by the others within seconds.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import redis
from django.conf import settings

from apps.llm.catalog import ALIASES, AUTO_MODEL, LOCAL_MODEL
from apps.llm.errors import ContextTooLong, GatewayError, MissingCredentials, ModelDisabled, UnknownModel
from apps.llm.selectors import ModelInfo, OrganizationConfig
from apps.llm.tokens import estimate_message_tokens, estimate_text_tokens, family_of
from apps.llm.types import ChatRequest

HARD_WORDS = re.compile(
    r"\b(debug|refactor|prove|proof|step[- ]by[- ]step|analy[sz]e|architecture|algorithm|optimi[sz]e|"
    r"stack ?trace|traceback|derive|theorem|implement)\b",
    re.IGNORECASE,
)
MAX_REQUEST_FALLBACKS = 10
CODE_LINE = re.compile(
    r"^\s*(def |class |import |from \S+ import|function |const |let |var |public |private |#include|"
    r"SELECT |fn |func |package |if \(|for \(|while \(|return\b).*|.*[;{}]\s*$",
    re.MULTILINE,
)

logger = logging.getLogger(__name__)


STATS_KEY = "llm:router:stats:v1"  # a hash: one field per process (ModelStats instance)
# Another process's average for a model counts this long after its last sample there.
STATS_FRESH_SECONDS = 60.0

_stats_clients: dict[str, redis.Redis] = {}


def _stats_redis() -> redis.Redis:
    url = str(settings.REDIS_URL)
    client = _stats_clients.get(url)
    if client is None:
        client = _stats_clients.setdefault(
            url, redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
        )
    return client


@dataclass
class _Shared:
    """The other processes' fresh averages for one model, as weighted sums."""

    error_weight: float = 0.0
    error_sum: float = 0.0
    latency_weight: float = 0.0
    latency_sum: float = 0.0
    processes: int = 0


class ModelStats:
    """Moving averages of latency and errors per model: this process's own, merged with
    those the gateway's other processes publish.

    The hot path (record, error_rate, latency_ms) touches memory only. When a sync is
    due (every LLM_ROUTER_STATS_SYNC_SECONDS at most; 0 keeps averages per process) a
    background thread publishes this instance's averages to a field of one Redis hash,
    each with its weight (its recent sample count, decayed like the average, so at most
    1/alpha) and the time of its last sample, and reads the other fields, ignoring an
    average whose last sample is over STATS_FRESH_SECONDS old. Reads weigh this
    process's averages and the others' by those weights; this process's own count
    while fresh, or alone when no other process has fresh ones. The thread syncs again
    every interval while samples keep coming, so the last ones are published too.
    With Redis unreachable each process uses its own averages (logged once).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latency: dict[str, float] = {}
        self._errors: dict[str, float] = {}
        self._error_weights: dict[str, float] = {}
        self._latency_weights: dict[str, float] = {}
        self._last_sample: dict[str, float] = {}  # wall clock: compared across processes
        self._shared: dict[str, _Shared] = {}
        self._pid = os.getpid()
        self.instance = self._new_instance()
        self._next_sync = 0.0  # monotonic; the first read or sample syncs
        self._syncing = False
        self._dirty = False  # samples since the last publish
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._outage_logged = False

    @property
    def alpha(self) -> float:
        return float(getattr(settings, "LLM_ROUTER_EMA_ALPHA", 0.2))

    @staticmethod
    def _new_instance() -> str:
        return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    @staticmethod
    def sync_seconds() -> float:
        return float(getattr(settings, "LLM_ROUTER_STATS_SYNC_SECONDS", 5))

    def record(self, model: str, *, ok: bool, latency_ms: float | None = None) -> None:
        alpha = self.alpha
        with self._lock:
            previous = self._errors.get(model)
            sample = 0.0 if ok else 1.0
            self._errors[model] = sample if previous is None else previous + alpha * (sample - previous)
            self._error_weights[model] = self._error_weights.get(model, 0.0) * (1 - alpha) + 1
            if ok and latency_ms is not None:
                latency = self._latency.get(model)
                self._latency[model] = (
                    latency_ms if latency is None else latency + alpha * (latency_ms - latency)
                )
                self._latency_weights[model] = self._latency_weights.get(model, 0.0) * (1 - alpha) + 1
            self._last_sample[model] = time.time()
            self._dirty = True
        self._maybe_sync()

    def _own_is_fresh(self, model: str) -> bool:
        last = self._last_sample.get(model)
        return last is not None and time.time() - last <= STATS_FRESH_SECONDS

    def latency_ms(self, model: str) -> float | None:
        self._maybe_sync()
        own = self._latency.get(model)
        shared = self._shared.get(model)
        if shared is None or not shared.latency_weight:
            return own
        weight, total = shared.latency_weight, shared.latency_sum
        if own is not None and self._own_is_fresh(model):
            own_weight = self._latency_weights.get(model, 1.0)
            weight += own_weight
            total += own_weight * own
        return total / weight

    def error_rate(self, model: str) -> float:
        self._maybe_sync()
        own = self._errors.get(model)
        shared = self._shared.get(model)
        if shared is None or not shared.error_weight:
            return own or 0.0
        weight, total = shared.error_weight, shared.error_sum
        if own is not None and self._own_is_fresh(model):
            own_weight = self._error_weights.get(model, 1.0)
            weight += own_weight
            total += own_weight * own
        return total / weight

    def snapshot(self) -> dict[str, dict[str, float | None]]:
        """Per model: the merged averages, and how many processes' samples they merge."""
        self._maybe_sync()
        with self._lock:
            names = set(self._latency) | set(self._errors) | set(self._shared)
        view: dict[str, dict[str, float | None]] = {}
        for name in sorted(names):
            shared = self._shared.get(name)
            own = name in self._errors and (shared is None or self._own_is_fresh(name))
            view[name] = {
                "latency_ms": self.latency_ms(name),
                "error_rate": self.error_rate(name),
                "processes": int(own) + (shared.processes if shared else 0),
            }
        return view

    # --- sharing with the other processes (off the hot path) -----------------

    def _maybe_sync(self) -> None:
        if time.monotonic() < self._next_sync:
            return
        with self._lock:
            if self._pid != os.getpid():  # a forked worker: a field of its own, no parent's thread
                self._pid = os.getpid()
                self.instance = self._new_instance()
                self._syncing = False
            now = time.monotonic()
            if now < self._next_sync or self._syncing:
                return
            interval = self.sync_seconds()
            if interval <= 0 or self._stopped.is_set():
                self._next_sync = now + 1.0  # sharing is off: look at the setting again later
                return
            self._next_sync = now + interval
            self._syncing = True
            self._thread = threading.Thread(
                target=self._sync_while_busy, name="llm-router-stats", daemon=True
            )
        self._thread.start()

    def _sync_while_busy(self) -> None:
        """Sync now, then every interval for as long as new samples keep coming."""
        try:
            while True:
                self.sync()
                with self._lock:
                    interval = self.sync_seconds()
                    if not self._dirty or self._stopped.is_set() or interval <= 0:
                        return
                    wait = self._next_sync - time.monotonic()
                if self._stopped.wait(max(wait, 0.0)):
                    return
                with self._lock:
                    self._next_sync = time.monotonic() + interval
        except Exception:  # a bug here must not end routing; the next due read starts again
            logger.exception("Sharing the router's moving averages failed")
        finally:
            with self._lock:
                self._syncing = False

    def sync(self) -> bool:
        """Publish this process's averages and read the others' (blocking: a background
        thread calls it). False when Redis could not be reached."""
        wall = time.time()
        with self._lock:
            self._dirty = False
            mine = {
                name: {
                    "error_rate": rate,
                    "error_weight": self._error_weights.get(name, 1.0),
                    "latency_ms": self._latency.get(name),
                    "latency_weight": self._latency_weights.get(name, 0.0),
                    "last": self._last_sample[name],
                }
                for name, rate in self._errors.items()
                if wall - self._last_sample.get(name, 0.0) <= STATS_FRESH_SECONDS
            }
        client = _stats_redis()
        try:
            pipe = client.pipeline(transaction=False)
            if mine and not self._stopped.is_set():
                pipe.hset(STATS_KEY, self.instance, json.dumps({"at": wall, "models": mine}))
            else:
                pipe.hdel(STATS_KEY, self.instance)
            pipe.expire(STATS_KEY, 3600)  # gone an hour after the last process stopped
            pipe.hgetall(STATS_KEY)
            entries: dict[bytes, bytes] = pipe.execute()[-1]
        except (redis.RedisError, OSError):
            self._shared = {}
            if not self._outage_logged:
                self._outage_logged = True
                logger.warning(
                    "Redis is unreachable: the router uses this process's own moving averages",
                    exc_info=True,
                )
            return False
        self._outage_logged = False
        self._shared = self._merge_others(entries, wall, client)
        return True

    def _merge_others(
        self, entries: dict[bytes, bytes], wall: float, client: redis.Redis
    ) -> dict[str, _Shared]:
        shared: dict[str, _Shared] = {}
        gone: list[bytes] = []
        for field_name, raw in entries.items():
            if field_name.decode() == self.instance:
                continue
            try:
                entry = json.loads(raw)
                if wall - float(entry["at"]) > STATS_FRESH_SECONDS:
                    gone.append(field_name)  # that process stopped calling (or stopped)
                    continue
                for model, values in entry["models"].items():
                    if wall - float(values["last"]) > STATS_FRESH_SECONDS:
                        continue
                    total = shared.setdefault(str(model), _Shared())
                    weight = float(values["error_weight"])
                    total.error_weight += weight
                    total.error_sum += weight * float(values["error_rate"])
                    if values.get("latency_ms") is not None and float(values["latency_weight"]) > 0:
                        total.latency_weight += float(values["latency_weight"])
                        total.latency_sum += float(values["latency_weight"]) * float(values["latency_ms"])
                    total.processes += 1
            except (ValueError, KeyError, TypeError, AttributeError):
                gone.append(field_name)  # not ours to read (another version): dropped
        if gone:
            with contextlib.suppress(redis.RedisError, OSError):
                client.hdel(STATS_KEY, *gone)
        return shared

    def stop_sharing(self) -> None:
        """Stop syncing and take this instance's averages out of the shared hash."""
        self._stopped.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=5)
        with contextlib.suppress(redis.RedisError, OSError):
            _stats_redis().hdel(STATS_KEY, self.instance)
        self._shared = {}


def shared_stats_clear() -> None:
    """Forget every process's published averages (tests)."""
    with contextlib.suppress(redis.RedisError, OSError):
        _stats_redis().delete(STATS_KEY)


def estimate_tokens(request: ChatRequest, provider_kind: str = "openai") -> int:
    """Prompt tokens as the provider will count them, erring high (apps/llm/tokens.py)."""
    family = family_of(provider_kind)
    tokens = estimate_message_tokens(request.messages, family, tools=request.tools)
    if request.json_schema:
        tokens += estimate_text_tokens(json.dumps(request.json_schema), family)
    return tokens


def classify_request(request: ChatRequest, prompt_tokens: int) -> tuple[bool, str]:
    """(hard, why) for the `auto` model; see the module's docstring."""
    long_prompt = int(getattr(settings, "LLM_AUTO_LONG_PROMPT_TOKENS", 2000))
    if request.tools:
        return True, "tools offered"
    if request.response_format == "json" and request.json_schema:
        return True, "structured JSON wanted"
    if prompt_tokens > long_prompt:
        return True, f"long prompt (about {prompt_tokens} tokens)"
    if len(request.messages) > 8:
        return True, f"long conversation ({len(request.messages)} messages)"
    if request.max_tokens and request.max_tokens > 2000:
        return True, "long answer wanted"
    for message in request.messages:
        text = message.content or ""
        if "```" in text:
            return True, "code in the prompt"
        if len(CODE_LINE.findall(text)) >= 2:
            return True, "code in the prompt"
        if message.role == "user" and HARD_WORDS.search(text):
            return True, "reasoning work asked for"
    return False, "short, no tools, no code"


@dataclass(frozen=True)
class Candidate:
    model: ModelInfo
    reason: str


@dataclass
class RoutePlan:
    requested: str
    prompt_tokens: int
    candidates: list[Candidate]
    skipped: list[dict[str, str]] = field(default_factory=list)  # fallbacks left out, and why


class Router:
    def __init__(self, stats: ModelStats | None = None) -> None:
        self.stats = stats or ModelStats()

    def lookup(self, catalog: dict[str, ModelInfo], name: str) -> ModelInfo:
        model = catalog.get(ALIASES.get(name, name))
        if model is None or model.embeddings:
            known = ", ".join(name for name, info in sorted(catalog.items()) if not info.embeddings)
            raise UnknownModel(
                f"Unknown model {name!r}. Chat models in the catalog: auto, {known}.", field="model"
            )
        return model

    def lookup_embedding(self, catalog: dict[str, ModelInfo], name: str) -> ModelInfo:
        model = catalog.get(ALIASES.get(name, name))
        if model is None or not model.embeddings:
            known = ", ".join(name for name, info in sorted(catalog.items()) if info.embeddings)
            raise UnknownModel(
                f"Unknown embedding model {name!r}. Embedding models in the catalog: {known}.", field="model"
            )
        return model

    def unusable_reason(self, model: ModelInfo, config: OrganizationConfig) -> str | None:
        if not config.enabled(model):
            return "disabled"
        if config.credential(model.provider) is None:
            return "no credentials"
        if config.max_output_price is not None and model.output_price > config.max_output_price:
            return "over the price ceiling"
        return None

    def check_usable(self, model: ModelInfo, config: OrganizationConfig) -> None:
        """Raise the reason the organization may not use this model, if any."""
        reason = self.unusable_reason(model, config)
        if reason == "disabled":
            raise ModelDisabled(f"The model {model.name!r} is disabled for this organization.", field="model")
        if reason == "no credentials":
            raise MissingCredentials(
                f"No {model.provider} credentials for {model.name!r}: add an API key for {model.provider}"
                " to the organization, or ask the platform's operators for a default one.",
                field="model",
            )
        if reason == "over the price ceiling":
            raise ModelDisabled(
                f"The model {model.name!r} costs more than the organization's price ceiling"
                f" ({config.max_output_price:g} USD per million output tokens).",
                field="model",
            )

    @staticmethod
    def fits(model: ModelInfo, request: ChatRequest, prompt_tokens: int) -> bool:
        return prompt_tokens + (request.max_tokens or 0) <= model.context_window

    def vision_models(self, catalog: dict[str, ModelInfo], config: OrganizationConfig) -> list[str]:
        """The models with vision this organization may use."""
        return sorted(
            m.name
            for m in catalog.values()
            if m.vision and not m.embeddings and self.unusable_reason(m, config) is None
        )

    def check_vision(
        self,
        model: ModelInfo,
        request: ChatRequest,
        catalog: dict[str, ModelInfo],
        config: OrganizationConfig,
    ) -> None:
        if has_images(request) and not model.vision:
            others = ", ".join(self.vision_models(catalog, config)) or "none is usable"
            raise GatewayError(
                f"The model {model.name!r} does not read images; send them to a model with vision"
                f" (for this organization: {others}).",
                code="vision_unsupported",
                field="model",
            )

    def request_fallbacks(
        self, names: Sequence[str], catalog: dict[str, ModelInfo], config: OrganizationConfig
    ) -> list[ModelInfo]:
        """The models a request names as its own fallbacks: a 400 naming any that is unknown
        or that the organization may not use."""
        if len(names) > MAX_REQUEST_FALLBACKS:
            raise GatewayError(
                f"At most {MAX_REQUEST_FALLBACKS} fallback models per request.", field="fallbacks"
            )
        models = []
        for name in names:
            model = catalog.get(ALIASES.get(name, name))
            if model is None or model.embeddings:
                known = ", ".join(n for n, info in sorted(catalog.items()) if not info.embeddings)
                raise UnknownModel(
                    f"Unknown fallback model {name!r}. Chat models in the catalog: {known}.",
                    field="fallbacks",
                )
            why = self.unusable_reason(model, config)
            if why is not None:
                raise GatewayError(
                    f"The fallback model {model.name!r} cannot be used by this organization: {why}"
                    + (f" (add a {model.provider} API key)" if why == "no credentials" else "")
                    + ".",
                    code="fallback_unusable",
                    field="fallbacks",
                )
            models.append(model)
        return models

    def plan(
        self,
        request: ChatRequest,
        catalog: dict[str, ModelInfo],
        config: OrganizationConfig,
        *,
        fallbacks: Sequence[str] | None = None,
    ) -> RoutePlan:
        """fallbacks: this request's own list (replacing the organization's chain), or None."""
        own = None if fallbacks is None else self.request_fallbacks(fallbacks, catalog, config)
        if request.model == AUTO_MODEL:
            return self._plan_auto(request, catalog, config, estimate_tokens(request), own)
        model = self.lookup(catalog, request.model)
        prompt_tokens = estimate_tokens(request, model.provider)
        self.check_usable(model, config)
        self.check_vision(model, request, catalog, config)
        plan = RoutePlan(requested=request.model, prompt_tokens=prompt_tokens, candidates=[])
        chain = self._chain(model, catalog, config, request, prompt_tokens, plan, own)
        if self.fits(model, request, prompt_tokens):
            plan.candidates = [Candidate(model, "requested"), *chain]
            return plan
        longer = [c for c in chain if c.model.context_window > model.context_window]
        if not longer:
            raise ContextTooLong(
                f"The messages take about {prompt_tokens} tokens"
                + (f" plus {request.max_tokens} for the answer" if request.max_tokens else "")
                + f", over the {model.context_window:,}-token context window of {model.name!r},"
                " and no fallback model with a longer window is available.",
                field="messages",
            )
        plan.skipped.insert(
            0, {"model": model.name, "why": f"context window {model.context_window:,} too small"}
        )
        plan.candidates = [
            Candidate(c.model, f"context fallback from {model.name} ({prompt_tokens} tokens)") for c in longer
        ]
        return plan

    def _chain(
        self,
        model: ModelInfo,
        catalog: dict[str, ModelInfo],
        config: OrganizationConfig,
        request: ChatRequest,
        prompt_tokens: int,
        plan: RoutePlan,
        own: list[ModelInfo] | None = None,
    ) -> list[Candidate]:
        """The usable fallbacks after `model`: the request's own list (`own`) or the
        organization's chain (else the catalog's)."""
        chain: list[Candidate] = []
        seen = {model.name}
        images = has_images(request)
        if own is not None:
            listed: list[ModelInfo | None] = list(own)
            reason = f"fallback for {model.name}, from the request's list"
        else:
            listed = [catalog.get(ALIASES.get(name, name)) for name in config.fallbacks_for(model)]
            reason = f"fallback for {model.name}"
        for fallback in listed:
            if fallback is None or fallback.name in seen or fallback.embeddings:
                continue
            seen.add(fallback.name)
            why = self.unusable_reason(fallback, config)
            if why is None and images and not fallback.vision:
                why = "does not read images"
            if why is None and not self.fits(fallback, request, prompt_tokens):
                why = f"context window {fallback.context_window:,} too small"
            if why is not None:
                plan.skipped.append({"model": fallback.name, "why": why})
                continue
            chain.append(Candidate(fallback, reason))
        if own is None:
            # Keep the chain's order, but a model failing more than half of its calls goes last.
            chain.sort(key=lambda c: self.stats.error_rate(c.model.name) > 0.5)
        return chain

    def _plan_auto(
        self,
        request: ChatRequest,
        catalog: dict[str, ModelInfo],
        config: OrganizationConfig,
        prompt_tokens: int,
        own: list[ModelInfo] | None = None,
    ) -> RoutePlan:
        hard, why = classify_request(request, prompt_tokens)
        tier = "large" if hard else "small"
        plan = RoutePlan(requested=AUTO_MODEL, prompt_tokens=prompt_tokens, candidates=[])
        usable: list[ModelInfo] = []
        too_long = 0
        images = has_images(request)
        for model in catalog.values():
            if model.embeddings or self.unusable_reason(model, config) is not None:
                continue
            if images and not model.vision:
                continue
            if not self.fits(model, request, prompt_tokens):
                too_long += 1
                continue
            if request.tools and not model.tools and model.name != LOCAL_MODEL:
                continue
            if request.response_format == "json" and not model.json and model.name != LOCAL_MODEL:
                continue
            usable.append(model)
        if not usable:
            if images and not too_long:
                with_vision = ", ".join(sorted(m.name for m in catalog.values() if m.vision)) or "none"
                raise GatewayError(
                    "No model this organization may use reads images. Models with vision in the"
                    f" catalog: {with_vision}; each needs to be enabled and its provider's API key.",
                    code="vision_unsupported",
                    field="messages",
                )
            if too_long:
                raise ContextTooLong(
                    f"The messages take about {prompt_tokens} tokens, more than the context window of every"
                    " model this organization may use.",
                    field="messages",
                )
            raise ModelDisabled("No model this organization may use can serve this request.", field="model")
        max_out = request.max_tokens or 500

        def rank(model: ModelInfo) -> tuple[int, float]:
            preferred = config.preferred_models
            order = preferred.index(model.name) if model.name in preferred else len(preferred)
            cost = model.cost(prompt_tokens, max_out)
            latency = self.stats.latency_ms(model.name) or 0.0
            score = cost + latency * 0.00001 + self.stats.error_rate(model.name) * 0.01
            return order, score

        # The local model only when nothing else is usable: it is free but weak.
        remote = [model for model in usable if model.provider != "local"] or usable
        same_tier = sorted((m for m in remote if m.tier == tier), key=rank)
        other_tier = sorted((m for m in remote if m.tier != tier), key=rank)
        chosen = same_tier or other_tier
        first = chosen[0]
        reason = f"auto: {'hard' if hard else 'simple'} request ({why}) -> {tier} tier"
        if first.tier != tier:
            reason += f"; no {tier} model usable, {first.tier} instead"
        if first.name in config.preferred_models:
            reason += ", the organization's preferred model"
        else:
            reason += ", lowest expected cost and latency"
        candidates = [Candidate(first, reason)]
        if own is not None:
            candidates += self._chain(first, catalog, config, request, prompt_tokens, plan, own)
        else:
            for model in [*same_tier, *other_tier][1:3]:
                candidates.append(Candidate(model, "auto: next best"))
        plan.candidates = candidates
        return plan


def has_images(request: ChatRequest) -> bool:
    return any(message.images for message in request.messages)
