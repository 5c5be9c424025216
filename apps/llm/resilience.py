"""Retries, circuit breakers and per-call timeouts.

Retries: a retryable provider error (rate limited, unavailable, timeout, malformed
body) is tried again on the same model up to LLM_RETRY_ATTEMPTS more times, after
a full-jitter exponential backoff (uniform between 0 and min(cap, base * 2^n)), or
exactly the provider's Retry-After when it sent one. A Retry-After longer than
LLM_RETRY_AFTER_CAP_SECONDS is not waited for: the gateway moves on to the next
model in the chain instead.

Circuit breaker, one per provider endpoint (kind + base URL): after
LLM_BREAKER_FAILURES consecutive failures (429s do not count: the provider is up)
it opens and calls skip that provider for LLM_BREAKER_COOLDOWN_SECONDS; then it is
half-open and lets one trial call through: success closes it, failure opens it again.

The fallback chain itself (which model next, and why) is walked by the gateway
(apps/llm/gateway.py) over the router's plan (apps/llm/router.py).
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

from django.conf import settings

from apps.llm.providers.base import ProviderError, ProviderTimeout, RateLimited

T = TypeVar("T")


def _setting(name: str, default: float) -> float:
    return float(getattr(settings, name, default))


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 2  # after the first try, per model
    base_seconds: float = 0.25
    cap_seconds: float = 4.0
    retry_after_cap_seconds: float = 10.0

    @classmethod
    def from_settings(cls) -> RetryPolicy:
        return cls(
            retries=int(_setting("LLM_RETRY_ATTEMPTS", 2)),
            base_seconds=_setting("LLM_RETRY_BASE_SECONDS", 0.25),
            cap_seconds=_setting("LLM_RETRY_CAP_SECONDS", 4.0),
            retry_after_cap_seconds=_setting("LLM_RETRY_AFTER_CAP_SECONDS", 10.0),
        )

    def delay(self, error: ProviderError, attempt: int) -> float | None:
        """Seconds to wait before retry number `attempt` (0-based), or None: do not retry."""
        if not error.retryable or attempt >= self.retries:
            return None
        if error.retry_after is not None:
            if error.retry_after > self.retry_after_cap_seconds:
                return None  # longer than we wait: the next model serves instead
            return max(error.retry_after, 0.0)
        return random.uniform(0, min(self.cap_seconds, self.base_seconds * 2**attempt))  # noqa: S311 (jitter)


class CircuitBreaker:
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at = 0.0
        self._state = self.CLOSED
        self._trial_in_flight = False

    @property
    def failure_threshold(self) -> int:
        return int(_setting("LLM_BREAKER_FAILURES", 5))

    @property
    def cooldown_seconds(self) -> float:
        return _setting("LLM_BREAKER_COOLDOWN_SECONDS", 30.0)

    @property
    def state(self) -> str:
        with self._lock:
            return self._current_state()

    def _current_state(self) -> str:
        if self._state == self.OPEN and time.monotonic() - self._opened_at >= self.cooldown_seconds:
            self._state = self.HALF_OPEN
            self._trial_in_flight = False
        return self._state

    def allow(self) -> bool:
        """May a call go to this provider now? In half-open, only one trial at a time."""
        with self._lock:
            state = self._current_state()
            if state == self.CLOSED:
                return True
            if state == self.HALF_OPEN and not self._trial_in_flight:
                self._trial_in_flight = True
                return True
            return False

    def record_success(self) -> None:
        with self._lock:
            self._failures = 0
            self._state = self.CLOSED
            self._trial_in_flight = False

    def record_failure(self, error: ProviderError) -> None:
        if isinstance(error, RateLimited) or not error.retryable:
            # Up but busy, or our request was bad: not a sign the provider is down. A
            # half-open trial that ends so is over, though.
            with self._lock:
                self._trial_in_flight = False
            return
        with self._lock:
            self._failures += 1
            state = self._current_state()
            if state == self.HALF_OPEN or self._failures >= self.failure_threshold:
                self._state = self.OPEN
                self._opened_at = time.monotonic()
                self._trial_in_flight = False

    def abandon(self) -> None:
        """The call it allowed never finished (cancelled): a half-open trial may go again."""
        with self._lock:
            self._trial_in_flight = False

    def retry_in(self) -> float:
        """Seconds until an open breaker lets a trial through (0 when not open)."""
        with self._lock:
            if self._current_state() != self.OPEN:
                return 0.0
            return max(self.cooldown_seconds - (time.monotonic() - self._opened_at), 0.0)


class Breakers:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._breakers: dict[str, CircuitBreaker] = {}

    def get(self, name: str) -> CircuitBreaker:
        with self._lock:
            breaker = self._breakers.get(name)
            if breaker is None:
                breaker = self._breakers[name] = CircuitBreaker(name)
            return breaker

    def states(self) -> dict[str, str]:
        with self._lock:
            breakers = list(self._breakers.values())
        return {breaker.name: breaker.state for breaker in breakers}


async def with_timeout(call: Awaitable[T], seconds: float, *, provider: str) -> T:
    """The call, or ProviderTimeout after `seconds` (the SDK's own timeout may fire first)."""
    # asyncio.timeout, not wait_for: no task per call, one loop turn less (bench/llm_gateway.py).
    try:
        async with asyncio.timeout(seconds):
            return await call
    except TimeoutError:
        raise ProviderTimeout(f"no answer within {seconds:g} s", provider=provider) from None
