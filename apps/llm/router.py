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

Observed latency and error rate are exponential moving averages per model, kept in
this process (alpha LLM_ROUTER_EMA_ALPHA, default 0.2).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

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


class ModelStats:
    """Moving averages of latency and errors per model, in this process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latency: dict[str, float] = {}
        self._errors: dict[str, float] = {}

    @property
    def alpha(self) -> float:
        return float(getattr(settings, "LLM_ROUTER_EMA_ALPHA", 0.2))

    def record(self, model: str, *, ok: bool, latency_ms: float | None = None) -> None:
        alpha = self.alpha
        with self._lock:
            previous = self._errors.get(model)
            sample = 0.0 if ok else 1.0
            self._errors[model] = sample if previous is None else previous + alpha * (sample - previous)
            if ok and latency_ms is not None:
                latency = self._latency.get(model)
                self._latency[model] = (
                    latency_ms if latency is None else latency + alpha * (latency_ms - latency)
                )

    def latency_ms(self, model: str) -> float | None:
        return self._latency.get(model)

    def error_rate(self, model: str) -> float:
        return self._errors.get(model, 0.0)

    def snapshot(self) -> dict[str, dict[str, float | None]]:
        with self._lock:
            names = set(self._latency) | set(self._errors)
            return {
                name: {"latency_ms": self._latency.get(name), "error_rate": self._errors.get(name, 0.0)}
                for name in sorted(names)
            }


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
