"""How an outside API's HTTP failure becomes one of our provider errors.

The OpenAI, Anthropic and Gemini SDKs all sit on the same HTTP client and fail the
same ways (a status with a body, a timeout, a broken connection, a body that is not
what was promised), so the mapping by status lives here once and each adapter only
pulls the status, message and headers out of its SDK's exception."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime

from apps.llm.providers.base import (
    AuthenticationFailed,
    ContextWindowExceeded,
    InvalidProviderRequest,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
    RateLimited,
)

# How the providers and the common OpenAI-compatible servers word "the prompt is too long"
# (OpenAI and vLLM, Anthropic, Gemini, llama.cpp server, TGI, Ollama, TabbyAPI).
_CONTEXT_PATTERNS = re.compile(
    r"context[_ ]length|context window|context size|maximum context|prompt is too long"
    r"|input is too long|too many (input )?tokens|exceeds the maximum number of tokens"
    r"|input token count .* exceeds|max_new_tokens. must be <=|exceed_context_size"
    r"|reduce the length of the messages",
    re.IGNORECASE,
)
# A Retry-After longer than this is the provider telling us to give up for now, not to wait.
MAX_RETRY_AFTER_SECONDS = 3600.0


def parse_retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds to wait from `retry-after-ms`, `retry-after` (seconds or an HTTP date)."""
    if not headers:
        return None
    lowered = {name.lower(): value for name, value in headers.items()}
    milliseconds = lowered.get("retry-after-ms")
    if milliseconds:
        try:
            return _bounded(float(milliseconds) / 1000)
        except ValueError:
            pass
    value = lowered.get("retry-after")
    if not value:
        return None
    try:
        return _bounded(float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return _bounded(when.timestamp() - time.time())


def _bounded(seconds: float) -> float | None:
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


def is_context_error(message: str, code: str | None = None) -> bool:
    return code in ("context_length_exceeded", "string_above_max_length") or bool(
        _CONTEXT_PATTERNS.search(message or "")
    )


def error_for_status(
    status: int,
    message: str,
    *,
    provider: str,
    label: str = "",
    headers: Mapping[str, str] | None = None,
    code: str | None = None,
) -> ProviderError:
    """The provider error for an HTTP status and the provider's own message (`label`
    names the server in the message when it is not the provider kind)."""
    text = f"{label or provider} answered {status}: {message}".strip()
    if status == 429:
        return RateLimited(text, retry_after=parse_retry_after(headers), provider=provider)
    if status in (401, 403):
        return AuthenticationFailed(text, provider=provider)
    if status in (400, 413, 422) and is_context_error(message, code):
        return ContextWindowExceeded(text, provider=provider)
    if status == 408 or status == 504:
        return ProviderTimeout(text, provider=provider)
    if status >= 500:
        # 503 and 529 (overloaded) may say when to come back.
        return ProviderUnavailable(text, retry_after=parse_retry_after(headers), provider=provider)
    return InvalidProviderRequest(text, provider=provider)
